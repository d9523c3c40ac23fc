//! orderflow: places digital-goods orders with upstream providers exactly once and tracks
//! them to a final state, on Kafka and PostgreSQL.
//!
//! A map for newcomers (`docs/design/lifecycle.md` has the flow and guarantees G1–G9):
//!
//! - [`core`]: the pure core, no IO. Event contracts, order lifecycle, offset watermark, the
//!   consumer loop's state machine ([`core::engine`]),
//!   check schedule, backoff, rate limiting and the breaker; unit- and property-tested.
//! - [`provider`]: what a provider is asked and how its answers are classified; provider
//!   accounts with their concurrency and rate caps (the slots this process holds).
//! - [`znet`]: the first provider: answer parsing (pure) and HTTP client.
//! - [`kafka`]: client settings, topic specs, the shared consumer loop ([`kafka::stage`]),
//!   event publishing and the dead-letter queue (written, read back, replayed).
//! - [`db`]: PostgreSQL: migrations, the `orders` table and the dispatch claims.
//! - [`dispatch`]: the dispatch stage.
//! - [`sink`]: the sink, `orders.state` into the `orders` table in batches.
//! - [`poll`]: the poll stage (status checks on delay-topic tiers) and its reconciler.
//! - [`pin`]: sealing PIN codes under the shop's rotating keys (AES-256-GCM).
//! - [`lookup`]: keyed digests of customers' phone numbers, for `order show --phone`.
//! - [`account_status`]: the provider accounts watched from the stages: each process's view
//!   of each account (balance, breaker, caps, recent answers) written to PostgreSQL for
//!   `orderflow accounts`, and the scheduled balance checks.
//! - [`account_caps`]: each account's caps shared by every dispatch and poll process, as
//!   slots leased in PostgreSQL by a keeper per account (fair shares of what each wants).
//! - [`metrics`]: Prometheus metrics and the /metrics, /healthz, /readyz server.
//! - [`status`]: the read-only status page (`orderflow status-page`): a snapshot of
//!   PostgreSQL and Kafka, rendered for people, refreshed by a small script.
//! - [`telemetry`]: OpenTelemetry traces across stages through Kafka headers (off unless
//!   an OTLP endpoint is configured).
//! - [`secret`], [`shutdown`]: values that never print; the shutdown signal.
//! - [`outage`]: stages ride out broker and database outages up to a patience, not ready
//!   meanwhile ([`core::outage`] decides what can be waited out).
//! - [`crash`]: crash points for the kill tests (`ORDERFLOW_CRASH_AT`).
//! - `testbed` (feature `testbed`, on by default): the test bed, not production. The znet
//!   simulator (`testbed::sim`), the load generator behind the demo and the benchmarks
//!   (`testbed::load`), and `orderflow bench` (`testbed::bench`: throughput against the
//!   raw Kafka ceiling, memory while checks wait, CPU and memory read from `/proc`).
//!   Production modules never import it.
//! - [`cli`]: the `orderflow` command's subcommands, one module each (the stages' shared
//!   start-up in [`cli::stage`]; `order show`, `list` and `submit` in [`cli::order`]; `dlq
//!   list|show|replay` in [`cli::dlq`]); the binary
//!   (`src/main.rs`) only parses, sets up logging and the runtime, and hands over.

pub mod account_caps;
pub mod account_status;
pub mod cli;
pub mod core;
pub mod crash;
pub mod db;
pub mod dispatch;
pub mod kafka;
pub mod lookup;
pub mod metrics;
pub mod outage;
pub mod pin;
pub mod poll;
pub mod provider;
pub mod secret;
pub mod shutdown;
pub mod sink;
pub mod status;
pub mod telemetry;
#[cfg(feature = "testbed")]
pub mod testbed;
pub mod znet;
