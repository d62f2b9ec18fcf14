//! The one way tests wait for something: retry a check until it passes,
//! within a patience that `OFFRAMP_TEST_PATIENCE` (a factor, default 1)
//! scales on slow or busy machines — as linkerd's `assert_eventually!`.

use std::time::{Duration, Instant};

/// How often [`eventually`] retries.
pub const RETRY_EVERY: Duration = Duration::from_millis(20);

/// The factor `OFFRAMP_TEST_PATIENCE` sets (1 when unset).
pub fn patience_factor() -> f64 {
    match std::env::var("OFFRAMP_TEST_PATIENCE") {
        Ok(v) => match v.parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => f,
            _ => panic!("OFFRAMP_TEST_PATIENCE must be a positive factor, got {v:?}"),
        },
        Err(_) => 1.0,
    }
}

/// `d` scaled by [`patience_factor`].
pub fn patience(d: Duration) -> Duration {
    d.mul_f64(patience_factor())
}

/// Runs `check` every [`RETRY_EVERY`] until it returns `Ok`, and returns
/// its value. Panics, naming `what` and showing the last error, once
/// `within` (scaled by the patience) has passed. A check that must never
/// fail on the way (an answer that is wrong, not just late) asserts inside
/// and panics at once.
pub async fn eventually<T>(what: &str, within: Duration, check: impl AsyncFnMut() -> anyhow::Result<T>) -> T {
    eventually_every(what, within, RETRY_EVERY, check).await
}

/// [`eventually`], retrying every `every`.
pub async fn eventually_every<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<T>,
) -> T {
    let limit = patience(within);
    let start = Instant::now();
    let mut tries = 0u32;
    loop {
        tries += 1;
        match check().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() < limit => {
                tracing::debug!(what, tries, error = %format!("{e:#}"), "not yet");
                tokio::time::sleep(every).await;
            }
            Err(e) => panic!("{what}: still failing after {limit:?} ({tries} tries): {e:#}"),
        }
    }
}

/// Classifies `input` (which needs the cloud) until the cloud answers it
/// again, within `within`; returns how long that took.
pub async fn until_offloading_resumes(edge: &offramp_edge::Edge, input: &[f32], within: Duration) -> Duration {
    let back = Instant::now();
    eventually("offloading resumes", within, async || {
        let a = edge.classify(None, input.to_vec()).await;
        anyhow::ensure!(a.tier == offramp_edge::Tier::Cloud, "answered by {:?} ({:?})", a.tier, a.reason);
        Ok(())
    })
    .await;
    back.elapsed()
}

#[tokio::test]
async fn eventually_retries_until_the_check_passes() {
    let mut tries = 0;
    let got = eventually("the third try passes", Duration::from_secs(5), async || {
        tries += 1;
        anyhow::ensure!(tries == 3, "try {tries}");
        Ok(tries * 10)
    })
    .await;
    assert_eq!((got, tries), (30, 3));
}

#[tokio::test]
#[should_panic(expected = "never passes: still failing after")]
async fn eventually_gives_up_with_the_last_error() {
    eventually("never passes", Duration::from_millis(50), async || -> anyhow::Result<()> { anyhow::bail!("nope") })
        .await;
}
