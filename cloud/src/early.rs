//! Admission of unary `Infer` calls before their message is read: a tower
//! layer in front of the gRPC services that decides on the call's headers
//! alone (its path and `grpc-timeout`), by [`crate::admission`]'s rule.
//!
//! A refused call is answered at once, trailers-only (`ResourceExhausted`
//! with `grpc-retry-pushback-ms` in the one header block): its body is never
//! read or decoded, the bearer-token check and tonic's decoding never run,
//! and nothing is allocated for it but the response. An admitted call
//! carries its place ([`Admitted`]) to the handler in the request's
//! extensions; if the call ends before the handler takes it (a bad body, a
//! refused token, the client gone), the place is given back with the
//! request.
//!
//! The offload stream and QUIC admit each request as it arrives on them, by
//! the same rule ([`crate::service::CloudState::infer`]).

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, Ready};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::Service;
use tower_layer::Layer;

use crate::admission::{Admission, Ticket};

/// The path of the unary call this layer admits.
pub const INFER: &str = "/offramp.v1.SplitInference/Infer";

/// An admitted unary call's place and deadline, for its handler.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The call's `grpc-timeout`.
    pub deadline: Option<Duration>,
    ticket: Arc<Mutex<Option<Ticket>>>,
}

impl Admitted {
    /// The place (once).
    pub fn take(&self) -> Option<Ticket> {
        self.ticket.lock().ok()?.take()
    }
}

/// The layer; see the module documentation.
#[derive(Debug, Clone)]
pub struct EarlyAdmissionLayer {
    admission: Arc<Admission>,
}

impl EarlyAdmissionLayer {
    pub fn new(admission: Arc<Admission>) -> Self {
        Self { admission }
    }
}

impl<S> Layer<S> for EarlyAdmissionLayer {
    type Service = EarlyAdmission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EarlyAdmission { inner, admission: self.admission.clone() }
    }
}

/// The service [`EarlyAdmissionLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct EarlyAdmission<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S> Service<http::Request<Body>> for EarlyAdmission<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if req.uri().path() == INFER {
            let deadline = offramp_transport::grpc_rules::grpc_timeout(req.headers());
            match self.admission.admit(deadline) {
                Ok(ticket) => {
                    req.extensions_mut().insert(Admitted { deadline, ticket: Arc::new(Mutex::new(Some(ticket))) });
                }
                Err(e) => {
                    let status: tonic::Status = crate::service::count_refusal(e).into();
                    return Either::Left(futures::future::ready(Ok(status.into_http())));
                }
            }
        }
        Either::Right(self.inner.call(req))
    }
}
