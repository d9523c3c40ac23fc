//! The cluster run (issue 19): the pipeline on three brokers (ops/kafka/cluster.sh), its
//! topics with three replicas and min.insync.replicas 2, every producer acks=all, under
//! load while `failover` kills the busiest leader, rolls every node and freezes one until
//! its replicas fall out of sync; then the checks of the single-broker run (nothing lost,
//! nothing bought twice, no regression, the DLQ exact, no secret) and a figures table with
//! a row per failover: how long the node was away, until the cluster was whole, and how
//! long the pipeline stalled. Written to `$ORDERFLOW_STATE_DIR/chaos/cluster-figures.txt`.
//!
//! Size: 240 valid orders at 4/s by default, then 4 more a second while the failovers last (`ORDERFLOW_CHAOS_ORDERS`, `_RATE`;
//! `ops/chaos.sh --cluster` runs 20,000 at 200/s).

use crate::background::Background;
use crate::bed::{Bed, Kafka};
use crate::checks;
use crate::drain;
use crate::failover::{self, FailedOver};
use crate::figures;
use crate::load::Load;
use crate::settings::{self, Clock, Size};
use chrono::Utc;
use orderflow::kafka::topics::name;
use orderflow::testbed::sim::FaultWave;
use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_failover_under_load_keeps_every_guarantee() {
    let _alone = settings::ONE_RUN_AT_A_TIME.lock().await;
    let size = Size::cluster_from_env();
    let clock = Clock::start();
    let run_dir = settings::run_dir();
    let work = settings::work_dir();

    // 1. Three brokers and the database of the run's own, the provider, the six stages.
    let bed = Bed::start(&clock, &work, Kafka::Cluster).await;
    bed.sim.set_wave(None::<FaultWave>);
    replication_drift_is_reported(&bed.kafka, &work);
    let background = Background::start(&bed.stages, &bed.pool);
    // 2. The load, published while 3. the brokers fail over.
    let (mut load, publisher) = Load::publish(&bed.kafka, &size, &clock);
    let failed_over = failover::run(&bed, &clock, &mut load, publisher).await;
    // 4. The conflicting copies of claimed orders; 5. the drain, then everything stopped.
    drain::send_conflicts(&bed, &mut load).await;
    let drained = drain::until_final(&bed, &clock, &load, &size).await;
    let seen = drain::stop_everything(&bed, background).await;
    let stats = bed.sim.stats();

    // 6. Each guarantee, order by order, as in the single-broker run.
    let checked = checks::every_guarantee(&bed, &load, &drained, seen, &stats).await;
    let mut failures = checked.failures;
    let (_, exits, _) = figures::kills(&bed.stages);
    if exits > 0 {
        failures.push(format!(
            "{exits} stage exits on their own: a stage must wait out a failover"
        ));
    }

    // 7. The figures.
    let rows = vec![
        ("valid orders published", format!("{}", failed_over.published.valid)),
        ("exact re-sends (harmless)", format!("{}", failed_over.published.exact_resends)),
        ("hostile events sent", format!("{}", load.hostile.len())),
        ("final in PostgreSQL", format!("{} (completed {}, cancelled {}, rejected {}, failed at the deadline on the broken account {} of {})", checked.truth.finals, checked.truth.completed, checked.truth.cancelled, checked.truth.rejected, checked.truth.expired, load.broken.len())),
        ("publish retries", format!("{}", failed_over.published.retries)),
        ("lost", format!("{}", checked.truth.lost)),
        ("delivered to the publisher, not in orders.created", format!("{} {:?}", drained.never_in_log.len(), drained.never_in_log)),
        ("duplicate placements", format!("{} ({} purchases; {} references re-sent and refused as duplicates)", checked.purchases.duplicates, checked.purchases.total, checked.purchases.resent_references)),
        ("regressions", format!("{}", checked.regressions)),
        ("disagreements with the provider", format!("{}", checked.truth.mismatches)),
        ("DLQ entries", format!("{} ({} hostile events matched, {} redelivered copies)", checked.dlq_entries, checked.dlq.matched, checked.dlq.copies)),
        ("secrets found", format!("{} ({} metrics pages, {} trace exports, {} state records, {} PINs)", checked.scan.leaks, checked.scan.metrics_pages, checked.scan.trace_exports, checked.state_records, checked.scan.pins)),
        ("stage exits on their own", format!("{exits}")),
        ("time to drain", format!("{:.1} s (after the failovers)", drained.drain_s)),
        ("total run time", format!("{:.1} s", clock.elapsed_s())),
    ];
    report(&failed_over, &rows, &size, &run_dir);

    assert!(
        failures.is_empty(),
        "the cluster run broke guarantees:\n{}",
        failures.join("\n")
    );
    bed.pool.close().await;
    std::fs::remove_dir_all(&work).ok();
}

/// `orderflow topics apply` on the cluster: the topics it made (three replicas, min ISR 2)
/// match what it works out from the cluster's size, and are reported (exit 3) against an
/// environment that says one replica.
fn replication_drift_is_reported(kafka: &orderflow::kafka::KafkaConfig, work: &Path) {
    let spec = work.join("created-only.toml");
    std::fs::write(
        &spec,
        "[[topic]]\nname = \"orders.created\"\npartitions = 3\n[topic.config]\n\
         \"cleanup.policy\" = \"delete\"\n\"retention.ms\" = \"604800000\"\n",
    )
    .unwrap();
    let apply = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["topics", "apply", "--spec"])
            .arg(&spec)
            .env("ORDERFLOW_KAFKA_BROKERS", &kafka.brokers)
            .env("ORDERFLOW_TOPIC_PREFIX", &kafka.topic_prefix)
            .env_remove("ORDERFLOW_TOPIC_REPLICATION")
            .env_remove("ORDERFLOW_TOPIC_MIN_ISR")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, stdout) = apply(&[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("replication: 3 replicas, min.insync.replicas 2"),
        "{stdout}"
    );
    let (code, stdout) = apply(&[
        ("ORDERFLOW_TOPIC_REPLICATION", "1"),
        ("ORDERFLOW_TOPIC_MIN_ISR", "1"),
    ]);
    assert_eq!(code, Some(3), "{stdout}");
    let topic = kafka.topic(name::ORDERS_CREATED);
    for drift in [
        format!("DRIFT     topic {topic} has replication factor = 3, the spec says 1"),
        format!("DRIFT     topic {topic} has min.insync.replicas = 2, the spec says 1"),
    ] {
        assert!(stdout.contains(&drift), "{drift} not in:\n{stdout}");
    }
}

/// Prints the table (a row per failover, then the guarantees) and writes it under `run_dir`.
fn report(f: &FailedOver, rows: &[(&str, String)], size: &Size, run_dir: &Path) {
    let mut table = format!(
        "orderflow cluster chaos run {} (3 brokers, replication 3, min.insync.replicas 2, acks=all; {} orders at {}/s)\n\
         | failover | node away | until every partition in sync | longest stall (no order final) | orders final meanwhile | seen |\n\
         |---|---|---|---|---|---|\n",
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        size.orders,
        size.rate,
    );
    for e in &f.events {
        table.push_str(&format!(
            "| {} | {:.1} s | {:.1} s | {:.1} s | {} | {} |\n",
            e.name, e.away_s, e.whole_s, e.stall_s, e.finals, e.detail
        ));
    }
    table.push_str("\n| figure | value |\n|---|---|\n");
    for (name, value) in rows {
        table.push_str(&format!("| {name} | {value} |\n"));
    }
    println!("{table}");
    eprintln!("{table}");
    std::fs::write(run_dir.join("cluster-figures.txt"), &table).unwrap();
    let _ = std::fs::write(
        run_dir.join(format!(
            "cluster-figures-{}.txt",
            Utc::now().format("%Y%m%dT%H%M%S")
        )),
        &table,
    );
}
