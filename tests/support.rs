//! Shared helpers: the default model, sample data, split bundles, processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use offramp_common::data::{Dataset, Subset};
use offramp_common::model::SplitSide;
use offramp_common::{codec, Bundle, Executor, Policy};
use offramp_edge::{Edge, Tier};
use offramp_proto as pb;

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

/// Requests carrying the real hidden states at split `k` of the first `n`
/// sample digits (ids `0..n`, f32, probabilities wanted).
pub fn requests(full: &Bundle, k: usize, n: usize) -> Vec<pb::InferRequest> {
    let data = sample(n);
    let exec = Executor::new(Arc::new(full.clone()));
    let x = exec.batch_at(0, &data.images, n).unwrap();
    let hidden = exec.forward_blocks(&x, 0..k).unwrap();
    (0..n)
        .map(|i| {
            let h = hidden.get(i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            pb::InferRequest {
                request_id: i as u64,
                model_id: full.model_id().into(),
                model_fingerprint: full.fingerprint(SplitSide::Cloud, k).unwrap(),
                split: k as u32,
                hidden: Some(codec::encode(&h, full.shape_at(k).unwrap(), pb::Encoding::F32)),
                want_probabilities: true,
                edge_id: "test".into(),
                ..Default::default()
            }
        })
        .collect()
}

/// The request for the first sample digit at split `k`, with id `id`.
pub fn request(full: &Bundle, k: usize, id: u64) -> pb::InferRequest {
    let mut r = requests(full, k, 1).pop().unwrap();
    r.request_id = id;
    r
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

/// A sample digit whose branch exit is unsure under [`TEST_POLICY`], so an
/// edge split at K = 1 with that policy always offloads it.
pub fn input_needing_cloud() -> Vec<f32> {
    let data = sample(1000);
    let full = Bundle::load(default_model()).unwrap();
    let policy = Policy::parse(TEST_POLICY, full.num_exits(), "test policy").unwrap();
    let exec = Executor::new(Arc::new(full));
    let hard = (0..data.len())
        .find(|&i| {
            let x = exec.batch_at(0, data.image(i), 1).unwrap();
            exec.run(&x, 0..1, &policy, vec![vec![]]).unwrap().exited[0].is_none()
        })
        .expect("some digit needs the cloud");
    data.image(hard).to_vec()
}

/// Classifies `input` (which needs the cloud) until the cloud answers it
/// again, failing if that takes longer than `within`; returns how long it took.
pub async fn until_offloading_resumes(edge: &Edge, input: &[f32], within: Duration) -> Duration {
    let back = Instant::now();
    loop {
        let a = edge.classify(None, input.to_vec()).await;
        if a.tier == Tier::Cloud {
            return back.elapsed();
        }
        assert!(back.elapsed() < within, "offloading resumed within {within:?} of the restart: {a:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    /// The QUIC address, when started with `--quic-listen`.
    pub quic: Option<String>,
}

impl CloudProcess {
    /// Starts `offramp-cloud` and waits for its `grpc listening on` line (and
    /// its `quic listening on` line when `extra` has `--quic-listen`).
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
                for kind in ["grpc", "quic"] {
                    if let Some(addr) = line.strip_prefix(&format!("{kind} listening on ")) {
                        let _ = tx.send((kind, addr.trim().to_string()));
                    }
                }
            }
        });
        let wanted = if extra.contains(&"--quic-listen") { 2 } else { 1 };
        let (mut addr, mut quic) = (None, None);
        for _ in 0..wanted {
            match rx.recv_timeout(Duration::from_secs(30)).expect("cloud printed its addresses") {
                ("grpc", a) => addr = Some(a),
                (_, a) => quic = Some(a),
            }
        }
        Self { child, addr: addr.expect("cloud printed its gRPC address"), quic }
    }

    /// `quic://addr`.
    pub fn quic_url(&self) -> String {
        format!("quic://{}", self.quic.as_ref().expect("started with --quic-listen"))
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
