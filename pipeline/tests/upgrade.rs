//! Upgrades: events written by the previous release (pipeline/tests/fixtures/previous-release/,
//! captured from release f6ed1f0 by ops/previous-release-fixtures.sh) read by this build.
//!
//! - every event the old release wrote to a topic a stage consumes decodes under this build,
//!   and loses no field when written again;
//! - the old release's `orders.created` replayed into this release's dispatch, poll and sink:
//!   every order ends as it ended in the old release, each bought once, nothing
//!   dead-lettered;
//! - the old release's in-flight events (`orders.dispatched`, its status checks in the
//!   tiers, `orders.state`) replayed into this release's poll and sink, with the provider
//!   holding the orders the old release bought, the old final states of those orders left
//!   out, and the database holding each order's check chain as the old release's poll
//!   stage left it before the order's last check: this build's poll stage drops the copies
//!   of steps already taken, takes each last step and finishes the order as the old release
//!   did, nothing is bought again, nothing dead-lettered.
//!
//! - migrations under load: this build's stages run on a database that lacks the latest
//!   migrations while `orderflow migrate`'s migrator applies them, and test-only ones of the
//!   kinds docs/design/upgrades.md allows (a nullable column, an index built concurrently
//!   on a table of 200,000 rows): no stage exits, no pause of finishing orders longer
//!   than a few seconds, every order final and bought once.
//!
//! The fixture's times are shifted by one offset so that the run is "now" (its deadlines of
//! 24 h would otherwise pass a day after it was captured); nothing else in it is changed.

mod common;

use chrono::{DateTime, SecondsFormat, Utc};
use common::pipeline::{account_entry, read_to_end, Harness, DEFAULT_ACCOUNT_SETTINGS};
use orderflow::core::event::{
    self, OrderCreated, OrderDispatched, OrderStateEvent, StatusCheck, DEFAULT_MAX_EVENT_BYTES,
};
use orderflow::kafka::topics::{self, name};
use orderflow::pin::PinKeys;
use orderflow::provider::{PlaceOutcome, Placement};
use orderflow::testbed::sim::SimConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/previous-release"
);
/// The tiers the fixture was captured with (its status-check topics are named by them).
const TIERS: &str = "1s,2s";
const ACCOUNT: &str = "znet-demo";

/// One message the old release wrote.
#[derive(serde::Deserialize)]
struct Recorded {
    topic: String,
    key: Option<String>,
    headers: Vec<(String, Option<String>)>,
    value: Option<String>,
}

fn recorded() -> Vec<Recorded> {
    let text = std::fs::read_to_string(format!("{FIXTURE}/events.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a fixture line"))
        .collect()
}

/// Each order's final `(state, failure_reason)` in the old release's `orders` table.
fn old_final_states() -> BTreeMap<Uuid, (String, String)> {
    let text = std::fs::read_to_string(format!("{FIXTURE}/final-states.txt")).unwrap();
    text.lines()
        .map(|l| {
            let mut f = l.split('|');
            let id = f.next().unwrap().parse().unwrap();
            (
                id,
                (f.next().unwrap().into(), f.next().unwrap_or("").into()),
            )
        })
        .collect()
}

fn payload(m: &Recorded) -> &[u8] {
    m.value
        .as_deref()
        .expect("no tombstones in the fixture")
        .as_bytes()
}

#[test]
fn every_event_of_the_previous_release_decodes_and_keeps_its_fields() {
    let events = recorded();
    let mut decoded = BTreeMap::<&str, usize>::new();
    for m in &events {
        let bytes = payload(m);
        let again = match m.topic.as_str() {
            name::ORDERS_CREATED => {
                serde_json::to_value(OrderCreated::decode(bytes, DEFAULT_MAX_EVENT_BYTES).unwrap())
            }
            name::ORDERS_DISPATCHED => serde_json::to_value(
                event::decode::<OrderDispatched>(bytes, DEFAULT_MAX_EVENT_BYTES).unwrap(),
            ),
            t if t.starts_with("orders.status-check.") => serde_json::to_value(
                event::decode::<StatusCheck>(bytes, DEFAULT_MAX_EVENT_BYTES).unwrap(),
            ),
            name::ORDERS_STATE => serde_json::to_value(
                event::decode::<OrderStateEvent>(bytes, DEFAULT_MAX_EVENT_BYTES).unwrap(),
            ),
            other => panic!("the fixture holds {other}, which no stage consumes"),
        }
        .unwrap();
        let old: Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(again, old, "{}: a field was lost or changed", m.topic);
        *decoded.entry(&m.topic).or_default() += 1;
    }
    // Every topic a stage consumes is there (the counts are in the fixture's README; a
    // fixture captured anew may differ).
    for topic in [
        name::ORDERS_CREATED,
        name::ORDERS_DISPATCHED,
        "orders.status-check.1s",
        "orders.status-check.2s",
        name::ORDERS_STATE,
    ] {
        assert!(
            decoded.get(topic).is_some_and(|n| *n > 0),
            "no {topic} in the fixture"
        );
    }
}

/// Moves every time of an event (fields named `*_at` or `deadline`, the `orderflow.due_at`
/// header) by `shift`, keeping its shape.
fn shifted(m: &Recorded, shift: chrono::Duration) -> (Vec<u8>, Vec<(String, Option<String>)>) {
    let mut value: Value = serde_json::from_slice(payload(m)).unwrap();
    for (field, v) in value.as_object_mut().unwrap() {
        if !(field.ends_with("_at") || field == "deadline") {
            continue;
        }
        if let Some(t) = v.as_str().and_then(|t| t.parse::<DateTime<Utc>>().ok()) {
            *v = Value::from((t + shift).to_rfc3339_opts(SecondsFormat::AutoSi, true));
        }
    }
    let headers = m
        .headers
        .iter()
        .map(|(k, v)| match (k.as_str(), v) {
            ("orderflow.due_at", Some(ms)) => {
                let ms: i64 = ms.parse().unwrap();
                (k.clone(), Some((ms + shift.num_milliseconds()).to_string()))
            }
            _ => (k.clone(), v.clone()),
        })
        .collect();
    (serde_json::to_vec(&value).unwrap(), headers)
}

/// How far the fixture's first `created_at` lies before now.
fn shift_to_now(events: &[Recorded]) -> chrono::Duration {
    let first = events
        .iter()
        .filter(|m| m.topic == name::ORDERS_CREATED)
        .map(|m| OrderCreated::decode(payload(m), DEFAULT_MAX_EVENT_BYTES).unwrap())
        .map(|o| o.created_at)
        .min()
        .unwrap();
    Utc::now() - first
}

/// The test's topics (with the fixture's tiers), simulator, database, accounts file naming
/// the fixture's account, and the environment of this build's stage processes.
struct Replay {
    h: Harness,
    env: Vec<(String, String)>,
    logs: PathBuf,
    accounts: PathBuf,
    keys: PathBuf,
}

impl Replay {
    async fn new(test: &str) -> Replay {
        let sim = SimConfig {
            checks_until_complete: 1,
            latency: Duration::from_millis(5),
            rejection_rate: 0.0,
            cancel_rate: 0.0,
            fault_rate: 0.0,
            ..SimConfig::default()
        };
        let h = Harness::new(test, sim, 2_000).await;
        let mut tiers_only = common::with_only_tiers(common::test_specs(), TIERS);
        tiers_only
            .topics
            .retain(|t| t.name.starts_with(name::STATUS_CHECK_EVENT));
        topics::apply(&h.kafka, &tiers_only).await.unwrap();
        let accounts = std::env::temp_dir().join(common::unique("orderflow-accounts-"));
        std::fs::write(
            &accounts,
            account_entry(ACCOUNT, &h.sim_url, 2_000, DEFAULT_ACCOUNT_SETTINGS),
        )
        .unwrap();
        let keys = std::env::temp_dir().join(common::unique("orderflow-pin-keys-"));
        std::fs::write(&keys, PinKeys::generate_key_line("upgrade1")).unwrap();
        let logs = std::env::temp_dir().join(common::unique("orderflow-upgrade-logs-"));
        std::fs::create_dir_all(&logs).unwrap();
        let mut env = h.dispatch_env(&common::unique("g-dispatch-"));
        env.retain(|(k, _)| k != "ORDERFLOW_LOG" && k != "ORDERFLOW_PROVIDER_ACCOUNTS");
        env.extend([
            (
                "ORDERFLOW_PROVIDER_ACCOUNTS".into(),
                accounts.display().to_string(),
            ),
            ("ORDERFLOW_POLL_GROUP".into(), common::unique("g-poll-")),
            ("ORDERFLOW_SINK_GROUP".into(), common::unique("g-sink-")),
            ("ORDERFLOW_FIRST_CHECK".into(), "1s".into()),
            ("ORDERFLOW_CHECK_TIERS".into(), TIERS.into()),
            ("ORDERFLOW_PIN_KEYS_FILE".into(), keys.display().to_string()),
            ("ORDERFLOW_DATABASE_MAX_CONNECTIONS".into(), "4".into()),
        ]);
        Replay {
            h,
            env,
            logs,
            accounts,
            keys,
        }
    }

    /// Points the stage processes at another database than the harness's.
    fn use_database(&mut self, url: &str) {
        self.env.retain(|(k, _)| k != "ORDERFLOW_DATABASE_URL");
        self.env
            .push(("ORDERFLOW_DATABASE_URL".into(), url.to_owned()));
    }

    fn spawn(&self, stage: &str) -> common::ChildGuard {
        common::spawn_logged(
            common::stage_command(stage, &self.env)
                .env("ORDERFLOW_LOG", "info,librdkafka=warn,sqlx=warn"),
            &self.logs.join(format!("{stage}.log")),
        )
    }

    /// Publishes the recorded messages of `topics` to the test's topics of the same names,
    /// in the fixture's order (per topic and partition, as the old release wrote them), with
    /// their keys and headers, times shifted by `shift`.
    async fn publish(&self, events: &[Recorded], topics: &[&str], shift: chrono::Duration) {
        let producer = self.h.kafka.producer().unwrap();
        for topic in topics {
            for m in events.iter().filter(|m| m.topic == *topic) {
                let (value, headers) = shifted(m, shift);
                let mut owned = OwnedHeaders::new();
                for (k, v) in &headers {
                    owned = owned.insert(Header {
                        key: k,
                        value: v.as_deref(),
                    });
                }
                let target = self.h.kafka.topic(topic);
                let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&target)
                    .payload(value.as_slice())
                    .headers(owned);
                if let Some(key) = &m.key {
                    record = record.key(key);
                }
                producer
                    .send(record, Timeout::After(Duration::from_secs(10)))
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        }
    }

    /// Waits (up to `within`) until every order of `expected` is final in the `orders`
    /// table, then returns each order's `(state, failure_reason)` there.
    async fn final_states(
        &self,
        expected: &BTreeMap<Uuid, (String, String)>,
        within: Duration,
    ) -> BTreeMap<Uuid, (String, String)> {
        let deadline = Instant::now() + within;
        loop {
            let rows: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
                "SELECT order_id, state, failure_reason FROM orders \
                 WHERE state IN ('completed', 'failed')",
            )
            .fetch_all(&self.h.db.pool)
            .await
            .unwrap();
            let got: BTreeMap<Uuid, (String, String)> = rows
                .into_iter()
                .map(|(id, state, reason)| (id, (state, reason.unwrap_or_default())))
                .collect();
            if expected.keys().all(|id| got.contains_key(id)) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// For each order of `expected` not final in `got`: its row in `orders` (state, version)
    /// and its check chain (step, whether done, version, final state), one line each, with
    /// where the stages' logs are; empty when every order is final.
    async fn not_final(
        &self,
        expected: &BTreeMap<Uuid, (String, String)>,
        got: &BTreeMap<Uuid, (String, String)>,
    ) -> String {
        let missing: Vec<Uuid> = expected
            .keys()
            .filter(|id| !got.contains_key(id))
            .copied()
            .collect();
        if missing.is_empty() {
            return String::new();
        }
        // One line per order, formatted by the database (NULL shows as "-").
        let lines: Vec<String> = sqlx::query_scalar(
            "SELECT format('  %s: row %s version %s; chain step %s done %s version %s final %s', \
                           m.id, COALESCE(o.state, '-'), COALESCE(o.version::text, '-'), \
                           COALESCE(c.seq::text, '-'), COALESCE(c.step_done::text, '-'), \
                           COALESCE(c.version::text, '-'), COALESCE(c.final_state, '-')) \
               FROM unnest($1::uuid[]) AS m(id) \
               LEFT JOIN orders o ON o.order_id = m.id \
               LEFT JOIN check_chains c ON c.order_id = m.id ORDER BY m.id",
        )
        .bind(&missing)
        .fetch_all(&self.h.db.pool)
        .await
        .unwrap();
        let mut text = format!(
            "{} orders not final (stage logs in {}):\n",
            missing.len(),
            self.logs.display()
        );
        for line in lines {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    /// Nothing in `orders.dlq`; no stage logged a panic, a credential or a PIN.
    async fn assert_clean(&self, stages: &[&str]) {
        let dlq = read_to_end(&self.h.kafka, name::ORDERS_DLQ).await;
        assert!(dlq.is_empty(), "{} events were dead-lettered", dlq.len());
        for stage in stages {
            common::pipeline::assert_clean_log(&self.logs.join(format!("{stage}.log")));
        }
    }

    async fn finish(self) {
        std::fs::remove_file(&self.accounts).ok();
        std::fs::remove_file(&self.keys).ok();
        std::fs::remove_dir_all(&self.logs).ok();
        self.h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_of_the_previous_release_end_alike_in_this_release() {
    let events = recorded();
    let old = old_final_states();
    let r = Replay::new("upgrade-created").await;
    r.publish(&events, &[name::ORDERS_CREATED], shift_to_now(&events))
        .await;
    let stages = ["dispatch", "poll", "sink"];
    let _running: Vec<_> = stages.iter().map(|s| r.spawn(s)).collect();

    let now = r.final_states(&old, Duration::from_secs(90)).await;
    assert_eq!(now, old, "final states differ from the previous release's");
    let stats = r.h.stats();
    let completed = old.values().filter(|(s, _)| s == "completed").count();
    assert_eq!(stats.purchases.values().sum::<u32>() as usize, completed);
    assert!(stats.purchases.values().all(|n| *n == 1));
    // One reference per order: the bought ones and the rejected ones.
    assert_eq!(stats.placements.len(), old.len(), "{stats:?}");
    r.assert_clean(&stages).await;
    r.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_events_of_the_previous_release_are_finished_by_this_release() {
    let events = recorded();
    let old = old_final_states();
    let r = Replay::new("upgrade-in-flight").await;
    // The provider still holds what the old release bought: each dispatched order's
    // reference, placed once (the simulator's memory does not outlive its process).
    let created: BTreeMap<Uuid, OrderCreated> = events
        .iter()
        .filter(|m| m.topic == name::ORDERS_CREATED)
        .map(|m| OrderCreated::decode(payload(m), DEFAULT_MAX_EVENT_BYTES).unwrap())
        .map(|o| (o.order_id, o))
        .collect();
    let accounts =
        orderflow::provider::accounts::Accounts::load(&r.accounts, orderflow::znet::connect)
            .unwrap();
    let account = accounts.get(ACCOUNT).unwrap();
    let dispatched: Vec<OrderDispatched> = events
        .iter()
        .filter(|m| m.topic == name::ORDERS_DISPATCHED)
        .map(|m| event::decode(payload(m), DEFAULT_MAX_EVENT_BYTES).unwrap())
        .collect();
    for d in &dispatched {
        let order = &created[&d.order_id];
        let placement = Placement {
            reference: d.provider_reference.clone(),
            product: order.product.clone(),
            user_identifier: order.user_identifier.clone(),
            user_extra: order.user_extra.clone(),
        };
        let outcome = account.provider.place(&placement).await;
        assert!(
            matches!(outcome, PlaceOutcome::Accepted { .. }),
            "{outcome:?}"
        );
    }
    let bought_before = r.h.stats().purchases.values().sum::<u32>();
    assert_eq!(bought_before as usize, dispatched.len());

    // What the old release left in the topics this release's poll stage and sink read.
    let in_flight = [
        name::ORDERS_DISPATCHED,
        "orders.status-check.1s",
        "orders.status-check.2s",
        name::ORDERS_STATE,
    ];
    // The old release's final state events of the dispatched orders are left out: their
    // end must come from this release's poll stage. The orders it rejected at placement
    // (never dispatched) end by their old state events, through this release's sink.
    let dispatched_ids: std::collections::BTreeSet<Uuid> =
        dispatched.iter().map(|d| d.order_id).collect();
    let events: Vec<Recorded> = events
        .into_iter()
        .filter(|m| {
            if m.topic != name::ORDERS_STATE {
                return true;
            }
            let s: OrderStateEvent = event::decode(payload(m), DEFAULT_MAX_EVENT_BYTES).unwrap();
            !(s.state.is_final() && dispatched_ids.contains(&s.order_id))
        })
        .collect();
    let shift = shift_to_now(&events);
    // The database the old release leaves with its topics: each dispatched order's check
    // chain where its poll stage had taken it, the step before the order's last check done
    // and that last check due. Every earlier message of the chain is a copy of a step the
    // old release took (this release drops it); the last is its in-flight step, which this
    // release takes. Without these rows a fresh chain would begin at whichever old step is
    // fetched first, and one begun at `orders.dispatched` would number the order's state
    // events again from 2, below the old release's `processing` ones already in
    // `orders.state`: the sink keeps the higher version, and the order stays `processing`
    // (CI saw this for the slow orders when the tier topics were fetched later than
    // `orders.dispatched` under load). An upgrade never meets that: the chains are in the
    // database both releases share.
    let mut last_steps = BTreeMap::<Uuid, (StatusCheck, String)>::new();
    for m in events
        .iter()
        .filter(|m| m.topic.starts_with("orders.status-check."))
    {
        let (bytes, _) = shifted(m, shift);
        let check: StatusCheck = event::decode(&bytes, DEFAULT_MAX_EVENT_BYTES).unwrap();
        let tier = m.topic["orders.status-check.".len()..].to_owned();
        if last_steps
            .get(&check.order_id)
            .is_none_or(|(last, _)| last.seq < check.seq)
        {
            last_steps.insert(check.order_id, (check, tier));
        }
    }
    assert_eq!(
        last_steps
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        dispatched_ids,
        "every dispatched order had a status check in the tiers"
    );
    for (check, tier) in last_steps.values() {
        // As the old release's finish_step left it (db::chains, unchanged since f6ed1f0).
        sqlx::query(
            "INSERT INTO check_chains (order_id, tenant_id, provider_account, \
                                       provider_reference, dispatched_at, deadline, seq, \
                                       step_done, attempts, version, next_check_at, tier) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, true, $8, $9, $10, $11)",
        )
        .bind(check.order_id)
        .bind(&check.tenant_id)
        .bind(&check.provider_account)
        .bind(&check.provider_reference)
        .bind(check.dispatched_at)
        .bind(check.deadline)
        .bind(check.seq - 1)
        .bind(check.attempts)
        .bind(check.version)
        .bind(check.due_at)
        .bind(tier)
        .execute(&r.h.db.pool)
        .await
        .unwrap();
    }
    r.publish(&events, &in_flight, shift).await;
    let stages = ["poll", "sink"];
    let _running: Vec<_> = stages.iter().map(|s| r.spawn(s)).collect();

    let now = r.final_states(&old, Duration::from_secs(90)).await;
    let why = r.not_final(&old, &now).await;
    assert_eq!(
        now, old,
        "final states differ from the previous release's\n{why}"
    );
    let stats = r.h.stats();
    assert_eq!(
        stats.purchases.values().sum::<u32>(),
        bought_before,
        "bought again"
    );
    assert!(stats.checks > 0, "the poll stage never asked the provider");
    // The poll stage's own state events: every dispatched order checked to its end again.
    let states = read_to_end(&r.h.kafka, name::ORDERS_STATE).await;
    let finals = states
        .iter()
        .map(common::pipeline::decode_state)
        .filter(|s| s.state.is_final() && dispatched_ids.contains(&s.order_id))
        .count();
    assert!(
        finals >= dispatched_ids.len(),
        "{finals} final state events of {} dispatched orders",
        dispatched_ids.len()
    );
    r.assert_clean(&stages).await;
    r.finish().await;
}

/// The migrations of `migrations/` whose file names sort before `until` (all when `None`),
/// copied into a new directory, with `extra` files added: a migration set as
/// `orderflow migrate` of some release would apply it, through sqlx's public API.
fn migration_dir(until: Option<&str>, extra: &[(&str, &str)]) -> PathBuf {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let dir = std::env::temp_dir().join(common::unique("orderflow-migrations-"));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        let file = entry.file_name().into_string().unwrap();
        let needed = NEEDED_AT_START.iter().any(|v| file.starts_with(v));
        if needed || until.is_none_or(|u| file.as_str() < u) {
            std::fs::copy(entry.path(), dir.join(&file)).unwrap();
        }
    }
    for (file, sql) in extra {
        std::fs::write(dir.join(file), sql).unwrap();
    }
    dir
}

/// The latest migrations of this build, which the test's database lacks at first: both
/// build an index concurrently (no-transaction), as the stages keep writing.
const LATEST: &str = "20261217190002";

/// Migrations newer than [`LATEST`] that this build's stages need before they start, so the
/// database "before" has them: the stages standing in for the running release must be
/// able to run at all. Each only creates tables of its own (no lock on a table the stages
/// write), which is why it may come first in an upgrade (docs/design/upgrades.md).
const NEEDED_AT_START: [&str; 1] = ["20261218040001"]; // provider_slots (issue 18's caps)

/// Test-only migrations of the kinds docs/design/upgrades.md allows on hot tables.
const TEST_MIGRATIONS: [(&str, &str); 2] = [
    (
        "29991231000001_upgrade_test_column.sql",
        "-- A nullable column without a default: a catalog change, no rewrite. lock_timeout\n\
         -- bounds how long it may queue behind the stages' writes (and block them).\n\
         SET LOCAL lock_timeout = '5s';\n\
         ALTER TABLE orders ADD COLUMN upgrade_test_note text;\n",
    ),
    (
        "29991231000002_upgrade_test_idx.sql",
        "-- no-transaction\n\
         CREATE INDEX CONCURRENTLY orders_upgrade_test_idx ON orders (tenant_id, updated_at);\n",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn migrations_run_while_the_stages_work_under_load() {
    const ORDERS: usize = 300;
    const RATE_PER_SEC: u64 = 25;
    let mut r = Replay::new("upgrade-migrate").await;
    // The database of the release before: this build's migrations but the latest.
    let db = common::TestDb::new_empty().await;
    let before = migration_dir(Some(LATEST), &[]);
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .unwrap()
        .run(&db.pool)
        .await
        .unwrap();
    // History: an orders table of some size, so the index build takes a while.
    sqlx::query(
        "INSERT INTO orders (order_id, tenant_id, provider_account, provider_reference, \
                             state, version) \
         SELECT gen_random_uuid(), 'history', 'znet-history', 'h' || g, 'completed', 5 \
         FROM generate_series(1, 200000) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    r.use_database(&db.url);
    let stages = ["dispatch", "poll", "sink"];
    let mut running: Vec<_> = stages.iter().map(|s| r.spawn(s)).collect();

    // The load: RATE_PER_SEC orders a second, in the background.
    let orders: Vec<OrderCreated> = (0..ORDERS)
        .map(|i| OrderCreated {
            provider_account: ACCOUNT.into(),
            ..common::pipeline::order(["25", "50", "100"][i % 3])
        })
        .collect();
    let expected: BTreeMap<Uuid, (String, String)> = orders
        .iter()
        .map(|o| (o.order_id, ("completed".to_owned(), String::new())))
        .collect();
    let producer = r.h.kafka.producer().unwrap();
    let created = r.h.kafka.topic(name::ORDERS_CREATED);
    let load = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE_PER_SEC));
        for o in &orders {
            tick.tick().await;
            let key = o.order_id.to_string();
            producer
                .send(
                    FutureRecord::to(&created).key(&key).payload(&o.encode()),
                    Timeout::After(Duration::from_secs(10)),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    });

    // Watches the orders finish: every 100 ms, how many are final in the sink's table.
    let watched = db.pool.clone();
    let progress = tokio::spawn(async move {
        let (mut last_count, mut last_growth) = (0i64, None::<Instant>);
        let mut longest = Duration::ZERO;
        let give_up = Instant::now() + Duration::from_secs(90);
        while last_count < ORDERS as i64 && Instant::now() < give_up {
            let count: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM orders \
                 WHERE tenant_id <> 'history' AND state IN ('completed', 'failed')",
            )
            .fetch_one(&watched)
            .await
            .unwrap();
            if count > last_count {
                let at = Instant::now();
                if let Some(before) = last_growth {
                    longest = longest.max(at - before);
                }
                (last_count, last_growth) = (count, Some(at));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        longest
    });

    // A third into the load, the new release's migrator: this build's latest migrations
    // and the test-only ones.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = migration_dir(None, &TEST_MIGRATIONS);
    let migrator = sqlx::migrate::Migrator::new(after.as_path()).await.unwrap();
    let migrating = Instant::now();
    migrator.run(&db.pool).await.unwrap();
    let migrated_in = migrating.elapsed();
    load.await.unwrap();

    let rows: Vec<(Uuid, String, Option<String>)>;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
            "SELECT order_id, state, failure_reason FROM orders \
             WHERE tenant_id <> 'history' AND state IN ('completed', 'failed')",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        if got.len() >= ORDERS || Instant::now() > deadline {
            rows = got;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let now: BTreeMap<Uuid, (String, String)> = rows
        .into_iter()
        .map(|(id, s, f)| (id, (s, f.unwrap_or_default())))
        .collect();
    assert_eq!(now, expected, "not every order completed");
    for (stage, child) in stages.iter().zip(running.iter_mut()) {
        assert!(child.try_wait().unwrap().is_none(), "{stage} exited");
    }
    let stats = r.h.stats();
    assert_eq!(stats.purchases.values().sum::<u32>() as usize, ORDERS);
    assert!(stats.purchases.values().all(|n| *n == 1));

    // No pause: the longest time between two observations of the sink's `orders` table
    // with more orders final, while orders kept coming (publishing took
    // ORDERS / RATE_PER_SEC = 12 s). A migration that blocked a table the stages write
    // (or that this query reads) shows as a gap of that length.
    let longest = progress.await.unwrap();
    eprintln!(
        "migrations applied in {migrated_in:?} under load; longest pause between two \
         observations of more finished orders {longest:?}"
    );
    assert!(
        longest < Duration::from_secs(3),
        "the stages paused {longest:?} while the migrations ran"
    );
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(applied.len(), migrator.iter().count(), "{applied:?}");
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_upgrade_test_idx'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(valid, "the concurrently built index is not valid");

    r.assert_clean(&stages).await;
    drop(running);
    std::fs::remove_dir_all(&before).ok();
    std::fs::remove_dir_all(&after).ok();
    db.drop_now().await;
    r.finish().await;
}
