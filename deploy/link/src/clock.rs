//! Sub-millisecond wake-ups for the link's scheduler.
//!
//! tokio's timer wheel has a 1 ms tick and rounds every deadline up to the next
//! tick, so a task sleeping until `t` wakes somewhere in `[t, t + ~1 ms]`. Every
//! packet crossing the emulated link would pick up that error once per
//! direction, which is a 2% error on a 50 ms RTT. The link therefore sleeps in
//! two stages: a coarse tokio sleep until shortly before the deadline (no
//! thread is busy meanwhile), then a hand-off to one process-wide timer thread
//! that waits on a condition variable with a precise timeout (futex, ~50 µs
//! slack on Linux) and completes a oneshot. Deadlines are absolute instants
//! computed from the link's virtual clock, so wake-up errors never accumulate.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Waits longer than this start with a plain tokio sleep.
const COARSE_MARGIN: Duration = Duration::from_millis(3);

struct Entry {
    deadline: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

struct PreciseTimer {
    queue: Mutex<Queue>,
    changed: Condvar,
}

fn timer() -> &'static PreciseTimer {
    static TIMER: OnceLock<&'static PreciseTimer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: &'static PreciseTimer =
            Box::leak(Box::new(PreciseTimer { queue: Mutex::new(Queue::default()), changed: Condvar::new() }));
        std::thread::Builder::new()
            .name("offramp-link-timer".into())
            .spawn(move || t.run())
            .expect("spawning the link timer thread");
        t
    })
}

impl PreciseTimer {
    fn run(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            match q.heap.peek() {
                None => q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner()),
                Some(Reverse(e)) if e.deadline <= now => {
                    let Reverse(e) = q.heap.pop().expect("peeked");
                    let _ = e.wake.send(());
                }
                Some(Reverse(e)) => {
                    let wait = e.deadline - now;
                    q = self.changed.wait_timeout(q, wait).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
    }

    fn register(&self, deadline: Instant) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = q.heap.peek().is_none_or(|Reverse(e)| deadline < e.deadline);
        q.seq += 1;
        let seq = q.seq;
        q.heap.push(Reverse(Entry { deadline, seq, wake: tx }));
        drop(q);
        if earliest {
            self.changed.notify_one();
        }
        rx
    }
}

/// Sleeps until `deadline` with sub-millisecond accuracy (see the module docs).
pub async fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    if deadline - now > COARSE_MARGIN {
        tokio::time::sleep_until((deadline - COARSE_MARGIN).into()).await;
    }
    if deadline > Instant::now() {
        // An error only means the timer thread is gone; then just return.
        let _ = timer().register(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_after_the_deadline_in_order() {
        let start = Instant::now();
        // Far enough apart that a busy machine does not fold two wake-ups
        // into one poll.
        let deadlines: Vec<Instant> = [70u64, 5, 40].iter().map(|&ms| start + Duration::from_millis(ms)).collect();
        let woke = futures_like_join(deadlines.clone()).await;
        for (d, w) in deadlines.iter().zip(&woke) {
            assert!(w >= d, "woke before its deadline");
        }
        // In deadline order, whatever the order the sleeps started in.
        let mut by_deadline: Vec<(Instant, Instant)> = deadlines.iter().copied().zip(woke.iter().copied()).collect();
        by_deadline.sort_by_key(|&(d, _)| d);
        for pair in by_deadline.windows(2) {
            assert!(pair[0].1 <= pair[1].1, "a later deadline woke first: {by_deadline:?}");
        }
        // A deadline in the past returns at once.
        sleep_until(start).await;
    }

    async fn futures_like_join(deadlines: Vec<Instant>) -> Vec<Instant> {
        let mut handles = Vec::new();
        for d in deadlines {
            handles.push(tokio::spawn(async move {
                sleep_until(d).await;
                Instant::now()
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }
}
