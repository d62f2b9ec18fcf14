//! gRPC's rules where tonic's defaults differ, as a tower layer around a
//! gRPC server (`Server::builder().layer(GrpcRulesLayer::new(..))`): the
//! cloud's `SplitInference` and the edge's local `Classify` API wear the same
//! one.
//!
//! | request | tonic alone | with this layer |
//! |---|---|---|
//! | `content-type` not `application/grpc…` | served | HTTP 415 (the gRPC over HTTP/2 spec) |
//! | unknown service or method | `UNIMPLEMENTED`, no message | `UNIMPLEMENTED` naming the service or method |
//! | two messages on a unary call | the second silently dropped | `INVALID_ARGUMENT` |
//! | message over `max_decoding_message_size` | `OUT_OF_RANGE` | `INVALID_ARGUMENT` (as docs/src/reference/errors.md promises for oversized payloads) |
//! | unary call without a message, or with a truncated one | `INTERNAL` | `INVALID_ARGUMENT` |
//! | unary message that is not valid protobuf | `INTERNAL` | `INVALID_ARGUMENT` |
//! | `grpc-timeout` expired before the answer | `CANCELLED` | `DEADLINE_EXCEEDED` |
//!
//! What the client sent wrong is `INVALID_ARGUMENT` here, as for every other
//! bad request: an edge reads `INTERNAL` as "the cloud failed" and would retry
//! the same bad request elsewhere. Statuses are rewritten only in
//! trailers-only responses (status in the headers), which is how tonic
//! answers a call that failed before or without a handler; a streaming
//! call's own trailers are the service's (the cloud's `InferStream` ends a
//! broken stream with its own status).
//!
//! The deadline: tonic's own `grpc-timeout` timer sits outside every user
//! layer and answers `CANCELLED` when it fires. This layer starts its own
//! timer for the same deadline when the call arrives, before tonic's (which
//! starts once the inner call is made), so it fires first, or in the same
//! timer tick, where the inner future is polled first; either way the client
//! gets `DEADLINE_EXCEEDED`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use offramp_base::echo;
use tonic::body::Body;
use tonic::codegen::http::{self, header, HeaderMap, HeaderValue, StatusCode};
use tonic::codegen::Service;
use tonic::{Code, Status};
use tower_layer::Layer;

/// What the rules need to know about the services behind the layer.
#[derive(Debug, Clone, Default)]
struct Rules {
    /// Fully qualified service names (`offramp.v1.SplitInference`), to tell
    /// an unknown service from an unknown method. Empty: not told apart.
    services: Vec<&'static str>,
    /// Paths (`/package.Service/Method`) whose request is a stream: every
    /// other method takes exactly one request message.
    client_streaming: Vec<&'static str>,
}

/// The layer; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct GrpcRulesLayer {
    rules: Arc<Rules>,
}

impl GrpcRulesLayer {
    /// Rules for a server holding `services` (fully qualified names), whose
    /// methods at the paths `client_streaming` take a stream of requests.
    pub fn new(services: &[&'static str], client_streaming: &[&'static str]) -> Self {
        Self { rules: Arc::new(Rules { services: services.to_vec(), client_streaming: client_streaming.to_vec() }) }
    }
}

impl<S> Layer<S> for GrpcRulesLayer {
    type Service = GrpcRules<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcRules { inner, rules: self.rules.clone() }
    }
}

/// The service [`GrpcRulesLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct GrpcRules<S> {
    inner: S,
    rules: Arc<Rules>,
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send + 'static>>;

impl<S> Service<http::Request<Body>> for GrpcRules<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if let Some(refused) = unsupported_media_type(req.headers()) {
            return Box::pin(async move { Ok(refused) });
        }
        // The deadline is taken now, before tonic's own timer starts.
        let deadline = grpc_timeout(req.headers()).map(|d| (d, tokio::time::Instant::now() + d));
        let path = req.uri().path().to_string();
        let req = if self.rules.client_streaming.iter().any(|p| *p == path) {
            req
        } else {
            req.map(|body| Body::new(OneMessage::new(body, &path)))
        };
        // The clone that was made ready is the one called (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let rules = self.rules.clone();
        Box::pin(async move {
            let call = inner.call(req);
            let response = match deadline {
                Some((timeout, at)) => match tokio::time::timeout_at(at, call).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Ok(Status::deadline_exceeded(format!(
                            "the deadline (grpc-timeout {timeout:?}) passed before the answer"
                        ))
                        .into_http())
                    }
                },
                None => call.await?,
            };
            Ok(rules.fix(response, &path))
        })
    }
}

/// HTTP 415 for a request whose content-type is not `application/grpc`,
/// `application/grpc+…` or `application/grpc;…`.
fn unsupported_media_type(headers: &HeaderMap) -> Option<http::Response<Body>> {
    let value = headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes).unwrap_or_default();
    let grpc =
        value.strip_prefix(b"application/grpc").is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')));
    if grpc {
        return None;
    }
    let got = if value.is_empty() { "none".to_string() } else { echo::quoted(&String::from_utf8_lossy(value)) };
    let mut response = http::Response::new(Body::new(format!(
        "gRPC requests need content-type application/grpc; this one has {got}\n"
    )));
    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    Some(response)
}

/// The `grpc-timeout` header (`1S`, `250m`, ...: at most 8 digits and a
/// unit), as the gRPC over HTTP/2 spec writes it; `None` when absent or
/// malformed (as tonic treats it).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl Rules {
    /// Rewrites a trailers-only response whose status tonic chose otherwise
    /// than gRPC's rules (see the module's table).
    fn fix(&self, response: http::Response<Body>, path: &str) -> http::Response<Body> {
        let Some(status) = Status::from_header_map(response.headers()) else { return response };
        let message = status.message();
        let fixed = match status.code() {
            Code::Unimplemented if message.is_empty() => Status::unimplemented(self.unknown(path)),
            Code::OutOfRange if message.contains("message length too large") => {
                Status::invalid_argument(format!("request message too large: {}", echo::text_within(message, 256)))
            }
            Code::Internal if message.starts_with("Missing request message") => Status::invalid_argument(format!(
                "{} takes one request message; the call carried none",
                echo::text(path)
            )),
            Code::Internal if message.starts_with("Unexpected EOF decoding stream") => Status::invalid_argument(
                "the request message is truncated: the request body ended inside it (its length prefix says more)",
            ),
            Code::Internal if message.starts_with("failed to decode Protobuf message") => Status::invalid_argument(
                format!("the request message cannot be decoded: {}", echo::text_within(message, 256)),
            ),
            _ => return response,
        };
        fixed.into_http()
    }

    /// The message for a path no service answers.
    fn unknown(&self, path: &str) -> String {
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return format!("{} is not a gRPC method path (/package.Service/Method)", echo::quoted(path));
        };
        if self.services.is_empty() {
            format!("unknown service or method: this server does not implement {}", echo::quoted(path))
        } else if self.services.contains(&service) {
            format!("unknown method {} of service {service}", echo::quoted(method))
        } else {
            format!("unknown service {} (this server implements {})", echo::quoted(service), self.services.join(", "))
        }
    }
}

/// A unary call's request body: passes the bytes through and fails the body
/// with `INVALID_ARGUMENT` when a second gRPC message begins (tonic reads
/// the first and drops the rest unread).
struct OneMessage {
    inner: Body,
    path: String,
    /// Bytes of the current message header seen so far (5: flag + length).
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message's payload still to come.
    remaining: u64,
    messages: u32,
}

impl OneMessage {
    fn new(inner: Body, path: &str) -> Self {
        Self { inner, path: echo::text(path), header: [0; 5], header_len: 0, remaining: 0, messages: 0 }
    }

    /// Follows the message framing through `data`.
    fn count(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            if self.header_len == 0 {
                self.messages += 1;
                if self.messages > 1 {
                    return Err(Status::invalid_argument(format!(
                        "{} is a unary method: the call carried more than one request message",
                        self.path
                    )));
                }
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                let [_, a, b, c, d] = self.header;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.header_len = 0;
            }
        }
        Ok(())
    }
}

impl HttpBody for OneMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            if let Err(status) = data.map_or(Ok(()), |d| this.count(d)) {
                return Poll::Ready(Some(Err(status)));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use offramp_proto as pb;
    use offramp_proto::split_inference_server::{SplitInference, SplitInferenceServer};
    use prost::Message;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::server::NamedService;
    use tonic::{Request, Response, Streaming};

    use super::*;

    /// A service that answers at once, except model "slow" (5 s).
    struct Echo;

    #[tonic::async_trait]
    impl SplitInference for Echo {
        async fn get_model_info(&self, _: Request<pb::ModelInfoRequest>) -> Result<Response<pb::ModelInfo>, Status> {
            Ok(Response::new(pb::ModelInfo::default()))
        }

        async fn infer(&self, r: Request<pb::InferRequest>) -> Result<Response<pb::InferResponse>, Status> {
            let r = r.into_inner();
            if r.model_id == "slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok(Response::new(pb::InferResponse { request_id: r.request_id, ..Default::default() }))
        }

        type InferStreamStream = ReceiverStream<Result<pb::InferStreamResponse, Status>>;

        async fn infer_stream(
            &self,
            r: Request<Streaming<pb::InferRequest>>,
        ) -> Result<Response<Self::InferStreamStream>, Status> {
            let mut incoming = r.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            tokio::spawn(async move {
                while let Some(Ok(req)) = futures::StreamExt::next(&mut incoming).await {
                    let _ = tx.send(Ok(pb::InferStreamResponse { request_id: req.request_id, result: None })).await;
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    /// A request body sent in the given chunks.
    struct Chunks(VecDeque<Bytes>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    /// A gRPC message: flag, length, payload.
    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn infer_message(id: u64) -> Vec<u8> {
        framed(&pb::InferRequest { request_id: id, model_id: "m".into(), ..Default::default() }.encode_to_vec())
    }

    /// The rules as the cloud's server sets them.
    fn layer() -> GrpcRulesLayer {
        type Split = SplitInferenceServer<Echo>;
        type Health = tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;
        GrpcRulesLayer::new(&[Split::NAME, Health::NAME], &["/offramp.v1.SplitInference/InferStream"])
    }

    fn service() -> GrpcRules<SplitInferenceServer<Echo>> {
        layer().layer(SplitInferenceServer::new(Echo).max_decoding_message_size(1024))
    }

    async fn call(path: &str, content_type: Option<&str>, chunks: Vec<Vec<u8>>) -> http::Response<Body> {
        let mut req = http::Request::builder().method("POST").uri(path).header("te", "trailers");
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let body = Body::new(Chunks(chunks.into_iter().map(Bytes::from).collect()));
        let mut svc = service();
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        svc.call(req.body(body).unwrap()).await.unwrap()
    }

    /// The status of a trailers-only answer (`None`: the call was served).
    fn status(r: &http::Response<Body>) -> Option<Status> {
        Status::from_header_map(r.headers())
    }

    const INFER: &str = "/offramp.v1.SplitInference/Infer";

    #[tokio::test]
    async fn a_request_that_is_not_grpc_gets_http_415() {
        for ct in [Some("application/json"), Some("text/plain"), Some("application/grpcx"), None] {
            let r = call(INFER, ct, vec![infer_message(1)]).await;
            assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        }
        for ct in ["application/grpc", "application/grpc+proto", "application/grpc; charset=utf-8"] {
            let r = call(INFER, Some(ct), vec![infer_message(1)]).await;
            assert_eq!(r.status(), StatusCode::OK, "{ct}");
            assert!(status(&r).is_none(), "{ct}: served");
        }
    }

    #[tokio::test]
    async fn unknown_services_and_methods_are_named() {
        let r = call("/offramp.v1.SplitInference/Nope", Some("application/grpc"), vec![infer_message(1)]).await;
        let s = status(&r).unwrap();
        assert_eq!(s.code(), Code::Unimplemented);
        assert_eq!(s.message(), "unknown method \"Nope\" of service offramp.v1.SplitInference");
        let r = call("/foo.Bar/Baz", Some("application/grpc"), vec![infer_message(1)]).await;
        let s = status(&r).unwrap();
        assert_eq!(s.code(), Code::Unimplemented);
        assert!(s.message().starts_with("unknown service \"foo.Bar\" (this server implements"), "{}", s.message());
        assert!(s.message().contains("grpc.health.v1.Health"), "{}", s.message());
        let long = format!("/{}/x", "s".repeat(60_000));
        let s = status(&call(&long, Some("application/grpc"), vec![]).await).unwrap();
        assert!(s.message().len() < 300, "bounded: {}", s.message().len());
    }

    #[tokio::test]
    async fn a_unary_call_takes_exactly_one_whole_message() {
        let grpc = Some("application/grpc");
        // Two messages, in one chunk or split anywhere.
        let two = [infer_message(1), infer_message(2)].concat();
        for cut in [0, 3, 7, two.len() / 2, two.len() - 1] {
            let chunks = if cut == 0 { vec![two.clone()] } else { vec![two[..cut].to_vec(), two[cut..].to_vec()] };
            let s = status(&call(INFER, grpc, chunks).await).expect("refused");
            assert_eq!(s.code(), Code::InvalidArgument, "cut {cut}: {s:?}");
            assert!(s.message().contains("more than one request message"), "{}", s.message());
        }
        // None.
        let s = status(&call(INFER, grpc, vec![]).await).unwrap();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("carried none"), "{}", s.message());
        // Truncated: the length prefix says more than the body holds.
        let whole = infer_message(1);
        let s = status(&call(INFER, grpc, vec![whole[..whole.len() - 2].to_vec()]).await).unwrap();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("truncated"), "{}", s.message());
        // Not protobuf.
        let s = status(&call(INFER, grpc, vec![framed(&[0xff; 12])]).await).unwrap();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("cannot be decoded"), "{}", s.message());
        // Over the size limit (1024 here): INVALID_ARGUMENT, not OUT_OF_RANGE.
        let big = framed(&pb::InferRequest { model_id: "m".repeat(4096), ..Default::default() }.encode_to_vec());
        let s = status(&call(INFER, grpc, vec![big]).await).unwrap();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("too large") && s.message().contains("1024"), "{}", s.message());
        // One message, in pieces: served.
        let r = call(INFER, grpc, whole.chunks(3).map(<[u8]>::to_vec).collect()).await;
        assert!(status(&r).is_none() && r.status() == StatusCode::OK);
        // A stream of requests is not a unary call.
        let r = call("/offramp.v1.SplitInference/InferStream", grpc, vec![two.clone()]).await;
        assert!(status(&r).is_none() && r.status() == StatusCode::OK);
    }

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        let parse = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    /// One call over raw HTTP/2 (no gRPC client: nothing enforces the
    /// deadline on this side); the status from the headers or the trailers.
    async fn raw_call(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Status {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let mut req =
            http::Request::builder().method("POST").uri(format!("http://{addr}{path}")).header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (response, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
        // The server may have answered (and reset the stream) already, as for
        // a 1 ms deadline: what it answered is what counts.
        let _ = send.send_data(Bytes::from(body), true);
        let (parts, mut body) = response.await.unwrap().into_parts();
        if let Some(s) = Status::from_header_map(&parts.headers) {
            return s;
        }
        while let Some(chunk) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.unwrap().len());
        }
        let trailers = body.trailers().await.unwrap().expect("a gRPC answer ends with trailers");
        Status::from_header_map(&trailers).expect("the trailers carry a status")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn through_a_real_server_the_rules_hold() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The server as the cloud builds it, with the layer wired in.
        let (_health, health_service) = tonic_health::server::health_reporter();
        let split_service = SplitInferenceServer::new(Echo).max_decoding_message_size(1024);
        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .max_concurrent_streams(Some(256))
            .layer(layer())
            .add_service(health_service)
            .add_service(split_service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let server = tokio::spawn(server);
        let grpc = ("content-type", "application/grpc");
        let slow = framed(&pb::InferRequest { model_id: "slow".into(), ..Default::default() }.encode_to_vec());
        // An expired grpc-timeout: DEADLINE_EXCEEDED (tonic alone: CANCELLED).
        for timeout in ["1m", "20m", "100m"] {
            let s = raw_call(addr, INFER, &[grpc, ("grpc-timeout", timeout)], slow.clone()).await;
            assert_eq!(s.code(), Code::DeadlineExceeded, "{timeout}: {s:?}");
            assert!(s.message().contains("deadline"), "{}", s.message());
        }
        // Within its deadline: served.
        let s = raw_call(addr, INFER, &[grpc, ("grpc-timeout", "5S")], infer_message(3)).await;
        assert_eq!(s.code(), Code::Ok, "{s:?}");
        // Health answers through the layer.
        let check = framed(&tonic_health::pb::HealthCheckRequest { service: String::new() }.encode_to_vec());
        assert_eq!(raw_call(addr, "/grpc.health.v1.Health/Check", &[grpc], check).await.code(), Code::Ok);
        // The other rules, over the wire.
        let s = raw_call(addr, "/offramp.v1.SplitInference/Nope", &[grpc], infer_message(1)).await;
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unimplemented, "unknown method \"Nope\" of service offramp.v1.SplitInference")
        );
        let two = [infer_message(1), infer_message(2)].concat();
        assert_eq!(raw_call(addr, INFER, &[grpc], two).await.code(), Code::InvalidArgument);
        let big = framed(&pb::InferRequest { model_id: "m".repeat(4096), ..Default::default() }.encode_to_vec());
        assert_eq!(raw_call(addr, INFER, &[grpc], big).await.code(), Code::InvalidArgument);
        assert_eq!(raw_call(addr, INFER, &[grpc], vec![]).await.code(), Code::InvalidArgument);
        server.abort();
    }
}
