//! The status page's HTTP server: `GET /` (the page, numbers already in it) and
//! `GET /status.json` (what the page's script refreshes from). Nothing else: other paths
//! answer 404 and other methods 405, so the page cannot be used to change anything.

use super::collect::Latest;
use super::panels::View;
use super::render;
use super::StatusPageError;
use crate::shutdown::Shutdown;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;

/// The page's script is inline and fetches only from the page's own origin; nothing is
/// loaded from elsewhere, and no other site may frame it.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Serves the page in the background until `shutdown`; returns the bound address (port 0
/// picks one) and the server's task.
pub async fn serve(
    addr: SocketAddr,
    latest: Latest,
    mut shutdown: Shutdown,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), StatusPageError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StatusPageError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StatusPageError::Listen { addr, source })?;
    let for_json = latest.clone();
    let router = axum::Router::new()
        .route(
            "/",
            get(move || async move {
                match latest.get().await {
                    Some(s) => answer("text/html; charset=utf-8", render::page(&s)),
                    None => not_yet(),
                }
            }),
        )
        .route(
            "/status.json",
            get(move || async move {
                match for_json.get().await {
                    Some(s) => answer(
                        "application/json",
                        serde_json::to_string(&View::of(&s)).expect("a snapshot serializes"),
                    ),
                    None => not_yet(),
                }
            }),
        );
    let server = tokio::spawn(async move {
        let stopped = async move { shutdown.wait().await };
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(%error, "the status page server stopped");
        }
    });
    Ok((bound, server))
}

fn answer(content_type: &'static str, body: String) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// No snapshot could be collected yet (the first one is still being gathered).
fn not_yet() -> Response {
    let mut response = answer(
        "text/plain; charset=utf-8",
        "the first snapshot is still being collected; try again in a few seconds\n".into(),
    );
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}
