//! The compute queue: requests from every edge for the same model, split point
//! and policy are batched on dedicated compute threads (never on tokio
//! workers). A cloneable handle over a channel; a semaphore bounds queued work
//! (a failed acquire is an overload error at once, not a wait); entries whose
//! caller went away are dropped before compute.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use offramp_common::model::ExitResult;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::config::BatchConfig;
use crate::error::CloudError;
use crate::models::{ModelSlot, ValidRequest};

/// What compute returns for one request.
#[derive(Debug, Clone)]
pub struct Computed {
    pub result: ExitResult,
    pub queue_us: u64,
    pub compute_us: u64,
    pub batch_size: usize,
}

struct Job {
    req: ValidRequest,
    enqueued: Instant,
    /// Past it the caller has stopped waiting: answered `DeadlineExceeded`
    /// without compute (with the timeout it was given, µs).
    deadline: Option<(Instant, u64)>,
    reply: oneshot::Sender<Result<Computed, CloudError>>,
    /// The request's span, so what happens on the compute thread is logged
    /// with its request id.
    span: tracing::Span,
    _permit: OwnedSemaphorePermit,
}

impl Job {
    fn compatible(&self, other: &Job) -> bool {
        Arc::ptr_eq(&self.req.model, &other.req.model)
            && self.req.split == other.req.split
            && (Arc::ptr_eq(&self.req.policy, &other.req.policy) || self.req.policy == other.req.policy)
    }
}

/// Handle to the compute threads. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    config: BatchConfig,
}

impl Batcher {
    /// Starts `config.workers` compute threads (the config is validated:
    /// every count is at least 1).
    pub fn start(config: BatchConfig) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..config.workers {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("offramp-compute-{i}")).spawn(move || worker(rx, config))?;
        }
        Ok(Self { tx, permits: Arc::new(Semaphore::new(config.max_queue)), config })
    }

    /// Requests queued or running now.
    pub fn in_flight(&self) -> usize {
        self.config.max_queue - self.permits.available_permits()
    }

    /// Queues a validated request and waits for its answer. Fails at once with
    /// `Overloaded` when the queue is full. `deadline`: when the caller stops
    /// waiting, and the timeout that makes it (µs), for its error.
    pub async fn submit(&self, req: ValidRequest, deadline: Option<(Instant, u64)>) -> Result<Computed, CloudError> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| CloudError::Overloaded(self.in_flight()))?;
        let (reply, rx) = oneshot::channel();
        let job =
            Job { req, enqueued: Instant::now(), deadline, reply, span: tracing::Span::current(), _permit: permit };
        self.tx.send(job).map_err(|_| CloudError::Unavailable("shutting down"))?;
        rx.await.map_err(|_| CloudError::Unavailable("shutting down"))?
    }
}

fn worker(rx: Arc<Mutex<mpsc::Receiver<Job>>>, config: BatchConfig) {
    let mut carry: Option<Job> = None;
    loop {
        let mut batch = Vec::with_capacity(config.max_batch);
        {
            let Ok(rx) = rx.lock() else { return };
            let first = match carry.take() {
                Some(j) => j,
                None => match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            batch.push(first);
            let deadline = Instant::now() + config.batch_wait;
            while batch.len() < config.max_batch {
                let next = match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => rx.recv_timeout(left),
                    _ => rx.try_recv().map_err(|e| match e {
                        mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                        mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                    }),
                };
                match next {
                    Ok(j) if batch[0].compatible(&j) => batch.push(j),
                    Ok(j) => {
                        carry = Some(j);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        // Callers that went away (client gone, request withdrawn) are dropped
        // before compute, and those whose deadline passed are told so
        // without it: nobody waits for their answers.
        batch.retain(|j| !j.reply.is_closed());
        let now = Instant::now();
        let late = |j: &Job| j.deadline.is_some_and(|(at, _)| at <= now);
        if batch.iter().any(late) {
            let (gone, kept): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(late);
            for j in gone {
                let us = j.deadline.map_or(0, |(_, us)| us);
                let _ = j.reply.send(Err(CloudError::DeadlineExceeded(us)));
            }
            batch = kept;
        }
        if !batch.is_empty() {
            compute(batch);
        }
    }
}

/// The error for a request whose answer was not finite, naming where its
/// hidden state overflowed (found by running it again alone, blocks
/// `[split, N)`: only on this path, so healthy requests pay nothing).
fn overflow(model: &ModelSlot, split: usize, input: &[f32]) -> CloudError {
    let n = model.bundle.num_blocks();
    match model.exec.locate_overflow(input, split..n) {
        Ok(overflow) => {
            tracing::debug!(%overflow, split, "answer not finite: the hidden state overflowed");
            CloudError::Overflow { model: model.id.clone(), split, overflow }
        }
        Err(e) => {
            tracing::error!(error = %e, "answer not finite, and locating the overflow failed");
            CloudError::Internal(format!("the answer is not finite, and locating where failed: {e}"))
        }
    }
}

fn compute(batch: Vec<Job>) {
    let started = Instant::now();
    let size = batch.len();
    metrics::histogram!("offramp_cloud_batch_size").record(size as f64);
    let first = &batch[0].req;
    let (model, split, policy) = (first.model.clone(), first.split, first.policy.clone());
    let n = model.bundle.num_blocks();
    // Token sequences of different lengths are padded to the longest and
    // masked; fixed-shape states are stacked.
    let rows: Vec<&[f32]> = batch.iter().map(|j| j.req.input.as_slice()).collect();
    let histories = batch.iter().map(|j| j.req.history.clone()).collect();
    let result = model.exec.batch_of(split, &rows).and_then(|x| model.exec.run(x, split..n, &policy, histories));
    let compute_us = started.elapsed().as_micros() as u64;
    match result {
        Ok(out) => {
            for (j, answer) in batch.into_iter().zip(out.exited) {
                let queue_us = started.duration_since(j.enqueued).as_micros() as u64;
                let reply = match answer {
                    Some(result) if result.is_finite() => {
                        Ok(Computed { result, queue_us, compute_us, batch_size: size })
                    }
                    // A finite hidden state too large for the weights: the
                    // answer came out NaN. Never sent; the error names the
                    // block where it overflowed.
                    Some(_) => {
                        let _entered = j.span.enter();
                        Err(overflow(&model, split, &j.req.input))
                    }
                    None => {
                        let _entered = j.span.enter();
                        tracing::error!("no exit answered (the final exit always answers)");
                        Err(CloudError::Internal("no exit answered (the final exit always answers)".into()))
                    }
                };
                let _ = j.reply.send(reply);
            }
        }
        Err(e) => {
            for j in batch {
                let _entered = j.span.enter();
                tracing::error!(error = %e, batch = size, "batch compute failed");
                let _ = j.reply.send(Err(CloudError::Internal(e.to_string())));
            }
        }
    }
}
