//! Link traces: what a link can carry over time, read from the two formats in
//! `../shared/data/traces`.
//!
//! - **Mahimahi packet-delivery traces** (`*.up`, `*.down`): one integer
//!   millisecond timestamp per line; each line is one opportunity for one
//!   1500-byte packet to leave the link. Several lines may carry the same
//!   millisecond. The trace loops with a period equal to its last timestamp
//!   (as in Mahimahi, the opportunities at `period` and at `0` of the next loop
//!   both exist). Gaps between timestamps are outages: nothing leaves the link.
//! - **Throughput traces** (Oboe: `<seconds><TAB><Mbit/s>` per line): a
//!   piecewise-constant rate. Each sample is the throughput measured over the
//!   interval that *ends* at its timestamp, so sample `i` covers
//!   `(t[i-1], t[i]]` and the first one covers `[0, t[0]]`. The trace loops with
//!   a period equal to its last timestamp. A zero rate is an outage.
//!
//! - **Per-interval byte counts** (`<seconds>,<bytes>` CSV, as the NYU
//!   WiFi/cellular traces and other public bandwidth datasets publish them):
//!   each line is the number of bytes delivered in the interval that
//!   *starts* at its timestamp. The interval is given (`--trace-interval`) or
//!   detected as the smallest step between consecutive timestamps; a larger
//!   step is a gap that carries nothing. An optional header line (`second,bytes`)
//!   is skipped. Time starts at the first timestamp, and the trace loops
//!   after the last interval.
//!
//! The format is picked from the content (a comma: byte counts; two columns:
//! throughput; one integer column: Mahimahi) unless given explicitly.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Size of one Mahimahi delivery opportunity (and the emulator's MTU).
pub const MTU: usize = 1500;

/// The two trace formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceFormat {
    /// Decide from the file's content.
    #[default]
    Auto,
    /// Mahimahi packet-delivery trace: one integer millisecond per line.
    Mahimahi,
    /// Throughput trace: `<seconds><TAB><Mbit/s>` per line.
    Throughput,
    /// Per-interval byte counts: `<seconds>,<bytes>` per line (CSV).
    Bytes,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("reading trace {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trace {name}, line {line}: {msg}")]
    Line { name: String, line: usize, msg: String },
    #[error("trace {name}: {msg}")]
    Invalid { name: String, msg: String },
}

/// Why a trace's contents cannot be replayed (the message says what is wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidTrace(pub String);

/// A Mahimahi packet-delivery trace.
#[derive(Debug, Clone, PartialEq)]
pub struct MahimahiTrace {
    /// Delivery opportunities within one period, in ms, non-decreasing.
    pub opportunities_ms: Vec<u64>,
    /// Loop period in ms (the last timestamp).
    pub period_ms: u64,
}

/// A piecewise-constant throughput trace.
#[derive(Debug, Clone, PartialEq)]
pub struct ThroughputTrace {
    /// End of each segment in seconds, strictly increasing; the last one is the period.
    pub ends_s: Vec<f64>,
    /// Rate of each segment in bit/s.
    pub rates_bps: Vec<f64>,
    /// Bits that can leave the link from the start of a period to the end of
    /// each segment (cumulative).
    cumulative_bits: Vec<f64>,
}

/// A trace of either format.
#[derive(Debug, Clone, PartialEq)]
pub enum Trace {
    Mahimahi(MahimahiTrace),
    Throughput(ThroughputTrace),
}

impl MahimahiTrace {
    /// Builds a trace from opportunity timestamps (ms).
    pub fn new(opportunities_ms: Vec<u64>) -> Result<Self, InvalidTrace> {
        if opportunities_ms.is_empty() {
            return Err(InvalidTrace("no delivery opportunities".into()));
        }
        if let Some(w) = opportunities_ms.windows(2).find(|w| w[1] < w[0]) {
            return Err(InvalidTrace(format!("timestamps go backwards ({} after {})", w[1], w[0])));
        }
        let period_ms = *opportunities_ms.last().expect("non-empty");
        if period_ms == 0 {
            return Err(InvalidTrace("the last timestamp (the loop period) must be positive".into()));
        }
        Ok(Self { opportunities_ms, period_ms })
    }

    /// Mean rate over one period, bit/s.
    pub fn mean_rate_bps(&self) -> f64 {
        self.opportunities_ms.len() as f64 * (MTU * 8) as f64 / (self.period_ms as f64 / 1e3)
    }

    /// Number of opportunities at or before `t_ms` (absolute, looping), i.e.
    /// opportunities in `[0, t_ms]`.
    fn count_upto(&self, t_ms: f64) -> f64 {
        if t_ms < 0.0 {
            return 0.0;
        }
        let period = self.period_ms as f64;
        let k = (t_ms / period).floor();
        let rem = t_ms - k * period;
        let within = self.opportunities_ms.partition_point(|&o| (o as f64) <= rem);
        k * self.opportunities_ms.len() as f64 + within as f64
    }

    /// Bytes the link can carry in `[from_s, to_s)` (seconds since the link
    /// started), counting whole opportunities.
    pub fn capacity_bytes(&self, from_s: f64, to_s: f64) -> f64 {
        let before = |t_s: f64| self.count_upto(t_s * 1e3 - 1e-9);
        (before(to_s) - before(from_s)) * MTU as f64
    }
}

impl ThroughputTrace {
    /// Builds a trace from `(segment end in s, rate in bit/s)` samples.
    pub fn new(samples: Vec<(f64, f64)>) -> Result<Self, InvalidTrace> {
        if samples.is_empty() {
            return Err(InvalidTrace("no samples".into()));
        }
        let mut prev = 0.0;
        let mut cumulative = 0.0;
        let mut cumulative_bits = Vec::with_capacity(samples.len());
        for (i, &(t, r)) in samples.iter().enumerate() {
            if !t.is_finite() || t < 0.0 || (i > 0 && t <= prev) {
                return Err(InvalidTrace(format!(
                    "timestamps must be non-negative and strictly increasing ({t} after {prev})"
                )));
            }
            if !r.is_finite() || r < 0.0 {
                return Err(InvalidTrace(format!("rate {r} at {t}s must be a non-negative number")));
            }
            cumulative += (t - prev) * r;
            cumulative_bits.push(cumulative);
            prev = t;
        }
        if cumulative <= 0.0 {
            return Err(InvalidTrace("the trace never carries any data (all rates zero)".into()));
        }
        let (ends_s, rates_bps) = samples.into_iter().unzip();
        Ok(Self { ends_s, rates_bps, cumulative_bits })
    }

    /// Loop period in seconds.
    pub fn period_s(&self) -> f64 {
        *self.ends_s.last().expect("non-empty")
    }

    /// Mean rate over one period, bit/s.
    pub fn mean_rate_bps(&self) -> f64 {
        self.bits_per_period() / self.period_s()
    }

    fn bits_per_period(&self) -> f64 {
        *self.cumulative_bits.last().expect("non-empty")
    }

    /// Bits the link can carry in `[0, t]` (t in seconds since the link started).
    pub fn bits_upto(&self, t: f64) -> f64 {
        if t <= 0.0 {
            return 0.0;
        }
        let period = self.period_s();
        let k = (t / period).floor();
        let rem = t - k * period;
        let i = self.ends_s.partition_point(|&e| e <= rem);
        let within = if i >= self.ends_s.len() {
            self.bits_per_period()
        } else {
            let (start, before) = if i == 0 { (0.0, 0.0) } else { (self.ends_s[i - 1], self.cumulative_bits[i - 1]) };
            before + (rem - start) * self.rates_bps[i]
        };
        k * self.bits_per_period() + within
    }

    /// The earliest time at which `bits` bits in total can have left the link
    /// (inverse of [`Self::bits_upto`]). Zero-rate stretches are waited out.
    pub fn time_for_bits(&self, bits: f64) -> f64 {
        if bits <= 0.0 {
            return 0.0;
        }
        let per = self.bits_per_period();
        let mut k = (bits / per).floor();
        let mut rem = bits - k * per;
        if rem <= 0.0 {
            // Exactly at a period boundary: finish inside the previous period.
            k -= 1.0;
            rem = per;
        }
        let i = self.cumulative_bits.partition_point(|&c| c < rem).min(self.ends_s.len() - 1);
        let (start, before) = if i == 0 { (0.0, 0.0) } else { (self.ends_s[i - 1], self.cumulative_bits[i - 1]) };
        if self.rates_bps[i] <= 0.0 {
            // Only reachable through rounding at the very end of a period.
            return k * self.period_s() + self.ends_s[i];
        }
        let within = start + (rem - before) / self.rates_bps[i];
        k * self.period_s() + within.min(self.ends_s[i])
    }

    /// Bytes the link can carry in `[from_s, to_s)`.
    pub fn capacity_bytes(&self, from_s: f64, to_s: f64) -> f64 {
        (self.bits_upto(to_s) - self.bits_upto(from_s)) / 8.0
    }
}

/// A piecewise-constant trace from `(interval start in s, bytes)` samples:
/// each interval carries its bytes at a constant rate, a gap between one
/// interval's end and the next start carries nothing.
fn byte_counts(samples: &[(f64, f64)], interval_s: Option<f64>) -> Result<ThroughputTrace, InvalidTrace> {
    let Some(&(t0, _)) = samples.first() else { return Err(InvalidTrace("no samples".into())) };
    let interval = match interval_s {
        Some(i) if i.is_finite() && i > 0.0 => i,
        Some(i) => return Err(InvalidTrace(format!("the interval must be a positive number of seconds, got {i}"))),
        None => samples.windows(2).map(|w| w[1].0 - w[0].0).reduce(f64::min).ok_or_else(|| {
            InvalidTrace("one sample cannot show its interval: give it (--trace-interval SECONDS)".into())
        })?,
    };
    let mut segments = Vec::with_capacity(samples.len());
    for (i, &(t, bytes)) in samples.iter().enumerate() {
        let (start, end) = (t - t0, t - t0 + interval);
        if let Some(&(next, _)) = samples.get(i + 1) {
            if next - t0 < end - 1e-9 * interval {
                return Err(InvalidTrace(format!(
                    "samples at {t}s and {next}s are closer than the interval ({interval}s)"
                )));
            }
        }
        if let Some(&(prev_end, _)) = segments.last() {
            if start > prev_end + 1e-9 * interval {
                segments.push((start, 0.0)); // a gap: nothing delivered
            }
        }
        segments.push((end, bytes * 8.0 / interval));
    }
    ThroughputTrace::new(segments)
}

impl Trace {
    /// Reads a trace file.
    pub fn load(path: &Path, format: TraceFormat) -> Result<Arc<Self>, TraceError> {
        Self::load_with(path, format, None)
    }

    /// Reads a trace file; `interval_s` is the interval of a byte-count trace
    /// (detected when `None`; other formats ignore it).
    pub fn load_with(path: &Path, format: TraceFormat, interval_s: Option<f64>) -> Result<Arc<Self>, TraceError> {
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io { path: path.to_owned(), source })?;
        Self::parse_with(&text, format, interval_s, &path.display().to_string()).map(Arc::new)
    }

    /// Parses a trace; `name` is used in error messages. Blank lines and lines
    /// starting with `#` are skipped.
    pub fn parse(text: &str, format: TraceFormat, name: &str) -> Result<Self, TraceError> {
        Self::parse_with(text, format, None, name)
    }

    /// [`Trace::parse`] with the interval of a byte-count trace given.
    // Long on purpose: one line-by-line parser of both trace formats, each
    // error naming its line.
    pub fn parse_with(
        text: &str,
        format: TraceFormat,
        interval_s: Option<f64>,
        name: &str,
    ) -> Result<Self, TraceError> {
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let format = match format {
            TraceFormat::Auto => {
                let (_, first) = lines
                    .clone()
                    .next()
                    .ok_or_else(|| TraceError::Invalid { name: name.into(), msg: "the file is empty".into() })?;
                if first.contains(',') {
                    TraceFormat::Bytes
                } else if first.split_whitespace().count() >= 2 {
                    TraceFormat::Throughput
                } else {
                    TraceFormat::Mahimahi
                }
            }
            f => f,
        };
        let line_err = |line, msg: String| TraceError::Line { name: name.into(), line, msg };
        let invalid = |e: InvalidTrace| TraceError::Invalid { name: name.into(), msg: e.0 };
        match format {
            TraceFormat::Mahimahi => {
                let mut ops = Vec::new();
                for (n, l) in lines {
                    let v: u64 = l.parse().map_err(|_| {
                        line_err(n, format!("expected one integer millisecond timestamp (Mahimahi format), got {l:?}"))
                    })?;
                    if let Some(&prev) = ops.last() {
                        if v < prev {
                            return Err(line_err(n, format!("timestamp {v} is before the previous one ({prev})")));
                        }
                    }
                    ops.push(v);
                }
                MahimahiTrace::new(ops).map(Trace::Mahimahi).map_err(invalid)
            }
            TraceFormat::Throughput => {
                let mut samples: Vec<(f64, f64)> = Vec::new();
                for (n, l) in lines {
                    let mut cols = l.split_whitespace();
                    let (Some(t), Some(r), None) = (cols.next(), cols.next(), cols.next()) else {
                        return Err(line_err(
                            n,
                            format!("expected `<seconds><TAB><Mbit/s>` (throughput format), got {l:?}"),
                        ));
                    };
                    let t: f64 = t.parse().map_err(|_| line_err(n, format!("bad timestamp {t:?}")))?;
                    let r: f64 = r.parse().map_err(|_| line_err(n, format!("bad rate {r:?}")))?;
                    if !t.is_finite() || t < 0.0 {
                        return Err(line_err(n, format!("timestamp {t} must be a non-negative number")));
                    }
                    if !r.is_finite() || r < 0.0 {
                        return Err(line_err(n, format!("rate {r} must be a non-negative number of Mbit/s")));
                    }
                    if let Some(&(prev, _)) = samples.last() {
                        if t <= prev {
                            return Err(line_err(n, format!("timestamp {t} is not after the previous one ({prev})")));
                        }
                    }
                    samples.push((t, r * 1e6));
                }
                ThroughputTrace::new(samples).map(Trace::Throughput).map_err(invalid)
            }
            TraceFormat::Bytes => {
                let mut samples: Vec<(f64, f64)> = Vec::new();
                for (i, (n, l)) in lines.enumerate() {
                    let cols: Vec<&str> = l.split(',').map(str::trim).collect();
                    let parsed = match cols[..] {
                        [t, b] => t.parse::<f64>().ok().zip(b.parse::<f64>().ok()),
                        _ => None,
                    };
                    let Some((t, bytes)) = parsed else {
                        if i == 0 && cols.len() == 2 && l.chars().any(|c| c.is_alphabetic()) {
                            continue; // a header such as `second,bytes`
                        }
                        return Err(line_err(
                            n,
                            format!("expected `<seconds>,<bytes>` (per-interval byte counts), got {l:?}"),
                        ));
                    };
                    if !t.is_finite() || t < 0.0 {
                        return Err(line_err(n, format!("timestamp {t} must be a non-negative number of seconds")));
                    }
                    if !bytes.is_finite() || bytes < 0.0 {
                        return Err(line_err(n, format!("byte count {bytes} must be a non-negative number")));
                    }
                    if let Some(&(prev, _)) = samples.last() {
                        if t <= prev {
                            return Err(line_err(n, format!("timestamp {t} is not after the previous one ({prev})")));
                        }
                    }
                    samples.push((t, bytes));
                }
                byte_counts(&samples, interval_s).map(Trace::Throughput).map_err(invalid)
            }
            TraceFormat::Auto => unreachable!("resolved above"),
        }
    }

    /// Mean rate over one loop, bit/s.
    pub fn mean_rate_bps(&self) -> f64 {
        match self {
            Trace::Mahimahi(t) => t.mean_rate_bps(),
            Trace::Throughput(t) => t.mean_rate_bps(),
        }
    }

    /// Loop period in seconds.
    pub fn period_s(&self) -> f64 {
        match self {
            Trace::Mahimahi(t) => t.period_ms as f64 / 1e3,
            Trace::Throughput(t) => t.period_s(),
        }
    }

    /// Bytes the link can carry in `[from_s, to_s)` (seconds since the link started).
    pub fn capacity_bytes(&self, from_s: f64, to_s: f64) -> f64 {
        match self {
            Trace::Mahimahi(t) => t.capacity_bytes(from_s, to_s),
            Trace::Throughput(t) => t.capacity_bytes(from_s, to_s),
        }
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trace::Mahimahi(t) => write!(
                f,
                "mahimahi trace: {} opportunities per {:.3} s loop, mean {:.2} Mbit/s",
                t.opportunities_ms.len(),
                t.period_ms as f64 / 1e3,
                t.mean_rate_bps() / 1e6
            ),
            Trace::Throughput(t) => write!(
                f,
                "throughput trace: {} samples per {:.3} s loop, mean {:.2} Mbit/s",
                t.ends_s.len(),
                t.period_s(),
                t.mean_rate_bps() / 1e6
            ),
        }
    }
}
