//! How many threads a process runs, chosen once at start, before any other
//! thread exists: **I/O threads** (tokio's workers: the network, HTTP/2,
//! QUIC, protobuf) and **compute threads** (candle's pool, through
//! `RAYON_NUM_THREADS`).
//!
//! Both are deliberate because on a small machine they compete for the same
//! cores. Measured on a 2-core machine (`offramp bench offload`, edge and
//! cloud in one process): with two tokio workers a 6.4 KB offload costs ~13
//! context switches and a 200 KB one ~21, with one ~7.5 and ~10.5, and the
//! transport overhead drops by about a sixth; every extra switch is a thread
//! put to sleep and another woken, tens of microseconds each where an idle
//! core has to be woken. A compute pool as wide as the machine spins its
//! threads after every batch, taking the core the answer has to be sent
//! from.
//!
//! Setting `RAYON_NUM_THREADS` explicitly also spares candle re-detecting
//! the core count (reading `/proc/cpuinfo`) on every matrix multiply, which
//! it does when the variable is unset.
//!
//! Defaults, per role:
//! - **cloud**: I/O `max(1, cores / 4)`; compute: the cores left,
//!   `max(1, cores − I/O)`. On 2 cores: one of each.
//! - **edge**: I/O 1 (a device serves few callers); compute: every core
//!   (one request at a time goes faster on all of them).

use std::num::NonZeroUsize;

/// Which binary's defaults apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Cloud,
    Edge,
}

/// `--io-threads` and `--compute-threads` (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ThreadArgs {
    /// Tokio worker threads for the network and protocol work [default:
    /// cloud max(1, cores/4), edge 1].
    #[arg(long, env = "OFFRAMP_IO_THREADS", global = true)]
    pub io_threads: Option<NonZeroUsize>,
    /// Threads of the model's compute pool (candle's, shared by the
    /// cloud's compute workers); RAYON_NUM_THREADS when set, else [default:
    /// cloud max(1, cores − I/O threads), edge all cores].
    #[arg(long, env = "OFFRAMP_COMPUTE_THREADS", global = true)]
    pub compute_threads: Option<NonZeroUsize>,
}

/// The thread counts a process runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    pub io: usize,
    pub compute: usize,
}

/// Cores this process may use (1 when unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

impl ThreadArgs {
    /// The counts for `role` on a machine with `cores` cores: the flags,
    /// else `RAYON_NUM_THREADS` (`rayon`) for compute, else the defaults.
    pub fn resolve(&self, role: Role, cores: usize, rayon: Option<usize>) -> Threads {
        let cores = cores.max(1);
        let io = self.io_threads.map_or_else(
            || match role {
                Role::Cloud => (cores / 4).max(1),
                Role::Edge => 1,
            },
            NonZeroUsize::get,
        );
        let compute = self.compute_threads.map(NonZeroUsize::get).or(rayon.filter(|&n| n > 0)).unwrap_or(match role {
            Role::Cloud => cores.saturating_sub(io).max(1),
            Role::Edge => cores,
        });
        Threads { io, compute }
    }

    /// Resolves the counts for this machine and sets `RAYON_NUM_THREADS`
    /// to the compute count. Call first thing in `main`, before any thread
    /// starts (the environment is process-wide).
    pub fn apply(&self, role: Role) -> Threads {
        let rayon = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok());
        let threads = self.resolve(role, cores(), rayon);
        std::env::set_var("RAYON_NUM_THREADS", threads.compute.to_string());
        threads
    }
}

impl Threads {
    /// A tokio runtime with `io` worker threads.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        runtime(self.io)
    }
}

/// A tokio runtime with `io_threads` worker threads.
pub fn runtime(io_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(io_threads).enable_all().build()
}

/// Runs `task` to completion as a task on `runtime`'s I/O threads rather
/// than on the calling thread (`block_on`), so that the replies it waits
/// for wake it on the thread that read them instead of crossing to this
/// one. `Err` if it panicked.
pub fn run_as_task<F>(runtime: &tokio::runtime::Runtime, task: F) -> Result<F::Output, tokio::task::JoinError>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime.block_on(runtime.spawn(task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(io: Option<usize>, compute: Option<usize>) -> ThreadArgs {
        ThreadArgs { io_threads: io.and_then(NonZeroUsize::new), compute_threads: compute.and_then(NonZeroUsize::new) }
    }

    #[test]
    fn defaults_split_the_cores_by_role() {
        let none = args(None, None);
        assert_eq!(none.resolve(Role::Cloud, 2, None), Threads { io: 1, compute: 1 });
        assert_eq!(none.resolve(Role::Cloud, 16, None), Threads { io: 4, compute: 12 });
        assert_eq!(none.resolve(Role::Cloud, 1, None), Threads { io: 1, compute: 1 });
        assert_eq!(none.resolve(Role::Edge, 2, None), Threads { io: 1, compute: 2 });
        assert_eq!(none.resolve(Role::Edge, 0, None), Threads { io: 1, compute: 1 });
    }

    #[test]
    fn flags_win_over_rayon_num_threads_which_wins_over_defaults() {
        assert_eq!(args(Some(3), Some(5)).resolve(Role::Cloud, 2, Some(7)), Threads { io: 3, compute: 5 });
        assert_eq!(args(None, None).resolve(Role::Cloud, 2, Some(7)), Threads { io: 1, compute: 7 });
        assert_eq!(args(None, None).resolve(Role::Edge, 8, Some(0)), Threads { io: 1, compute: 8 }, "0 is unset");
        assert_eq!(args(Some(2), None).resolve(Role::Cloud, 2, None), Threads { io: 2, compute: 1 });
    }
}
