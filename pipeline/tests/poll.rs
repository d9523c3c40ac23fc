//! The poll stage and the reconciler against the real broker, database and the simulator,
//! with the check schedule scaled down to seconds (issue 4: G2, G4, G6).

mod common;

use chrono::{DateTime, Utc};
use common::pipeline::{decode_state, order, Harness, ACCOUNT};
use orderflow::core::event::{OrderCreated, OrderStateEvent, StatusCheck, SCHEMA_VERSION};
use orderflow::core::lifecycle::{FailureReason, OrderState};
use orderflow::db::chains;
use orderflow::kafka::emit::Emitter;
use orderflow::kafka::stage::StageConfig;
use orderflow::kafka::topics::{self, name, TopicSpec, TopicSpecs};
use orderflow::metrics::Metrics;
use orderflow::pin::PinKeys;
use orderflow::poll::reconcile::{self, ReconcileConfig};
use orderflow::poll::{PollConfig, ScheduleConfig};
use orderflow::shutdown;
use orderflow::testbed::sim::SimConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A pipeline under test: dispatch and poll in this process (or poll as a child), with
/// tier topics for `tiers`.
struct Poll {
    h: Harness,
    keys: PinKeys,
    keys_file: PathBuf,
    first_check: &'static str,
    tiers: &'static str,
    max_attempts: Option<u32>,
    /// Shared by every poll stage the test starts.
    metrics: Arc<Metrics>,
}

type Running = (shutdown::Trigger, tokio::task::JoinHandle<()>);

/// The reconcilers' `max_dead_letters` in these tests.
const GIVE_UP_AFTER: u32 = 2;

impl Poll {
    async fn new(
        test: &str,
        sim: SimConfig,
        first_check: &'static str,
        tiers: &'static str,
    ) -> Poll {
        let h = Harness::new(test, sim, 1_000).await;
        // The tier topics of a scaled-down schedule, next to the spec's own.
        let template = common::test_specs()
            .topics
            .into_iter()
            .find(|t| t.name.starts_with("orders.status-check."))
            .unwrap();
        let specs = TopicSpecs {
            topics: tiers
                .split(',')
                .map(|label| TopicSpec {
                    name: name::status_check(label),
                    ..template.clone()
                })
                .collect::<Vec<TopicSpec>>(),
        };
        topics::apply(&h.kafka, &specs).await.unwrap();
        let line = PinKeys::generate_key_line("test1");
        let keys = PinKeys::parse(&line).unwrap();
        let keys_file = std::env::temp_dir().join(common::unique("orderflow-pin-keys-"));
        std::fs::write(&keys_file, line).unwrap();
        Poll {
            h,
            keys,
            keys_file,
            first_check,
            tiers,
            max_attempts: None,
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn schedule(&self) -> ScheduleConfig {
        ScheduleConfig {
            first_check: self.first_check.into(),
            check_tiers: self.tiers.into(),
            max_check_attempts: self.max_attempts,
        }
    }

    fn config(&self, group: &str) -> PollConfig {
        PollConfig {
            accounts_file: self.h.accounts_file.clone(),
            group: Some(group.into()),
            max_in_flight: 32,
            schedule: self.schedule(),
            pin_keys_file: Some(self.keys_file.clone()),
            stage: StageConfig {
                shutdown_grace_ms: 5_000,
                ..Default::default()
            },
            account_status: Default::default(),
        }
    }

    fn start_dispatch(&self) -> Running {
        common::logs::capture();
        let (trigger, signal) = shutdown::channel();
        let config = self.h.dispatch_config();
        let (accounts, kafka, pool) = (
            self.h.accounts(),
            self.h.kafka.clone(),
            self.h.db.pool.clone(),
        );
        let task = tokio::spawn(async move {
            orderflow::dispatch::run(config, accounts, kafka, pool, Default::default(), signal)
                .await
                .expect("the dispatch stage");
        });
        (trigger, task)
    }

    fn start_poll(&self, group: &str) -> Running {
        common::logs::capture();
        let (trigger, signal) = shutdown::channel();
        let config = self.config(group);
        let metrics = Arc::clone(&self.metrics);
        let (accounts, kafka, pool) = (
            self.h.accounts(),
            self.h.kafka.clone(),
            self.h.db.pool.clone(),
        );
        let task = tokio::spawn(async move {
            orderflow::poll::run(config, accounts, kafka, pool, metrics, signal)
                .await
                .expect("the poll stage");
        });
        (trigger, task)
    }

    fn start_reconciler(&self, grace: &str) -> Running {
        let (trigger, signal) = shutdown::channel();
        let config = ReconcileConfig {
            every: "500ms".into(),
            grace: grace.into(),
            batch: 100,
            lookback: "1h".into(),
            max_dead_letters: GIVE_UP_AFTER,
            once: false,
            schedule: self.schedule(),
        };
        let (kafka, pool) = (self.h.kafka.clone(), self.h.db.pool.clone());
        let task = tokio::spawn(async move {
            reconcile::run(config, kafka, pool, Default::default(), signal)
                .await
                .expect("the reconciler");
        });
        (trigger, task)
    }

    /// Reads orders.state until every order has a final state; the events per order.
    async fn finals(
        &self,
        orders: &[Uuid],
        within: Duration,
    ) -> BTreeMap<Uuid, Vec<OrderStateEvent>> {
        let messages = self
            .h
            .read_until(name::ORDERS_STATE, within, |seen| {
                let done: std::collections::HashSet<Uuid> = seen
                    .iter()
                    .map(decode_state)
                    .filter(|s| s.state.is_final())
                    .map(|s| s.order_id)
                    .collect();
                orders.iter().all(|o| done.contains(o))
            })
            .await;
        let mut by_order: BTreeMap<Uuid, Vec<OrderStateEvent>> = BTreeMap::new();
        for m in &messages {
            let s = decode_state(m);
            by_order.entry(s.order_id).or_default().push(s);
        }
        for o in orders {
            let events = by_order.get(o).map(Vec::as_slice).unwrap_or_default();
            if !events.iter().any(|s| s.state.is_final()) {
                // What the stages said, for the failure report.
                for line in common::logs::text()
                    .lines()
                    .filter(|l| l.contains("orderflow::"))
                {
                    eprintln!("{line}");
                }
            }
            assert!(
                events.iter().any(|s| s.state.is_final()),
                "order {o} has no final state within {within:?}: {events:?}"
            );
        }
        by_order
    }

    async fn finish(self) {
        std::fs::remove_file(&self.keys_file).ok();
        self.h.finish().await;
    }
}

async fn stop((trigger, task): Running) {
    trigger.fire();
    task.await.unwrap();
}

fn final_of(events: &[OrderStateEvent]) -> &OrderStateEvent {
    events
        .iter()
        .filter(|s| s.state.is_final())
        .max_by_key(|s| s.version)
        .expect("a final state")
}

fn reference(events: &[OrderStateEvent]) -> String {
    events[0].provider_reference.clone().expect("a reference")
}

async fn publish_all(p: &Poll, n: usize) -> Vec<OrderCreated> {
    let orders: Vec<_> = (0..n).map(|i| order(["25", "50", "100"][i % 3])).collect();
    for o in &orders {
        p.h.publish(o).await;
    }
    orders
}

/// Orders that complete after k checks arrive final with the simulator's PIN, and the
/// simulator saw no check before its due time.
#[tokio::test(flavor = "multi_thread")]
async fn orders_complete_after_k_checks_with_the_right_pin_never_checked_early() {
    const K: u32 = 2; // pending answers before the final one
    let sim = SimConfig {
        checks_until_complete: K,
        ..SimConfig::default()
    };
    let p = Poll::new("poll-k", sim, "2s", "1s,2s").await;
    let dispatch = p.start_dispatch();
    let poll = p.start_poll(&common::unique("g-poll-"));
    let orders = publish_all(&p, 6).await;
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    let events = p.finals(&ids, Duration::from_secs(90)).await;

    for id in &ids {
        let events = &events[id];
        let last = final_of(events);
        assert_eq!(last.state, OrderState::Completed, "{events:?}");
        assert_eq!(last.attempts, K as i32 + 1);
        let reference = reference(events);
        let pin = p
            .keys
            .open(*id, last.pin.as_ref().expect("a sealed PIN"))
            .unwrap();
        assert_eq!(Some(pin), p.h.sim.pin_of(&reference), "the delivered PIN");
        // One processing event per pending answer, in order.
        let attempts: Vec<i32> = events
            .iter()
            .filter(|s| s.state == OrderState::Processing)
            .map(|s| s.attempts)
            .collect();
        assert_eq!(attempts, [1, 2]);

        // Due times: first check 2 s after dispatch, then 1 s, then 2 s after each answer.
        let checks = p.h.sim.check_times(&reference);
        assert_eq!(
            checks.len(),
            K as usize + 1,
            "one chain, one check per step"
        );
        let dispatched_at = events
            .iter()
            .find(|s| s.state == OrderState::Dispatched)
            .unwrap()
            .changed_at;
        assert!(
            checks[0] >= dispatched_at + chrono::Duration::seconds(2),
            "first check early"
        );
        assert!(
            checks[1] >= checks[0] + chrono::Duration::seconds(1),
            "second check early"
        );
        assert!(
            checks[2] >= checks[1] + chrono::Duration::seconds(2),
            "third check early"
        );
        // ...and not much later than due (G4: lateness stays small).
        assert!(
            checks[2] - checks[1] < chrono::Duration::seconds(5),
            "{checks:?}"
        );
    }
    // Lateness is exported: every delayed check was measured, on average well under 1 s.
    let text = p.metrics.render();
    let tier = p.h.kafka.topic(&name::status_check("1s"));
    let sample = |suffix: &str| -> f64 {
        let prefix = format!("orderflow_check_lateness_seconds_{suffix}{{topic=\"{tier}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} missing in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (count, sum) = (sample("count"), sample("sum"));
    assert!(
        count >= 6.0,
        "{count} delayed checks measured on the 1s tier"
    );
    assert!(sum / count < 1.0, "mean lateness {} s", sum / count);
    assert!(
        text.contains("orderflow_check_outcomes_total{outcome=\"completed\"} 6"),
        "{text}"
    );
    // Every order's times to final were measured, from dispatch and from the shop's created_at.
    for name in [
        "orderflow_dispatch_to_final_seconds_count{outcome=\"completed\"} 6",
        "orderflow_created_to_final_seconds_count{outcome=\"completed\"} 6",
        "orderflow_check_attempts_count 6",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    stop(poll).await;
    stop(dispatch).await;
    p.finish().await;
}

/// An order that never completes fails with reason `deadline` at its deadline.
#[tokio::test(flavor = "multi_thread")]
async fn an_order_that_never_completes_fails_at_its_deadline() {
    let sim = SimConfig {
        checks_until_complete: u32::MAX,
        ..SimConfig::default()
    };
    let p = Poll::new("poll-deadline", sim, "1s", "1s,2s").await;
    let dispatch = p.start_dispatch();
    let poll = p.start_poll(&common::unique("g-poll-"));
    let mut o = order("25");
    let deadline = Utc::now() + chrono::Duration::seconds(8);
    o.deadline = Some(deadline);
    p.h.publish(&o).await;
    let events = p.finals(&[o.order_id], Duration::from_secs(60)).await;
    let events = &events[&o.order_id];
    let last = final_of(events);
    assert_eq!(last.state, OrderState::Failed);
    assert_eq!(
        last.failure.as_ref().unwrap().reason,
        FailureReason::Deadline
    );
    assert!(last.changed_at >= deadline, "failed before its deadline");
    assert!(
        last.changed_at < deadline + chrono::Duration::seconds(3),
        "failed late: {}",
        last.changed_at
    );
    // Checked until the deadline, with a last check at it.
    let checks = p.h.sim.check_times(&reference(events));
    assert!(checks.len() >= 4, "{checks:?}");
    assert!(*checks.last().unwrap() >= deadline);
    stop(poll).await;
    stop(dispatch).await;
    p.finish().await;
}

/// Writes a status check straight to a tier topic and partition.
async fn enqueue(p: &Poll, tier: &str, partition: i32, check: &StatusCheck) {
    let producer = p.h.kafka.producer().unwrap();
    let payload = serde_json::to_vec(check).unwrap();
    let key = check.order_id.to_string();
    let topic = p.h.kafka.topic(&name::status_check(tier));
    producer
        .send(
            FutureRecord::to(&topic)
                .key(&key)
                .payload(&payload)
                .partition(partition),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// Places an order at the simulator directly, and returns the check that follows it.
async fn placed(p: &Poll, reference: &str, due_at: DateTime<Utc>) -> StatusCheck {
    let accounts = p.h.accounts();
    let account = accounts.get(ACCOUNT).unwrap();
    let placement = orderflow::provider::Placement {
        reference: reference.into(),
        product: BTreeMap::from([("oyun".into(), "412".into()), ("kupur".into(), "25".into())]),
        user_identifier: "5551234567".into(),
        user_extra: String::new(),
    };
    let outcome = account.permit().await.place(&placement).await;
    assert!(
        matches!(outcome, orderflow::provider::PlaceOutcome::Accepted { .. }),
        "{outcome:?}"
    );
    StatusCheck {
        schema_version: SCHEMA_VERSION,
        order_id: Uuid::new_v4(),
        tenant_id: "shop-1".into(),
        provider_account: ACCOUNT.into(),
        provider_reference: reference.into(),
        dispatched_at: Utc::now(),
        deadline: Utc::now() + chrono::Duration::hours(1),
        seq: 1,
        attempts: 0,
        due_at,
        version: 2,
        created_at: None,
    }
}

/// A message waiting 20 s in one partition does not hold a due message in another.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_delay_in_one_partition_does_not_hold_another() {
    let sim = SimConfig {
        checks_until_complete: 0,
        ..SimConfig::default()
    };
    // A 30 s tier: a message is held at most its tier's delay past its broker timestamp, so
    // the 20 s wait must be on a tier at least that long.
    let p = Poll::new("poll-partitions", sim, "1s", "1s,30s").await;
    let waiting = placed(&p, "900000001", Utc::now() + chrono::Duration::seconds(20)).await;
    let due = placed(&p, "900000002", Utc::now()).await;
    let poll = p.start_poll(&common::unique("g-poll-"));
    enqueue(&p, "30s", 0, &waiting).await;
    enqueue(&p, "30s", 1, &due).await;
    let events = p.finals(&[due.order_id], Duration::from_secs(30)).await;
    assert_eq!(
        final_of(&events[&due.order_id]).state,
        OrderState::Completed
    );
    // Not checked before its due time; on a loaded machine the due order may take long
    // enough that the waiting one is due (and checked) by now.
    assert!(
        p.h.sim
            .check_times("900000001")
            .iter()
            .all(|at| *at >= waiting.due_at),
        "the waiting order was checked before its due time"
    );
    // The waiting one is checked once due.
    let events = p.finals(&[waiting.order_id], Duration::from_secs(40)).await;
    assert_eq!(
        final_of(&events[&waiting.order_id]).state,
        OrderState::Completed
    );
    let checks = p.h.sim.check_times("900000001");
    assert!(checks[0] >= waiting.due_at, "checked early: {checks:?}");
    stop(poll).await;
    p.finish().await;
}

/// The poll stage killed with SIGKILL while messages wait, then restarted: every order
/// ends completed, none is stuck or lost.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_checks_wait_then_restart_loses_nothing() {
    const ORDERS: usize = 30;
    let sim = SimConfig {
        checks_until_complete: 2,
        ..SimConfig::default()
    };
    let p = Poll::new("poll-kill", sim, "2s", "2s,3s").await;
    let group = common::unique("g-poll-kill-");
    let logs = std::env::temp_dir().join(common::unique("orderflow-poll-logs-"));
    std::fs::create_dir_all(&logs).unwrap();
    let spawn = |n: u32| {
        let log = std::fs::File::create(logs.join(format!("poll-{n}.log"))).unwrap();
        let mut env = p.h.dispatch_env("unused");
        env.push(("ORDERFLOW_POLL_GROUP".into(), group.clone()));
        env.push(("ORDERFLOW_FIRST_CHECK".into(), p.first_check.into()));
        env.push(("ORDERFLOW_CHECK_TIERS".into(), p.tiers.into()));
        env.push((
            "ORDERFLOW_PIN_KEYS_FILE".into(),
            p.keys_file.display().to_string(),
        ));
        env.push(("ORDERFLOW_METRICS_LISTEN".into(), "127.0.0.1:0".into()));
        common::ChildGuard(
            std::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
                .arg("poll")
                .envs(env)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting orderflow poll"),
        )
    };
    let dispatch = p.start_dispatch();
    let orders = publish_all(&p, ORDERS).await;
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    let mut first = spawn(1);
    // Kill once checks have started and later ones are waiting on the tiers.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stepped: i64 =
            sqlx::query_scalar("SELECT count(*) FROM check_chains WHERE attempts >= 1")
                .fetch_one(&p.h.db.pool)
                .await
                .unwrap();
        if stepped >= (ORDERS / 3) as i64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checks within 60 s"
        );
        assert!(first.try_wait().unwrap().is_none(), "poll exited early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let finals_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM check_chains WHERE final_state IS NOT NULL")
            .fetch_one(&p.h.db.pool)
            .await
            .unwrap();
    assert!(
        finals_before < ORDERS as i64,
        "the kill came too late to prove anything"
    );

    let mut second = spawn(2);
    let events = p.finals(&ids, Duration::from_secs(120)).await;
    for id in &ids {
        let events = &events[id];
        assert_eq!(final_of(events).state, OrderState::Completed, "{events:?}");
        // Redone steps may check again, but one chain: never more than the answers needed
        // plus the steps the kill interrupted.
        let checks = p.h.sim.check_times(&reference(events)).len();
        assert!((3..=5).contains(&checks), "order {id}: {checks} checks");
    }
    // The restarted process serves its metrics and says it is ready.
    let log = std::fs::read_to_string(logs.join("poll-2.log")).unwrap();
    let addr = log
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap().to_owned())
        .expect("the metrics address in the log");
    let get = |path: &str| {
        let url = format!("http://{addr}{path}");
        async move {
            let response = reqwest::get(&url).await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    assert_eq!(get("/readyz").await, (200, "ready".into()));
    assert_eq!(get("/healthz").await.0, 200);
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("orderflow_check_outcomes_total{outcome=\"completed\"}"),
        "{text}"
    );
    assert!(text.contains("orderflow_messages_waiting{"), "{text}");
    for name in [
        "orderflow_provider_calls_total{account=\"znet-test\",call=\"check\",outcome=\"answered\",class=\"completed\"}",
        "orderflow_provider_call_seconds_bucket{",
        "orderflow_provider_breaker_open{account=\"znet-test\"} 0",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    second.kill().unwrap();
    second.wait().unwrap();
    for n in [1, 2] {
        common::pipeline::assert_clean_log(&logs.join(format!("poll-{n}.log")));
    }
    std::fs::remove_dir_all(&logs).ok();
    stop(dispatch).await;
    p.finish().await;
}

/// A provider outage opens the breaker (few calls reach the provider while it is down),
/// uses no attempts, and the orders complete once it recovers.
#[tokio::test(flavor = "multi_thread")]
async fn a_provider_outage_opens_the_breaker_and_uses_no_attempts() {
    const ORDERS: usize = 8;
    let sim = SimConfig {
        checks_until_complete: 1,
        ..SimConfig::default()
    };
    let mut p = Poll::new("poll-outage", sim, "1s", "1s").await;
    // Three failures open the breaker for a second; at most 3 answered checks per order,
    // so an outage that used attempts would fail the orders.
    let text = std::fs::read_to_string(&p.h.accounts_file).unwrap();
    std::fs::write(
        &p.h.accounts_file,
        text.replace(
            "request_timeout_ms = 1000\n",
            "request_timeout_ms = 1000\nbreaker_failures = 3\nbreaker_open_ms = 1000\n",
        ),
    )
    .unwrap();
    p.max_attempts = Some(3);
    let dispatch = p.start_dispatch();
    let orders = publish_all(&p, ORDERS).await;
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    p.h.dispatched(ORDERS, Duration::from_secs(60)).await;
    p.h.sim.set_outage(true);
    let poll = p.start_poll(&common::unique("g-poll-"));
    let faults_before = p.h.stats().faults_injected;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = p.h.stats().faults_injected - faults_before;
    p.h.sim.set_outage(false);
    // Without a breaker, 8 orders retried every second for 8 s make about 64 calls; the
    // open breaker lets a probe through about once a second.
    assert!(during > 0, "the outage was never noticed");
    assert!(
        during <= 30,
        "{during} calls reached a provider that was down"
    );
    let events = p.finals(&ids, Duration::from_secs(60)).await;
    for id in &ids {
        let last = final_of(&events[id]);
        assert_eq!(last.state, OrderState::Completed, "{:?}", events[id]);
        assert_eq!(last.attempts, 2, "the outage used attempts");
    }
    stop(poll).await;
    stop(dispatch).await;
    p.finish().await;
}

/// A tier message deleted from the broker: the reconciler brings its order back, and the
/// chain resumes exactly once (also for orders whose messages were only late).
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_tier_message_is_brought_back_once_by_the_reconciler() {
    const ORDERS: usize = 4;
    let sim = SimConfig {
        checks_until_complete: 1,
        ..SimConfig::default()
    };
    let p = Poll::new("poll-reconcile", sim, "1s", "6s").await;
    let dispatch = p.start_dispatch();
    let group = common::unique("g-poll-");
    let poll = p.start_poll(&group);
    let orders = publish_all(&p, ORDERS).await;
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    // Wait until every order's first check is answered and its next one waits on the tier.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut waiting = 0;
        for id in &ids {
            let chain = chains::get(&p.h.db.pool, *id).await.unwrap();
            waiting += usize::from(chain.is_some_and(|c| c.step_done && c.attempts == 1));
        }
        if waiting == ORDERS {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "first checks not done"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(poll).await;
    // The operator's mistake: the tier topic's records are deleted.
    let tier_topic = p.h.kafka.topic(&name::status_check("6s"));
    let admin: AdminClient<_> = p.h.kafka.client_config().create().unwrap();
    let probe: rdkafka::consumer::BaseConsumer = p.h.kafka.client_config().create().unwrap();
    let partitions = rdkafka::consumer::Consumer::fetch_metadata(
        &probe,
        Some(&tier_topic),
        Duration::from_secs(10),
    )
    .unwrap()
    .topics()[0]
        .partitions()
        .len() as i32;
    let mut tpl = TopicPartitionList::new();
    for partition in 0..partitions {
        tpl.add_partition_offset(&tier_topic, partition, Offset::End)
            .unwrap();
    }
    admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .unwrap();
    let poll = p.start_poll(&group);
    let reconciler = p.start_reconciler("1s");
    let events = p.finals(&ids, Duration::from_secs(60)).await;
    // Let more reconciler passes run: a completed order must not come back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        assert_eq!(final_of(&events[id]).state, OrderState::Completed);
        let reference = reference(&events[id]);
        assert_eq!(
            p.h.sim.check_times(&reference).len(),
            2,
            "order {id}: one chain"
        );
        let chain = chains::get(&p.h.db.pool, *id).await.unwrap().unwrap();
        assert!(
            chain.requeued >= 1,
            "order {id} was not brought back: {chain:?}"
        );
        assert_eq!(chain.final_state.as_deref(), Some("completed"));
    }
    stop(reconciler).await;
    stop(poll).await;
    stop(dispatch).await;
    p.finish().await;
}

/// The reconciler leaves an order that is on schedule alone, and re-enqueues a late one
/// whose original message still arrives: one chain continues.
#[tokio::test(flavor = "multi_thread")]
async fn the_reconciler_starts_no_second_chain() {
    let sim = SimConfig {
        checks_until_complete: 1,
        ..SimConfig::default()
    };
    let p = Poll::new("poll-onechain", sim, "1s", "1s").await;
    // Both orders were placed, and their first checks are on the tier; the late one's is
    // overdue (the poll stage was down), the other's is due in 4 s.
    let late = placed(&p, "900000011", Utc::now() - chrono::Duration::seconds(10)).await;
    let on_time = placed(&p, "900000012", Utc::now() + chrono::Duration::seconds(4)).await;
    for check in [&late, &on_time] {
        // The chain as the dispatched order's step 0 leaves it: step 1 due at due_at.
        sqlx::query(
            "INSERT INTO check_chains (order_id, tenant_id, provider_account, provider_reference,
                                      dispatched_at, deadline, seq, step_done, attempts,
                                      version, next_check_at)
             VALUES ($1, 'shop-1', $2, $3, now(), $4, 0, true, 0, 2, $5)",
        )
        .bind(check.order_id)
        .bind(&check.provider_account)
        .bind(&check.provider_reference)
        .bind(check.deadline)
        .bind(check.due_at)
        .execute(&p.h.db.pool)
        .await
        .unwrap();
    }
    // One pass: the late order comes back, the on-time one does not.
    let config = ReconcileConfig {
        every: "1s".into(),
        grace: "2s".into(),
        batch: 100,
        lookback: "1h".into(),
        max_dead_letters: GIVE_UP_AFTER,
        once: true,
        schedule: p.schedule(),
    };
    let pass = config.pass(&p.h.kafka).unwrap();
    let emitter = Emitter::new(&p.h.kafka).unwrap();
    assert_eq!(pass.run(&p.h.db.pool, &emitter).await.unwrap(), 1);
    assert_eq!(
        pass.run(&p.h.db.pool, &emitter).await.unwrap(),
        0,
        "a second pass right away re-enqueues nothing"
    );
    // The original messages arrive too.
    enqueue(&p, "1s", 0, &late).await;
    enqueue(&p, "1s", 0, &on_time).await;
    let poll = p.start_poll(&common::unique("g-poll-"));
    let events = p
        .finals(&[late.order_id, on_time.order_id], Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (check, requeued) in [(&late, 1), (&on_time, 0)] {
        assert_eq!(
            final_of(&events[&check.order_id]).state,
            OrderState::Completed
        );
        assert_eq!(
            p.h.sim.check_times(&check.provider_reference).len(),
            2,
            "{}: one chain",
            check.provider_reference
        );
        let chain = chains::get(&p.h.db.pool, check.order_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(chain.requeued, requeued, "{chain:?}");
    }
    stop(poll).await;
    p.finish().await;
}

/// Issue 15 item 7: a chain whose step the poll stage dead-letters (here: its account was
/// removed from the configuration) is re-enqueued by the reconciler only until the poll
/// stage dead-lettered it `GIVE_UP_AFTER` times, not every pass forever; the order waits in
/// orders.dlq, and the reconciler's gauge counts it.
#[tokio::test(flavor = "multi_thread")]
async fn the_reconciler_stops_re_enqueueing_a_chain_the_poll_stage_keeps_dead_lettering() {
    let p = Poll::new("poll-giveup", SimConfig::default(), "1s", "1s").await;
    let order_id = Uuid::new_v4();
    // The chain as its first step left it, overdue: an account the stages no longer know.
    sqlx::query(
        "INSERT INTO check_chains (order_id, tenant_id, provider_account, provider_reference,
                                  dispatched_at, deadline, seq, step_done, attempts,
                                  version, next_check_at)
         VALUES ($1, 'shop-1', 'znet-removed', '900000031', now() - interval '1 minute',
                 now() + interval '1 hour', 1, true, 1, 3, now() - interval '30 seconds')",
    )
    .bind(order_id)
    .execute(&p.h.db.pool)
    .await
    .unwrap();
    let poll = p.start_poll(&common::unique("g-poll-"));
    let reconciler = p.start_reconciler("1s");
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let chain = chains::get(&p.h.db.pool, order_id).await.unwrap().unwrap();
        if chain.dead_lettered >= GIVE_UP_AFTER as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the re-enqueued step was not dead-lettered: {chain:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Several more passes (every 500 ms, 1 s grace): none re-enqueues it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let chain = chains::get(&p.h.db.pool, order_id).await.unwrap().unwrap();
    assert_eq!(
        (chain.requeued, chain.dead_lettered),
        (GIVE_UP_AFTER as i32, GIVE_UP_AFTER as i32),
        "{chain:?}"
    );
    assert_eq!((chain.seq, chain.final_state.as_deref()), (1, None));
    let dlq =
        p.h.read_until(name::ORDERS_DLQ, Duration::from_secs(5), |seen| {
            seen.len() > GIVE_UP_AFTER as usize
        })
        .await;
    assert_eq!(dlq.len(), GIVE_UP_AFTER as usize, "one copy per re-enqueue");
    assert!(dlq
        .iter()
        .all(|m| m.key() == Some(order_id.to_string().as_bytes())));
    // The reconciler counts it as given up.
    let pass = ReconcileConfig {
        every: "1s".into(),
        grace: "1s".into(),
        batch: 100,
        lookback: "1h".into(),
        max_dead_letters: GIVE_UP_AFTER,
        once: true,
        schedule: p.schedule(),
    }
    .pass(&p.h.kafka)
    .unwrap();
    assert!(pass.given_up(&p.h.db.pool).await.unwrap() >= 1);
    stop(reconciler).await;
    stop(poll).await;
    p.finish().await;
}

/// Unreadable messages on the poll stage's topics go to the DLQ and the stage carries on.
#[tokio::test(flavor = "multi_thread")]
async fn unreadable_check_messages_are_dead_lettered() {
    let sim = SimConfig {
        checks_until_complete: 0,
        ..SimConfig::default()
    };
    let p = Poll::new("poll-dlq", sim, "1s", "1s").await;
    let good = placed(&p, "900000021", Utc::now()).await;
    let producer = p.h.kafka.producer().unwrap();
    let topic = p.h.kafka.topic(&name::status_check("1s"));
    let key = good.order_id.to_string();
    producer
        .send(
            FutureRecord::to(&topic)
                .key(&key)
                .payload("{not json")
                .partition(0),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    enqueue(&p, "1s", 0, &good).await;
    let poll = p.start_poll(&common::unique("g-poll-"));
    let events = p.finals(&[good.order_id], Duration::from_secs(30)).await;
    assert_eq!(
        final_of(&events[&good.order_id]).state,
        OrderState::Completed
    );
    let dlq =
        p.h.read_until(name::ORDERS_DLQ, Duration::from_secs(20), |seen| {
            !seen.is_empty()
        })
        .await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].payload(), Some(&b"{not json"[..]));
    stop(poll).await;
    p.finish().await;
}

/// One trace per order: a `traceparent` published with the order is continued by dispatch
/// and by every status check, on every message they write, and both processes export spans
/// of that trace over OTLP/HTTP to the endpoint the standard variables name.
#[tokio::test(flavor = "multi_thread")]
async fn an_orders_trace_runs_through_dispatch_and_checks_and_is_exported() {
    let sim = SimConfig {
        checks_until_complete: 1,
        ..SimConfig::default()
    };
    let p = Poll::new("poll-trace", sim, "1s", "1s").await;
    // An OTLP/HTTP receiver that keeps what it is sent.
    let (received, endpoint) = common::otlp_receiver().await;

    let trace_id = Uuid::new_v4().simple().to_string();
    let spawn = |command: &str| {
        let mut env = p.h.dispatch_env(&common::unique("g-dispatch-"));
        env.push(("ORDERFLOW_POLL_GROUP".into(), common::unique("g-poll-")));
        env.push(("ORDERFLOW_FIRST_CHECK".into(), p.first_check.into()));
        env.push(("ORDERFLOW_CHECK_TIERS".into(), p.tiers.into()));
        env.push((
            "ORDERFLOW_PIN_KEYS_FILE".into(),
            p.keys_file.display().to_string(),
        ));
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
        env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()));
        env.push(("ORDERFLOW_SINK_GROUP".into(), common::unique("g-sink-")));
        common::ChildGuard(
            std::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
                .arg(command)
                .envs(env)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("starting orderflow"),
        )
    };
    let mut dispatch = spawn("dispatch");
    let mut poll = spawn("poll");
    let mut sink = spawn("sink");
    let o = order("25");
    let key = o.order_id.to_string();
    let payload = o.encode();
    let traceparent = format!(
        "00-{trace_id}-{}-01",
        &Uuid::new_v4().simple().to_string()[..16]
    );
    let topic = p.h.kafka.topic(name::ORDERS_CREATED);
    p.h.kafka
        .producer()
        .unwrap()
        .send(
            FutureRecord::to(&topic)
                .key(&key)
                .payload(&payload)
                .headers(orderflow::kafka::headers::build([(
                    "traceparent",
                    traceparent.as_str(),
                )])),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let events = p.finals(&[o.order_id], Duration::from_secs(60)).await;
    assert_eq!(final_of(&events[&o.order_id]).state, OrderState::Completed);

    // Every message written for the order carries the order's trace.
    let mut carried = 0;
    for topic in [
        name::ORDERS_STATE.to_owned(),
        name::ORDERS_DISPATCHED.to_owned(),
        name::status_check("1s"),
    ] {
        let messages = common::pipeline::read_to_end(&p.h.kafka, &topic).await;
        for m in messages.iter().filter(|m| m.key() == Some(key.as_bytes())) {
            let header = m
                .headers()
                .and_then(|h| orderflow::kafka::headers::get(h, "traceparent"))
                .unwrap_or_else(|| panic!("a message on {topic} without traceparent"));
            assert_eq!(
                header.split('-').nth(1),
                Some(trace_id.as_str()),
                "{topic}: {header}"
            );
            carried += 1;
        }
    }
    assert!(carried >= 5, "{carried} messages carried the trace");

    // The sink wrote the order, under the same trace.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while orderflow::db::orders::get(&p.h.db.pool, o.order_id)
        .await
        .unwrap()
        .is_none_or(|row| row.state != "completed")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sink did not write the order"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every process exported spans of the trace (flushed at SIGTERM at the latest).
    for child in [&mut dispatch, &mut poll, &mut sink] {
        let pid = child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(child.wait().unwrap().success());
    }
    let raw_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let bodies = received.lock().unwrap().clone();
    let has = |b: &[u8], needle: &[u8]| b.windows(needle.len()).any(|w| w == needle);
    for service in ["orderflow-dispatch", "orderflow-poll", "orderflow-sink"] {
        assert!(
            bodies
                .iter()
                .any(|b| has(b, service.as_bytes()) && has(b, &raw_id)),
            "no span of the trace from {service} among {} OTLP requests",
            bodies.len()
        );
    }
    p.finish().await;
}

/// Issue 15 item 3: a check step whose data the database refuses (here a rule of the test's
/// own on `check_chains`) is dead-lettered as `database_refused` with its SQLSTATE instead of
/// being retried forever, a check naming a time PostgreSQL cannot hold is refused at
/// decoding, the other checks of the batch go on, and the group's committed offset moves
/// past them within seconds.
#[tokio::test(flavor = "multi_thread")]
async fn check_steps_the_database_refuses_are_dead_lettered_and_the_group_moves_on() {
    let sim = SimConfig {
        checks_until_complete: 0,
        ..SimConfig::default()
    };
    let p = Poll::new("poll-poison", sim, "1s", "1s").await;
    sqlx::query(
        "ALTER TABLE check_chains ADD CONSTRAINT test_refused_tenant
           CHECK (tenant_id <> 'refused-by-db')",
    )
    .execute(&p.h.db.pool)
    .await
    .unwrap();
    let good = placed(&p, "900000031", Utc::now()).await;
    let refused = StatusCheck {
        order_id: Uuid::new_v4(),
        tenant_id: "refused-by-db".into(),
        ..placed(&p, "900000032", Utc::now()).await
    };
    let mut too_early = serde_json::to_value(StatusCheck {
        order_id: Uuid::new_v4(),
        ..placed(&p, "900000033", Utc::now()).await
    })
    .unwrap();
    too_early["dispatched_at"] = serde_json::json!("-5000-01-01T00:00:00Z");
    let too_early_id = too_early["order_id"].as_str().unwrap().to_owned();
    // One partition, so the three are one batch.
    enqueue(&p, "1s", 0, &refused).await;
    p.h.kafka
        .producer()
        .unwrap()
        .send(
            FutureRecord::to(&p.h.kafka.topic(&name::status_check("1s")))
                .key(&too_early_id)
                .payload(&serde_json::to_vec(&too_early).unwrap())
                .partition(0),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    enqueue(&p, "1s", 0, &good).await;
    let group = common::unique("g-poll-");
    let poll = p.start_poll(&group);
    let events = p.finals(&[good.order_id], Duration::from_secs(30)).await;
    assert_eq!(
        final_of(&events[&good.order_id]).state,
        OrderState::Completed
    );
    let dlq =
        p.h.read_until(name::ORDERS_DLQ, Duration::from_secs(20), |seen| {
            seen.len() >= 2
        })
        .await;
    assert_eq!(dlq.len(), 2);
    let header = |key: &str, name: &str| {
        let m = dlq
            .iter()
            .find(|m| m.key() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("{key} not in the DLQ"));
        orderflow::kafka::headers::get(m.headers().unwrap(), name).map(str::to_owned)
    };
    use orderflow::kafka::headers::{DLQ_REASON, DLQ_SQLSTATE};
    let refused_key = refused.order_id.to_string();
    assert_eq!(
        header(&refused_key, DLQ_REASON).as_deref(),
        Some("database_refused")
    );
    assert_eq!(header(&refused_key, DLQ_SQLSTATE).as_deref(), Some("23514"));
    assert_eq!(
        header(&too_early_id, DLQ_REASON).as_deref(),
        Some("invalid_field")
    );
    common::pipeline::assert_committed_to_end(
        &p.h.kafka,
        &group,
        &name::status_check("1s"),
        Duration::from_secs(10),
    )
    .await;
    stop(poll).await;
    p.finish().await;
}
