//! Robustness (issue 19): a real cloud and a real edge's local API driven
//! with malformed and hostile requests the way an outside client sends them
//! — the generated gRPC client (unary and `InferStream`), raw HTTP/2 frames
//! with the `h2` crate (no gRPC logic on the client side at all), and raw
//! QUIC. After every bad request a good one must still get the right answer,
//! and the bad one must get the precise status: the code the error table in
//! `docs/src/reference/errors.md` gives its class, and a message naming the field and
//! what was expected, bounded however large the input was.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use offramp_cloud::config::QuicConfig;
use offramp_cloud::{CloudConfig, CloudHandle};
use offramp_common::{codec, Bundle};
use offramp_edge::quic::QuicClient;
use offramp_edge::transport::ConnectConfig;
use offramp_edge::Edge;
use offramp_proto as pb;
use offramp_proto::classify_client::ClassifyClient;
use offramp_proto::split_inference_client::SplitInferenceClient;
use prost::Message;
use tonic::codegen::http;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::*;

/// Longest status message any bad request may get back: far under the 16 KiB
/// of metadata a default gRPC client accepts, whatever the request held.
const MESSAGE_BOUND: usize = 1024;

/// A malformed request, and the status it must get.
struct Case {
    name: &'static str,
    request: pb::InferRequest,
    code: Code,
    /// A part of the message that names the problem.
    says: &'static str,
}

fn case(name: &'static str, request: pb::InferRequest, code: Code, says: &'static str) -> Case {
    Case { name, request, code, says }
}

/// Every class of bad `InferRequest` the cloud must refuse, built from
/// `good` (a real request at split 1 of the default model).
fn bad_requests(full: &Bundle, good: &pb::InferRequest) -> Vec<Case> {
    let (shape, values) = codec::decode(good.hidden.as_ref().unwrap(), usize::MAX).unwrap();
    let with = |f: &dyn Fn(&mut pb::InferRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let with_data = |f: &dyn Fn(&mut Vec<u8>)| {
        with(&|r| {
            let t = r.hidden.as_mut().unwrap();
            let mut d = t.data.to_vec();
            f(&mut d);
            t.data = Bytes::from(d);
        })
    };
    let obs = |exit, prediction, confidence| pb::ExitObservation { exit, prediction, confidence };
    let history =
        |exits: Vec<pb::ExitObservation>| with(&|r| r.history = Some(pb::ExitHistory { exits: exits.clone() }));
    let rule = |exit, rule: &str, threshold| pb::ExitRuleSpec { exit, rule: rule.into(), threshold, patience: 0 };
    let rules = |specs: Vec<pb::ExitRuleSpec>| with(&|r| r.policy = specs.clone());
    let int8 = codec::encode(&values, &shape, pb::Encoding::Int8);
    let mut lz4 = codec::encode(&values, &shape, pb::Encoding::F32);
    codec::compress(&mut lz4, pb::Compression::Lz4);
    let classes = full.num_classes() as u32;
    vec![
        // Which model, which split.
        case("unknown model", with(&|r| r.model_id = "resnet".into()), Code::NotFound, "unknown model \"resnet\""),
        case("1 MiB model id", with(&|r| r.model_id = "m".repeat(1 << 20)), Code::NotFound, "(1048576 bytes)"),
        case("fingerprint", with(&|r| r.model_fingerprint = "0".repeat(16)), Code::FailedPrecondition, "fingerprint"),
        case("split out of range", with(&|r| r.split = 99), Code::InvalidArgument, "split index 99 out of range"),
        // The hidden state.
        case("no tensor", with(&|r| r.hidden = None), Code::InvalidArgument, "no hidden-state tensor"),
        case("short payload", with_data(&|d| d.truncate(d.len() - 4)), Code::InvalidArgument, "needs"),
        case(
            "NaN element",
            with_data(&|d| d[40..44].copy_from_slice(&f32::NAN.to_le_bytes())),
            Code::InvalidArgument,
            "NaN at element 10",
        ),
        case(
            "infinite element",
            with_data(&|d| d[0..4].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes())),
            Code::InvalidArgument,
            "-infinity at element 0",
        ),
        case("encoding", with(&|r| r.hidden.as_mut().unwrap().encoding = 99), Code::InvalidArgument, "encoding 99"),
        case(
            "compression",
            with(&|r| r.hidden.as_mut().unwrap().compression = 7),
            Code::InvalidArgument,
            "compression 7",
        ),
        case(
            "shape of the right size",
            with(&|r| r.hidden.as_mut().unwrap().shape.reverse()),
            Code::InvalidArgument,
            "expects [8, 14, 14]",
        ),
        case(
            "100,000 dimensions",
            with(&|r| r.hidden.as_mut().unwrap().shape = vec![1; 100_000]),
            Code::InvalidArgument,
            "dims",
        ),
        case(
            "element count overflows",
            with(&|r| r.hidden.as_mut().unwrap().shape = vec![u32::MAX; 4]),
            Code::InvalidArgument,
            "overflows",
        ),
        case(
            "int8 without scales",
            with(&|r| {
                let mut q = int8.clone();
                q.scales.pop();
                r.hidden = Some(q);
            }),
            Code::InvalidArgument,
            "scales and zero points (one per channel)",
        ),
        case(
            "int8 NaN scale",
            with(&|r| {
                let mut q = int8.clone();
                q.scales[0] = f32::NAN;
                r.hidden = Some(q);
            }),
            Code::InvalidArgument,
            "int8 scale of channel 0 is NaN",
        ),
        case(
            "int8 infinite zero point",
            with(&|r| {
                let mut q = int8.clone();
                q.zero_points[1] = f32::INFINITY;
                r.hidden = Some(q);
            }),
            Code::InvalidArgument,
            "int8 zero point of channel 1 is inf: scales and zero points must be finite",
        ),
        case(
            "truncated LZ4 block",
            with(&|r| {
                let mut t = lz4.clone();
                t.data = t.data.slice(0..t.data.len() / 2);
                r.hidden = Some(t);
            }),
            Code::InvalidArgument,
            "lz4 payload",
        ),
        case(
            "LZ4 of garbage",
            with(&|r| {
                let mut t = lz4.clone();
                t.data = Bytes::from(vec![0xf0; 64]);
                r.hidden = Some(t);
            }),
            Code::InvalidArgument,
            "lz4 payload (64 bytes)",
        ),
        case(
            "finite values that overflow the network",
            with(&|r| r.hidden = Some(codec::encode(&vec![f32::MAX; values.len()], &shape, pb::Encoding::F32))),
            Code::InvalidArgument,
            "overflowed the network",
        ),
        // The exit history.
        case(
            "history too long",
            history(vec![obs(0, 1, 0.5), obs(1, 1, 0.5), obs(2, 1, 0.5)]),
            Code::InvalidArgument,
            "exit history: 3 entries",
        ),
        case("history exit after the split", history(vec![obs(1, 1, 0.5)]), Code::InvalidArgument, "names exit 1"),
        case("confidence above 1", history(vec![obs(0, 1, 1.5)]), Code::InvalidArgument, "confidence 1.5"),
        case("NaN confidence", history(vec![obs(0, 1, f32::NAN)]), Code::InvalidArgument, "confidence NaN"),
        case("prediction out of range", history(vec![obs(0, classes, 0.5)]), Code::InvalidArgument, "predicts class"),
        case(
            "100,000 history entries",
            history(vec![obs(0, 1, 0.5); 100_000]),
            Code::InvalidArgument,
            "100000 entries",
        ),
        // Policy rules on the wire.
        case(
            "rule listed twice",
            rules(vec![rule(1, "max-prob", 0.9), rule(1, "entropy", 0.1)]),
            Code::InvalidArgument,
            "lists exit 1 twice",
        ),
        case("100,000 rules", rules(vec![rule(1, "never", 0.0); 100_000]), Code::InvalidArgument, "100000 rules"),
        case("unknown rule", rules(vec![rule(1, "x".repeat(5000).leak(), 0.5)]), Code::InvalidArgument, "unknown"),
        case("threshold above 1", rules(vec![rule(1, "max-prob", 2.0)]), Code::InvalidArgument, "outside [0, 1]"),
        case(
            "rule for an edge exit",
            rules(vec![rule(0, "always", 0.0)]),
            Code::InvalidArgument,
            "names exit 0, which is evaluated before the split",
        ),
    ]
}

/// Checks `got` is the precise refusal `c` describes, with a bounded message.
fn check_refusal(path: &str, c: &Case, got: &Status) {
    assert_eq!(got.code(), c.code, "{path}, {}: {got:?}", c.name);
    let m = got.message();
    assert!(m.contains(c.says), "{path}, {}: {m:?} lacks {:?}", c.name, c.says);
    assert!(m.len() < MESSAGE_BOUND, "{path}, {}: a message of {} bytes", c.name, m.len());
}

/// A cloud for the default model with gRPC and QUIC on loopback.
async fn cloud(cert: &SelfSigned) -> CloudHandle {
    let mut cfg = CloudConfig::new(default_bundle());
    cfg.quic = Some(QuicConfig { listen: any_loopback(), tls: cert.server_tls() });
    CloudHandle::start(cfg).await.unwrap()
}

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_precise_status_over_grpc_streams_and_quic_and_the_next_good_one_its_answer() {
    let cert = self_signed(&tmp("robust-cloud"));
    let cloud = cloud(&cert).await;
    let full = default_bundle();
    let good = request(&full, 1, 7);
    let mut grpc = SplitInferenceClient::new(channel(cloud.addr).await);
    let expected = grpc.infer(good.clone()).await.unwrap().into_inner();
    assert_eq!(expected.probabilities.len(), full.num_classes());
    let quic = QuicClient::new(&cloud.quic_url().unwrap(), &ConnectConfig::default(), &cert.credentials(None)).unwrap();
    let t = Duration::from_secs(10);
    let same = |path: &str, name: &str, r: &pb::InferResponse| {
        assert_eq!(
            (r.request_id, r.prediction, r.exit, r.confidence),
            (expected.request_id, expected.prediction, expected.exit, expected.confidence),
            "{path}: the good request after {name:?}"
        );
    };
    let cases = bad_requests(&full, &good);
    assert!(cases.len() >= 30, "{} cases", cases.len());

    // Unary gRPC and QUIC: each bad request alone, then the good one.
    for c in &cases {
        let e = grpc.infer(c.request.clone()).await.expect_err(c.name);
        check_refusal("gRPC", c, &e);
        same("gRPC", c.name, &grpc.infer(good.clone()).await.unwrap().into_inner());
        let e = quic.infer(&c.request, t).await.expect_err(c.name);
        check_refusal("QUIC", c, &e);
        same("QUIC", c.name, &quic.infer(&good, t).await.unwrap());
    }

    // One InferStream carrying every bad request, each between two good ones:
    // a bad request fails only its own response, and the stream stays OK.
    let mut sent = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mut g = good.clone();
        g.request_id = 1000 + i as u64;
        let mut b = c.request.clone();
        b.request_id = 2000 + i as u64;
        sent.push(g);
        sent.push(b);
    }
    let mut last = good.clone();
    last.request_id = 9999;
    sent.push(last);
    let n = sent.len();
    let mut answers = grpc.infer_stream(futures::stream::iter(sent)).await.unwrap().into_inner();
    let mut got = std::collections::HashMap::new();
    while let Some(m) = answers.message().await.expect("the stream ends OK") {
        got.insert(m.request_id, m.result.expect("every answer has a result"));
    }
    assert_eq!(got.len(), n, "one answer per request");
    for (i, c) in cases.iter().enumerate() {
        match &got[&(1000 + i as u64)] {
            pb::infer_stream_response::Result::Response(r) => {
                assert_eq!((r.prediction, r.exit), (expected.prediction, expected.exit), "stream, before {}", c.name)
            }
            other => panic!("stream: the good request before {:?} got {other:?}", c.name),
        }
        match &got[&(2000 + i as u64)] {
            pb::infer_stream_response::Result::Error(e) => {
                check_refusal("stream", c, &Status::new(Code::from(e.code), e.message.clone()))
            }
            other => panic!("stream: {:?} was answered {other:?}", c.name),
        }
    }
    assert!(matches!(got[&9999], pb::infer_stream_response::Result::Response(_)));
    cloud.stop().await.unwrap();
}

/// A gRPC message: flag, length, payload.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// What a raw HTTP/2 call got back: the HTTP status, and the gRPC status
/// from the headers (trailers-only) or the trailers.
struct RawAnswer {
    http: http::StatusCode,
    grpc: Option<Status>,
    /// gRPC messages in the response body, payloads only.
    messages: Vec<Vec<u8>>,
}

/// One call over raw HTTP/2: any path, headers and body bytes.
async fn raw_call(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> RawAnswer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::builder().method("POST").uri(format!("http://{addr}{path}")).header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (response, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
    // The server may have answered and reset the stream already.
    let _ = send.send_data(Bytes::from(body), true);
    let (parts, mut body) = response.await.unwrap().into_parts();
    let mut bytes = Vec::new();
    if let Some(s) = Status::from_header_map(&parts.headers) {
        return RawAnswer { http: parts.status, grpc: Some(s), messages: vec![] };
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.ok().flatten();
    let mut messages = Vec::new();
    let mut rest = &bytes[..];
    // (A refusal before gRPC, such as HTTP 415, has a text body.)
    while rest.len() >= 5 && parts.status == http::StatusCode::OK {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        assert!(rest.len() >= 5 + len, "a response message cut short");
        messages.push(rest[5..5 + len].to_vec());
        rest = &rest[5 + len..];
    }
    RawAnswer { http: parts.status, grpc: trailers.as_ref().and_then(Status::from_header_map), messages }
}

const GRPC: (&str, &str) = ("content-type", "application/grpc");

/// The checks every gRPC server of the project passes over raw HTTP/2
/// (`unary` is one of its unary methods, `message` a valid request for it).
async fn http2_rules(addr: SocketAddr, unary: &str, message: &[u8], service: &str) {
    let one = framed(message);
    let a = raw_call(addr, unary, &[("content-type", "application/json")], one.clone()).await;
    assert_eq!(a.http, http::StatusCode::UNSUPPORTED_MEDIA_TYPE, "JSON");
    let a = raw_call(addr, unary, &[], one.clone()).await;
    assert_eq!(a.http, http::StatusCode::UNSUPPORTED_MEDIA_TYPE, "no content-type");

    let refused = |a: RawAnswer, name: &str| -> Status {
        let s = a.grpc.unwrap_or_else(|| panic!("{name}: no gRPC status"));
        assert!(s.message().len() < MESSAGE_BOUND, "{name}: {} bytes", s.message().len());
        s
    };
    let s = refused(raw_call(addr, &format!("/{service}/Nope"), &[GRPC], one.clone()).await, "unknown method");
    assert_eq!(
        (s.code(), s.message()),
        (Code::Unimplemented, format!("unknown method \"Nope\" of service {service}").as_str())
    );
    let s = refused(raw_call(addr, "/evil.Service/Run", &[GRPC], one.clone()).await, "unknown service");
    assert_eq!(s.code(), Code::Unimplemented);
    assert!(s.message().starts_with("unknown service \"evil.Service\""), "{}", s.message());
    let s = refused(raw_call(addr, &format!("/{}/x", "s".repeat(8_000)), &[GRPC], one.clone()).await, "long path");
    assert_eq!(s.code(), Code::Unimplemented);

    let s = refused(raw_call(addr, unary, &[GRPC], [one.clone(), one.clone()].concat()).await, "two messages");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("more than one request message"), "{}", s.message());
    let s = refused(raw_call(addr, unary, &[GRPC], vec![]).await, "no message");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("carried none"), "{}", s.message());
    let s = refused(raw_call(addr, unary, &[GRPC], one[..one.len() - 1].to_vec()).await, "truncated");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("truncated"), "{}", s.message());
    let s = refused(raw_call(addr, unary, &[GRPC], framed(&[0xff; 40])).await, "not protobuf");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("cannot be decoded"), "{}", s.message());
    // A length prefix of 4 GiB with nothing behind it.
    let s = refused(raw_call(addr, unary, &[GRPC], vec![0, 0xff, 0xff, 0xff, 0xff]).await, "4 GiB prefix");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("too large"), "{}", s.message());
    // Compressed flag without a grpc-encoding.
    let mut compressed = one.clone();
    compressed[0] = 1;
    let s = refused(raw_call(addr, unary, &[GRPC], compressed).await, "compressed flag");
    assert_ne!(s.code(), Code::Ok, "{s:?}");
    // A malformed grpc-timeout is ignored (as the spec's parsers do); the call is served.
    let a = raw_call(addr, unary, &[GRPC, ("grpc-timeout", "soon")], one.clone()).await;
    assert_eq!(a.grpc.map(|s| s.code()), Some(Code::Ok));
    // And the good call, served.
    let a = raw_call(addr, unary, &[GRPC], one).await;
    assert_eq!(a.grpc.map(|s| s.code()), Some(Code::Ok));
    assert_eq!(a.messages.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_http2_requests_get_the_grpc_statuses_the_spec_gives_and_the_cloud_keeps_serving() {
    let cert = self_signed(&tmp("robust-h2"));
    let cloud = cloud(&cert).await;
    let full = default_bundle();
    let good = request(&full, 1, 5);
    let expected = SplitInferenceClient::new(channel(cloud.addr).await).infer(good.clone()).await.unwrap().into_inner();
    const INFER: &str = "/offramp.v1.SplitInference/Infer";
    http2_rules(cloud.addr, INFER, &good.encode_to_vec(), "offramp.v1.SplitInference").await;

    // A stream whose third message is not protobuf: the two before it are
    // answered, then the stream ends with INVALID_ARGUMENT saying why (never OK).
    let mut body = Vec::new();
    for id in [1, 2] {
        let mut r = good.clone();
        r.request_id = id;
        body.extend(framed(&r.encode_to_vec()));
    }
    body.extend(framed(&[0xff; 33]));
    body.extend(framed(&good.encode_to_vec()));
    let a = raw_call(cloud.addr, "/offramp.v1.SplitInference/InferStream", &[GRPC], body).await;
    let ids: Vec<u64> =
        a.messages.iter().map(|m| pb::InferStreamResponse::decode(&m[..]).unwrap().request_id).collect();
    assert_eq!(ids, vec![1, 2], "the requests before the broken one are answered");
    let s = a.grpc.expect("the broken stream ends with a status");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("cannot be decoded") && s.message().contains("2 requests"), "{}", s.message());
    // A stream that ends inside a message.
    let mut body = framed(&good.encode_to_vec());
    body.extend(&framed(&good.encode_to_vec())[..20]);
    let a = raw_call(cloud.addr, "/offramp.v1.SplitInference/InferStream", &[GRPC], body).await;
    assert_eq!(a.messages.len(), 1);
    assert_ne!(a.grpc.map(|s| s.code()), Some(Code::Ok), "a truncated stream does not end OK");

    // After all of it, the generated client gets the same answer as at first.
    let again = SplitInferenceClient::new(channel(cloud.addr).await).infer(good).await.unwrap().into_inner();
    assert_eq!((again.prediction, again.confidence), (expected.prediction, expected.confidence));
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_local_api_refuses_bad_inputs_precisely_and_keeps_answering() {
    let (edge_bundle, cloud_bundle) = split_bundles(1);
    let cloud = CloudHandle::start(CloudConfig::new(cloud_bundle)).await.unwrap();
    let edge = Arc::new(Edge::start(edge_config(edge_bundle, 1, vec![cloud.url()])).await.unwrap());
    let (listener, addr) = tcp_listener().await;
    tokio::spawn(offramp_edge::serve::serve(edge, listener, std::future::pending()));
    let mut client = ClassifyClient::new(channel(addr).await);
    let digit = sample(1);
    let good = pb::ClassifyRequest {
        input: Some(codec::encode(digit.image(0), &[1, 28, 28], pb::Encoding::F32)),
        deadline_ms: 2000,
        ..Default::default()
    };
    let expected = client.classify(good.clone()).await.unwrap().into_inner();
    assert_eq!(expected.prediction, digit.labels[0] as u32);

    let tensor = |values: &[f32], shape: &[usize]| pb::ClassifyRequest {
        input: Some(codec::encode(values, shape, pb::Encoding::F32)),
        ..Default::default()
    };
    let mut nan = digit.image(0).to_vec();
    nan[3] = f32::NAN;
    let mut int8 = codec::encode(digit.image(0), &[1, 28, 28], pb::Encoding::Int8);
    int8.scales[0] = f32::INFINITY;
    let cases: Vec<(&str, pb::ClassifyRequest, &str)> = vec![
        ("nothing", pb::ClassifyRequest::default(), "no input tensor"),
        ("tensor and text", pb::ClassifyRequest { text: "a digit".into(), ..good.clone() }, "both"),
        ("text to an image model", pb::ClassifyRequest { text: "seven".into(), ..Default::default() }, "text"),
        ("wrong shape", tensor(&[0.5; 100], &[1, 10, 10]), "expects [1, 28, 28]"),
        ("100,000 dimensions", tensor(&[0.5], &[1; 100_000]), "dims"),
        ("NaN pixel", tensor(&nan, &[1, 28, 28]), "NaN at element 3"),
        ("infinite int8 scale", pb::ClassifyRequest { input: Some(int8), ..Default::default() }, "scale of channel 0"),
        ("values that overflow the network", tensor(&[f32::MAX; 784], &[1, 28, 28]), "overflowed the network"),
        (
            "encoding",
            pb::ClassifyRequest {
                input: Some(pb::Tensor { encoding: 42, ..good.input.clone().unwrap() }),
                ..Default::default()
            },
            "encoding 42",
        ),
    ];
    for (name, req, says) in cases {
        let e = client.classify(req).await.expect_err(name);
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(says), "{name}: {:?} lacks {says:?}", e.message());
        assert!(e.message().len() < MESSAGE_BOUND, "{name}: {} bytes", e.message().len());
        let again = client.classify(good.clone()).await.unwrap().into_inner();
        assert_eq!((again.prediction, again.exit), (expected.prediction, expected.exit), "after {name}");
    }
    // The same HTTP/2 rules as the cloud's server.
    http2_rules(addr, "/offramp.v1.Classify/Classify", &good.encode_to_vec(), "offramp.v1.Classify").await;
    let again = client.classify(good).await.unwrap().into_inner();
    assert_eq!(again.prediction, expected.prediction);
    cloud.stop().await.unwrap();
}
