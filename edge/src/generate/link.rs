//! A generation's link to the cloud, as a state machine over the edge's
//! one link layer ([`crate::link`]):
//!
//! ```text
//!            ensure: a session opens            a step fails / the session breaks
//!   Idle ─────────────────────────────▶ Live ───────────────────────────────────▶ Backoff
//!     ▲                                  ▲                                          │
//!     │                                  └──────── retry due, a session opens ──────┘
//!     └ (start)            every endpoint refused for good (fingerprint, model,
//!                          credentials): Refused, never retried, said once
//! ```
//!
//! Retry timing is the link's own (`--retry-every`, the `Backoff` state), not
//! the endpoints' circuit breakers: a session is one long stream, not a
//! request per token, so there is nothing for a breaker to spare; the
//! breaker flags are a classifier's and are refused for a decoder.
//!
//! `Live` knows how many positions the session's cache holds (`synced`):
//! after a reconnect, [`CloudLink::sync`] replays what the new session
//! lacks before the step that asks for a token, so the session continues
//! exactly where it was.

use std::sync::Arc;
use std::time::{Duration, Instant};

use offramp_common::codec;
use offramp_common::decoder::logits::{LogitBias, TokenMask};
use offramp_common::decoder::sample::Truncation;
use offramp_proto as pb;
use tokio::sync::oneshot;

use crate::link::handshake::{CloudOffer, SessionSpec};
use crate::link::session::{CloudSession, StepReply};
use crate::link::{Endpoints, LinkError};

/// Where a generation's link stands.
pub(crate) enum LinkState {
    /// No session opened yet.
    Idle,
    /// A session whose cache holds positions `0..synced`.
    Live { session: CloudSession, synced: usize },
    /// The last session or attempt failed; the next try is due at `until`.
    Backoff { until: Instant, cause: LinkError },
    /// Every endpoint refused this edge for good; nothing is retried.
    Refused { cause: LinkError },
}

/// What the last step of a sync asks of the cloud.
pub(crate) struct Ask {
    pub want: pb::Want,
    pub temperature: f32,
    pub uniform: f32,
    pub truncation: Truncation,
    pub bias: LogitBias,
    /// The tokens the cloud may choose (a token step; verify steps carry
    /// one per draft).
    pub mask: Option<TokenMask>,
    /// Report log-probabilities with this many alternatives.
    pub logprobs: Option<usize>,
    pub drafts: Vec<pb::Draft>,
    pub speculative: bool,
}

impl Ask {
    /// A step that only fills the cloud's cache.
    pub fn none() -> Self {
        Self {
            want: pb::Want::None,
            temperature: 0.0,
            uniform: 0.0,
            truncation: Truncation::default(),
            bias: LogitBias::default(),
            mask: None,
            logprobs: None,
            drafts: Vec::new(),
            speculative: false,
        }
    }

    /// The first thing this ask needs that `offer` lacks (an older cloud
    /// would ignore it and choose from another distribution).
    fn unmet(&self, offer: &CloudOffer) -> Option<&'static str> {
        let masked = self.mask.is_some() || self.drafts.iter().any(|d| d.mask.is_some());
        [
            (!self.truncation.is_off() && !offer.truncated_sampling, "top_k / top_p / min_p"),
            (masked && !offer.token_masks, "constrained decoding (response_format, tools)"),
            (!self.bias.is_empty() && !offer.logit_bias, "logit_bias"),
            (self.logprobs.is_some() && !offer.logprobs, "logprobs"),
        ]
        .into_iter()
        .find_map(|(missing, what)| missing.then_some(what))
    }

    /// The wire step for positions from `position` with `hidden`.
    fn into_step(self, request_id: u64, position: u32, hidden: pb::Tensor) -> pb::DecodeStep {
        let mut step = pb::DecodeStep {
            request_id,
            position,
            hidden: Some(hidden),
            want: self.want as i32,
            temperature: self.temperature,
            uniform: self.uniform,
            drafts: self.drafts,
            speculative: self.speculative,
            top_k: self.truncation.top_k,
            top_p: self.truncation.top_p,
            min_p: self.truncation.min_p,
            mask: self.mask.as_ref().map(TokenMask::to_pb),
            logprobs: self.logprobs.is_some(),
            top_logprobs: self.logprobs.unwrap_or(0) as u32,
            ..Default::default()
        };
        self.bias.write(&mut step);
        step
    }
}

/// Which positions a sync sends: the states the cloud lacks up to `pos`,
/// the last `tail` of them as the asking step, of which the last `fresh`
/// were never sent before (the rest count as replayed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncRange {
    pub pos: usize,
    pub tail: usize,
    pub fresh: usize,
}

/// Timing of the link: how long a session may take to open, how long after
/// a failure the cloud is tried again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkTiming {
    pub open_timeout: Duration,
    pub retry_every: Duration,
}

/// One generation's link to its cloud sessions.
pub(crate) struct CloudLink {
    endpoints: Arc<Endpoints>,
    spec: SessionSpec,
    hidden: usize,
    timing: LinkTiming,
    pub(crate) state: LinkState,
    /// Endpoint to try first next time.
    next_endpoint: usize,
    request_id: u64,
    pub opened: usize,
    pub replayed: usize,
    /// Response bytes of sessions already dropped.
    bytes_down_done: u64,
}

impl CloudLink {
    pub fn new(endpoints: Arc<Endpoints>, spec: SessionSpec, hidden: usize, timing: LinkTiming) -> Self {
        let state = match endpoints.all_refused() {
            Some(e) => LinkState::Refused { cause: e.clone().into() },
            None => LinkState::Idle,
        };
        Self {
            endpoints,
            spec,
            hidden,
            timing,
            state,
            next_endpoint: 0,
            request_id: 0,
            opened: 0,
            replayed: 0,
            bytes_down_done: 0,
        }
    }

    /// Whether the cloud may be asked now: a live session, or a try due.
    pub fn due(&self) -> bool {
        match &self.state {
            LinkState::Idle | LinkState::Live { .. } => true,
            LinkState::Backoff { until, .. } => Instant::now() >= *until,
            LinkState::Refused { .. } => false,
        }
    }

    /// Why the cloud is away, when it is.
    pub fn cause(&self) -> Option<&LinkError> {
        match &self.state {
            LinkState::Backoff { cause, .. } | LinkState::Refused { cause } => Some(cause),
            _ => None,
        }
    }

    /// Most positions one step may carry on the live session.
    pub fn max_rows(&self) -> Option<usize> {
        self.session().map(|s| s.offer.max_rows)
    }

    pub fn bytes_down(&self) -> u64 {
        self.bytes_down_done + self.session().map_or(0, CloudSession::bytes_down)
    }

    pub fn endpoint(&self) -> Option<String> {
        self.session().map(|s| s.endpoint.clone())
    }

    /// Positions the live session's cache holds.
    #[cfg(test)]
    pub fn synced(&self) -> usize {
        match &self.state {
            LinkState::Live { synced, .. } => *synced,
            _ => 0,
        }
    }

    /// Both sides rolled back to `keep` positions.
    pub fn truncate(&mut self, keep: usize) {
        if let LinkState::Live { synced, .. } = &mut self.state {
            *synced = (*synced).min(keep);
        }
    }

    fn session(&self) -> Option<&CloudSession> {
        match &self.state {
            LinkState::Live { session, .. } => Some(session),
            _ => None,
        }
    }

    /// The live session is gone (or a try failed): back off, or stop for
    /// good when no endpoint is left that could ever serve this edge.
    pub fn lost(&mut self, cause: LinkError) {
        let was = std::mem::replace(&mut self.state, LinkState::Idle);
        if let LinkState::Live { session, .. } = was {
            tracing::warn!(endpoint = %session.endpoint, reason = %cause, "cloud session lost; the edge answers until it is back");
            self.bytes_down_done += session.bytes_down();
            self.next_endpoint = (self.next_endpoint + 1) % self.endpoints.len().max(1);
        }
        self.state = match self.endpoints.all_refused() {
            Some(e) => LinkState::Refused { cause: e.clone().into() },
            None => LinkState::Backoff { until: Instant::now() + self.timing.retry_every, cause },
        };
    }

    /// A live session, opening one (and replaying nothing yet) if due.
    pub async fn ensure(&mut self) -> Result<(), LinkError> {
        if let Some(broken) = self.session().and_then(CloudSession::broken) {
            self.lost(broken);
            if let LinkState::Backoff { until, .. } = &mut self.state {
                *until = Instant::now(); // a broken session is replaced at once
            }
        }
        match &self.state {
            LinkState::Live { .. } => return Ok(()),
            LinkState::Refused { cause } => return Err(cause.clone()),
            LinkState::Backoff { cause, .. } if !self.due() => return Err(cause.clone()),
            LinkState::Idle | LinkState::Backoff { .. } => {}
        }
        if self.endpoints.is_empty() {
            return Err(LinkError::NoCloud);
        }
        let mut last = None;
        for i in 0..self.endpoints.len() {
            let idx = (self.next_endpoint + i) % self.endpoints.len();
            let ep = self.endpoints.get(idx);
            if ep.refusal().is_some() {
                continue;
            }
            match CloudSession::open(ep, &self.spec, self.timing.open_timeout).await {
                Ok(session) => {
                    if self.opened > 0 {
                        tracing::info!(endpoint = %ep.url, "cloud session reopened; replaying the layer-K states");
                    }
                    self.state = LinkState::Live { session, synced: 0 };
                    self.next_endpoint = idx;
                    self.opened += 1;
                    return Ok(());
                }
                Err(LinkError::Incompatible(e)) => {
                    if ep.refuse(e.clone()) {
                        tracing::error!(endpoint = %ep.url, error = %e, "cloud refused for good; not trying it again");
                    }
                    last = Some(e.into());
                }
                Err(e) => {
                    tracing::debug!(endpoint = %ep.url, error = %e, "no cloud session");
                    last = Some(e);
                }
            }
        }
        let cause =
            last.or_else(|| self.endpoints.all_refused().cloned().map(Into::into)).unwrap_or(LinkError::NoCloud);
        self.lost(cause.clone());
        Err(self.cause().cloned().unwrap_or(cause))
    }

    /// Sends the states the cloud lacks up to `range.pos`: a replay after a
    /// reconnect (or the prompt) as steps that want nothing, then the last
    /// `range.tail` positions, whose last chunk carries `ask` (a verify
    /// step's tail fits one chunk). The bytes sent and, when `ask` wants an
    /// answer, its receiver.
    pub async fn sync(
        &mut self,
        states: &[f32],
        range: SyncRange,
        ask: Ask,
    ) -> Result<(u64, Option<oneshot::Receiver<StepReply>>), LinkError> {
        self.ensure().await?;
        let SyncRange { pos, tail, fresh } = range;
        let (hidden, encoding) = (self.hidden, self.spec.encoding);
        let LinkState::Live { session, synced } = &mut self.state else { unreachable!("ensured") };
        if let Some(what) = ask.unmet(&session.offer) {
            // An older cloud would ignore it and choose from another
            // distribution: refused here, not silently changed.
            return Err(LinkError::Refused {
                endpoint: session.endpoint.clone(),
                code: tonic::Code::FailedPrecondition,
                message: format!("this cloud does not apply {what} (it predates them)"),
            });
        }
        let max_rows = session.offer.max_rows;
        let mut sent = 0u64;
        let mut reply = None;
        let mut start = *synced;
        self.replayed += (pos - *synced).saturating_sub(fresh);
        let tail_start = pos.saturating_sub(tail).max(*synced);
        let mut ask = Some(ask);
        let mut failed = None;
        while start < pos {
            let bound = if start < tail_start { tail_start } else { pos };
            let end = (start + max_rows).min(bound);
            let last = end == pos;
            let tensor = codec::encode(&states[start * hidden..end * hidden], &[end - start, hidden], encoding);
            self.request_id += 1;
            let a = if last { ask.take().expect("one last chunk") } else { Ask::none() };
            let step = a.into_step(self.request_id, start as u32, tensor);
            match session.send(step) {
                Ok((size, rx)) => {
                    sent += size as u64;
                    if last {
                        reply = rx;
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            start = end;
        }
        if let Some(e) = failed {
            self.lost(e.clone());
            return Err(e);
        }
        *synced = pos;
        Ok((sent, reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerConfig;
    use crate::link::HandshakeError;
    use crate::transport::{ConnectConfig, Credentials, Transport};

    fn spec() -> SessionSpec {
        SessionSpec {
            model_id: "m".into(),
            split: 1,
            cloud_fingerprint: "f".into(),
            max_positions: 8,
            encoding: pb::Encoding::F32,
            edge_id: "edge".into(),
        }
    }

    fn endpoints(urls: &[&str]) -> Arc<Endpoints> {
        let (c, creds) = (ConnectConfig::default(), Credentials::default());
        let eps = urls.iter().map(|u| (u.to_string(), Transport::grpc(u, &c, &creds).unwrap())).collect();
        Arc::new(Endpoints::new(eps, BreakerConfig::default()))
    }

    fn timing(retry: Duration) -> LinkTiming {
        LinkTiming { open_timeout: Duration::from_millis(200), retry_every: retry }
    }

    #[tokio::test]
    async fn an_unreachable_cloud_backs_off_then_is_due_again() {
        // Nothing listens on port 1: the try fails fast and heals later.
        let mut link = CloudLink::new(endpoints(&["http://127.0.0.1:1"]), spec(), 4, timing(Duration::from_millis(50)));
        assert!(matches!(link.state, LinkState::Idle) && link.due());
        let e = link.ensure().await.unwrap_err();
        assert!(e.heals(), "{e}");
        assert!(matches!(link.state, LinkState::Backoff { .. }));
        assert!(!link.due(), "backing off");
        let again = link.ensure().await.unwrap_err();
        assert_eq!(again, e, "within the backoff the cause is repeated, nothing dialled");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(link.due());
        let s = link.sync(
            &[0.0; 8],
            SyncRange { pos: 2, tail: 1, fresh: 1 },
            Ask { want: pb::Want::Argmax, ..Ask::none() },
        );
        assert!(s.await.is_err());
        assert_eq!((link.synced(), link.opened), (0, 0));
    }

    #[tokio::test]
    async fn refusals_for_good_stop_the_link() {
        let eps = endpoints(&["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        eps.get(0).refuse(HandshakeError::Incompatible("fingerprint mismatch at split 1".into()));
        let mut link = CloudLink::new(eps.clone(), spec(), 4, timing(Duration::ZERO));
        assert!(matches!(link.state, LinkState::Idle), "one endpoint is left");
        eps.get(1).refuse(HandshakeError::Incompatible("holds another model".into()));
        let e = link.ensure().await.unwrap_err();
        assert!(!e.heals());
        assert!(matches!(link.state, LinkState::Refused { .. }));
        assert!(!link.due(), "never due again, whatever the retry period");
        let fresh = CloudLink::new(eps, spec(), 4, timing(Duration::ZERO));
        assert!(matches!(fresh.state, LinkState::Refused { .. }), "later generations start refused");
    }

    #[test]
    fn truncate_only_lowers_what_a_live_session_holds() {
        let mut link = CloudLink::new(endpoints(&[]), spec(), 4, timing(Duration::ZERO));
        link.truncate(3);
        assert_eq!(link.synced(), 0);
        assert!(matches!(link.state, LinkState::Idle));
    }
}
