//! Phase 1, the test bed: a broker (or a three-node cluster) and a PostgreSQL server of the
//! run's own (so it may restart them), the topics with the scaled-down check tiers (on a
//! cluster: three partitions each, three replicas, min.insync.replicas 2), the znet simulator with its
//! accounts (one of them broken), the PIN keys, an OTLP receiver that keeps every trace
//! export, and the six stages started.

use crate::broker::PrivateBroker;
use crate::common::pipeline::{account_entry, serve, Served, ACCOUNT, KOD, OTHER_ACCOUNT, SIFRE};
use crate::common::private_pg::PrivatePostgres;
use crate::settings::{Clock, BROKEN_ACCOUNT, TIERS, VISIBILITY_LAG, VISIBILITY_WINDOW_MS};
use crate::stages::{self, Stages};
use orderflow::db::DbConfig;
use orderflow::kafka::topics::{self, Replication, TopicSpecs};
use orderflow::kafka::KafkaConfig;
use orderflow::pin::PinKeys;
use orderflow::testbed::sim::{Sim, SimConfig};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Everything the run attacks and reads back; the servers and stages stop when it drops.
pub struct Bed {
    pub broker: Arc<PrivateBroker>,
    pub pg: Arc<PrivatePostgres>,
    pub pool: PgPool,
    pub kafka: KafkaConfig,
    pub sim: Sim,
    /// The shop's keys, to open the delivered PINs.
    pub keys: PinKeys,
    /// Every OTLP/HTTP trace export the stages sent.
    pub traces: Arc<Mutex<Vec<Vec<u8>>>>,
    pub stages: Stages,
    pub logs: PathBuf,
    /// The simulator serves until this drops.
    _sim: Served,
}

/// One broker, or three.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kafka {
    Single,
    Cluster,
}

impl Bed {
    pub async fn start(clock: &Clock, work: &Path, layout: Kafka) -> Bed {
        let (broker, pg, pool, db_url) = private_servers(clock, work, layout).await;
        let kafka = KafkaConfig::for_tests(
            &broker.brokers(),
            &format!("{}.", crate::common::unique("chaos-")),
        );
        create_topics(&kafka, layout).await;
        let (sim, served) = start_provider().await;
        let accounts_file = write_accounts(work, &served.url);
        let key_line = PinKeys::generate_key_line("chaos1");
        let keys = PinKeys::parse(&key_line).unwrap();
        let keys_file = work.join("pin-keys");
        std::fs::write(&keys_file, &key_line).unwrap();
        let (traces, otlp) = crate::common::otlp_receiver().await;
        let logs = work.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let env = stages::env(&kafka, &db_url, &accounts_file, &keys_file, &otlp);
        let stages = stages::start_all(&env, &logs);
        clock.say("six stages started");
        Bed {
            broker,
            pg,
            pool,
            kafka,
            sim,
            keys,
            traces,
            stages,
            logs,
            _sim: served,
        }
    }
}

/// The broker and the database of the run's own, the database migrated.
async fn private_servers(
    clock: &Clock,
    work: &Path,
    layout: Kafka,
) -> (Arc<PrivateBroker>, Arc<PrivatePostgres>, PgPool, String) {
    let broker_dir = work.join("broker");
    let broker = tokio::task::spawn_blocking(move || match layout {
        Kafka::Single => PrivateBroker::start(broker_dir),
        Kafka::Cluster => PrivateBroker::start_cluster(broker_dir),
    })
    .await
    .unwrap();
    let broker = Arc::new(broker);
    clock.say(&format!("private Kafka on {}", broker.brokers()));
    let pg = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap();
    pg.psql("postgres", "CREATE DATABASE orderflow");
    let db_url = pg.url("orderflow");
    let pool = DbConfig::for_tests(&db_url).connect().await.unwrap();
    orderflow::db::migrate(&pool).await.unwrap();
    let pg = Arc::new(pg);
    clock.say(&format!("private PostgreSQL on port {}", pg.port));
    (broker, pg, pool, db_url)
}

/// The spec's topics, with the status-check tiers of [`TIERS`] in place of the spec's; on a
/// cluster with three partitions each (the nodes share two cores and their open files),
/// three replicas and min.insync.replicas 2, as in production.
async fn create_topics(kafka: &KafkaConfig, layout: Kafka) {
    let mut specs = crate::common::with_only_tiers(TopicSpecs::load(None).unwrap(), TIERS);
    if layout == Kafka::Cluster {
        for t in &mut specs.topics {
            t.partitions = t.partitions.min(3);
        }
        specs = specs.with_replication(Replication {
            factor: 3,
            min_insync: 2,
        });
    }
    let report = topics::apply(kafka, &specs).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// The provider: 3 % rejected, 3 % cancelled, one "processing" answer before the end;
/// faults only in waves. A lost or timed-out answer hangs 1.5 s, the client gives up
/// after 1 s; a slow answer takes 0.75 s.
async fn start_provider() -> (Sim, Served) {
    let sim = Sim::new(SimConfig {
        kod: KOD.into(),
        sifre: SIFRE.into(),
        latency: Duration::from_millis(10),
        checks_until_complete: 1,
        rejection_rate: 0.03,
        cancel_rate: 0.03,
        lost_answer_delay: Duration::from_millis(1500),
        visibility_lag: VISIBILITY_LAG,
        seed: 8,
        initial_balance_kurus: 1_000_000_000_000,
        ..SimConfig::default()
    });
    let served = serve(&sim).await;
    (sim, served)
}

/// The accounts file: two healthy accounts and the broken one (a wrong password). The caps
/// are each account's for the whole cluster (two dispatch and two poll processes): 32 at
/// once and 800 per second, what four processes had when the caps held per process.
fn write_accounts(work: &Path, sim_url: &str) -> PathBuf {
    let accounts_file = work.join("accounts.toml");
    let settings = format!(
        "breaker_failures = 5\nbreaker_open_ms = 1000\nvisibility_window_ms = {VISIBILITY_WINDOW_MS}\n"
    );
    let account = |id: &str| {
        account_entry(id, sim_url, 1000, &settings).replace(
            "max_concurrent = 8\nmax_per_second = 200\n",
            "max_concurrent = 32\nmax_per_second = 800\n",
        )
    };
    let broken = account(BROKEN_ACCOUNT)
        .replace(&format!("sifre = \"{SIFRE}\""), "sifre = \"yanlis-sifre\"");
    std::fs::write(
        &accounts_file,
        account(ACCOUNT) + &account(OTHER_ACCOUNT) + &broken,
    )
    .unwrap();
    accounts_file
}
