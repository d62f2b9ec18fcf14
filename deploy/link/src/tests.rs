//! Link emulator tests: parsers and the shaper on a virtual clock (exact), and
//! real sockets on 127.0.0.1:0 (lower bounds and correctness only: wall-clock
//! upper bounds are left to `offramp link bench`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::cli::{parse_rate, Rate};
use super::shaper::{Backlog, Direction, Shaper};
use super::trace::ThroughputTrace;
use super::*;

fn loopback() -> SocketAddr {
    (std::net::Ipv4Addr::LOCALHOST, 0).into()
}

fn mahimahi(text: &str) -> Arc<Trace> {
    Arc::new(Trace::parse(text, TraceFormat::Auto, "test").unwrap())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

// ---- parsing ----

#[test]
fn parses_rates_including_unlimited() {
    assert_eq!(parse_rate("10mbit").unwrap(), Rate(10e6));
    assert_eq!(parse_rate("2.5Mbit/s").unwrap(), Rate(2.5e6));
    assert_eq!(parse_rate("500kbit").unwrap(), Rate(5e5));
    assert_eq!(parse_rate("1gbit").unwrap(), Rate(1e9));
    assert!(parse_rate("unlimited").unwrap().0.is_infinite());
    assert!(parse_rate("fast").is_err());
    assert!(parse_rate("0mbit").is_err());
}

#[test]
fn detects_and_parses_both_trace_formats() {
    let m = Trace::parse("# comment\n0\n0\n5\n\n10\n", TraceFormat::Auto, "m").unwrap();
    let Trace::Mahimahi(m) = m else { panic!("expected mahimahi") };
    assert_eq!(m.opportunities_ms, vec![0, 0, 5, 10]);
    assert_eq!(m.period_ms, 10);
    // 4 packets of 1500 B per 10 ms = 4.8 Mbit/s.
    assert!(close(m.mean_rate_bps(), 4.8e6));

    let t = Trace::parse("1.0\t8\n3.0\t0\n4.0\t4\n", TraceFormat::Auto, "t").unwrap();
    let Trace::Throughput(t) = t else { panic!("expected throughput") };
    assert_eq!(t.period_s(), 4.0);
    assert!(close(t.mean_rate_bps(), (8e6 + 4e6) / 4.0));

    // The real files parse with the expected means (README: Verizon down 5.0 Mbit/s).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/traces");
    if !dir.exists() {
        // CI has ../shared beside the checkout; elsewhere say so loudly.
        assert!(
            std::env::var_os("OFFRAMP_SKIP_SHARED_DATA").is_some(),
            "{} not found: the real-trace checks need ../shared/data (set OFFRAMP_SKIP_SHARED_DATA=1 to skip them)",
            dir.display()
        );
        eprintln!("SKIPPED: real-trace checks ({} not found, OFFRAMP_SKIP_SHARED_DATA set)", dir.display());
    } else {
        let v = Trace::load(&dir.join("mahimahi/Verizon-LTE-short.down"), TraceFormat::Auto).unwrap();
        assert!(matches!(*v, Trace::Mahimahi(_)));
        assert!((v.mean_rate_bps() / 1e6 - 5.0).abs() < 0.1, "{}", v.mean_rate_bps());
        let o = Trace::load(&dir.join("throughput/oboe/oboe_trace_0.txt"), TraceFormat::Auto).unwrap();
        assert!(matches!(*o, Trace::Throughput(_)));
    }
}

#[test]
fn reads_per_interval_byte_counts() {
    // NYU-style `second,bytes`, header and all: 1 s intervals detected.
    let t = Trace::parse("second,bytes\n0,125000\n1,250000\n2,0\n3,125000\n", TraceFormat::Auto, "nyu").unwrap();
    let Trace::Throughput(t) = t else { panic!("expected a rate trace") };
    assert_eq!(t.period_s(), 4.0);
    assert_eq!(t.rates_bps, vec![1e6, 2e6, 0.0, 1e6]);
    assert!(close(t.capacity_bytes(1.0, 2.0), 250_000.0));
    // Time starts at the first timestamp; a missing interval is a gap.
    let t = Trace::parse("10,1000\n10.5,1000\n12,500\n", TraceFormat::Bytes, "gap").unwrap();
    let Trace::Throughput(t) = t else { panic!("expected a rate trace") };
    assert_eq!(t.ends_s, vec![0.5, 1.0, 2.0, 2.5]);
    assert_eq!(t.rates_bps, vec![16_000.0, 16_000.0, 0.0, 8_000.0]);
    // A given interval: one sample is enough.
    let one = Trace::parse_with("0,4000\n", TraceFormat::Auto, Some(2.0), "one").unwrap();
    assert!(close(one.mean_rate_bps(), 16_000.0));
    // What is wrong is named.
    let err = |text: &str, i| Trace::parse_with(text, TraceFormat::Bytes, i, "b.csv").unwrap_err().to_string();
    assert!(err("0,5\n", None).contains("--trace-interval"));
    assert!(err("0,5\n1,x\n", None).contains("line 2"));
    assert!(err("0,5\n1,-1\n", None).contains("non-negative"));
    assert!(err("0,5\n0.5,5\n", Some(1.0)).contains("closer than the interval"));
    assert!(err("0,5\n", Some(0.0)).contains("positive"));
    assert!(err("1,5\n1,5\n", None).contains("not after"));
}

#[test]
fn malformed_traces_are_clear_errors() {
    let err = |text: &str, f| Trace::parse(text, f, "bad.trace").unwrap_err().to_string();
    assert!(err("", TraceFormat::Auto).contains("empty"));
    let e = err("0\n5\nfoo\n", TraceFormat::Auto);
    assert!(e.contains("bad.trace") && e.contains("line 3") && e.contains("foo"), "{e}");
    assert!(err("0\n5\n3\n", TraceFormat::Auto).contains("line 3"));
    assert!(err("0\n0\n", TraceFormat::Auto).contains("period"));
    assert!(err("-4\n", TraceFormat::Auto).contains("line 1"));
    assert!(err("1.0\t5\n0.5\t5\n", TraceFormat::Auto).contains("line 2"));
    assert!(err("1.0\t5\n2.0\n", TraceFormat::Auto).contains("line 2"));
    assert!(err("1.0\tx\n", TraceFormat::Auto).contains("bad rate"));
    assert!(err("1.0\t0\n2.0\t0\n", TraceFormat::Auto).contains("never carries"));
    assert!(err("1.0\t-3\n", TraceFormat::Auto).contains("non-negative"));
    // Forcing the wrong format is reported too.
    assert!(err("1.0\t5\n", TraceFormat::Mahimahi).contains("Mahimahi"));
    assert!(err("5\n", TraceFormat::Throughput).contains("throughput"));
    let missing = Trace::load(std::path::Path::new("/nonexistent/trace"), TraceFormat::Auto).unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/trace"));
}

// ---- the shaper on a virtual clock ----

#[test]
fn fixed_rate_serializes_at_the_rate_and_pipelines() {
    let mut s = Shaper::new(RateModel::Fixed { bps: 10e6 });
    let mut last = 0.0;
    let mut sent = 0;
    while sent < 1_000_000 {
        let n = (1_000_000 - sent).min(MTU);
        last = s.depart(0.0, n);
        sent += n;
    }
    assert!(close(last, 0.8), "{last}");
    // An idle link starts afresh.
    assert!(close(s.depart(5.0, 1500), 5.0012));
}

#[test]
fn mahimahi_uses_each_opportunity_once_and_loops() {
    let trace = mahimahi("0\n0\n5\n10\n");
    let mut s = Shaper::new(RateModel::Trace(trace.clone()));
    // Two opportunities at 0 ms, then 5, 10, then the loop: 10 (=0 of loop 1), 10, 15, 20.
    let times: Vec<f64> = (0..8).map(|_| s.depart(0.0, 1500)).collect();
    let want = [0.0, 0.0, 0.005, 0.010, 0.010, 0.010, 0.015, 0.020];
    for (t, w) in times.iter().zip(want) {
        assert!(close(*t, w), "{times:?}");
    }
    // Small packets share an opportunity's 1500 bytes.
    let mut s = Shaper::new(RateModel::Trace(trace.clone()));
    assert!(close(s.depart(0.0, 1000), 0.0));
    assert!(close(s.depart(0.0, 400), 0.0));
    assert!(close(s.depart(0.0, 200), 0.0)); // ends in the second 0 ms opportunity
    assert!(close(s.depart(0.0, 1500), 0.005)); // the rest of the 2nd, then the 5 ms one
                                                // Opportunities that pass while the link is idle are lost.
    let mut s = Shaper::new(RateModel::Trace(trace.clone()));
    assert!(close(s.depart(0.0061, 1500), 0.010));
    assert!(close(s.depart(0.0061, 1500), 0.010));
    assert!(close(s.depart(0.0061, 1500), 0.010));
    assert!(close(s.depart(0.0061, 1500), 0.015));
    // Capacity over whole loops.
    assert!(close(trace.capacity_bytes(0.0, 0.010), 3.0 * 1500.0));
    assert!(close(trace.capacity_bytes(0.0, 1.0), 399.0 * 1500.0));
}

#[test]
fn outages_stall_the_link() {
    // Mahimahi: nothing between 10 ms and 2000 ms.
    let mut s = Shaper::new(RateModel::Trace(mahimahi("10\n2000\n2001\n")));
    assert!(close(s.depart(0.0, 1500), 0.010));
    assert!(close(s.depart(0.011, 1500), 2.0), "a packet arriving in the outage waits it out");
    // Throughput: 8 Mbit/s for 1 s, 0 for 2 s, 8 Mbit/s for 1 s.
    let t = ThroughputTrace::new(vec![(1.0, 8e6), (3.0, 0.0), (4.0, 8e6)]).unwrap();
    let mut s = Shaper::new(RateModel::Trace(Arc::new(Trace::Throughput(t.clone()))));
    assert!(close(s.depart(0.0, 1_000_000), 1.0)); // 8 Mbit: exactly the first second
    assert!(close(s.depart(1.5, 1000), 3.001)); // waits out the outage
    assert!(close(t.bits_upto(2.5), 8e6));
    // Looping: the second period starts at 4 s with 8 Mbit/s again.
    assert!(close(t.bits_upto(5.0), 16e6 + 8e6));
    assert!(close(t.time_for_bits(24e6), 5.0));
    assert!(close(t.time_for_bits(16e6), 4.0));
}

#[test]
fn backlog_reports_when_it_drains_below_a_limit() {
    let mut b = Backlog::default();
    b.push(1.0, 1000);
    b.push(2.0, 1000);
    b.push(3.0, 1000);
    assert_eq!(b.time_below(5000), None);
    assert_eq!(b.time_below(2500), Some(1.0));
    assert_eq!(b.time_below(1000), Some(3.0)); // strictly below
    b.expire(2.0);
    assert_eq!(b.bytes(), 1000);
}

#[test]
fn datagram_loss_is_seeded_and_near_the_ratio() {
    let drops = |seed| {
        let d = Direction::new(DirectionConfig::default().with_loss(0.2), Instant::now(), seed);
        let now = Instant::now();
        (0..5000).map(|_| d.schedule_datagram(100, now).is_none()).collect::<Vec<_>>()
    };
    let a = drops(7);
    assert_eq!(a, drops(7), "same seed, same losses");
    assert_ne!(a, drops(8));
    let ratio = a.iter().filter(|&&x| x).count() as f64 / a.len() as f64;
    assert!((ratio - 0.2).abs() < 0.03, "{ratio}");
}

#[test]
fn tcp_loss_delays_instead_of_dropping() {
    let cfg = DirectionConfig::default().with_loss(0.5).with_delay(Duration::from_millis(10));
    let d = Direction::new(cfg, Instant::now(), 3);
    let now = Instant::now();
    let deadlines = d.schedule_stream(std::iter::repeat_n(1500, 200), now, Duration::from_millis(40));
    assert_eq!(deadlines.len(), 200, "nothing is dropped");
    let late = deadlines.iter().filter(|&&t| t >= now + Duration::from_millis(50)).count();
    assert!((60..140).contains(&late), "{late} of 200 paid a retransmission");
    assert_eq!(d.stats.snapshot().retransmitted as usize, late);
}

// ---- real sockets ----

/// Accepts one connection, reads everything, returns (bytes, time of the last byte).
async fn sink() -> (SocketAddr, tokio::task::JoinHandle<(Vec<u8>, Instant)>) {
    let l = TcpListener::bind(loopback()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut data = Vec::new();
        s.read_to_end(&mut data).await.unwrap();
        (data, Instant::now())
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_transfer_is_intact_in_order_and_rate_limited() {
    let (addr, task) = sink().await;
    // 200 kB at 8 Mbit/s = 0.2 s, plus 10 ms ± 5 ms; jitter must not reorder.
    let dir = DirectionConfig::default()
        .with_rate_bps(8e6)
        .with_delay(Duration::from_millis(10))
        .with_jitter(Duration::from_millis(5));
    let link = spawn_tcp_link(loopback(), addr, LinkConfig::symmetric(dir).with_seed(5)).await.unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut c = TcpStream::connect(link.local_addr()).await.unwrap();
    let start = Instant::now();
    c.write_all(&payload).await.unwrap();
    c.shutdown().await.unwrap(); // the FIN must reach the sink after the last byte
    let (got, end) = task.await.unwrap();
    assert!(got == payload, "bytes arrive intact and in order");
    let took = (end - start).as_secs_f64();
    assert!(took >= 0.9 * 0.2, "took {took} s, less than the rate allows");
    assert_eq!(link.stats().up.bytes_in, 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_pays_the_delay_both_ways() {
    let l = TcpListener::bind(loopback()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 32];
        while s.read_exact(&mut b).await.is_ok() {
            s.write_all(&b).await.unwrap();
        }
    });
    let cfg = LinkConfig {
        up: DirectionConfig::default().with_delay(Duration::from_millis(15)),
        down: DirectionConfig::default().with_delay(Duration::from_millis(5)),
        seed: 0,
    };
    let link = spawn_tcp_link(loopback(), addr, cfg).await.unwrap();
    let mut c = TcpStream::connect(link.local_addr()).await.unwrap();
    for i in 0..3u8 {
        let start = Instant::now();
        c.write_all(&[i; 32]).await.unwrap();
        let mut b = [0u8; 32];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(b, [i; 32]);
        assert!(start.elapsed() >= Duration::from_millis(20), "{:?}", start.elapsed());
    }
    // Shutting the link down closes the connection.
    link.shutdown().await;
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut b)).await.expect("closed promptly");
    assert!(matches!(r, Ok(0) | Err(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_zero_throughput_outage_holds_bytes_back() {
    let (addr, task) = sink().await;
    // No capacity for the first 0.3 s, then 10 Mbit/s.
    let trace = Arc::new(Trace::parse("0.3\t0\n1.0\t10\n", TraceFormat::Auto, "outage").unwrap());
    let cfg = LinkConfig { up: DirectionConfig::default().with_trace(trace), ..LinkConfig::default() };
    let link = spawn_tcp_link(loopback(), addr, cfg).await.unwrap();
    let mut c = TcpStream::connect(link.local_addr()).await.unwrap();
    c.write_all(b"hello through an outage").await.unwrap();
    c.shutdown().await.unwrap();
    let (got, end) = task.await.unwrap();
    assert_eq!(got, b"hello through an outage");
    assert!(end - link.epoch() >= Duration::from_millis(300), "delivered during the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_forwards_replies_and_loses_about_the_ratio() {
    // An echo server behind a link that loses 25% upstream.
    let server = UdpSocket::bind(loopback()).await.unwrap();
    let server_addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        let mut b = vec![0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut b).await {
            let _ = server.send_to(&b[..n], from).await;
        }
    });
    let cfg = LinkConfig {
        up: DirectionConfig::default().with_loss(0.25).with_delay(Duration::from_millis(5)),
        down: DirectionConfig::default().with_delay(Duration::from_millis(5)),
        seed: 11,
    };
    let link = spawn_udp_link(loopback(), server_addr, cfg).await.unwrap();
    let client = UdpSocket::bind(loopback()).await.unwrap();
    client.connect(link.local_addr()).await.unwrap();

    // One round trip pays both delays.
    let start = Instant::now();
    let mut b = [0u8; 64];
    let mut n = 0;
    while n == 0 {
        client.send(b"ping").await.unwrap();
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), client.recv(&mut b)).await {
            n = r.unwrap();
        }
    }
    assert_eq!(&b[..n], b"ping");
    assert!(start.elapsed() >= Duration::from_millis(10));

    // Paced, and read concurrently, so the kernel never drops: 2000 datagrams in bursts of 50.
    let client = Arc::new(client);
    let receiver = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            let mut echoed = 0u32;
            while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), client.recv(&mut b)).await {
                echoed += 1;
            }
            echoed
        })
    };
    let sent = 2000u32;
    for burst in 0..(sent / 50) {
        for i in 0..50 {
            client.send(&(burst * 50 + i).to_be_bytes()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let echoed = receiver.await.unwrap();
    let stats = link.stats();
    let lost = stats.up.dropped_loss as f64 / stats.up.packets_in as f64;
    assert!((lost - 0.25).abs() < 0.04, "loss ratio {lost}");
    let delivered = echoed as f64 / sent as f64;
    assert!((delivered - 0.75).abs() < 0.05, "delivered {delivered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_rate_limit_spaces_datagrams() {
    let server = UdpSocket::bind(loopback()).await.unwrap();
    let server_addr = server.local_addr().unwrap();
    // 40 datagrams of 1250 B at 4 Mbit/s: 2.5 ms each, 100 ms in all.
    let dir = DirectionConfig::default().with_rate_bps(4e6);
    let link = spawn_udp_link(loopback(), server_addr, LinkConfig::symmetric(dir)).await.unwrap();
    let client = UdpSocket::bind(loopback()).await.unwrap();
    let start = Instant::now();
    for _ in 0..40 {
        client.send_to(&[1u8; 1250], link.local_addr()).await.unwrap();
    }
    let mut b = [0u8; 2048];
    for _ in 0..40 {
        let n = tokio::time::timeout(Duration::from_secs(2), server.recv(&mut b)).await.unwrap().unwrap();
        assert_eq!(n, 1250);
    }
    assert!(start.elapsed() >= Duration::from_millis(90), "{:?}", start.elapsed());
    assert_eq!(link.stats().up.dropped_queue, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_link_to_a_named_upstream_resolves_it_per_connection() {
    assert_eq!(Upstream::parse("127.0.0.1:80"), Upstream::Addr("127.0.0.1:80".parse().unwrap()));
    assert!(matches!(Upstream::parse("cloud:50051"), Upstream::Name(_)));
    assert!(spawn_tcp_link(loopback(), Upstream::parse("no-such-host.invalid:1"), LinkConfig::default())
        .await
        .is_err());

    // Two connections through a link to a named upstream both reach the sink
    // (each resolves the name itself; a literal keeps the test off /etc/hosts).
    let l = TcpListener::bind(loopback()).await.unwrap();
    let name = Upstream::Name(l.local_addr().unwrap().to_string().into());
    let link = spawn_tcp_link(loopback(), name, LinkConfig::default()).await.unwrap();
    for round in 0u8..2 {
        let mut c = TcpStream::connect(link.local_addr()).await.unwrap();
        c.write_all(&[round; 4]).await.unwrap();
        c.shutdown().await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, vec![round; 4]);
    }
}
