//! Shared helpers: the default model, sample data, split bundles, processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use offramp_common::data::{Dataset, Subset};
use offramp_common::Bundle;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn default_model() -> PathBuf {
    repo().join("models/b-lenet-mnist")
}

/// The first `n` digits of the bundled validation sample.
pub fn sample(n: usize) -> Dataset {
    let mut d = Dataset::mnist(&repo().join("models/mnist-sample"), Subset::Sample, 0).expect("bundled sample");
    d.truncate(n);
    d
}

/// A fresh temporary directory.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("offramp-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The policy the tests use: max-prob 0.999 at the branch, so that about a
/// third of the sample digits need the cloud (the calibrated policy of the
/// default model answers 99.7% at the edge, too few offloads to test with).
pub const TEST_POLICY: &str = "default = { rule = \"max-prob\", threshold = 0.999 }\n";

/// Writes [`TEST_POLICY`] into `dir/policy.toml` and returns its path.
pub fn test_policy(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("policy.toml");
    std::fs::write(&p, TEST_POLICY).unwrap();
    p
}

/// Splits the default model at `k` into `dir/edge` and `dir/cloud`, each with
/// the test policy as its own `policy.toml`.
pub fn split_default(k: usize, dir: &Path) -> (PathBuf, PathBuf) {
    let full = Bundle::load(default_model()).unwrap();
    let (e, c) = full.split(k).unwrap();
    let (ed, cd) = (dir.join("edge"), dir.join("cloud"));
    e.save(&ed).unwrap();
    c.save(&cd).unwrap();
    test_policy(&ed);
    test_policy(&cd);
    (ed, cd)
}

/// A cloud process; killed on drop.
pub struct CloudProcess {
    pub child: Child,
    pub addr: String,
}

impl CloudProcess {
    /// Starts `offramp-cloud` and waits for its `grpc listening on` line.
    pub fn start(model: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_offramp-cloud-under-test"))
            .args(["--model", model.to_str().unwrap(), "--listen", listen])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start offramp-cloud");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("grpc listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).expect("cloud printed its address");
        Self { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn edge_binary() -> &'static str {
    env!("CARGO_BIN_EXE_offramp-edge-under-test")
}
