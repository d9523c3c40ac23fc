//! The status page (`orderflow status-page`): one read-only web page, for teams without
//! Grafana, that shows what the pipeline is doing now: throughput, open orders, retry
//! depth per tier, stuck orders, dead letters by reason, and the provider accounts.
//!
//! By role:
//!
//! | file          | owns                                                                 |
//! |---------------|----------------------------------------------------------------------|
//! | `mod.rs`      | [`StatusPageConfig`], [`StatusPageError`], [`run`]                   |
//! | `collect.rs`  | [`Snapshot`], gathered from PostgreSQL and Kafka; [`Latest`], the one |
//! |               | collection loop every viewer shares                                  |
//! | `parts.rs`    | the snapshot's parts read by other modules' readers: stuck orders,   |
//! |               | dead letters per reason, provider accounts                           |
//! | `panels.rs`   | the snapshot as headline tiles and panels of rows (pure)             |
//! | `render.rs`   | the page's first paint: tiles and panels as HTML                     |
//! | `page.html`   | the page: layout, style and the script that refreshes it            |
//! | `serve.rs`    | the axum routes: `GET /` and `GET /status.json`                      |
//!
//! What keeps it harmless to leave open: it only reads (GET only, no form, no write to
//! Kafka or PostgreSQL); one snapshot is collected at a time, at most one every
//! `--collect-every-ms`, and none while nobody looks, however many viewers there are; and
//! it never reads a secret (G5): no PIN column, no provider credential (the accounts file
//! is not read), no database URL or Kafka property on the page. It listens on
//! 127.0.0.1 unless told otherwise, and has no login: put it behind one to show it further.

mod collect;
mod panels;
mod parts;
mod render;
mod serve;
#[cfg(test)]
mod tests;

pub use collect::{Collector, Latest, Part, Snapshot, TierLag};
pub use panels::{panels, tiles, Panel, Tile, View};
pub use parts::{AccountView, DlqCounts, StuckOrder, StuckOrders};
pub use render::page;
pub use serve::serve;

use crate::kafka::{KafkaConfig, KafkaSetupError};
use crate::poll::{DepthConfig, DepthError};
use crate::shutdown::Shutdown;
use std::net::SocketAddr;
use std::time::Duration;

/// The page's address, which defaults to loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9480";

/// Settings of `orderflow status-page` besides the database and Kafka ones.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusPageConfig {
    /// Address to serve the page on; 127.0.0.1 keeps it on this machine (the page has no
    /// login). Port 0 picks a free port (the log names it).
    #[arg(
        long = "listen",
        env = "ORDERFLOW_STATUS_PAGE_LISTEN",
        default_value = DEFAULT_LISTEN,
        value_name = "HOST:PORT",
        value_parser = parse_listen
    )]
    pub listen: SocketAddr,

    /// Least time between two snapshots of PostgreSQL and Kafka, whatever the number of
    /// viewers (the page asks every 5 s).
    #[arg(
        long = "collect-every-ms",
        env = "ORDERFLOW_STATUS_PAGE_COLLECT_EVERY_MS",
        default_value_t = 2_000,
        value_parser = clap::value_parser!(u64).range(500..=600_000)
    )]
    pub collect_every_ms: u64,

    #[command(flatten)]
    pub depth: DepthConfig,
}

impl StatusPageConfig {
    /// Fails with one sentence on a setting that cannot work, before anything connects.
    pub fn check(&self, kafka: &KafkaConfig) -> Result<(), StatusPageError> {
        self.depth.topics(kafka)?;
        Ok(())
    }

    pub fn collect_every(&self) -> Duration {
        Duration::from_millis(self.collect_every_ms)
    }
}

/// `--listen`'s parser: an IP address and a port, said in one sentence when it is not.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("{text:?} is not an address to listen on; give an IP address and a port, such as {DEFAULT_LISTEN}")
    })
}

/// Why the status page cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StatusPageError {
    #[error("cannot serve the status page on {addr} ({source})")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Depth(#[from] DepthError),
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
}

/// Checks the settings and the cluster, serves the page, and returns once shutdown fires.
/// `scan` is the stuck rule's allowances (the stages' schedule).
pub async fn run(
    config: StatusPageConfig,
    kafka: KafkaConfig,
    pool: sqlx::PgPool,
    scan: crate::db::find::StuckScan,
    mut shutdown: Shutdown,
) -> Result<(), StatusPageError> {
    let lag = config.depth.lag(&kafka)?;
    {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || kafka.check_reachable())
            .await
            .expect("the reachability check does not panic")?;
    }
    let collector = Collector::new(pool, lag, &kafka, &config.depth, scan);
    let latest = Latest::start(collector, config.collect_every(), shutdown.clone());
    let (addr, server) = serve(config.listen, latest, shutdown.clone()).await?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the status page is reachable from other machines and has no login");
    }
    tracing::info!(url = %format!("http://{addr}/"), "serving the status page");
    shutdown.wait().await;
    let _ = server.await;
    Ok(())
}
