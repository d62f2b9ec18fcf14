//! What the integration tests share, one way of doing each thing:
//!
//! - [`models`]: the default model, the bundled sample digits, split bundles,
//!   the test policy and requests carrying real hidden states.
//! - [`net`]: addresses. Every server binds `127.0.0.1:0` and the test reads
//!   the address the server reports; no test picks a "free port".
//! - [`certs`]: the one self-signed certificate helper (rcgen).
//! - [`eventually`]: retry a check until it passes, with a patience
//!   `OFFRAMP_TEST_PATIENCE` scales, instead of hand-rolled wait loops.
//! - [`process`]: the real binaries as child processes, which announce their
//!   addresses on stdout.

pub mod certs;
pub mod eventually;
pub mod models;
pub mod net;
pub mod process;

pub use certs::*;
pub use eventually::*;
pub use models::*;
pub use net::*;
pub use process::*;

/// A fresh temporary directory for one test.
pub fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("offramp-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
