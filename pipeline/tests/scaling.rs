//! Consumer-group scaling under load: three `orderflow` processes of each stage (dispatch,
//! poll, sink) share their groups' partitions; while orders flow, a fourth of each joins,
//! one of each is killed with SIGKILL, and one of each is scaled down with SIGTERM.
//!
//! Afterwards every order is final in PostgreSQL, the simulator sold each order exactly
//! once, every group has committed its topics to the end (no partition left paused or
//! stuck), and each SIGTERM ended its process cleanly within the shutdown grace.

mod common;

use common::pipeline::{order, Harness};
use orderflow::kafka::lag::GroupLag;
use orderflow::kafka::topics::{self, name, TopicSpecs};
use orderflow::pin::PinKeys;
use orderflow::testbed::sim::SimConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

const ORDERS: usize = 360;
const FIRST_CHECK: &str = "1s";
const TIERS: &str = "1s,2s";
const GRACE_MS: u64 = 5_000;
const STAGES: [&str; 3] = ["dispatch", "poll", "sink"];

struct Fleet {
    groups: BTreeMap<&'static str, String>,
    env: Vec<(String, String)>,
    logs: PathBuf,
}

impl Fleet {
    fn spawn(&self, stage: &'static str, n: u32) -> common::ChildGuard {
        common::spawn_logged(
            common::stage_command(stage, &self.env)
                .env("ORDERFLOW_LOG", "info,librdkafka=warn,sqlx=warn"),
            &self.log(stage, n),
        )
    }

    fn log(&self, stage: &str, n: u32) -> PathBuf {
        self.logs.join(format!("{stage}-{n}.log"))
    }
}

/// Sends SIGTERM and waits for the exit; returns how long it took and the exit code.
fn terminate(child: &mut common::ChildGuard) -> (Duration, Option<i32>) {
    let asked = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let give_up = asked + Duration::from_millis(GRACE_MS) + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (asked.elapsed(), status.code());
        }
        assert!(
            Instant::now() < give_up,
            "SIGTERM did not end the process within {give_up:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_has(path: &Path, text: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|log| log.contains(text))
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_join_die_and_leave_under_load_without_loss_or_double_purchase() {
    let sim = SimConfig {
        checks_until_complete: 1,
        latency: Duration::from_millis(5),
        ..SimConfig::default()
    };
    // The spec's partition counts (24), so that a group of four has work for each member.
    let h = Harness::with_kafka(common::kafka_with_spec_topics("scaling").await, sim, 2_000).await;
    let labels: Vec<String> = TIERS.split(',').map(str::to_owned).collect();
    let tiers = TopicSpecs::load(None).unwrap().with_tiers(&labels);
    topics::apply(&h.kafka, &tiers).await.unwrap();
    let keys_file = std::env::temp_dir().join(common::unique("orderflow-pin-keys-"));
    std::fs::write(&keys_file, PinKeys::generate_key_line("scale1")).unwrap();
    let logs = std::env::temp_dir().join(common::unique("orderflow-scaling-logs-"));
    std::fs::create_dir_all(&logs).unwrap();

    let groups: BTreeMap<&'static str, String> = STAGES
        .iter()
        .map(|s| (*s, common::unique(&format!("g-{s}-"))))
        .collect();
    let mut env = h.dispatch_env(&groups["dispatch"]);
    env.retain(|(k, _)| k != "ORDERFLOW_LOG");
    env.extend([
        ("ORDERFLOW_POLL_GROUP".into(), groups["poll"].clone()),
        ("ORDERFLOW_SINK_GROUP".into(), groups["sink"].clone()),
        ("ORDERFLOW_FIRST_CHECK".into(), FIRST_CHECK.into()),
        ("ORDERFLOW_CHECK_TIERS".into(), TIERS.into()),
        (
            "ORDERFLOW_PIN_KEYS_FILE".into(),
            keys_file.display().to_string(),
        ),
        ("ORDERFLOW_SHUTDOWN_GRACE_MS".into(), GRACE_MS.to_string()),
        ("ORDERFLOW_DATABASE_MAX_CONNECTIONS".into(), "4".into()),
    ]);
    let fleet = Fleet { groups, env, logs };

    // Three of each.
    let mut running: BTreeMap<(&str, u32), common::ChildGuard> = BTreeMap::new();
    for stage in STAGES {
        for n in 1..=3 {
            running.insert((stage, n), fleet.spawn(stage, n));
        }
    }

    // The load: about 40 orders a second, while the fleet changes.
    let started = Instant::now();
    let orders: Vec<_> = (0..ORDERS)
        .map(|i| order(["25", "50", "100"][i % 3]))
        .collect();
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    let mut terms = Vec::new();
    for (i, o) in orders.iter().enumerate() {
        h.publish(o).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
        match i {
            // Scale up: a fourth instance of each stage joins its group.
            90 => {
                for stage in STAGES {
                    running.insert((stage, 4), fleet.spawn(stage, 4));
                }
            }
            // An instance of each dies without warning.
            180 => {
                for stage in STAGES {
                    let mut child = running.remove(&(stage, 1)).unwrap();
                    child.kill().unwrap();
                    child.wait().unwrap();
                }
            }
            // Scale down: an instance of each is asked to stop.
            270 => {
                for stage in STAGES {
                    let mut child = running.remove(&(stage, 2)).unwrap();
                    terms.push((stage, terminate(&mut child)));
                }
            }
            _ => {}
        }
    }

    let published = started.elapsed();
    // Every order final in PostgreSQL, as the shop reads it.
    let give_up = Instant::now() + Duration::from_secs(180);
    let finals = loop {
        let finals: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE order_id = ANY($1) AND state = 'completed'",
        )
        .bind(&ids)
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
        if finals as usize == ORDERS || Instant::now() > give_up {
            break finals;
        }
        for ((stage, n), child) in running.iter_mut() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{stage}-{n} exited; see {}",
                fleet.log(stage, *n).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        finals as usize,
        ORDERS,
        "orders completed in PostgreSQL (logs in {})",
        fleet.logs.display()
    );
    let drained = started.elapsed();

    // Sold exactly once each: one purchase per reference, one reference per order.
    let stats = h.stats();
    assert_eq!(stats.purchases.len(), ORDERS, "references bought");
    let twice: Vec<_> = stats.purchases.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "bought more than once: {twice:?}");

    // Every group ends committed to the end of its topics: nothing left held, paused or
    // uncommitted by the instances that came and went.
    let mut poll_topics = vec![("first".to_owned(), h.kafka.topic(name::ORDERS_DISPATCHED))];
    for label in &labels {
        poll_topics.push((label.clone(), h.kafka.topic(&name::status_check(label))));
    }
    let watched = [
        (
            "dispatch",
            vec![("created".to_owned(), h.kafka.topic(name::ORDERS_CREATED))],
        ),
        ("poll", poll_topics),
        (
            "sink",
            vec![("state".to_owned(), h.kafka.topic(name::ORDERS_STATE))],
        ),
    ];
    for (stage, topics) in watched {
        let lag = GroupLag::new(&h.kafka, &fleet.groups[stage], topics).unwrap();
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let behind = lag.sample_async().await.unwrap_or_default();
            if !behind.is_empty() && behind.iter().all(|(_, n)| *n == 0) {
                break;
            }
            assert!(
                Instant::now() < give_up,
                "the {stage} group stays behind: {behind:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // Each SIGTERM: a clean exit within the grace, after the stage let go of its partitions.
    for (stage, (took, code)) in &terms {
        assert_eq!(*code, Some(0), "{stage} after SIGTERM");
        assert!(
            *took <= Duration::from_millis(GRACE_MS) + Duration::from_secs(3),
            "{stage} took {took:?} to stop"
        );
        let log = fleet.log(stage, 2);
        assert!(log_has(&log, "shutdown requested"), "{}", log.display());
        assert!(
            log_has(&log, "partitions revoked"),
            "{stage} did not hand its partitions back"
        );
        common::pipeline::assert_clean_log(&log);
    }
    eprintln!(
        "scaling: {ORDERS} orders published in {published:?}, all completed after {drained:?}, {} purchases; SIGTERM exits took {:?}",
        stats.purchases.len(),
        terms.iter().map(|(s, (t, _))| format!("{s} {} ms", t.as_millis())).collect::<Vec<_>>()
    );

    drop(running);
    std::fs::remove_file(&keys_file).ok();
    std::fs::remove_dir_all(&fleet.logs).ok();
    h.finish().await;
}
