//! The serving path: what a caller talks to. The gRPC transport (`grpc`: listeners, byte and
//! connection budgets, proto <-> domain conversion, the one `Error` -> status mapping), the
//! HTTP/JSON API that calls the same handlers (`http`), the lingering close both end connections
//! with (`linger`), TLS for the listeners (`tls`), the bound
//! on Classify calls in progress that both APIs share, served in turns by connection (`turns`),
//! steps that grow with a request's size kept off the async runtime's workers (`blocking`),
//! and the classification facade (`classify`) that turns a validated request into one job per
//! task on its live model and the model's decision.

pub mod blocking;
pub mod classify;
pub mod grpc;
pub mod http;
pub(crate) mod linger;
pub mod tls;
pub mod turns;
