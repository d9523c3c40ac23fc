//! The small HTTP server every long-running command exposes: `/metrics`, `/healthz` (the
//! process runs) and `/readyz` (its stage is consuming, and the database and the Kafka
//! cluster answer: `crate::outage` watches them).

use super::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where to serve metrics; the flag is shared by every long-running command.
#[derive(Clone, Debug, clap::Args)]
pub struct MetricsConfig {
    /// Address of the /metrics, /healthz and /readyz endpoints (for example
    /// 127.0.0.1:9464); none when unset.
    #[arg(long = "metrics-listen", env = "ORDERFLOW_METRICS_LISTEN")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr} ({source})")]
pub struct MetricsError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Serves the endpoints in the background, if an address is configured; returns the bound
/// address.
pub async fn serve(
    config: &MetricsConfig,
    metrics: Arc<Metrics>,
) -> Result<Option<SocketAddr>, MetricsError> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError { addr, source })?;
    let (for_metrics, for_ready) = (Arc::clone(&metrics), metrics);
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    for_metrics.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if for_ready.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the metrics server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    Ok(Some(bound))
}
