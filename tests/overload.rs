//! The cloud under overload, on every transport: excess requests are refused
//! with `ResourceExhausted` and a retry hint (or time out with
//! `DeadlineExceeded`), never another status, and the cloud answers a good
//! request right after.

use std::collections::HashMap;
use std::time::Duration;

use offramp_cloud::config::{BatchConfig, QuicConfig};
use offramp_cloud::{CloudConfig, CloudHandle};
use offramp_edge::throttle::refused_here;
use offramp_edge::transport::{ConnectConfig, Credentials, Transport, TransportKind};
use offramp_transport::status::pushback_ms;
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_load_gets_only_resource_exhausted_or_deadline_exceeded_on_every_transport() {
    let full = default_bundle();
    let cert = self_signed(&tmp("overload-certs"));
    let mut cfg = CloudConfig::new(full.clone());
    // One request at a time (no batching: the floor admitted whatever the
    // estimate says is one request) and an admission target of 1 ms: a
    // burst of hundreds at once is mostly excess. The hard bound is out of
    // the way, so what refuses is the admission rule.
    cfg.batch = BatchConfig { max_batch: 1, max_queue: 100_000, ..Default::default() };
    cfg.max_queue_delay = Duration::from_millis(1);
    cfg.quic = Some(QuicConfig { listen: any_loopback(), tls: cert.server_tls() });
    let cloud = CloudHandle::start(cfg).await.unwrap();
    let quic_url = cloud.quic_url().unwrap();
    let transports = [
        (TransportKind::Grpc, cloud.url(), Credentials::default()),
        (TransportKind::GrpcStream, cloud.url(), Credentials::default()),
        (TransportKind::Quic, quic_url, cert.credentials(None)),
    ];
    for (kind, url, creds) in transports {
        let t = Transport::new(kind, &url, &ConnectConfig::default(), &creds).unwrap();
        t.model_info(Duration::from_secs(5)).await.unwrap();
        let mut counts: HashMap<Code, usize> = HashMap::new();
        for wave in 0..3u64 {
            let calls: Vec<_> = (0..200u64)
                .map(|i| {
                    let (t, req) = (t.clone(), request(&full, 1, wave * 1000 + i));
                    tokio::spawn(async move { t.infer(req, Duration::from_secs(10)).await })
                })
                .collect();
            for call in calls {
                let code = match call.await.unwrap() {
                    Ok(_) => Code::Ok,
                    // The edge's own throttle refusing (after the cloud
                    // refused much): never sent.
                    Err(s) if refused_here(&s) => Code::ResourceExhausted,
                    Err(s) if s.code() == Code::ResourceExhausted => {
                        let hint = pushback_ms(&s);
                        assert!(hint.is_some_and(|ms| ms >= 1), "{kind:?}: no retry hint on {s:?}");
                        assert!(s.message().contains("overloaded"), "{kind:?}: {s:?}");
                        Code::ResourceExhausted
                    }
                    Err(s) if s.code() == Code::DeadlineExceeded => Code::DeadlineExceeded,
                    Err(s) => panic!("{kind:?}: excess load got {s:?}"),
                };
                *counts.entry(code).or_default() += 1;
            }
        }
        eprintln!("{kind:?}: {counts:?}");
        assert!(counts.get(&Code::Ok).is_some_and(|&n| n >= 1), "{kind:?}: nothing answered: {counts:?}");
        assert!(counts.get(&Code::ResourceExhausted).is_some_and(|&n| n >= 1), "{kind:?}: nothing refused: {counts:?}");
        // The burst is over: a good request is answered at once.
        let answer = t.infer(request(&full, 1, 7), Duration::from_secs(10)).await;
        assert!(answer.is_ok(), "{kind:?}: after the burst: {answer:?}");
    }
    cloud.stop().await.unwrap();
}
