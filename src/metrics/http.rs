//! The HTTP server of `GET /metrics`, `/healthz` and `/readyz` ([`serve`], [`serve_listener`]),
//! and with the read API on, of `/api/` (handed to [`crate::http_api`]) and the dashboard's
//! pages ([`crate::dashboard`]).
//!
//! Owns: the accept loop, the limits and deadlines of connections (the `HTTP_*` constants),
//! the answer to each path, and the content type of `/metrics` (Prometheus text 0.0.4, or
//! OpenMetrics when the scraper's `Accept` asks for it).
//!
//! Must never: let a slow or hostile client hold resources without bound (at most
//! [`HTTP_CONNECTIONS_MAX`] connections, headers within [`HTTP_HEADER_READ_TIMEOUT_MS`], every
//! connection closed after [`HTTP_CONNECTION_LIFETIME_MS`], keep-alive off so a connection
//! serves one request, a request body read up to `http_api::BODY_BYTES_MAX` bytes), or take
//! the processor down: a failed accept is logged and retried.
//!
//! Invariants: outside `/api/` only `GET` is answered (anything else is 404); once `shutdown`
//! completes no connection is accepted and in-flight responses get at most
//! [`HTTP_SHUTDOWN_GRACE_MS`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{Health, Metrics};

/// `Content-Type` of `/metrics` in the Prometheus text format (version 0.0.4).
pub const CONTENT_TYPE_PROMETHEUS: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// `Content-Type` of `/metrics` in the OpenMetrics text format, served when the scraper's
/// `Accept` header asks for it.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// HTTP connections served at once at most; further clients wait in the kernel's accept queue.
pub const HTTP_CONNECTIONS_MAX: usize = 64;
/// A client must send its request headers within this time, or is disconnected.
pub const HTTP_HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// A connection is closed after this time whatever it is doing (a slow reader of `/metrics`).
pub const HTTP_CONNECTION_LIFETIME_MS: u64 = 30_000;
/// After shutdown is signalled, in-flight responses get this long to finish.
pub const HTTP_SHUTDOWN_GRACE_MS: u64 = 5_000;
/// Pause after a failed `accept` (out of file descriptors, say), so the loop does not spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// Binds `listen` and serves until `shutdown` completes; see [`serve_listener`].
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    serve_listener(listener, metrics, health, None, shutdown).await
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` on an already bound listener (so a caller or
/// a test can bind port 0 and read the port) until `shutdown` completes, then lets in-flight
/// responses finish for at most [`HTTP_SHUTDOWN_GRACE_MS`]. Failed accepts are logged and
/// retried, never fatal: metrics must not take the processor down.
///
/// With `api`, paths under `/api/` are the HTTP read API ([`crate::http_api`]).
pub async fn serve_listener(
    listener: TcpListener,
    metrics: Metrics,
    health: Health,
    api: Option<Arc<crate::http_api::Api>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit,
            () = &mut shutdown => break,
        };
        // The semaphore is never closed; an error would only mean it was, so stop serving.
        let Ok(permit) = permit else { break };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics server: accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (metrics, health, api) = (metrics.clone(), health.clone(), api.clone());
        let service = service_fn(move |request: Request<Incoming>| {
            let dashboard = api.is_some();
            let api = api
                .clone()
                .filter(|_| request.uri().path().starts_with("/api/"));
            let plain = api
                .is_none()
                .then(|| respond(&metrics, &health, dashboard, &request));
            async move {
                let response = match (plain, api) {
                    (Some(response), _) => response,
                    (None, Some(api)) => {
                        let (parts, body) = request.into_parts();
                        let body = read_body(body).await;
                        api.respond(
                            &parts.method,
                            parts.uri.path(),
                            parts.uri.query(),
                            parts.headers.get(hyper::header::AUTHORIZATION),
                            body,
                        )
                        .await
                    }
                    (None, None) => text(StatusCode::NOT_FOUND, "not found\n"),
                };
                Ok::<_, Infallible>(response)
            }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(HTTP_HEADER_READ_TIMEOUT_MS))
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let lifetime = Duration::from_millis(HTTP_CONNECTION_LIFETIME_MS);
            match tokio::time::timeout(lifetime, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "metrics server: connection failed"),
                Err(_) => tracing::debug!("metrics server: connection outlived its deadline"),
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = Duration::from_millis(HTTP_SHUTDOWN_GRACE_MS);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("metrics server: connections still open at the end of the grace period");
    }
    Ok(())
}

/// A request body, at most [`crate::http_api::BODY_BYTES_MAX`] bytes.
async fn read_body(body: Incoming) -> Result<Bytes, String> {
    use http_body_util::BodyExt as _;
    let limit = crate::http_api::BODY_BYTES_MAX;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => Err(format!(
            "the request body could not be read (at most {limit} bytes): {error}"
        )),
    }
}

fn respond<B>(
    metrics: &Metrics,
    health: &Health,
    dashboard: bool,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if dashboard {
        if let Some(response) = crate::dashboard::respond(request.uri().path()) {
            return response;
        }
    }
    match request.uri().path() {
        "/metrics" => {
            let openmetrics = request
                .headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .any(|value| value.contains("application/openmetrics-text"));
            let (body, content_type) = if openmetrics {
                (metrics.render_openmetrics(), CONTENT_TYPE_OPENMETRICS)
            } else {
                (metrics.render(), CONTENT_TYPE_PROMETHEUS)
            };
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        "/healthz" if health.is_live() => text(StatusCode::OK, "ok\n"),
        "/healthz" => text(StatusCode::SERVICE_UNAVAILABLE, "not live\n"),
        "/readyz" => match health.readiness() {
            (true, _) => text(StatusCode::OK, "ready\n"),
            (false, reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {reason}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
