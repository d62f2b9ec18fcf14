//! The real binaries as child processes. A server process is started on
//! `127.0.0.1:0` and the test reads the addresses it announces on stdout
//! (`grpc listening on ADDR`, `quic listening on ADDR`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::eventually::patience;
use super::net::ANY_LOOPBACK;

pub fn cloud_binary() -> &'static str {
    env!("CARGO_BIN_EXE_offramp-cloud-under-test")
}

pub fn edge_binary() -> &'static str {
    env!("CARGO_BIN_EXE_offramp-edge-under-test")
}

/// Reads `stdout` until each of `kinds` has announced `<kind> listening on
/// ADDR` and returns the addresses in the order of `kinds`; a thread keeps
/// draining the pipe afterwards so the process never blocks on it. Panics if
/// the process closes stdout first (it failed to start: its stderr says why)
/// or takes longer than 30 s (scaled by the patience).
pub fn announced(stdout: ChildStdout, kinds: &[&str]) -> Vec<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some((kind, addr)) = line.split_once(" listening on ") {
                let _ = tx.send((kind.to_string(), addr.trim().to_string()));
            }
        }
    });
    let limit = Instant::now() + patience(Duration::from_secs(30));
    let mut found: Vec<Option<SocketAddr>> = vec![None; kinds.len()];
    while found.iter().any(Option::is_none) {
        let left = limit.saturating_duration_since(Instant::now());
        let (kind, addr) = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("the process did not announce {kinds:?} ({e}); got {found:?}"));
        if let Some(i) = kinds.iter().position(|k| *k == kind) {
            found[i] = Some(addr.parse().unwrap_or_else(|e| panic!("{kind} address {addr:?}: {e}")));
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

/// An `offramp-cloud` process; killed on drop.
pub struct CloudProcess {
    pub child: Child,
    /// The gRPC address it announced.
    pub addr: SocketAddr,
    /// The QUIC address it announced, when started with `--quic-listen`.
    pub quic: Option<SocketAddr>,
    args: Vec<String>,
}

impl CloudProcess {
    /// `offramp-cloud --model MODEL --listen 127.0.0.1:0 EXTRA...`, once it
    /// serves.
    pub fn start(model: &Path, extra: &[&str]) -> Self {
        let model = model.to_str().unwrap();
        Self::with_args(&[&["--model", model, "--listen", ANY_LOOPBACK], extra].concat())
    }

    /// `offramp-cloud ARGS...`, once it has announced its gRPC address (and
    /// its QUIC address when `args` has `--quic-listen`).
    pub fn with_args(args: &[&str]) -> Self {
        let mut child = Command::new(cloud_binary())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start offramp-cloud");
        let quic = args.contains(&"--quic-listen");
        let kinds: &[&str] = if quic { &["grpc", "quic"] } else { &["grpc"] };
        let addrs = announced(child.stdout.take().unwrap(), kinds);
        let args = args.iter().map(|a| a.to_string()).collect();
        Self { child, addr: addrs[0], quic: addrs.get(1).copied(), args }
    }

    /// The same cloud started again on the addresses this one announced
    /// (after [`Self::kill`]): a restart in place.
    pub fn restarted(&self) -> Self {
        let mut args: Vec<String> = Vec::new();
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            if a == "--listen" || a == "--quic-listen" {
                it.next();
            } else {
                args.push(a.clone());
            }
        }
        args.extend(["--listen".to_string(), self.addr.to_string()]);
        if let Some(q) = self.quic {
            args.extend(["--quic-listen".to_string(), q.to_string()]);
        }
        Self::with_args(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `quic://addr`.
    pub fn quic_url(&self) -> String {
        format!("quic://{}", self.quic.expect("started with --quic-listen"))
    }

    /// SIGKILL, and reap it.
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
