//! What every integration test needs: the real broker and database started by
//! `ops/kafka/broker.sh` and `ops/postgres/db.sh` (or named by ORDERFLOW_KAFKA_BROKERS and
//! ORDERFLOW_TEST_DATABASE_URL), a topic prefix and a database of the test's own, so tests
//! never see each other's data and can run in any order; and what several tests share: the
//! topic specs with tiers of their own, free ports, the repository's root, `orderflow`
//! stage processes with their logs, a receiver of their traces.

#![allow(dead_code)]

use orderflow::db::DbConfig;
use orderflow::kafka::topics::{self, name, TopicSpec, TopicSpecs};
use orderflow::kafka::KafkaConfig;
use sqlx::{Connection, PgConnection, PgPool};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

pub fn brokers() -> String {
    std::env::var("ORDERFLOW_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The server's admin URL: a role allowed to create databases.
pub fn admin_database_url() -> String {
    std::env::var("ORDERFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://orderflow:orderflow@127.0.0.1:5432/orderflow".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(what: &str) -> String {
    format!("{what}{}", uuid::Uuid::new_v4().simple())
}

/// The repository's root: the project's scripts (ops/) and documents are read from there.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A port of 127.0.0.1 nothing listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An OTLP/HTTP receiver on a free port of 127.0.0.1 that keeps every trace export; returns
/// them and its endpoint (for OTEL_EXPORTER_OTLP_ENDPOINT).
pub async fn otlp_receiver() -> (Arc<Mutex<Vec<Vec<u8>>>>, String) {
    let traces: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let store = Arc::clone(&traces);
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = Arc::clone(&store);
            async move {
                store.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (traces, endpoint)
}

/// Kafka settings with a prefix of the test's own; nothing is created yet.
pub fn kafka(test: &str) -> KafkaConfig {
    KafkaConfig::for_tests(&brokers(), &format!("{}.", unique(&format!("t-{test}-"))))
}

/// Partitions per topic in most tests. The spec's 24 are for scale; the behaviour a test
/// checks does not depend on the count, and one broker holding every test's topics at 24
/// partitions (tens of thousands of partitions in a run) runs out of heap. At 6 it ran out
/// of file descriptors (about 1.2 per partition; the usual limit of 20,000, which a
/// container may not let the broker raise): the broker stopped with "Too many open files"
/// once a run's partitions neared 20,000. Three still spread a group of three members. The
/// scaling test uses the spec's counts ([`kafka_with_spec_topics`]).
pub const TEST_PARTITIONS: i32 = 3;

/// The topic specs, with at most [`TEST_PARTITIONS`] partitions each.
pub fn test_specs() -> TopicSpecs {
    let mut specs = TopicSpecs::load(None).expect("built-in specs");
    for t in &mut specs.topics {
        t.partitions = t.partitions.min(TEST_PARTITIONS);
    }
    specs
}

/// `specs` with the status-check tiers `tiers` (labels separated by commas, as in
/// ORDERFLOW_CHECK_TIERS) in place of the spec's, each made like the spec's first tier.
pub fn with_only_tiers(mut specs: TopicSpecs, tiers: &str) -> TopicSpecs {
    const TIER_PREFIX: &str = "orders.status-check.";
    let template = specs
        .topics
        .iter()
        .find(|t| t.name.starts_with(TIER_PREFIX))
        .expect("a status-check tier in the spec")
        .clone();
    specs.topics.retain(|t| !t.name.starts_with(TIER_PREFIX));
    specs.topics.extend(tiers.split(',').map(|label| TopicSpec {
        name: name::status_check(label),
        ..template.clone()
    }));
    specs
}

/// Kafka settings with every topic of the spec created under a prefix of the test's own,
/// with at most [`TEST_PARTITIONS`] partitions each.
pub async fn kafka_with_topics(test: &str) -> KafkaConfig {
    apply_specs(test, test_specs()).await
}

/// [`kafka_with_topics`] with the spec's own partition counts.
#[allow(dead_code)]
pub async fn kafka_with_spec_topics(test: &str) -> KafkaConfig {
    apply_specs(test, TopicSpecs::load(None).expect("built-in specs")).await
}

async fn apply_specs(test: &str, specs: TopicSpecs) -> KafkaConfig {
    let kafka = kafka(test);
    let report = topics::apply(&kafka, &specs)
        .await
        .expect("applying the topics");
    assert!(report.is_clean(), "{report:?}");
    kafka
}

/// A fresh, migrated database of the test's own, dropped by [`TestDb::drop_now`] (or left
/// for inspection if the test fails before).
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new_empty() -> TestDb {
        let admin = admin_database_url();
        let name = unique("orderflow_test_");
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connecting to the test database server");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("creating a test database");
        let (base, _) = admin
            .rsplit_once('/')
            .expect("a database URL ends in /name");
        let url = format!("{base}/{name}");
        let pool = DbConfig::for_tests(&url)
            .connect()
            .await
            .expect("connecting to the test database");
        TestDb { name, url, pool }
    }

    pub async fn new_migrated() -> TestDb {
        let db = Self::new_empty().await;
        orderflow::db::migrate(&db.pool)
            .await
            .expect("migrating the test database");
        db
    }

    pub async fn drop_now(self) {
        self.pool.close().await;
        // Cleanup only: a drop that keeps failing (other tests creating and dropping
        // databases at the same moment) leaves a database behind, not a failed test.
        let mut last = None;
        for _ in 0..5 {
            let dropped = async {
                let mut conn = PgConnection::connect(&admin_database_url()).await?;
                sqlx::query(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .execute(&mut conn)
                .await
            }
            .await;
            match dropped {
                Ok(_) => return,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        eprintln!("could not drop test database {}: {last:?}", self.name);
    }
}
/// A query whose answer is a plan's lines (`EXPLAIN …`), for [`batch_plan`] to bind.
pub type ExplainQuery<'q> =
    sqlx::query::QueryScalar<'q, sqlx::Postgres, String, sqlx::postgres::PgArguments>;

/// What PostgreSQL plans for `statement` with the arguments `bind` gives it, planned on a
/// batch connection to the database of `pool` (`orderflow::db::BatchConnections`, with its
/// planner settings) as the stages run it: the plan's lines, one per node.
pub async fn batch_plan(
    pool: &PgPool,
    statement: &str,
    bind: impl for<'q> FnOnce(ExplainQuery<'q>) -> ExplainQuery<'q>,
) -> String {
    let explain = format!("EXPLAIN {statement}");
    let batch = orderflow::db::BatchConnections::beside(pool);
    let mut conn = batch.acquire().await.expect("opening a batch connection");
    let planned = bind(sqlx::query_scalar(&explain))
        .fetch_all(conn.connection())
        .await;
    let lines: Vec<String> = conn.release(planned).expect("planning the statement");
    lines.join("\n")
}

pub mod logs;
pub mod pipeline;
pub mod private_pg;

/// A child process that is killed and reaped when dropped, so a test that fails leaves no
/// stage running behind it.
pub struct ChildGuard(pub std::process::Child);

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `orderflow STAGE` with `env` over the test's own environment.
pub fn stage_command(stage: &str, env: &[(String, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command.arg(stage).envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// Starts `command` with its stdout and stderr in the file `log` (made anew); the child is
/// killed when the guard drops.
pub fn spawn_logged(command: &mut Command, log: &Path) -> ChildGuard {
    let file = std::fs::File::create(log).unwrap();
    let child = command
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| {
            // The program and its arguments only: the environment may hold passwords.
            let args: Vec<_> = command.get_args().collect();
            panic!("starting {:?} {args:?}: {e}", command.get_program())
        });
    ChildGuard(child)
}
