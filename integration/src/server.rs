//! The one HTTP/1.1 server loop of the harness: every in-test server (the stand-in function, the
//! function behind of-watchdog, the fake provider) is this loop with its own handler and state.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What a handler answers.
pub type Reply = hyper::Response<Full<Bytes>>;

/// Accepts connections on `listener` until the task running it is aborted, and answers each
/// request with `handler(request, state)`. Dropping the task drops every connection with it.
pub async fn serve<S, H, F>(listener: TcpListener, state: Arc<S>, handler: H)
where
    S: Send + Sync + 'static,
    H: Fn(hyper::Request<Incoming>, Arc<S>) -> F + Copy + Send + Sync + 'static,
    F: Future<Output = Result<Reply, Infallible>> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handler(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

/// A reply with `status` (200 if it is not one), `content_type` and `body`.
pub fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert("content-type", value);
    }
    response
}
