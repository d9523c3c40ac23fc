//! The dispatch stage against the real broker, the real database and the znet simulator:
//! each order placed at most once (G1), every event ending in orders.state or orders.dlq
//! (G2, G8), provider answers classified as the protocol says.

mod common;

use common::pipeline::{
    decode_state, order, Harness, ACCOUNT, DOWN_ACCOUNT, KOD, OTHER_ACCOUNT, SIFRE,
    WRONG_CREDENTIALS_ACCOUNT,
};
use orderflow::core::event::OrderStateEvent;
use orderflow::core::lifecycle::{FailureReason, OrderState};
use orderflow::db::claims::{self, Phase};
use orderflow::kafka::headers;
use orderflow::kafka::topics::name;
use orderflow::shutdown;
use orderflow::testbed::sim::{Fault, SimCall, SimConfig};
use rdkafka::message::Message;
use std::time::Duration;

/// Runs the dispatch stage in this process, with its own consumer group, until the returned
/// trigger fires.
fn start_dispatch(h: &Harness) -> (shutdown::Trigger, tokio::task::JoinHandle<()>) {
    start_dispatch_with(h, h.dispatch_config())
}

fn start_dispatch_with(
    h: &Harness,
    config: orderflow::dispatch::DispatchConfig,
) -> (shutdown::Trigger, tokio::task::JoinHandle<()>) {
    start_dispatch_metered(h, config, Default::default())
}

/// [`start_dispatch_with`], counting in `metrics`.
fn start_dispatch_metered(
    h: &Harness,
    config: orderflow::dispatch::DispatchConfig,
    metrics: std::sync::Arc<orderflow::metrics::Metrics>,
) -> (shutdown::Trigger, tokio::task::JoinHandle<()>) {
    common::logs::capture();
    let (trigger, signal) = shutdown::channel();
    let (accounts, kafka, pool) = (h.accounts(), h.kafka.clone(), h.db.pool.clone());
    let task = tokio::spawn(async move {
        orderflow::dispatch::run(config, accounts, kafka, pool, metrics, signal)
            .await
            .expect("the dispatch stage");
    });
    (trigger, task)
}

/// Publishes one order and returns its latest state once dispatch has settled it.
async fn publish_and_settle(
    h: &Harness,
    order: &orderflow::core::event::OrderCreated,
) -> OrderStateEvent {
    h.publish(order).await;
    let states = h
        .settled_states(&[order.order_id], Duration::from_secs(60))
        .await;
    last(states.get(&order.order_id).expect("a settled state")).clone()
}

/// A batch of valid orders across the catalog's denominations, published.
async fn publish_batch(h: &Harness, n: usize) -> Vec<orderflow::core::event::OrderCreated> {
    let orders: Vec<_> = (0..n).map(|i| order(["25", "50", "100"][i % 3])).collect();
    for o in &orders {
        h.publish(o).await;
    }
    orders
}

/// Waits until the simulator has sold `n` orders, checking `alive` on the way.
async fn wait_for_purchases(h: &Harness, n: usize, mut alive: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while h.stats().purchases.len() < n {
        assert!(std::time::Instant::now() < deadline, "no progress");
        assert!(alive(), "the stage stopped early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every order of the batch is dispatched under a reference of its own, and each reference
/// reached the provider's order logic exactly once: interrupted calls were settled by a
/// check, never by a second placement.
async fn assert_each_placed_exactly_once(
    h: &Harness,
    orders: &[orderflow::core::event::OrderCreated],
) {
    let ids: Vec<_> = orders.iter().map(|o| o.order_id).collect();
    let states = h.settled_states(&ids, Duration::from_secs(180)).await;
    let stats = h.stats();
    let mut references = std::collections::BTreeSet::new();
    for o in orders {
        let s = states
            .get(&o.order_id)
            .unwrap_or_else(|| panic!("order {} has no state", o.order_id));
        let end = last(s);
        assert_eq!(end.state, OrderState::Dispatched, "order {}", o.order_id);
        let reference = end.provider_reference.clone().unwrap();
        assert_eq!(
            stats.placements.get(&reference),
            Some(&1),
            "order {}",
            o.order_id
        );
        assert_eq!(
            stats.purchases.get(&reference),
            Some(&1),
            "order {}",
            o.order_id
        );
        references.insert(reference);
    }
    assert_eq!(references.len(), orders.len(), "one reference per order");
    assert_eq!(
        stats.purchases.len(),
        orders.len(),
        "nothing else was bought"
    );
}

async fn stop(trigger: shutdown::Trigger, task: tokio::task::JoinHandle<()>) {
    trigger.fire();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the stage stops")
        .unwrap();
    assert_no_secrets_logged();
}

/// G5: whatever the stages and the simulator of this test binary logged holds no
/// credential and no PIN.
fn assert_no_secrets_logged() {
    let logs = common::logs::text();
    assert!(logs.contains("dispatch stage running"), "the capture works");
    assert!(
        !logs.contains(KOD) && !logs.contains(SIFRE),
        "a credential was logged"
    );
    let pin_lines: Vec<&str> = logs
        .lines()
        .filter(|l| common::logs::has_pin_shape(l))
        .collect();
    assert!(pin_lines.is_empty(), "a PIN was logged: {pin_lines:?}");
}

fn last(states: &[OrderStateEvent]) -> &OrderStateEvent {
    states
        .iter()
        .max_by_key(|s| s.version)
        .expect("at least one state")
}

#[tokio::test(flavor = "multi_thread")]
async fn happy_path_places_once_and_publishes_dispatched() {
    let h = Harness::new("happy", SimConfig::default(), 5_000).await;
    let (trigger, task) = start_dispatch(&h);
    let o = order("50");
    h.publish(&o).await;

    let states = h
        .settled_states(&[o.order_id], Duration::from_secs(60))
        .await;
    let states = &states[&o.order_id];
    let end = last(states);
    assert_eq!(end.state, OrderState::Dispatched);
    assert!(states
        .iter()
        .any(|s| s.state == OrderState::Dispatching && s.version == 1));
    let reference = end.provider_reference.clone().expect("a reference");
    assert!(reference.bytes().all(|b| b.is_ascii_digit()), "{reference}");

    let dispatched = h.dispatched(1, Duration::from_secs(30)).await;
    assert_eq!(dispatched.len(), 1);
    assert_eq!(
        (dispatched[0].order_id, &dispatched[0].provider_reference),
        (o.order_id, &reference)
    );
    assert_eq!(dispatched[0].provider_account, ACCOUNT);

    let stats = h.stats();
    assert_eq!(stats.purchases.get(&reference), Some(&1));
    assert_eq!(stats.placements.get(&reference), Some(&1));
    let claim = claims::get(&h.db.pool, o.order_id).await.unwrap().unwrap();
    assert_eq!((claim.phase, claim.place_calls), (Phase::Placed, 1));
    stop(trigger, task).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejection_fails_the_order_with_code_and_message() {
    let h = Harness::new("reject", SimConfig::default(), 5_000).await;
    let (trigger, task) = start_dispatch(&h);
    let o = order("999"); // not in the simulator's catalog
    let end = publish_and_settle(&h, &o).await;
    assert_eq!(end.state, OrderState::Failed);
    let failure = end.failure.as_ref().expect("a failure");
    assert_eq!(failure.reason, FailureReason::Rejected);
    assert_eq!(failure.code.as_deref(), Some("3"));
    assert_eq!(failure.message, "Kupur Bilgisi Bulunamadı");
    assert!(h.stats().purchases.is_empty());
    // Nothing for the poll stage: a rejected order is never polled.
    let dispatched = h
        .read_until(name::ORDERS_DISPATCHED, Duration::from_secs(3), |_| false)
        .await;
    assert!(dispatched.is_empty());
    stop(trigger, task).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_error_then_success_places_once() {
    let h = Harness::new("5xx", SimConfig::default(), 5_000).await;
    h.sim
        .script(SimCall::Place, vec![Fault::ServerError, Fault::ServerError]);
    let (trigger, task) = start_dispatch(&h);
    let o = order("25");
    let end = publish_and_settle(&h, &o).await;
    assert_eq!(end.state, OrderState::Dispatched);
    let reference = end.provider_reference.clone().unwrap();
    let stats = h.stats();
    assert_eq!(stats.faults_injected, 2);
    // All three requests (two answered 503, one bought) used the order's one reference.
    assert_eq!(
        stats.place_requests,
        [(reference.clone(), 3)].into(),
        "{stats:?}"
    );
    assert_eq!(stats.purchases.get(&reference), Some(&1));
    stop(trigger, task).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_order_whose_answer_is_lost_is_placed_exactly_once() {
    // The settling check finds the order completed, PIN and all: it must not be logged.
    let sim = SimConfig {
        lost_answer_delay: Duration::from_secs(4),
        checks_until_complete: 0,
        ..SimConfig::default()
    };
    let h = Harness::new("lost", sim, 1_000).await;
    h.sim.script(SimCall::Place, vec![Fault::LostAnswer]);
    let (trigger, task) = start_dispatch(&h);
    let o = order("100");
    let end = publish_and_settle(&h, &o).await;
    assert_eq!(end.state, OrderState::Dispatched);
    let reference = end.provider_reference.clone().unwrap();
    let stats = h.stats();
    assert_eq!(
        stats.placements.get(&reference),
        Some(&1),
        "settled by a check, not a second placement"
    );
    assert_eq!(stats.purchases.get(&reference), Some(&1));
    assert!(stats.checks >= 1);
    let claim = claims::get(&h.db.pool, o.order_id).await.unwrap().unwrap();
    assert_eq!((claim.phase, claim.place_calls), (Phase::Placed, 1));
    stop(trigger, task).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_events_go_to_the_dlq_with_their_reason_and_the_stage_carries_on() {
    let h = Harness::new("dlq", SimConfig::default(), 5_000).await;
    let (trigger, task) = start_dispatch(&h);

    let valid = serde_json::to_value(order("50")).unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut v = valid.clone();
        v[field] = value;
        serde_json::to_vec(&v).unwrap()
    };
    let without = |field: &str| {
        let mut v = valid.clone();
        v.as_object_mut().unwrap().remove(field);
        serde_json::to_vec(&v).unwrap()
    };
    let mut oversized = valid.clone();
    oversized["user_extra"] = serde_json::Value::String("x".repeat(8_000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed",
            b"{\"order_id\": \"6f1d".to_vec(),
            "unreadable_json",
        ),
        (
            "wrong-type",
            with("tenant_id", serde_json::json!(42)),
            "invalid_field",
        ),
        ("missing", without("provider_account"), "invalid_field"),
        (
            "bad-uuid",
            with("order_id", serde_json::json!("not-a-uuid")),
            "invalid_field",
        ),
        (
            "oversized",
            serde_json::to_vec(&oversized).unwrap(),
            "oversized",
        ),
        (
            "unknown-account",
            with("provider_account", serde_json::json!("nobody")),
            "unknown_provider_account",
        ),
        (
            "no-kupur",
            with("product", serde_json::json!({"oyun": "412"})),
            "invalid_product",
        ),
        (
            "key-is-not-the-order-id",
            serde_json::to_vec(&valid).unwrap(),
            "invalid_field",
        ),
    ];
    for (key, payload, _) in &cases {
        h.publish_raw(Some(key), payload).await;
    }
    // A good order after the bad ones still goes through.
    let good = order("50");
    h.publish(&good).await;

    let dead = h
        .read_until(name::ORDERS_DLQ, Duration::from_secs(60), |seen| {
            seen.len() >= cases.len()
        })
        .await;
    assert_eq!(dead.len(), cases.len());
    for (key, payload, reason) in &cases {
        let m = dead
            .iter()
            .find(|m| m.key() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("{key} not in the DLQ"));
        let hs = m.headers().expect("DLQ headers");
        assert_eq!(
            headers::get(hs, headers::DLQ_REASON),
            Some(*reason),
            "{key}"
        );
        assert!(
            !headers::get(hs, headers::DLQ_DETAIL)
                .unwrap_or_default()
                .is_empty(),
            "{key}"
        );
        assert_eq!(headers::get(hs, headers::DLQ_STAGE), Some("dispatch"));
        assert_eq!(
            headers::get(hs, headers::DLQ_SOURCE_TOPIC),
            Some(h.kafka.topic(name::ORDERS_CREATED).as_str())
        );
        assert!(headers::get(hs, headers::DLQ_SOURCE_PARTITION)
            .unwrap()
            .parse::<i32>()
            .is_ok());
        assert!(headers::get(hs, headers::DLQ_SOURCE_OFFSET)
            .unwrap()
            .parse::<i64>()
            .is_ok());
        assert_eq!(
            m.payload(),
            Some(payload.as_slice()),
            "{key}: the original bytes"
        );
    }
    let states = h
        .settled_states(&[good.order_id], Duration::from_secs(60))
        .await;
    assert_eq!(last(&states[&good.order_id]).state, OrderState::Dispatched);
    assert_eq!(
        h.stats().purchases.len(),
        1,
        "no invalid event reached the provider"
    );
    stop(trigger, task).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_order_is_not_placed_again() {
    let h = Harness::new("dup", SimConfig::default(), 5_000).await;
    let (trigger, task) = start_dispatch(&h);
    let o = order("50");
    // The shop publishes the same order three times (a retry on its side).
    for _ in 0..3 {
        h.publish(&o).await;
    }
    let messages = h
        .read_until(name::ORDERS_STATE, Duration::from_secs(60), |seen| {
            seen.iter()
                .filter(|m| decode_state(m).state == OrderState::Dispatched)
                .count()
                >= 3
        })
        .await;
    let dispatched: Vec<_> = messages
        .iter()
        .map(decode_state)
        .filter(|s| s.state == OrderState::Dispatched)
        .collect();
    assert_eq!(dispatched.len(), 3, "each copy is answered");
    assert!(dispatched
        .windows(2)
        .all(|w| w[0].provider_reference == w[1].provider_reference));
    let stats = h.stats();
    assert_eq!(stats.purchases.values().sum::<u32>(), 1);
    assert_eq!(stats.placements.values().sum::<u32>(), 1);
    stop(trigger, task).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_order_under_another_account_is_dead_lettered_not_bought_again() {
    let h = Harness::new("conflict", SimConfig::default(), 5_000).await;
    let (trigger, task) = start_dispatch(&h);
    let o = order("50");
    assert_eq!(
        publish_and_settle(&h, &o).await.state,
        OrderState::Dispatched
    );

    let mut elsewhere = o.clone();
    elsewhere.provider_account = OTHER_ACCOUNT.into();
    h.publish(&elsewhere).await;
    let dead = h
        .read_until(name::ORDERS_DLQ, Duration::from_secs(60), |seen| {
            !seen.is_empty()
        })
        .await;
    assert_eq!(dead.len(), 1);
    let hs = dead[0].headers().expect("DLQ headers");
    assert_eq!(
        headers::get(hs, headers::DLQ_REASON),
        Some("account_conflict")
    );
    assert_eq!(h.stats().place_requests.values().sum::<u32>(), 1);
    stop(trigger, task).await;
    h.finish().await;
}

/// The same order id with other content under the same account: the first event wins and
/// the later one is dead-lettered as a conflicting duplicate; an exact re-send (even with a
/// new created_at) stays a harmless copy.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_order_with_other_content_is_dead_lettered_and_the_first_wins() {
    let h = Harness::new("conflict-content", SimConfig::default(), 5_000).await;
    let (trigger, task) = start_dispatch(&h);
    let o = order("50");
    assert_eq!(
        publish_and_settle(&h, &o).await.state,
        OrderState::Dispatched
    );
    let mut other = o.clone();
    other.product.insert("kupur".into(), "100".into());
    h.publish(&other).await;
    let mut resent = o.clone();
    resent.created_at = chrono::Utc::now();
    h.publish(&resent).await;

    let states = h
        .read_until(name::ORDERS_STATE, Duration::from_secs(60), |seen| {
            seen.iter()
                .filter(|m| decode_state(m).state == OrderState::Dispatched)
                .count()
                >= 2
        })
        .await;
    let dispatched: Vec<_> = states
        .iter()
        .map(decode_state)
        .filter(|s| s.state == OrderState::Dispatched)
        .collect();
    assert_eq!(dispatched.len(), 2, "the re-send is answered");
    assert_eq!(
        dispatched[0].provider_reference,
        dispatched[1].provider_reference
    );
    let dead = h
        .read_until(name::ORDERS_DLQ, Duration::from_secs(60), |seen| {
            !seen.is_empty()
        })
        .await;
    assert_eq!(dead.len(), 1);
    let hs = dead[0].headers().expect("DLQ headers");
    assert_eq!(
        headers::get(hs, headers::DLQ_REASON),
        Some("conflicting_duplicate")
    );
    assert_eq!(dead[0].payload(), Some(other.encode().as_slice()));
    assert_eq!(
        common::pipeline::read_to_end(&h.kafka, name::ORDERS_DLQ)
            .await
            .len(),
        1,
        "the re-send is not dead-lettered"
    );
    let stats = h.stats();
    assert_eq!(stats.place_requests.values().sum::<u32>(), 1);
    assert_eq!(stats.purchases.values().sum::<u32>(), 1);
    let claim = claims::get(&h.db.pool, o.order_id).await.unwrap().unwrap();
    assert_eq!(claim.content_digest, Some(o.content_digest()));
    stop(trigger, task).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reference_already_used_elsewhere_fails_the_order_without_buying() {
    let h = Harness::new("conflict-ref", SimConfig::default(), 5_000).await;
    // Another system on the same dealer account already used the first reference this
    // fresh database will hand out.
    let url = format!(
        "{}/servis/pin_ekle.php?kod={KOD}&sifre={SIFRE}&oyun=412&kupur=50&referans=100000001\
         &musteri_tel=1&oyuncu_bilgi=x",
        h.sim_url
    );
    let body = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(body.starts_with("OK|"), "{body}");

    let (trigger, task) = start_dispatch(&h);
    let o = order("50");
    let end = publish_and_settle(&h, &o).await;
    assert_eq!(end.provider_reference.as_deref(), Some("100000001"));
    assert_eq!(end.state, OrderState::Failed, "never taken for ours");
    assert_eq!(end.failure.as_ref().unwrap().code.as_deref(), Some("5"));
    let stats = h.stats();
    assert_eq!(
        stats.purchases.get("100000001"),
        Some(&1),
        "only the other system's"
    );
    stop(trigger, task).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_provider_fails_the_order_at_its_deadline() {
    let h = Harness::new("down", SimConfig::default(), 2_000).await;
    let (trigger, task) = start_dispatch(&h);
    let mut o = order("50");
    o.provider_account = DOWN_ACCOUNT.into();
    o.deadline = Some(chrono::Utc::now() + chrono::Duration::seconds(4));
    let end = publish_and_settle(&h, &o).await;
    assert_eq!(end.state, OrderState::Failed);
    assert_eq!(
        end.failure.as_ref().unwrap().reason,
        FailureReason::Deadline
    );
    // Connection refused proves nothing left, so no check was needed to expire it.
    let claim = claims::get(&h.db.pool, o.order_id).await.unwrap().unwrap();
    assert_eq!(claim.phase, Phase::Expired);
    assert!(claim.place_calls >= 1);
    stop(trigger, task).await;
    h.finish().await;
}

/// A second consumer joins the group mid-batch and the first leaves: partitions move
/// twice while placements are in flight, and still every order is placed exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn rebalances_mid_batch_place_every_order_exactly_once() {
    let sim = SimConfig {
        latency: Duration::from_millis(60),
        ..SimConfig::default()
    };
    let h = Harness::new("rebalance", sim, 2_000).await;
    let orders = publish_batch(&h, 90).await;
    let config = h.dispatch_config();
    let (first_trigger, first) = start_dispatch_with(&h, config.clone());
    wait_for_purchases(&h, orders.len() / 5, || !first.is_finished()).await;
    let (second_trigger, second) = start_dispatch_with(&h, config); // joins: partitions move
    wait_for_purchases(&h, orders.len() / 2, || !second.is_finished()).await;
    stop(first_trigger, first).await; // leaves: partitions move again

    assert_each_placed_exactly_once(&h, &orders).await;
    stop(second_trigger, second).await;
    h.finish().await;
}

/// Kills `orderflow dispatch` with SIGKILL while orders are in flight, restarts it, and
/// proves with the simulator's counts that every order was placed exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_batch_then_restart_places_every_order_exactly_once() {
    const ORDERS: usize = 120;
    // 100 ms per answer and 8 calls at a time: a kill lands with calls in flight.
    let sim = SimConfig {
        latency: Duration::from_millis(100),
        ..SimConfig::default()
    };
    let h = Harness::new("kill", sim, 2_000).await;
    let group = common::unique("g-kill-");
    let logs = std::env::temp_dir().join(common::unique("orderflow-kill-logs-"));
    std::fs::create_dir_all(&logs).unwrap();
    let spawn = |n: u32| {
        let log = std::fs::File::create(logs.join(format!("dispatch-{n}.log"))).unwrap();
        common::ChildGuard(
            std::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
                .arg("dispatch")
                .envs(h.dispatch_env(&group))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting orderflow dispatch"),
        )
    };

    let orders = publish_batch(&h, ORDERS).await;
    let mut first = spawn(1);
    // Kill once a part of the batch is bought and a placement call is out.
    wait_for_purchases(&h, ORDERS / 6, || first.try_wait().unwrap().is_none()).await;
    let placing = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dispatch_claims WHERE phase = 'placing'")
            .fetch_one(&h.db.pool)
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while placing().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no placement call ever seen in flight"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    // Orders whose placement call was out when the process died: the restart must settle
    // them by checking, not by placing again.
    assert!(
        placing().await > 0,
        "the calls in flight settled before the kill"
    );
    let bought_before_restart = h.stats().purchases.len();
    assert!(
        bought_before_restart < ORDERS,
        "the kill came too late to prove anything"
    );

    let mut second = spawn(2);
    assert_each_placed_exactly_once(&h, &orders).await;
    second.kill().unwrap();
    second.wait().unwrap();

    // G5: neither process logged a credential or a PIN-shaped value.
    for n in [1, 2] {
        common::pipeline::assert_clean_log(&logs.join(format!("dispatch-{n}.log")));
    }
    std::fs::remove_dir_all(&logs).ok();
    h.finish().await;
}

/// A dispatch process that dies at `point` (`ORDERFLOW_CRASH_AT`, see `orderflow::crash`)
/// with a batch of orders, then a restart: every order is placed exactly once.
async fn crash_then_restart(point: &str, label: &str) -> (Harness, usize, usize) {
    const ORDERS: usize = 40;
    let h = Harness::new(label, SimConfig::default(), 2_000).await;
    let group = common::unique("g-crash-");
    let orders = publish_batch(&h, ORDERS).await;
    let spawn = |crash: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_orderflow"));
        command
            .arg("dispatch")
            .envs(h.dispatch_env(&group))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(point) = crash {
            command.env("ORDERFLOW_CRASH_AT", point);
        }
        common::ChildGuard(command.spawn().expect("starting orderflow dispatch"))
    };
    let mut first = spawn(Some(point));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = first.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the process never reached {point}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "the process did not crash at {point}");
    let placing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dispatch_claims WHERE phase = 'placing'")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    let bought = h.stats().purchases.len();
    let mut second = spawn(None);
    assert_each_placed_exactly_once(&h, &orders).await;
    second.kill().unwrap();
    second.wait().unwrap();
    (h, placing as usize, bought)
}

/// G1: a crash after a batch's claim commit and before any of its calls. The claims are
/// `placing` with nothing bought; the restart checks each reference, finds nothing and
/// places it, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_a_batchs_claim_and_its_calls_buys_each_order_once() {
    let (h, placing, bought) = crash_then_restart("dispatch.after_claim", "crash-claim").await;
    assert!(placing > 0, "no claim was marked placing before the crash");
    assert_eq!(bought, 0, "a call left before the crash point");
    h.finish().await;
}

/// G1: a crash after the provider took a batch's orders and before they were settled. The
/// restart finds them `placing`, checks, and settles them as placed without buying again.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_a_batchs_calls_and_its_settlement_buys_each_order_once() {
    let (h, placing, bought) = crash_then_restart("dispatch.after_calls", "crash-calls").await;
    assert!(placing > 0, "no claim was left placing by the crash");
    assert!(bought > 0, "nothing was bought before the crash");
    h.finish().await;
}

#[test]
fn pin_shapes_are_recognised() {
    assert!(common::logs::has_pin_shape("x ABCD-1234-EF56-7890 y"));
    assert!(common::logs::has_pin_shape("pin=ABCD-1234-EF56-7890"));
    // A UUID whose middle groups are all digits is not a PIN.
    assert!(!common::logs::has_pin_shape(
        "order 6f1d2c31-8041-4123-9456-7a8b9c0d1e2f"
    ));
    assert!(!common::logs::has_pin_shape(
        "order 12345678-1234-4123-9456-123456789012"
    ));
    assert!(!common::logs::has_pin_shape(
        "order 6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f"
    ));
    assert!(!common::logs::has_pin_shape("ABCD-1234"));
}

// ----- G9: ambiguous answers are not proof (issue 15) -----------------------------------

/// Every state event of `order` up to its final or dispatched state.
async fn states_of(
    h: &Harness,
    order: &orderflow::core::event::OrderCreated,
) -> Vec<OrderStateEvent> {
    h.settled_states(&[order.order_id], Duration::from_secs(60))
        .await
        .remove(&order.order_id)
        .expect("a settled state")
}

fn never_failed(states: &[OrderStateEvent]) {
    let failed: Vec<_> = states
        .iter()
        .filter(|s| s.state == OrderState::Failed)
        .collect();
    assert!(failed.is_empty(), "reported failed: {failed:?}");
}

/// A placement whose answer is lost, at a provider that shows new orders to checks only
/// after 1.5 s: the checks that say "not found" meanwhile are no proof, so the order is not
/// placed again within the 3 s window, and is found and dispatched once visible.
#[tokio::test(flavor = "multi_thread")]
async fn an_unclear_placement_is_not_placed_again_while_the_provider_may_not_show_it_yet() {
    let sim = SimConfig {
        lost_answer_delay: Duration::from_secs(2),
        visibility_lag: Duration::from_millis(1_500),
        ..SimConfig::default()
    };
    let h = Harness::with_settings("lag", sim, 1_000, "visibility_window_ms = 3000\n").await;
    h.sim.script(SimCall::Place, vec![Fault::LostAnswer]);
    let (trigger, task) = start_dispatch(&h);
    let o = order("50");
    h.publish(&o).await;
    let states = states_of(&h, &o).await;
    never_failed(&states);
    let end = last(&states);
    assert_eq!(end.state, OrderState::Dispatched);
    let reference = end.provider_reference.clone().unwrap();
    let stats = h.stats();
    assert!(
        stats.unseen_checks >= 1,
        "no check came during the lag: {stats:?}"
    );
    assert_eq!(
        stats.place_requests.get(&reference),
        Some(&1),
        "placed again while the provider did not show it yet"
    );
    assert_eq!(stats.purchases.get(&reference), Some(&1));
    let claim = claims::get(&h.db.pool, o.order_id).await.unwrap().unwrap();
    assert_eq!((claim.phase, claim.place_calls), (Phase::Placed, 1));
    stop(trigger, task).await;
    h.finish().await;
}

/// The lag outlasts the 1 s window: the order is placed again under its reference, and
/// that call is refused with code 3, a permanent code. The first call bought the order, so
/// the refusal must not fail it: it is dispatched once the provider shows it.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_placement_after_an_unclear_one_is_not_a_rejection() {
    let sim = SimConfig {
        lost_answer_delay: Duration::from_secs(2),
        visibility_lag: Duration::from_secs(4),
        ..SimConfig::default()
    };
    let h =
        Harness::with_settings("lag-refused", sim, 1_000, "visibility_window_ms = 1000\n").await;
    h.sim.script(SimCall::Place, vec![Fault::LostAnswer]);
    h.sim
        .script_answers(SimCall::Place, vec!["3|Kupur Bilgisi Bulunamadı".into()]);
    let (trigger, task) = start_dispatch(&h);
    let o = order("50");
    h.publish(&o).await;
    let states = states_of(&h, &o).await;
    never_failed(&states);
    let end = last(&states);
    assert_eq!(end.state, OrderState::Dispatched);
    let reference = end.provider_reference.clone().unwrap();
    let stats = h.stats();
    assert_eq!(
        stats.scripted_answers, 1,
        "the second placement was not refused"
    );
    assert_eq!(stats.purchases.get(&reference), Some(&1));
    assert_eq!(stats.purchases.len(), 1);
    stop(trigger, task).await;
    h.finish().await;
}

/// The deadline passes while the provider does not show an unclearly placed order yet:
/// the order is not failed before its reference stayed not-found for the visibility window,
/// and the purchase that shows within it is kept (failing it would refund a bought order).
#[tokio::test(flavor = "multi_thread")]
async fn an_unclear_placement_is_not_failed_at_the_deadline_before_the_window_ends() {
    let sim = SimConfig {
        lost_answer_delay: Duration::from_secs(1),
        visibility_lag: Duration::from_secs(4),
        ..SimConfig::default()
    };
    let h = Harness::with_settings(
        "lag-deadline",
        sim,
        1_000,
        "visibility_window_ms = 6000
",
    )
    .await;
    h.sim.script(SimCall::Place, vec![Fault::LostAnswer]);
    let (trigger, task) = start_dispatch(&h);
    let mut o = order("50");
    o.deadline = Some(chrono::Utc::now() + chrono::Duration::seconds(2));
    h.publish(&o).await;
    let states = states_of(&h, &o).await;
    never_failed(&states);
    let end = last(&states);
    assert_eq!(end.state, OrderState::Dispatched);
    let reference = end.provider_reference.clone().unwrap();
    let stats = h.stats();
    assert_eq!(stats.place_requests.get(&reference), Some(&1));
    assert_eq!(stats.purchases.get(&reference), Some(&1));
    stop(trigger, task).await;
    h.finish().await;
}

/// A code no list names (maintenance) is refused for now: the order is placed again with
/// backoff, never rejected, and goes through once the provider stops refusing.
#[tokio::test(flavor = "multi_thread")]
async fn a_code_never_seen_is_retried_and_the_order_goes_through_when_it_stops() {
    let h = Harness::new("code-99", SimConfig::default(), 2_000).await;
    h.sim.script_answers(
        SimCall::Place,
        vec!["99|Bakım çalışması".into(), "99|Bakım çalışması".into()],
    );
    let (trigger, task) = start_dispatch(&h);
    let o = order("25");
    h.publish(&o).await;
    let states = states_of(&h, &o).await;
    never_failed(&states);
    let end = last(&states);
    assert_eq!(end.state, OrderState::Dispatched);
    let reference = end.provider_reference.clone().unwrap();
    let stats = h.stats();
    assert_eq!(stats.place_requests.get(&reference), Some(&3), "{stats:?}");
    assert_eq!(stats.purchases.get(&reference), Some(&1));
    stop(trigger, task).await;
    h.finish().await;
}

/// A provider that keeps refusing with a code no list names until the order's deadline:
/// the order fails with reason deadline and the last code, not as a customer rejection.
#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_that_never_stops_fails_the_order_at_its_deadline_not_as_rejected() {
    let h = Harness::new("code-99-deadline", SimConfig::default(), 2_000).await;
    h.sim
        .script_answers(SimCall::Place, vec!["99|Bakım çalışması".into(); 1_000]);
    let (trigger, task) = start_dispatch(&h);
    let mut o = order("25");
    o.deadline = Some(chrono::Utc::now() + chrono::Duration::seconds(3));
    let end = publish_and_settle(&h, &o).await;
    assert_eq!(end.state, OrderState::Failed);
    let failure = end.failure.as_ref().unwrap();
    assert_eq!(failure.reason, FailureReason::Deadline, "{failure:?}");
    assert_eq!(failure.code.as_deref(), Some("99"));
    assert!(
        failure.message.contains("kept refusing with code 99"),
        "{}",
        failure.message
    );
    assert!(h.stats().purchases.is_empty());
    assert!(h.stats().scripted_answers >= 2, "retried");
    stop(trigger, task).await;
    h.finish().await;
}

/// The account's permanent codes are its own: code 77 listed as permanent rejects the order
/// at once, with the provider's code and message.
#[tokio::test(flavor = "multi_thread")]
async fn a_code_listed_as_permanent_for_the_account_rejects_at_once() {
    let h = Harness::with_settings(
        "code-77",
        SimConfig::default(),
        2_000,
        "permanent_codes = [\"3\", \"77\"]\nvisibility_window_ms = 0\n",
    )
    .await;
    h.sim
        .script_answers(SimCall::Place, vec!["77|Ürün satışa kapalı".into()]);
    let (trigger, task) = start_dispatch(&h);
    let o = order("25");
    let end = publish_and_settle(&h, &o).await;
    assert_eq!(end.state, OrderState::Failed);
    let failure = end.failure.as_ref().unwrap();
    assert_eq!(failure.reason, FailureReason::Rejected);
    assert_eq!(failure.code.as_deref(), Some("77"));
    assert_eq!(failure.message, "Ürün satışa kapalı");
    assert_eq!(h.stats().place_requests.values().sum::<u32>(), 1);
    stop(trigger, task).await;
    h.finish().await;
}

/// After an unclear placement (a 5xx), the checks are answered with a code the account does
/// not list as not-found: that says nothing, so the order is placed again only after a check
/// answers the not-found code.
#[tokio::test(flavor = "multi_thread")]
async fn a_check_answering_an_unlisted_code_is_not_taken_for_not_found() {
    let h = Harness::new("check-code", SimConfig::default(), 2_000).await;
    h.sim.script(SimCall::Place, vec![Fault::ServerError]);
    h.sim
        .script_answers(SimCall::Check, vec!["12|Sistem meşgul".into(); 3]);
    let (trigger, task) = start_dispatch(&h);
    let o = order("25");
    h.publish(&o).await;
    let states = states_of(&h, &o).await;
    never_failed(&states);
    let end = last(&states);
    assert_eq!(end.state, OrderState::Dispatched);
    let reference = end.provider_reference.clone().unwrap();
    let stats = h.stats();
    assert_eq!(
        stats.scripted_answers, 3,
        "placed again before a check said not-found: {stats:?}"
    );
    assert_eq!(stats.place_requests.get(&reference), Some(&2));
    assert_eq!(stats.purchases.get(&reference), Some(&1));
    stop(trigger, task).await;
    h.finish().await;
}

/// An account answering code 8 (credentials, IP whitelist or API permission) holds its
/// orders up: `orderflow order show` names the answer and since when the attempts fail.
#[tokio::test(flavor = "multi_thread")]
async fn order_show_names_what_holds_a_stuck_order_up_and_since_when() {
    let h = Harness::new("stuck-show", SimConfig::default(), 2_000).await;
    h.sim.script_answers(
        SimCall::Place,
        vec!["8|Bağlantı Hatası,Kullanıcı Api Yetki".into(); 1_000],
    );
    let (trigger, task) = start_dispatch(&h);
    let o = order("25");
    h.publish(&o).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let journey = orderflow::db::journey::get(&h.db.pool, o.order_id)
            .await
            .unwrap();
        if let Some(j) = journey.filter(|j| j.claim_failing_since.is_some()) {
            break orderflow::cli::order::render(&j, chrono::Utc::now(), None).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failing attempt recorded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(text.contains("held up by"), "{text}");
    assert!(text.contains("has a problem: 8|Bağlantı Hatası"), "{text}");
    assert!(text.contains("(since "), "{text}");
    assert!(h.stats().purchases.is_empty());
    stop(trigger, task).await;
    h.finish().await;
}

/// An unclear placement (a 5xx) on an account that then answers every check with code 8:
/// the provider cannot be asked whether the order went through. It is not left without an
/// answer for ever (G2): once the deadline and the visibility window have passed, with no
/// purchase known, it fails at its deadline and says the placement is unresolved.
#[tokio::test(flavor = "multi_thread")]
async fn an_unclear_placement_that_cannot_be_checked_fails_after_its_deadline() {
    let h = Harness::with_settings(
        "unclear-unanswered",
        SimConfig::default(),
        2_000,
        "visibility_window_ms = 1000\n",
    )
    .await;
    h.sim.script(SimCall::Place, vec![Fault::ServerError]);
    h.sim.script_answers(
        SimCall::Check,
        vec!["8|Bağlantı Hatası,Kullanıcı Api Yetki".into(); 1_000],
    );
    let (trigger, task) = start_dispatch(&h);
    let mut o = order("25");
    o.deadline = Some(chrono::Utc::now() + chrono::Duration::seconds(2));
    let end = publish_and_settle(&h, &o).await;
    assert_eq!(end.state, OrderState::Failed);
    let failure = end.failure.as_ref().unwrap();
    assert_eq!(failure.reason, FailureReason::Deadline, "{failure:?}");
    assert!(
        failure
            .message
            .contains("could not say whether the unclear placement"),
        "{}",
        failure.message
    );
    assert!(h.stats().purchases.is_empty());
    stop(trigger, task).await;
    h.finish().await;
}

/// The DLQ records whose key is `key`, once `count` records are in the DLQ.
async fn dead_letters(h: &Harness, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    h.read_until(name::ORDERS_DLQ, Duration::from_secs(30), |seen| {
        seen.len() >= count
    })
    .await
}

fn reason_of(m: &rdkafka::message::OwnedMessage) -> String {
    headers::get(m.headers().expect("DLQ headers"), headers::DLQ_REASON)
        .unwrap_or_default()
        .to_owned()
}

/// Issue 15 item 4: a well-formed order that cannot be placed as given is dead-lettered and
/// answered `failed` (invalid), so the shop can refund without reading the DLQ; its id stays
/// answered (a later valid event with it is a conflict, never bought). A conflicting event
/// for an order that exists is dead-lettered only: the order keeps its own state.
#[tokio::test(flavor = "multi_thread")]
async fn an_order_that_cannot_be_placed_is_answered_failed_invalid_once_and_only_if_new() {
    let h = Harness::new("answer-invalid", SimConfig::default(), 5_000).await;
    let config = h.dispatch_config();
    let group = config.group.clone().expect("the test names its group");
    let (trigger, task) = start_dispatch_with(&h, config);
    let placed = order("50");
    assert_eq!(
        publish_and_settle(&h, &placed).await.state,
        OrderState::Dispatched
    );

    let mut no_account = order("50");
    no_account.provider_account = "znet-nobody".into();
    let mut no_product = order("50");
    no_product.product.remove("kupur");
    // Reusing a placed order's id: with a product the provider does not sell, or other
    // content.
    let mut unplaceable_copy = placed.clone();
    unplaceable_copy
        .product
        .insert("kupur".into(), "999".into());
    unplaceable_copy.product.remove("oyun");
    let mut other_content = placed.clone();
    other_content.user_extra = "someone else".into();
    for event in [&no_account, &no_product, &unplaceable_copy, &other_content] {
        h.publish(event).await;
    }
    // The shop "fixes" the unknown account and sends the order again: the id was answered.
    let mut fixed = no_account.clone();
    fixed.provider_account = ACCOUNT.into();
    h.publish(&fixed).await;

    let dead = dead_letters(&h, 5).await;
    let mut reasons: Vec<String> = dead.iter().map(reason_of).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "account_conflict",
            "conflicting_duplicate",
            "invalid_product",
            "invalid_product",
            "unknown_provider_account"
        ]
    );
    common::pipeline::assert_committed_to_end(
        &h.kafka,
        &group,
        name::ORDERS_CREATED,
        Duration::from_secs(10),
    )
    .await;

    let states = common::pipeline::read_to_end(&h.kafka, name::ORDERS_STATE).await;
    let of = |id| -> Vec<OrderStateEvent> {
        states
            .iter()
            .map(decode_state)
            .filter(|s| s.order_id == id)
            .collect()
    };
    for unplaceable in [&no_account, &no_product] {
        let answers = of(unplaceable.order_id);
        assert_eq!(answers.len(), 1, "one answer: {answers:?}");
        let answer = &answers[0];
        assert_eq!(answer.state, OrderState::Failed);
        let failure = answer.failure.as_ref().expect("a failure");
        assert_eq!(failure.reason, FailureReason::Invalid);
        assert!(!failure.message.is_empty());
        assert_eq!(answer.provider_reference, None, "nothing was sent");
        assert_eq!(answer.tenant_id, unplaceable.tenant_id);
    }
    let answers = of(placed.order_id);
    assert!(
        answers.iter().all(|s| !s.state.is_final()),
        "the placed order keeps its own state: {answers:?}"
    );
    assert_eq!(
        claims::get(&h.db.pool, no_account.order_id)
            .await
            .unwrap()
            .unwrap()
            .phase,
        Phase::Invalid
    );
    let stats = h.stats();
    assert_eq!(
        stats.place_requests.values().sum::<u32>(),
        1,
        "only `placed`"
    );
    stop(trigger, task).await;
    h.finish().await;
}

/// Issue 15 item 4: a re-send of an order whose status checks have started (here: done,
/// the order completed) puts nothing older than its state on orders.state.
#[tokio::test(flavor = "multi_thread")]
async fn a_resend_of_a_final_order_puts_no_older_state_on_orders_state() {
    let h = Harness::new("resend-final", SimConfig::default(), 5_000).await;
    let config = h.dispatch_config();
    let group = config.group.clone().expect("the test names its group");
    let (trigger, task) = start_dispatch_with(&h, config);
    let o = order("50");
    let dispatched = publish_and_settle(&h, &o).await;
    assert_eq!(dispatched.state, OrderState::Dispatched);

    // What the poll stage does when the first check finds the order completed: it takes
    // the chain's step, publishes `completed`, records the step as done.
    let check = orderflow::core::event::StatusCheck {
        schema_version: orderflow::core::event::SCHEMA_VERSION,
        order_id: o.order_id,
        tenant_id: o.tenant_id.clone(),
        provider_account: ACCOUNT.into(),
        provider_reference: dispatched.provider_reference.clone().unwrap(),
        dispatched_at: dispatched.changed_at,
        deadline: dispatched.deadline.unwrap(),
        seq: 1,
        attempts: 0,
        due_at: chrono::Utc::now(),
        version: dispatched.version,
        created_at: None,
    };
    let poller = uuid::Uuid::new_v4();
    let begun =
        orderflow::db::chains::begin_step(&h.db.pool, &check, poller, Duration::from_secs(30))
            .await
            .unwrap();
    assert_eq!(begun, orderflow::db::chains::Begun::Mine);
    let completed = OrderStateEvent {
        state: OrderState::Completed,
        attempts: 1,
        version: dispatched.version + 1,
        changed_at: chrono::Utc::now(),
        ..dispatched.clone()
    };
    orderflow::kafka::emit::Emitter::new(&h.kafka)
        .unwrap()
        .state(&completed)
        .await
        .unwrap();
    let end = orderflow::db::chains::StepEnd {
        tier: None,
        attempts: 1,
        version: completed.version,
        next_check_at: None,
        final_state: Some(OrderState::Completed),
        error: None,
    };
    assert!(
        orderflow::db::chains::finish_step(&h.db.pool, o.order_id, 1, poller, &end)
            .await
            .unwrap()
    );

    // The shop sends the order again.
    let mut resent = o.clone();
    resent.created_at = chrono::Utc::now();
    h.publish(&resent).await;
    common::pipeline::assert_committed_to_end(
        &h.kafka,
        &group,
        name::ORDERS_CREATED,
        Duration::from_secs(10),
    )
    .await;

    let states: Vec<OrderStateEvent> = common::pipeline::read_to_end(&h.kafka, name::ORDERS_STATE)
        .await
        .iter()
        .map(decode_state)
        .filter(|s| s.order_id == o.order_id)
        .collect();
    let last = states.last().expect("states");
    assert_eq!(
        (last.state, last.version),
        (OrderState::Completed, completed.version),
        "the log ends on the order's final state: {states:?}"
    );
    let after_final = states
        .iter()
        .skip_while(|s| s.state != OrderState::Completed)
        .filter(|s| s.version < completed.version)
        .count();
    assert_eq!(
        after_final, 0,
        "an older state after the final one: {states:?}"
    );
    assert_eq!(h.stats().place_requests.values().sum::<u32>(), 1);
    stop(trigger, task).await;
    h.finish().await;
}

/// Issue 15 item 3: values the database would refuse are refused at decoding, a value it
/// refuses anyway (here a rule of the test's own on the claims table) dead-letters that one
/// event, and a record too large for a DLQ copy is cut; each time the group's committed
/// offset moves past the event within seconds and the other orders are placed.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_events_end_in_the_dlq_and_the_group_moves_past_them() {
    let h = Harness::new("poison", SimConfig::default(), 5_000).await;
    // A rule the decoder does not know: the database refuses claims of this tenant.
    sqlx::query(
        "ALTER TABLE dispatch_claims ADD CONSTRAINT test_refused_tenant
           CHECK (tenant_id <> 'refused-by-db')",
    )
    .execute(&h.db.pool)
    .await
    .unwrap();
    let config = h.dispatch_config();
    let group = config.group.clone().expect("the test names its group");

    let valid = serde_json::to_value(order("50")).unwrap();
    let hostile = |id: &str, field: &str, value: serde_json::Value| {
        let mut v = valid.clone();
        v["order_id"] = serde_json::json!(id);
        v[field] = value;
        serde_json::to_vec(&v).unwrap()
    };
    let ids: Vec<String> = (0..4).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // Before 4713 BC: PostgreSQL's timestamptz cannot hold it.
        (
            &ids[0],
            {
                let mut v = valid.clone();
                v["order_id"] = serde_json::json!(ids[0]);
                v["created_at"] = serde_json::json!("-5000-01-01T00:00:00Z");
                v["deadline"] = serde_json::json!("-4800-01-01T00:00:00Z");
                serde_json::to_vec(&v).unwrap()
            },
            "invalid_field",
        ),
        (
            &ids[1],
            hostile(&ids[1], "tenant_id", serde_json::json!("t".repeat(3000))),
            "invalid_field",
        ),
        (
            &ids[2],
            hostile(&ids[2], "tenant_id", serde_json::json!("refused-by-db")),
            "database_refused",
        ),
    ];
    // Valid orders around the hostile ones, in the same batches.
    let mut good = Vec::new();
    for (key, payload, _) in &cases {
        let o = order("25");
        h.publish(&o).await;
        good.push(o);
        h.publish_raw(Some(key), payload).await;
    }
    // A record near the broker's limit: its DLQ copy with headers would be refused.
    let big_producer: rdkafka::producer::FutureProducer = h
        .kafka
        .client_config()
        .set("message.max.bytes", "1048576")
        .create()
        .unwrap();
    let big = vec![b'x'; 1_020_000];
    big_producer
        .send(
            rdkafka::producer::FutureRecord::to(&h.kafka.topic(name::ORDERS_CREATED))
                .key(ids[3].as_str())
                .payload(big.as_slice()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let last = order("100");
    h.publish(&last).await;
    good.push(last);

    let (trigger, task) = start_dispatch_with(&h, config);
    let dead = dead_letters(&h, cases.len() + 1).await;
    assert_eq!(dead.len(), cases.len() + 1, "one DLQ entry each");
    for (key, _, reason) in &cases {
        let m = dead
            .iter()
            .find(|m| m.key() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("{key} not in the DLQ"));
        assert_eq!(reason_of(m), *reason, "{key}");
    }
    let refused = dead
        .iter()
        .find(|m| m.key() == Some(ids[2].as_bytes()))
        .unwrap();
    assert_eq!(
        headers::get(refused.headers().unwrap(), headers::DLQ_SQLSTATE),
        Some("23514")
    );
    let cut = dead
        .iter()
        .find(|m| m.key() == Some(ids[3].as_bytes()))
        .expect("the large record in the DLQ");
    assert_eq!(reason_of(cut), "oversized");
    let hs = cut.headers().unwrap();
    assert_eq!(headers::get(hs, headers::DLQ_CUT), Some("payload"));
    assert_eq!(
        headers::get(hs, headers::DLQ_ORIGINAL_BYTES),
        Some((big.len() + ids[3].len()).to_string().as_str())
    );
    let size = cut.payload().unwrap().len();
    assert!(
        size <= orderflow::kafka::dlq::MAX_COPY_BYTES && big.starts_with(cut.payload().unwrap())
    );

    common::pipeline::assert_committed_to_end(
        &h.kafka,
        &group,
        name::ORDERS_CREATED,
        Duration::from_secs(10),
    )
    .await;
    let ids: Vec<uuid::Uuid> = good.iter().map(|o| o.order_id).collect();
    let states = h.settled_states(&ids, Duration::from_secs(30)).await;
    for id in &ids {
        assert_eq!(
            last_state(&states[id]),
            OrderState::Dispatched,
            "the valid orders go on"
        );
    }
    stop(trigger, task).await;
    h.finish().await;
}

fn last_state(states: &[OrderStateEvent]) -> OrderState {
    last(states).state
}

/// Publishes 64 orders of `stuck_account` (whose placements can never succeed), waits until
/// they fill the stage's in-flight bound (32), then publishes one order of the healthy
/// account: it must be dispatched within seconds, not after the stuck ones' deadline.
async fn a_healthy_order_goes_past(
    h: &Harness,
    stuck_account: &str,
) -> Vec<orderflow::core::event::OrderCreated> {
    let stuck: Vec<_> = (0..64)
        .map(|i| {
            let mut o = order(["25", "50", "100"][i % 3]);
            o.provider_account = stuck_account.into();
            o
        })
        .collect();
    for o in &stuck {
        h.publish(o).await;
    }
    // The stuck orders are being worked on (claimed) before the healthy one arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let claimed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM dispatch_claims WHERE provider_account = $1")
                .bind(stuck_account)
                .fetch_one(&h.db.pool)
                .await
                .unwrap();
        if claimed >= 32 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{claimed} claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healthy = order("50");
    let published = std::time::Instant::now();
    h.publish(&healthy).await;
    let states = h
        .settled_states(&[healthy.order_id], Duration::from_secs(10))
        .await;
    let took = published.elapsed();
    let end = states.get(&healthy.order_id).map(|s| last(s).state);
    assert_eq!(
        end,
        Some(OrderState::Dispatched),
        "the healthy order was not dispatched within 10 s ({took:?})"
    );
    stuck
}

/// 64 orders of an account whose provider cannot be reached (connection refused, then an
/// open breaker) and one order of a healthy account: the healthy one is dispatched within
/// seconds; the 64 are parked on the retry topic, none lost.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_orders_are_parked_and_a_healthy_order_goes_past_them() {
    let h = Harness::new("isolate-down", SimConfig::default(), 2_000).await;
    let metrics = std::sync::Arc::new(orderflow::metrics::Metrics::new());
    let (trigger, task) = start_dispatch_metered(&h, h.dispatch_config(), metrics.clone());
    let stuck = a_healthy_order_goes_past(&h, DOWN_ACCOUNT).await;
    assert_parked_not_lost(&h, &stuck).await;
    let text = metrics.render();
    let parked = text
        .lines()
        .find(|l| {
            l.starts_with("orderflow_dispatch_parked_total{")
                && l.contains(&format!("account=\"{DOWN_ACCOUNT}\""))
        })
        .unwrap_or_else(|| panic!("no parked count for {DOWN_ACCOUNT}:\n{text}"));
    let count: f64 = parked.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 64.0, "{parked}");
    assert!(
        !text.contains(&format!(
            "orderflow_dispatch_parked_total{{account=\"{ACCOUNT}\"}}"
        )),
        "the healthy account's order was not parked"
    );
    stop(trigger, task).await;
    h.finish().await;
}

/// The same with 64 orders of an account answering code 8 (wrong credentials), its breaker
/// kept closed so that the orders keep retrying: the per-account budget and the bound on
/// retrying in process park them.
#[tokio::test(flavor = "multi_thread")]
async fn orders_of_an_account_answering_code_8_are_parked_and_a_healthy_order_goes_past_them() {
    let h = Harness::with_settings(
        "isolate-code-8",
        SimConfig::default(),
        2_000,
        "breaker_failures = 100000\nvisibility_window_ms = 0\n",
    )
    .await;
    let (trigger, task) = start_dispatch(&h);
    let stuck = a_healthy_order_goes_past(&h, WRONG_CREDENTIALS_ACCOUNT).await;
    assert_parked_not_lost(&h, &stuck).await;
    stop(trigger, task).await;
    h.finish().await;
}

/// Every stuck order is parked on the retry topic byte for byte, still unsettled and
/// claimed (nothing lost, nothing failed, nothing bought).
async fn assert_parked_not_lost(h: &Harness, stuck: &[orderflow::core::event::OrderCreated]) {
    let want: std::collections::HashMap<String, Vec<u8>> = stuck
        .iter()
        .map(|o| (o.order_id.to_string(), o.encode()))
        .collect();
    let parked = h
        .read_until(
            name::ORDERS_DISPATCH_RETRY,
            Duration::from_secs(30),
            |seen| {
                let ids: std::collections::HashSet<&[u8]> =
                    seen.iter().filter_map(|m| m.key()).collect();
                want.keys().all(|id| ids.contains(id.as_bytes()))
            },
        )
        .await;
    let mut seen = std::collections::HashSet::new();
    for m in &parked {
        let key = std::str::from_utf8(m.key().expect("a key")).unwrap();
        let payload = want.get(key).expect("only stuck orders are parked");
        assert_eq!(m.payload(), Some(payload.as_slice()), "byte for byte");
        let headers = m.headers().expect("headers");
        let due: i64 = headers::get(headers, headers::DUE_AT)
            .expect("a due time")
            .parse()
            .unwrap();
        assert!(due > 0);
        let times: u32 = headers::get(headers, headers::DISPATCH_PARKED)
            .expect("a parking count")
            .parse()
            .unwrap();
        assert!(times >= 1);
        seen.insert(key.to_owned());
    }
    assert_eq!(seen.len(), stuck.len(), "every stuck order parked");
    for o in stuck {
        let claim = claims::get(&h.db.pool, o.order_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("order {} has no claim", o.order_id));
        assert!(
            matches!(claim.phase, Phase::New | Phase::Placing),
            "order {} is {:?}",
            o.order_id,
            claim.phase
        );
    }
    let states = common::pipeline::read_to_end(&h.kafka, name::ORDERS_STATE).await;
    for m in &states {
        let s = decode_state(m);
        if want.contains_key(&s.order_id.to_string()) {
            assert_eq!(s.state, OrderState::Dispatching, "{s:?}");
        }
    }
    assert_eq!(
        h.stats().purchases.len(),
        1,
        "only the healthy order bought"
    );
}

/// An order parked while its account answered code 8 comes back and, once the account
/// answers again, is dispatched exactly once: one purchase, one `orders.dispatched`, never
/// a failed state.
#[tokio::test(flavor = "multi_thread")]
async fn a_parked_order_comes_back_and_is_dispatched_once_when_its_account_recovers() {
    let h = Harness::with_settings(
        "park-return",
        SimConfig::default(),
        2_000,
        "breaker_open_ms = 1000\nvisibility_window_ms = 0\n",
    )
    .await;
    h.sim.script_answers(
        SimCall::Place,
        vec!["8|Bağlantı Hatası,Kullanıcı Api Yetki".into(); 6],
    );
    let mut config = h.dispatch_config();
    config.park_after_ms = 1_000;
    config.park_min_ms = 500;
    config.park_max_ms = 1_000;
    let (trigger, task) = start_dispatch_with(&h, config);
    let o = order("25");
    h.publish(&o).await;
    let states = states_of(&h, &o).await;
    never_failed(&states);
    let end = last(&states);
    assert_eq!(end.state, OrderState::Dispatched);
    let reference = end.provider_reference.clone().unwrap();

    let parked = h
        .read_until(
            name::ORDERS_DISPATCH_RETRY,
            Duration::from_secs(10),
            |seen| !seen.is_empty(),
        )
        .await;
    assert!(!parked.is_empty(), "the order was parked on the way");
    assert!(parked
        .iter()
        .all(|m| m.payload() == Some(o.encode().as_slice())
            && m.key() == Some(o.order_id.to_string().as_bytes())));
    // One `dispatched`, however many times it was parked (a late duplicate would show
    // within seconds).
    let dispatched = h
        .read_until(name::ORDERS_DISPATCHED, Duration::from_secs(4), |_| false)
        .await;
    assert_eq!(dispatched.len(), 1, "dispatched exactly once");
    let stats = h.stats();
    assert_eq!(stats.scripted_answers, 6, "{stats:?}");
    assert_eq!(stats.place_requests.get(&reference), Some(&7), "{stats:?}");
    assert_eq!(stats.purchases.get(&reference), Some(&1));
    assert_eq!(stats.purchases.len(), 1);
    let claim = claims::get(&h.db.pool, o.order_id).await.unwrap().unwrap();
    assert_eq!(claim.phase, Phase::Placed);
    stop(trigger, task).await;
    h.finish().await;
}

/// Issue 17 item 5: with a topic prefix and no group setting, the stage's consumer group is
/// its default name under the prefix, so two environments on one cluster never share one.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_group_setting_the_group_is_named_under_the_topic_prefix() {
    let h = Harness::new("prefix-group", SimConfig::default(), 5_000).await;
    let config = orderflow::dispatch::DispatchConfig {
        group: None,
        ..h.dispatch_config()
    };
    let (trigger, task) = start_dispatch_with(&h, config);
    publish_and_settle(&h, &order("50")).await;

    let expected = format!("{}orderflow.dispatch", h.kafka.topic_prefix);
    let consumer: rdkafka::consumer::BaseConsumer = h.kafka.client_config().create().unwrap();
    let groups = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer;
        let list = consumer
            .fetch_group_list(None, Duration::from_secs(10))
            .expect("the broker's group list");
        list.groups()
            .iter()
            .map(|g| g.name().to_owned())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(
        groups.contains(&expected),
        "no group {expected} among {groups:?}"
    );
    stop(trigger, task).await;
    h.finish().await;
}

/// A stage started on a database that this release's migrations have not reached (here:
/// none at all) ends at once, with one sentence that says what to run.
#[tokio::test]
async fn a_stage_on_an_unmigrated_database_says_to_run_migrate() {
    let h = Harness::new("unmigrated", SimConfig::default(), 5_000).await;
    let empty = common::TestDb::new_empty().await;
    let mut env = h.dispatch_env(&common::unique("unmigrated-"));
    for (key, value) in env.iter_mut() {
        if key == "ORDERFLOW_DATABASE_URL" {
            value.clone_from(&empty.url);
        }
    }
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        common::stage_command("dispatch", &env)
            .env("ORDERFLOW_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("no provider_slots table") && errors[0].contains("`orderflow migrate`"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    h.finish().await;
}

/// The value of the series of `metric` whose labels include every one of `labels`, summed.
fn series_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A dispatch stage exporting into metrics of its own, after it settled twenty orders.
async fn twenty_orders_metered(
    h: &Harness,
) -> (
    std::sync::Arc<orderflow::metrics::Metrics>,
    shutdown::Trigger,
    tokio::task::JoinHandle<()>,
) {
    let metrics = std::sync::Arc::new(orderflow::metrics::Metrics::new());
    let (trigger, task) = start_dispatch_metered(h, h.dispatch_config(), metrics.clone());
    let orders = publish_batch(h, 20).await;
    let ids: Vec<_> = orders.iter().map(|o| o.order_id).collect();
    h.settled_states(&ids, Duration::from_secs(60)).await;
    (metrics, trigger, task)
}

/// The stage times each order: its transit (from the shop's send, the record's timestamp,
/// to the stage's fetch) and its handling (from being due to its events on the broker),
/// which includes the provider's answer, 300 ms here.
#[tokio::test(flavor = "multi_thread")]
async fn the_stage_times_each_order_in_transit_and_in_handling() {
    let sim = SimConfig {
        latency: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let h = Harness::new("timing", sim, 5_000).await;
    let (metrics, trigger, task) = twenty_orders_metered(&h).await;
    let created = "orders.created\"";
    let of = |text: &str, series: &str| {
        series_sum(text, &format!("orderflow_message_{series}{{"), &[created])
    };
    // The last acknowledgement may reach the loop just after the events were read.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics.render();
        if of(&text, "handling_seconds_count") >= 20.0 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "20 orders handled, not timed within 10 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(of(&text, "handling_seconds_count"), 20.0);
    let handling = of(&text, "handling_seconds_sum");
    assert!(
        (20.0 * 0.3..20.0 * 30.0).contains(&handling),
        "20 orders handled in {handling} s in all, each waiting 300 ms for the provider"
    );
    assert_eq!(of(&text, "transit_seconds_count"), 20.0);
    let transit = of(&text, "transit_seconds_sum");
    assert!(
        (0.0..20.0 * 30.0).contains(&transit),
        "20 orders in transit for {transit} s in all"
    );
    stop(trigger, task).await;
    h.finish().await;
}

/// The stage counts the Kafka requests its clients send, from librdkafka's statistics: its
/// producer's produce requests (at least one, and no more than the events it wrote, since
/// each request carries one or more) and its consumer's fetches.
#[tokio::test(flavor = "multi_thread")]
async fn the_stage_counts_its_kafka_requests_by_type() {
    let h = Harness::new("requests", SimConfig::default(), 5_000).await;
    let (metrics, trigger, task) = twenty_orders_metered(&h).await;
    // librdkafka reports every 5 s: wait for a report after the last send.
    let requests = "orderflow_kafka_requests_total{";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (produce, written, fetch) = loop {
        let text = metrics.render();
        let produce = series_sum(
            &text,
            requests,
            &["client=\"producer\"", "request=\"Produce\""],
        );
        let written = series_sum(&text, "orderflow_events_written_total{", &[]);
        let fetch = series_sum(
            &text,
            requests,
            &["client=\"consumer\"", "request=\"Fetch\""],
        );
        if produce > 0.0 && fetch > 0.0 && written >= 40.0 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            let text = metrics.render();
            break (
                series_sum(
                    &text,
                    requests,
                    &["client=\"producer\"", "request=\"Produce\""],
                ),
                series_sum(&text, "orderflow_events_written_total{", &[]),
                fetch,
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no produce and fetch requests counted within 20 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Twenty orders: a dispatched event and at least a state event each.
    assert!(written >= 40.0, "{written} events written");
    assert!(
        produce >= 1.0 && produce <= written,
        "{produce} produce requests for {written} events"
    );
    assert!(fetch >= 1.0, "{fetch} fetches");
    stop(trigger, task).await;
    h.finish().await;
}
