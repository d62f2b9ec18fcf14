//! The edge runtime: run blocks `[0, K)` locally, answer at the first confident
//! exit, otherwise offload the hidden state and, if the cloud does not answer,
//! fall back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use offramp_common::model::{ExitResult, Observation, Overflow, SplitSide};
use offramp_common::policy::history_to_wire;
use offramp_common::{codec, Bundle, Executor, ModelError, Policy};
use offramp_proto as pb;
use serde::Serialize;

use crate::adapt::Controller;
use crate::breaker::BreakerConfig;
pub use crate::config::{EdgeConfig, FallbackMode};
use crate::offload::{Expectation, Offloader, Reason, SplitExpectation};
use crate::plan::{Planner, Profile, Route};
use crate::transport::{ConnectConfig, Transport, TransportError};

/// Why an edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Boxed: the configuration's errors are large, and `Edge::start`'s
    /// checks return this one.
    #[error(transparent)]
    Config(Box<crate::config::ConfigError>),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "this bundle holds blocks {start}..{end} of model {model}; split {split} needs blocks 0..{split} on the edge"
    )]
    SplitNotHeld { model: String, split: usize, start: usize, end: usize },
    #[error("--fallback local-full needs a bundle holding every block (0..{blocks}); this one holds {start}..{end}")]
    LocalFullNeedsWholeModel { blocks: usize, start: usize, end: usize },
    #[error("this bundle does not record the cloud-side fingerprint for split {0}; re-split it with `offramp split`")]
    NoCloudFingerprint(usize),
    #[error("cloud endpoint {url}: {source}")]
    Endpoint { url: String, source: TransportError },
    #[error(transparent)]
    Handshake(#[from] crate::offload::HandshakeError),
    #[error("profiling the device's blocks panicked: {0}")]
    Profile(String),
    #[error("metrics exporter: {0}")]
    Metrics(#[from] offramp_transport::metrics::BuildError),
}

impl From<crate::config::ConfigError> for EdgeError {
    fn from(e: crate::config::ConfigError) -> Self {
        EdgeError::Config(Box::new(e))
    }
}

/// Why an input could not be classified at all (before any compute).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("model {0} takes a tensor input, not text")]
    NotText(String),
    #[error(transparent)]
    Tokenize(#[from] offramp_common::model::TokenizeError),
}

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Edge,
    Cloud,
    Fallback,
    Error,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Edge => "edge",
            Tier::Cloud => "cloud",
            Tier::Fallback => "fallback",
            Tier::Error => "error",
        }
    }
}

/// The answer for one input.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<u32>,
    /// `None` only for `tier = error`.
    pub prediction: Option<u32>,
    /// The predicted class's name (the bundle's label for `prediction`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub exit: Option<u32>,
    pub tier: Tier,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub confidence: f32,
    pub latency_us: u64,
    /// Time spent in local compute.
    pub edge_us: u64,
    pub cloud_queue_us: u64,
    pub cloud_compute_us: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probabilities: Vec<f32>,
    /// The split point this answer was computed at.
    pub split: usize,
    /// The encoding its hidden state was sent in (offloaded answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
    /// The thresholds of the edge exits this input was decided with (with
    /// `--accuracy-budget`: the controller's at the time).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<f32>,
    /// Set (with `tier = error`) when the input overflowed the network: a
    /// finite input too large for the weights, whose answer would have been
    /// NaN. The input's fault, not the device's (the local API answers
    /// `InvalidArgument`); `error` says where.
    #[serde(skip)]
    pub overflow: Option<Overflow>,
}

impl Answer {
    /// No answer yet (`tier = error` until one is set).
    fn blank(id: u64) -> Self {
        Self {
            id,
            label: None,
            prediction: None,
            class: None,
            exit: None,
            tier: Tier::Error,
            reason: None,
            error: None,
            confidence: 0.0,
            latency_us: 0,
            edge_us: 0,
            cloud_queue_us: 0,
            cloud_compute_us: 0,
            bytes_up: 0,
            bytes_down: 0,
            retries: 0,
            endpoint: None,
            probabilities: vec![],
            split: 0,
            encoding: None,
            thresholds: vec![],
            overflow: None,
        }
    }
}

/// The edge: a bundle, a split point, a policy and a way to the cloud.
pub struct Edge {
    pub config: EdgeConfig,
    exec: Executor,
    policy: Arc<Policy>,
    /// The split point and encoding inputs take now: fixed, or the
    /// planner's choice (`--adaptive-split`).
    route: Arc<RwLock<Route>>,
    offloader: Option<Arc<Offloader>>,
    /// The cloud-side fingerprint at each split `0..=N` (empty where the
    /// bundle does not record it).
    cloud_fingerprints: Vec<String>,
    /// The exits after each split `0..=N` (evaluated in the cloud).
    cloud_exits: Vec<Vec<usize>>,
    next_id: AtomicU64,
    /// The split planner (`--adaptive-split`) and the accuracy-budget
    /// controller (`--accuracy-budget`), as the request path sees them.
    observers: Observers,
    /// The planner's probe/plan task.
    planner_task: Option<tokio::task::AbortHandle>,
}

/// The split planner and the accuracy-budget controller (which owns the
/// thresholds of the edge exits), each when it runs. The request path tells
/// them what happened through one hook, [`Observers::see`], which does
/// nothing when neither runs.
#[derive(Clone, Default)]
struct Observers {
    planner: Option<Arc<Mutex<Planner>>>,
    controller: Option<Arc<Controller>>,
}

/// What happened to one input, as the planner and the controller learn it.
enum Seen<'a> {
    /// It exited on the device, at this exit.
    EdgeExit(usize),
    /// Blocks `0..split` ran in `edge_us`, and it goes on to the cloud.
    Local { split: usize, edge_us: f64 },
    /// The cloud answered its offload.
    Cloud(CloudAnswer<'a>),
    /// Its offload failed.
    OffloadFailed(Reason),
    /// The cloud's final exit answered a shadow request (see
    /// [`crate::adapt`]).
    Shadow(CloudAnswer<'a>),
}

/// An answer from the cloud and how it came.
struct CloudAnswer<'a> {
    route: Route,
    /// Request size.
    bytes_up: f64,
    /// From send to answer.
    took_us: f64,
    response: &'a pb::InferResponse,
    /// The edge exits' observations sent with the request.
    history: &'a [Observation],
    /// Whether the answer is the full model's (from the final exit).
    full_model: bool,
}

impl Observers {
    fn see(&self, seen: Seen<'_>) {
        let plan = |f: &dyn Fn(&mut Planner)| {
            if let Some(p) = &self.planner {
                f(&mut p.lock().expect("planner lock"));
            }
        };
        let cloud_us = |r: &pb::InferResponse| (r.queue_us + r.compute_us) as f64;
        match seen {
            Seen::EdgeExit(exit) => plan(&|p| p.observe_answer(exit)),
            Seen::Local { split, edge_us } => plan(&|p| p.observe_local(split, edge_us)),
            Seen::Cloud(o) => {
                if let Some(c) = &self.controller {
                    c.set_reachable(true);
                    // Only the final exit's answer is the full model's.
                    if o.full_model {
                        c.observe(o.history, o.response.prediction as usize, false);
                    }
                }
                plan(&|p| {
                    p.observe_offload(o.route, o.bytes_up, o.took_us, cloud_us(o.response));
                    p.observe_answer(o.response.exit as usize);
                });
            }
            Seen::OffloadFailed(reason) => {
                // A refusal is about the input, not the link.
                if let (Some(c), false) = (&self.controller, matches!(reason, Reason::Rejected)) {
                    c.set_reachable(false);
                }
            }
            Seen::Shadow(o) => {
                // The link and the cloud's compute are measured by shadows too.
                plan(&|p| p.observe_offload(o.route, o.bytes_up, o.took_us, cloud_us(o.response)));
                if let Some(c) = &self.controller {
                    c.observe(o.history, o.response.prediction as usize, true);
                }
            }
        }
    }

    /// Whether inputs that exit on the device may be shadowed (the
    /// controller runs).
    fn shadows(&self) -> bool {
        self.controller.is_some()
    }

    /// A shadow slot for an input that exited on the device, when the
    /// controller wants one now.
    fn take_shadow(&self) -> Option<crate::adapt::ShadowGuard> {
        self.controller.as_ref()?.take_shadow()
    }
}

/// An input on its way through the edge: its answer so far and what the
/// offload needs.
struct Request {
    answer: Answer,
    started: Instant,
    route: Route,
    deadline: Duration,
    /// Rules of the cloud-side exits, sent with the request.
    cloud_policy: Vec<pb::ExitRuleSpec>,
}

impl Edge {
    /// Checks the configuration against the bundle and handshakes with
    /// every reachable cloud endpoint.
    pub async fn start(config: EdgeConfig) -> Result<Self, EdgeError> {
        config.validate()?;
        let bundle = config.bundle.clone();
        let n = bundle.num_blocks();
        let split = config.split.unwrap_or(bundle.held().end);
        check_split(&config, &bundle, split)?;
        let (policy, policy_origin) = edge_policy(&config, &bundle)?;
        let edge_fingerprint = bundle.fingerprint(SplitSide::Edge, split).unwrap_or_default();
        let cloud_fingerprints: Vec<String> =
            (0..=n).map(|k| bundle.expected_fingerprint(SplitSide::Cloud, k).unwrap_or_default()).collect();
        // The splits this edge may offload at: the configured one, or with
        // --adaptive-split every one it holds the edge side of.
        let candidates: Vec<usize> = match config.adaptive_split {
            Some(_) => (0..=bundle.held().end).filter(|&k| bundle.serves(SplitSide::Edge, k)).collect(),
            None => vec![split],
        };
        let offloader = connect(&config, &bundle, split, &candidates, &cloud_fingerprints).await?;
        tracing::info!(
            model = %bundle.model_id(), split, blocks = n, policy = %policy_origin,
            edge_fingerprint = %edge_fingerprint.chars().take(12).collect::<String>(),
            "edge ready"
        );
        let controller = config.accuracy_budget.map(|b| {
            // Every exit the edge may run (with --adaptive-split, up to the
            // deepest split it holds).
            let deepest = candidates.iter().copied().max().unwrap_or(split);
            let edge_exits = bundle.exits_in(0..deepest).len();
            let c = Controller::new(b, &policy, edge_exits);
            tracing::info!(budget = b.budget, shadow = b.shadow, thresholds = ?c.thresholds(), "accuracy budget on");
            Arc::new(c)
        });
        let cloud_exits = (0..=n).map(|k| bundle.exits_in(k..n)).collect();
        let exec = Executor::new(Arc::new(bundle));
        let route = Arc::new(RwLock::new(Route { split, encoding: config.encoding }));
        let (planner, planner_task) = match config.adaptive_split {
            Some(plan) => {
                let (planner, task) = start_planner(&config, plan, &exec, &candidates, &route, &offloader).await?;
                (Some(planner), Some(task))
            }
            None => (None, None),
        };
        Ok(Self {
            exec,
            policy: Arc::new(policy),
            route,
            offloader,
            cloud_fingerprints,
            cloud_exits,
            next_id: AtomicU64::new(0),
            observers: Observers { planner, controller },
            planner_task,
            config,
        })
    }

    pub fn bundle(&self) -> &Bundle {
        self.exec.bundle()
    }

    /// The split point inputs take now.
    pub fn split(&self) -> usize {
        self.route().split
    }

    /// The split point and encoding inputs take now.
    pub fn route(&self) -> Route {
        *self.route.read().expect("route lock")
    }

    /// The split planner, with `--adaptive-split`.
    pub fn planner(&self) -> Option<&Arc<Mutex<Planner>>> {
        self.observers.planner.as_ref()
    }

    /// The encoding a state on `route` crosses in: token ids (a split at 0
    /// of a text model) must arrive exactly, so they go as f32 whatever the
    /// route says.
    fn wire_encoding(&self, route: Route) -> pb::Encoding {
        if route.split == 0 && self.bundle().takes_tokens() {
            pb::Encoding::F32
        } else {
            route.encoding
        }
    }

    /// Compression on top of `encoding` on this edge's routes: the
    /// planner's int8 routes use LZ4, everything else `--compression`.
    fn compression_of(&self, encoding: pb::Encoding) -> pb::Compression {
        if self.observers.planner.is_some() && encoding == pb::Encoding::Int8 {
            pb::Compression::Lz4
        } else {
            self.config.compression
        }
    }

    pub fn offloader(&self) -> Option<&Offloader> {
        self.offloader.as_deref()
    }

    /// The accuracy-budget controller, when one runs.
    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.observers.controller.as_ref()
    }

    /// The policy the next input is decided with.
    pub fn policy(&self) -> Arc<Policy> {
        match &self.observers.controller {
            Some(c) => c.policy(),
            None => self.policy.clone(),
        }
    }

    /// Checks a raw input against the model (shape; token ids within the
    /// vocabulary) without computing anything.
    pub fn check_input(&self, input: &[f32]) -> Result<(), ModelError> {
        self.exec.batch_of(0, &[input]).map(|_| ())
    }

    /// Tokenizes `text` with the bundle's tokenizer (a text model's input).
    pub fn tokenize(&self, text: &str) -> Result<Vec<f32>, InputError> {
        let encoder =
            self.bundle().text_encoder().ok_or_else(|| InputError::NotText(self.bundle().model_id().into()))?;
        Ok(encoder.encode(text)?)
    }

    /// Classifies one text (text models) with the given deadline.
    pub async fn classify_text(&self, id: Option<u64>, text: &str, deadline: Duration) -> Result<Answer, InputError> {
        let ids = self.tokenize(text)?;
        Ok(self.classify_with_deadline(id, ids, deadline).await)
    }

    /// Classifies one input (shape of the model's input, flat) with the
    /// configured deadline.
    pub async fn classify(&self, id: Option<u64>, input: Vec<f32>) -> Answer {
        self.classify_with_deadline(id, input, self.config.deadline).await
    }

    /// Classifies one input; the answer comes by `deadline` after the local
    /// blocks are done, one way or another. Three steps: the local blocks
    /// (which may answer), the offload (with its fallback), the finish.
    pub async fn classify_with_deadline(&self, id: Option<u64>, input: Vec<f32>, deadline: Duration) -> Answer {
        let started = Instant::now();
        let id = id.unwrap_or_else(|| self.next_id.fetch_add(1, Ordering::Relaxed));
        let (route, policy) = (self.route(), self.policy());
        let mut request = self.request(id, started, route, &policy, deadline);
        if let Some(state) = self.run_local(&mut request, input, policy).await {
            self.offload(&mut request, state).await;
        }
        self.finish(request)
    }

    /// An input's blank answer at `route`, with the rules it is decided by.
    fn request(&self, id: u64, started: Instant, route: Route, policy: &Policy, deadline: Duration) -> Request {
        let cloud_exits = &self.cloud_exits[route.split];
        let mut answer = Answer::blank(id);
        answer.split = route.split;
        answer.thresholds = edge_thresholds(policy, self.bundle().num_exits() - cloud_exits.len());
        Request { answer, started, route, deadline, cloud_policy: policy.to_wire(cloud_exits) }
    }

    /// The local blocks `0..K`, off the async workers. An exit may answer
    /// (or the input overflow, or compute fail): `None`, the answer is
    /// set. Otherwise what goes to the cloud.
    async fn run_local(&self, request: &mut Request, input: Vec<f32>, policy: Arc<Policy>) -> Option<Continue> {
        let (exec, split) = (self.exec.clone(), request.route.split);
        let shadow_input = self.observers.shadows().then(|| input.clone());
        let local = tokio::task::spawn_blocking(move || local_blocks(&exec, &input, split, &policy)).await;
        let answer = &mut request.answer;
        answer.edge_us = request.started.elapsed().as_micros() as u64;
        match local {
            Ok(Ok(Local::Exited(r))) => {
                set_result(answer, &r, Tier::Edge);
                self.observers.see(Seen::EdgeExit(r.exit));
                if let (Some(input), Some(guard)) = (shadow_input, self.observers.take_shadow()) {
                    self.send_shadow(guard, input, r.exit, request.route);
                }
                None
            }
            Ok(Ok(Local::Continue(state))) => {
                self.observers.see(Seen::Local { split, edge_us: answer.edge_us as f64 });
                Some(state)
            }
            Ok(Ok(Local::Overflow(o))) => {
                set_overflow(answer, o);
                None
            }
            Ok(Err(e)) => {
                answer.error = Some(format!("local compute failed: {e:#}"));
                None
            }
            Err(e) => {
                answer.error = Some(format!("local compute panicked: {e}"));
                None
            }
        }
    }

    /// Sends the state at K to the cloud; its answer, or the fallback's.
    async fn offload(&self, request: &mut Request, state: Continue) {
        let split = request.route.split;
        let encoding = self.wire_encoding(request.route);
        let req = self.infer_request(request, &state, encoding);
        let offloader = self.offloader.as_ref().expect("split < N has an offloader");
        let answer = &mut request.answer;
        answer.bytes_up = prost::Message::encoded_len(&req) as u64;
        answer.encoding = Some(codec::encoding_name(encoding));
        let sent = Instant::now();
        match offloader.offload(req, sent + request.deadline).await {
            // A peer's non-finite answer is not passed on either (a cloud of
            // another version may send one): the local fallback answers.
            Ok(done) if !finite_response(&done.response) => {
                answer.retries = done.retries;
                answer.reason = Some(Reason::Rejected);
                answer.error = Some(format!(
                    "{} answered a non-finite confidence ({}) or probability; not used",
                    offloader.endpoints()[done.endpoint].url,
                    done.response.confidence
                ));
                self.fallback(answer, split, state.values, &state.history).await;
            }
            Ok(done) => {
                let r = &done.response;
                self.observers.see(Seen::Cloud(CloudAnswer {
                    route: Route { split, encoding },
                    bytes_up: answer.bytes_up as f64,
                    took_us: sent.elapsed().as_micros() as f64,
                    response: r,
                    history: &state.history,
                    full_model: r.exit as usize + 1 == self.bundle().num_exits(),
                }));
                answer.endpoint = Some(offloader.endpoints()[done.endpoint].url.clone());
                set_cloud_answer(answer, done);
            }
            Err(e) => {
                self.observers.see(Seen::OffloadFailed(e.reason));
                answer.retries = e.retries;
                answer.reason = Some(e.reason);
                answer.error = Some(e.message);
                self.fallback(answer, split, state.values, &state.history).await;
            }
        }
    }

    /// The offload request for the state at K.
    fn infer_request(&self, request: &mut Request, state: &Continue, encoding: pb::Encoding) -> pb::InferRequest {
        let split = request.route.split;
        let mut hidden = codec::encode(&state.values, &state.shape, encoding);
        codec::compress(&mut hidden, self.compression_of(encoding));
        pb::InferRequest {
            request_id: request.answer.id,
            model_id: self.bundle().model_id().to_string(),
            model_fingerprint: self.cloud_fingerprints[split].clone(),
            split: split as u32,
            hidden: Some(hidden),
            history: Some(history_to_wire(&state.history)),
            want_probabilities: self.config.probabilities,
            edge_id: self.config.edge_id.clone(),
            policy: std::mem::take(&mut request.cloud_policy),
            // Set by the stream transport, which needs it.
            timeout_us: 0,
            cancel: false,
        }
    }

    /// The answer as it leaves: its latency, its class name, its metrics.
    fn finish(&self, request: Request) -> Answer {
        let mut a = request.answer;
        a.latency_us = request.started.elapsed().as_micros() as u64;
        a.class = a.prediction.and_then(|p| self.bundle().labels().get(p as usize).cloned());
        crate::metrics::record_answer(&a);
        a
    }

    /// A shadow request (see [`crate::adapt`]) for an input that exited at
    /// `exit` on the device: in the background, the edge blocks again with no
    /// exit (to reach the state at K, and the observations of every edge
    /// exit), then the cloud's final exit; its answer is feedback.
    fn send_shadow(&self, guard: crate::adapt::ShadowGuard, input: Vec<f32>, exit: usize, route: Route) {
        let Some(offloader) = self.offloader.clone() else { return };
        let split = route.split;
        if split >= self.bundle().num_blocks() {
            return;
        }
        let (exec, observers) = (self.exec.clone(), self.observers.clone());
        let num_exits = self.bundle().num_exits();
        let base = pb::InferRequest {
            request_id: u64::MAX - self.next_id.fetch_add(1, Ordering::Relaxed),
            model_id: self.bundle().model_id().to_string(),
            model_fingerprint: self.cloud_fingerprints[split].clone(),
            split: split as u32,
            want_probabilities: false,
            edge_id: self.config.edge_id.clone(),
            // The full model's answer: no cloud-side exit answers early.
            policy: self.cloud_exits[split]
                .iter()
                .map(|&e| pb::ExitRuleSpec { exit: e as u32, rule: "never".into(), threshold: 0.0, patience: 0 })
                .collect(),
            ..Default::default()
        };
        let encoding = self.wire_encoding(route);
        let compression = self.compression_of(encoding);
        let deadline = observers.controller.as_ref().map(|c| c.config.shadow_deadline).unwrap_or_default();
        tokio::spawn(async move {
            let _guard = guard;
            let local = tokio::task::spawn_blocking(move || -> Result<_, ModelError> {
                let x = exec.batch_of(0, &[&input])?;
                let out = exec.run(&x, 0..split, &Policy::never(num_exits), vec![vec![]])?;
                let history = out.histories.first().cloned().unwrap_or_default();
                let (values, shape) = out.hidden_row(0)?;
                Ok((values, shape, history))
            })
            .await;
            let Ok(Ok((values, shape, history))) = local else { return };
            if !codec::all_finite(&values) {
                return;
            }
            // Observations up to the exit that answered: the exits after it
            // did not decide this input.
            let history: Vec<Observation> = history.into_iter().filter(|o| o.exit <= exit).collect();
            let mut hidden = codec::encode(&values, &shape, encoding);
            codec::compress(&mut hidden, compression);
            let req = pb::InferRequest { hidden: Some(hidden), history: Some(history_to_wire(&history)), ..base };
            let bytes_up = prost::Message::encoded_len(&req) as f64;
            let sent = Instant::now();
            let outcome = match offloader.offload(req, sent + deadline).await {
                Ok(done) if done.response.exit as usize + 1 == num_exits => {
                    observers.see(Seen::Shadow(CloudAnswer {
                        route: Route { split, encoding },
                        bytes_up,
                        took_us: sent.elapsed().as_micros() as f64,
                        response: &done.response,
                        history: &history,
                        full_model: true,
                    }));
                    "answered"
                }
                Ok(_) => "not-final",
                Err(_) => "failed",
            };
            metrics::counter!("offramp_edge_shadow_requests_total", "outcome" => outcome).increment(1);
        });
    }

    async fn fallback(&self, answer: &mut Answer, split: usize, hidden: Vec<f32>, history: &[Observation]) {
        match self.config.fallback {
            FallbackMode::Fail => answer.tier = Tier::Error,
            FallbackMode::BestLocal => match history.last() {
                Some(o) => {
                    answer.tier = Tier::Fallback;
                    answer.prediction = Some(o.prediction as u32);
                    answer.exit = Some(o.exit as u32);
                    answer.confidence = o.confidence;
                }
                None => {
                    answer.tier = Tier::Error;
                    let e = answer.error.take().unwrap_or_default();
                    answer.error = Some(format!("{e}; no local exit to fall back to at split {split}"));
                }
            },
            FallbackMode::LocalFull => {
                let (exec, policy, history) = (self.exec.clone(), self.policy.clone(), history.to_vec());
                let n = self.bundle().num_blocks();
                let t = Instant::now();
                let r = tokio::task::spawn_blocking(move || -> Result<Option<Local>, ModelError> {
                    let x = exec.batch_of(split, &[&hidden])?;
                    let r = exec.run(&x, split..n, &policy, vec![history])?.exited.into_iter().next().flatten();
                    Ok(match r {
                        Some(r) if r.is_finite() => Some(Local::Exited(r)),
                        Some(_) => Some(Local::Overflow(exec.locate_overflow(&hidden, split..n)?)),
                        None => None,
                    })
                })
                .await;
                answer.edge_us += t.elapsed().as_micros() as u64;
                match r {
                    Ok(Ok(Some(Local::Exited(r)))) => {
                        let reason = answer.reason;
                        set_result(answer, &r, Tier::Fallback);
                        answer.reason = reason;
                    }
                    Ok(Ok(Some(Local::Overflow(o)))) => {
                        let offload = answer.error.take().unwrap_or_default();
                        set_overflow(answer, o);
                        answer.error = answer.error.take().map(|o| format!("{offload}; local-full: {o}"));
                    }
                    Ok(Ok(Some(Local::Continue(_))) | Ok(None)) => {
                        answer.error = Some("local-full: no exit answered".into())
                    }
                    Ok(Err(e)) => answer.error = Some(format!("local-full compute failed: {e:#}")),
                    Err(e) => answer.error = Some(format!("local-full compute panicked: {e}")),
                }
            }
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(task) = &self.planner_task {
            task.abort();
        }
    }
}

/// Whether this bundle can run the edge side of `split`, and with the
/// configured fallback.
fn check_split(config: &EdgeConfig, bundle: &Bundle, split: usize) -> Result<(), EdgeError> {
    bundle.check_split(split)?;
    let (n, held) = (bundle.num_blocks(), bundle.held());
    if !bundle.serves(SplitSide::Edge, split) {
        return Err(EdgeError::SplitNotHeld {
            model: bundle.model_id().to_string(),
            split,
            start: held.start,
            end: held.end,
        });
    }
    if config.fallback == FallbackMode::LocalFull && held != (0..n) {
        return Err(EdgeError::LocalFullNeedsWholeModel { blocks: n, start: held.start, end: held.end });
    }
    Ok(())
}

/// The exit policy (given, or the bundle's own) and where it came from,
/// checked against the bundle's exits.
fn edge_policy(config: &EdgeConfig, bundle: &Bundle) -> Result<(Policy, String), EdgeError> {
    let (policy, origin) = match &config.policy {
        Some(p) => (p.clone(), "given".to_string()),
        None => {
            let (p, path) = Policy::for_bundle(None, bundle).map_err(crate::config::ConfigError::from)?;
            (p, path.map(|p| p.display().to_string()).unwrap_or_else(|| "final exit only".into()))
        }
    };
    if policy.num_exits() != bundle.num_exits() {
        return Err(crate::config::ConfigError::Policy(offramp_common::policy::PolicyError::ExitOutOfRange {
            index: policy.num_exits().saturating_sub(1),
            num_exits: bundle.num_exits(),
        })
        .into());
    }
    Ok((policy, origin))
}

/// The offloader for the `candidates` splits below N (none when every
/// candidate runs the whole model here), handshaken with every reachable
/// endpoint.
async fn connect(
    config: &EdgeConfig,
    bundle: &Bundle,
    split: usize,
    candidates: &[usize],
    cloud_fingerprints: &[String],
) -> Result<Option<Arc<Offloader>>, EdgeError> {
    let offloaded: Vec<usize> = candidates.iter().copied().filter(|&k| k < bundle.num_blocks()).collect();
    if offloaded.is_empty() {
        return Ok(None);
    }
    if config.clouds.is_empty() {
        tracing::warn!(split, "no --cloud given: every offload will fall back");
    }
    if let Some(&k) = offloaded.iter().find(|&&k| cloud_fingerprints[k].is_empty()) {
        return Err(EdgeError::NoCloudFingerprint(k));
    }
    let connect = ConnectConfig { connect_timeout: config.connect_timeout, ..Default::default() };
    let mut endpoints = Vec::new();
    for url in &config.clouds {
        let transport = Transport::new(config.transport, url, &connect, &config.credentials)
            .map_err(|source| EdgeError::Endpoint { url: url.clone(), source })?;
        endpoints.push((url.clone(), transport));
    }
    let breaker = BreakerConfig {
        failure_threshold: config.breaker.failures,
        base_backoff: config.breaker.backoff,
        max_backoff: config.breaker.max_backoff,
        probe_timeout: (config.deadline * 2).max(Duration::from_millis(100)),
    };
    let expect = Expectation {
        model_id: bundle.model_id().to_string(),
        splits: offloaded
            .iter()
            .map(|&k| SplitExpectation {
                split: k,
                cloud_fingerprint: cloud_fingerprints[k].clone(),
                edge_fingerprint: bundle.fingerprint(SplitSide::Edge, k).unwrap_or_default(),
            })
            .collect(),
        encodings: match config.adaptive_split {
            Some(_) => vec![(pb::Encoding::F32, config.compression), (pb::Encoding::Int8, pb::Compression::Lz4)],
            None => vec![(config.encoding, config.compression)],
        },
    };
    let offloader = Offloader::new(endpoints, expect, breaker);
    let reachable = offloader.handshake_all(config.connect_timeout.max(Duration::from_millis(500))).await?;
    tracing::info!(reachable, endpoints = config.clouds.len(), "cloud handshake");
    Ok(Some(Arc::new(offloader)))
}

/// Profiles the device and starts the planner (`--adaptive-split`) with its
/// probe/plan task; the route moves to a profiled one if the configured one
/// is not.
async fn start_planner(
    config: &EdgeConfig,
    plan: crate::plan::PlanConfig,
    exec: &Executor,
    candidates: &[usize],
    route: &Arc<RwLock<Route>>,
    offloader: &Option<Arc<Offloader>>,
) -> Result<(Arc<Mutex<Planner>>, tokio::task::AbortHandle), EdgeError> {
    let (e, c, cand) = (exec.clone(), config.compression, candidates.to_vec());
    let profile = tokio::task::spawn_blocking(move || profile_device(&e, &cand, c))
        .await
        .map_err(|e| EdgeError::Profile(e.to_string()))??;
    let mut start = *route.read().expect("route lock");
    if !profile.routes.iter().any(|(r, _)| *r == start) {
        let split = start.split;
        start = profile.routes.iter().find(|(r, _)| r.split == split).map_or(profile.routes[0].0, |r| r.0);
        *route.write().expect("route lock") = start;
    }
    tracing::info!(
        routes = profile.routes.len(), block_us = ?profile.block_us, objective = ?plan.objective,
        "adaptive split on"
    );
    let planner = Arc::new(Mutex::new(Planner::new(plan, profile, start)));
    let task = tokio::spawn(plan_loop(planner.clone(), offloader.clone(), route.clone(), config.deadline));
    Ok((planner, task.abort_handle()))
}

/// Measures this device for the planner: each block's compute at batch 1
/// (median of 9 runs after a warm-up, on a seeded input: random pixels, or
/// 32 token ids), and the request size at each candidate split in each
/// encoding the planner may pick (f32 with `compression`, int8 + LZ4).
fn profile_device(exec: &Executor, candidates: &[usize], compression: pb::Compression) -> Result<Profile, ModelError> {
    let bundle = exec.bundle();
    let n = bundle.num_blocks();
    let deepest = candidates.iter().copied().max().unwrap_or(0);
    let mut rng = offramp_common::rng::SplitMix64::new(0x5eed);
    let input: Vec<f32> = match bundle.vocab_size() {
        Some(vocab) if bundle.takes_tokens() => {
            let tokens = bundle.shape_at(0)?[0].min(32);
            (0..tokens).map(|_| (1 + rng.next_u64() as usize % (vocab - 1).max(1)) as f32).collect()
        }
        _ => {
            let len: usize = bundle.shape_at(0)?.iter().product();
            (0..len).map(|_| rng.next_f32()).collect()
        }
    };
    let never = Policy::never(bundle.num_exits());
    let mut states = vec![(input.clone(), bundle.shape_at(0)?.to_vec())];
    let mut block_us = Vec::with_capacity(deepest);
    for b in 0..deepest.min(n) {
        let (values, _) = &states[b];
        let x = exec.batch_of(b, &[values])?;
        let mut times = Vec::with_capacity(9);
        let mut out = exec.run(x.clone(), b..b + 1, &never, vec![vec![]])?;
        for _ in 0..9 {
            let t = Instant::now();
            out = exec.run(x.clone(), b..b + 1, &never, vec![vec![]])?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(f64::total_cmp);
        block_us.push(times[times.len() / 2]);
        states.push(out.hidden_row(0)?);
    }
    let mut routes = Vec::new();
    for &k in candidates {
        if k >= n {
            routes.push((Route { split: k, encoding: pb::Encoding::F32 }, 0.0));
            continue;
        }
        let (values, shape) = &states[k];
        let encodings: &[(pb::Encoding, pb::Compression)] = if k == 0 && bundle.takes_tokens() {
            &[(pb::Encoding::F32, pb::Compression::None)]
        } else {
            &[(pb::Encoding::F32, compression), (pb::Encoding::Int8, pb::Compression::Lz4)]
        };
        for &(encoding, c) in encodings {
            let mut hidden = codec::encode(values, shape, encoding);
            codec::compress(&mut hidden, c);
            // The rest of a request: ids, fingerprint, history, rules.
            let bytes = prost::Message::encoded_len(&hidden) + bundle.model_id().len() + 96;
            routes.push((Route { split: k, encoding }, bytes as f64));
        }
    }
    let exits_after = bundle.manifest().exits.iter().map(|e| e.after_block).collect();
    Ok(Profile { block_us, routes, exits_after, num_blocks: n })
}

/// The planner's background work: probe the round trip every
/// `ping_every`, re-plan every `plan_every`, publish the route and the
/// estimates (metrics, and a log event when the route changes).
async fn plan_loop(
    planner: Arc<Mutex<Planner>>,
    offloader: Option<Arc<Offloader>>,
    route: Arc<RwLock<Route>>,
    probe_timeout: Duration,
) {
    let config = planner.lock().expect("planner lock").config;
    let probe = async {
        let Some(offloader) = offloader else { return };
        let mut tick = tokio::time::interval(config.ping_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some((took, bytes)) = offloader.ping(probe_timeout).await {
                planner.lock().expect("planner lock").observe_ping(took.as_secs_f64() * 1e6, bytes as f64);
            }
        }
    };
    let plan = async {
        let mut tick = tokio::time::interval(config.plan_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let plan = planner.lock().expect("planner lock").plan();
            *route.write().expect("route lock") = plan.route;
            crate::metrics::record_plan(&plan);
        }
    };
    tokio::join!(probe, plan);
}

enum Local {
    Exited(ExitResult),
    Continue(Continue),
    /// The input overflowed the network: no finite answer.
    Overflow(Overflow),
}

/// An input that no edge exit answered: the state at K and the exits'
/// observations, for the cloud.
struct Continue {
    values: Vec<f32>,
    /// Shape of `values` (for a token sequence, its real tokens).
    shape: Vec<usize>,
    history: Vec<Observation>,
}

/// Blocks `0..split` on one input. Neither a non-finite answer, nor a
/// non-finite exit observation (sent as history) or hidden state (sent as
/// the payload), leaves the device: the result names where the input
/// overflowed.
fn local_blocks(exec: &Executor, input: &[f32], split: usize, policy: &Policy) -> Result<Local, ModelError> {
    let x = exec.batch_of(0, &[input])?;
    let out = exec.run(&x, 0..split, policy, vec![vec![]])?;
    let history = out.histories.first().cloned().unwrap_or_default();
    Ok(match out.exited.first().cloned().flatten() {
        Some(r) if r.is_finite() => Local::Exited(r),
        Some(_) => Local::Overflow(exec.locate_overflow(input, 0..split)?),
        None => {
            // For a token sequence: its real tokens only.
            let (values, shape) = out.hidden_row(0)?;
            if history.iter().all(|o| o.confidence.is_finite()) && codec::all_finite(&values) {
                Local::Continue(Continue { values, shape, history })
            } else {
                Local::Overflow(exec.locate_overflow(input, 0..split)?)
            }
        }
    })
}

/// The cloud's answer into `a`.
fn set_cloud_answer(a: &mut Answer, done: crate::offload::Offloaded) {
    let r = done.response;
    a.tier = Tier::Cloud;
    a.prediction = Some(r.prediction);
    a.exit = Some(r.exit);
    a.confidence = r.confidence;
    a.probabilities = r.probabilities;
    a.cloud_queue_us = r.queue_us;
    a.cloud_compute_us = r.compute_us;
    a.bytes_down = done.bytes_down;
    a.retries = done.retries;
}

/// The max-prob thresholds of the first `edge_exits` exits of `policy`
/// (empty when any of them uses another rule).
fn edge_thresholds(policy: &Policy, edge_exits: usize) -> Vec<f32> {
    policy.rules()[..edge_exits.min(policy.num_exits())]
        .iter()
        .map(|r| match r {
            offramp_common::policy::Rule::MaxProb { threshold } => Some(*threshold),
            _ => None,
        })
        .collect::<Option<Vec<f32>>>()
        .unwrap_or_default()
}

/// An error answer for an input that overflowed the network.
fn set_overflow(a: &mut Answer, o: Overflow) {
    a.tier = Tier::Error;
    a.error = Some(o.to_string());
    a.overflow = Some(o);
}

/// Whether a cloud's answer is finite (confidence and probabilities).
fn finite_response(r: &pb::InferResponse) -> bool {
    r.confidence.is_finite() && r.probabilities.iter().all(|p| p.is_finite())
}

fn set_result(a: &mut Answer, r: &ExitResult, tier: Tier) {
    a.tier = tier;
    a.prediction = Some(r.prediction as u32);
    a.exit = Some(r.exit as u32);
    a.confidence = r.confidence;
}

/// Seeded tiny models for the crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use offramp_common::model::arch::{init_weights, Arch};
    use offramp_common::Bundle;

    /// The tiny 3-exit network (blocks conv1, conv2, flatten, fc1; exits
    /// early, middle, final after blocks 0, 2 and 3), seeded, with every
    /// weight of the tensors named in `huge` set to 1e38 (an ordinary input
    /// then overflows there).
    pub fn tiny(huge: &[&str]) -> Bundle {
        let m = Arch::Tiny.manifest("tiny");
        let mut w = init_weights(&m, 3).unwrap();
        for name in huge {
            let t = w[*name].affine(0.0, 1e38).unwrap();
            w.insert(name.to_string(), t);
        }
        Bundle::from_parts(m, w).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::tiny;
    use super::*;

    async fn edge(bundle: Bundle, split: usize, fallback: FallbackMode) -> Edge {
        let mut config = EdgeConfig::new(bundle, Some(split), vec![]);
        config.fallback = fallback;
        Edge::start(config).await.unwrap()
    }

    #[tokio::test]
    async fn local_answers_that_overflow_are_errors_naming_the_block() {
        // fc1 (block 3) with huge weights: an ordinary input overflows there.
        let e = edge(tiny(&["blocks.3.weight"]), 4, FallbackMode::BestLocal).await;
        let a = e.classify(None, vec![0.5; 784]).await;
        assert_eq!(a.tier, Tier::Error, "{a:?}");
        assert_eq!(a.overflow, Some(Overflow::Block { block: 3, name: "fc1".into() }));
        assert!(a.error.as_deref().unwrap().contains("overflowed the network at block 3 (fc1)"), "{a:?}");
        assert!(a.confidence.is_finite() && a.probabilities.is_empty());
        // The same model without the scaling answers.
        let e = edge(tiny(&[]), 4, FallbackMode::BestLocal).await;
        let a = e.classify(None, vec![0.5; 784]).await;
        assert_eq!(a.tier, Tier::Edge, "{a:?}");
        assert!(a.overflow.is_none() && a.confidence.is_finite());
    }

    #[tokio::test]
    async fn an_edge_exit_that_overflows_is_not_offloaded_as_history() {
        // The middle exit's head (exit 1, before split 3) overflows: its
        // observation would be sent as an impossible history.
        let e = edge(tiny(&["exits.1.0.weight"]), 3, FallbackMode::BestLocal).await;
        let a = e.classify(None, vec![0.5; 784]).await;
        assert_eq!(a.tier, Tier::Error, "{a:?}");
        assert_eq!(a.overflow, Some(Overflow::Exit { exit: 1, name: "middle".into(), after_block: 2 }));
        assert_eq!(a.bytes_up, 0, "nothing was offloaded");
    }

    #[tokio::test]
    async fn fallbacks_never_answer_non_finite() {
        let bundle = || tiny(&["blocks.3.weight"]);
        // No cloud: local-full finishes the network on the device, where fc1 overflows.
        let e = edge(bundle(), 3, FallbackMode::LocalFull).await;
        let a = e.classify(None, vec![0.5; 784]).await;
        assert_eq!(a.tier, Tier::Error, "{a:?}");
        assert_eq!(a.reason, Some(Reason::NoCloud));
        assert!(matches!(a.overflow, Some(Overflow::Block { block: 3, .. })), "{a:?}");
        let msg = a.error.unwrap();
        assert!(msg.contains("no cloud") && msg.contains("local-full: the input overflowed"), "{msg}");
        // Best-local answers from the deepest edge exit, which is finite.
        let e = edge(bundle(), 3, FallbackMode::BestLocal).await;
        let a = e.classify(None, vec![0.5; 784]).await;
        assert_eq!(a.tier, Tier::Fallback, "{a:?}");
        assert!(a.confidence.is_finite() && (0.0..=1.0).contains(&a.confidence));
        assert_eq!(a.exit, Some(1));
    }

    #[test]
    fn the_observer_hook_tells_the_controller_what_happened_and_nothing_without_one() {
        let response = pb::InferResponse { prediction: 1, exit: 2, ..Default::default() };
        let cloud = |full_model| CloudAnswer {
            route: Route { split: 3, encoding: pb::Encoding::F32 },
            bytes_up: 100.0,
            took_us: 1000.0,
            response: &response,
            history: &[],
            full_model,
        };
        // Neither runs: every event is a no-op.
        let none = Observers::default();
        assert!(!none.shadows() && none.take_shadow().is_none());
        for seen in [
            Seen::EdgeExit(0),
            Seen::Local { split: 3, edge_us: 10.0 },
            Seen::Cloud(cloud(true)),
            Seen::OffloadFailed(Reason::Timeout),
            Seen::Shadow(cloud(true)),
        ] {
            none.see(seen);
        }
        // The controller freezes when the link fails, not when the input
        // was refused, and thaws with the next cloud answer.
        let policy = Policy::never(3);
        let controller = Arc::new(Controller::new(crate::adapt::BudgetConfig::new(0.01), &policy, 2));
        let o = Observers { planner: None, controller: Some(controller.clone()) };
        assert!(o.shadows());
        o.see(Seen::OffloadFailed(Reason::Rejected));
        assert!(!controller.snapshot().frozen);
        o.see(Seen::OffloadFailed(Reason::Unavailable));
        assert!(controller.snapshot().frozen);
        o.see(Seen::Cloud(cloud(false)));
        assert!(!controller.snapshot().frozen);
    }

    #[test]
    fn cloud_answers_are_checked_for_finiteness() {
        let mut r = pb::InferResponse { confidence: 0.7, probabilities: vec![0.7, 0.3], ..Default::default() };
        assert!(finite_response(&r));
        r.probabilities[1] = f32::NAN;
        assert!(!finite_response(&r));
        r.probabilities.clear();
        r.confidence = f32::NEG_INFINITY;
        assert!(!finite_response(&r));
    }
}
