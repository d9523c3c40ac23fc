//! The simulator's unit tests: the protocol as our classifier reads it, duplicates never
//! buying twice, faults, scripted answers, visibility lag, waves, and nothing secret logged.

use super::*;
use crate::provider::{BalanceOutcome, CheckOutcome, PlaceOutcome};
use crate::znet::protocol::{classify_balance, classify_check, classify_place, Codes};
use std::sync::Mutex;

struct Running {
    sim: Sim,
    base: String,
    handle: SimHandle,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(config: SimConfig) -> Running {
    let sim = Sim::new(config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let handle = sim
        .clone()
        .serve("127.0.0.1:0".parse().unwrap(), shutdown)
        .await
        .unwrap();
    let base = format!("http://{}", handle.addr);
    Running {
        sim,
        base,
        handle,
        stop,
    }
}

fn url(base: &str, path: &str, params: &[(&str, &str)]) -> reqwest::Url {
    reqwest::Url::parse_with_params(&format!("{base}{path}"), params).unwrap()
}

async fn get(base: &str, path: &str, params: &[(&str, &str)]) -> (u16, String) {
    let resp = reqwest::get(url(base, path, params)).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

const AUTH: [(&str, &str); 2] = [("kod", "sim-kod"), ("sifre", "sim-sifre")];

async fn place_at(base: &str, referans: &str, oyun: &str, kupur: &str) -> (u16, String) {
    let mut params = AUTH.to_vec();
    params.extend([("oyun", oyun), ("kupur", kupur), ("referans", referans)]);
    params.extend([
        ("musteri_tel", "5551234567"),
        ("oyuncu_bilgi", "Şükrü Öğüt"),
    ]);
    get(base, "/servis/pin_ekle.php", &params).await
}

async fn check_at(base: &str, referans: &str) -> CheckOutcome {
    let mut params = AUTH.to_vec();
    params.push(("tahsilat_api_islem_id", referans));
    let (status, body) = get(base, "/servis/pin_kontrol.php", &params).await;
    classify_check(status, &body, &Codes::default())
}

async fn place_ok(base: &str, referans: &str) -> PlaceOutcome {
    let (status, body) = place_at(base, referans, "412", "25").await;
    classify_place(status, &body, &Codes::default())
}

#[tokio::test]
async fn happy_path_pending_then_completed_with_a_pin() {
    let run = start(SimConfig {
        checks_until_complete: 2,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(
        place_ok(&run.base, "1001").await,
        PlaceOutcome::Accepted {
            cost: Some("24.25".into()),
            balance: Some("999975.75".into())
        }
    );
    assert_eq!(check_at(&run.base, "1001").await, CheckOutcome::Pending);
    assert_eq!(check_at(&run.base, "1001").await, CheckOutcome::Pending);
    let CheckOutcome::Completed { pin } = check_at(&run.base, "1001").await else {
        panic!("not completed")
    };
    assert!(!crate::znet::protocol::is_blank_pin(pin.expose()));
    assert_eq!(pin.expose().len(), 19);
    assert_eq!(
        check_at(&run.base, "1001").await,
        CheckOutcome::Completed { pin },
        "same PIN every time"
    );
    let (status, body) = get(&run.base, "/servis/bakiye_kontrol.php", &AUTH).await;
    assert_eq!(
        classify_balance(status, &body),
        BalanceOutcome::Balance {
            balance: "999975.75".into(),
            debt: None
        }
    );
    let stats = run.sim.stats();
    assert_eq!(
        (stats.checks, stats.balance_kurus),
        (4, DEFAULT_BALANCE_KURUS - 24_25)
    );
    assert!(
        matches!(check_at(&run.base, "999").await, CheckOutcome::NotFound { code, .. } if code == "4")
    );
}

#[tokio::test]
async fn a_duplicate_referans_never_buys_twice() {
    let run = start(SimConfig::default()).await;
    assert!(matches!(
        place_ok(&run.base, "2002").await,
        PlaceOutcome::Accepted { .. }
    ));
    assert!(
        matches!(place_ok(&run.base, "2002").await, PlaceOutcome::Duplicate { code, .. } if code == "5")
    );
    let stats = run.sim.stats();
    assert_eq!(stats.placements["2002"], 2);
    assert_eq!(stats.purchases["2002"], 1);
    assert_eq!(stats.balance_kurus, DEFAULT_BALANCE_KURUS - 24_25);
}

#[tokio::test]
async fn unknown_kupur_bad_parameters_and_random_rejection() {
    let run = start(SimConfig::default()).await;
    let (status, body) = place_at(&run.base, "3003", "412", "30").await;
    assert_eq!(
        classify_place(status, &body, &Codes::default()),
        PlaceOutcome::Rejected {
            code: "3".into(),
            message: "Kupur Bilgisi Bulunamadı".into()
        }
    );
    let (status, body) = place_at(&run.base, "12ab", "412", "25").await;
    assert!(
        matches!(classify_place(status, &body, &Codes::default()), PlaceOutcome::Refused { code, .. } if code == "2")
    );
    let stats = run.sim.stats();
    assert_eq!((stats.rejected, stats.purchases.len()), (2, 0));

    let run = start(SimConfig {
        rejection_rate: 1.0,
        ..SimConfig::default()
    })
    .await;
    assert!(
        matches!(place_ok(&run.base, "3004").await, PlaceOutcome::Rejected { code, .. } if code == "3")
    );
}

#[tokio::test]
async fn wrong_credentials_are_an_account_problem_and_an_empty_balance() {
    let run = start(SimConfig::default()).await;
    let bad = [("kod", "sim-kod"), ("sifre", "yanlis")];
    let mut params = bad.to_vec();
    params.extend([("oyun", "412"), ("kupur", "25"), ("referans", "4004")]);
    let (status, body) = get(&run.base, "/servis/pin_ekle.php", &params).await;
    assert!(matches!(
        classify_place(status, &body, &Codes::default()),
        PlaceOutcome::AccountProblem { .. }
    ));
    let (status, body) = get(
        &run.base,
        "/servis/pin_kontrol.php",
        &[bad[0], bad[1], ("tahsilat_api_islem_id", "4004")],
    )
    .await;
    assert!(matches!(
        classify_check(status, &body, &Codes::default()),
        CheckOutcome::AccountProblem { .. }
    ));
    let (status, body) = get(&run.base, "/servis/bakiye_kontrol.php", &bad).await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(matches!(
        classify_balance(status, &body),
        BalanceOutcome::AccountProblem { .. }
    ));
    let (_, body) = get(&run.base, "/servis/pin_listesi.php", &bad).await;
    let catalog: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(catalog["success"], false);
    assert!(run.sim.stats().placements.is_empty());
}

#[tokio::test]
async fn scripted_server_error_has_no_effect_then_success() {
    let run = start(SimConfig::default()).await;
    run.sim.script(SimCall::Place, vec![Fault::ServerError]);
    assert!(matches!(
        place_ok(&run.base, "5005").await,
        PlaceOutcome::Unknown { .. }
    ));
    assert!(run.sim.stats().placements.is_empty());
    assert!(matches!(
        place_ok(&run.base, "5005").await,
        PlaceOutcome::Accepted { .. }
    ));
    let stats = run.sim.stats();
    assert_eq!((stats.faults_injected, stats.purchases["5005"]), (1, 1));
}

#[tokio::test]
async fn a_lost_answer_times_out_but_the_purchase_happened() {
    let run = start(SimConfig {
        lost_answer_delay: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await;
    run.sim.script(SimCall::Place, vec![Fault::LostAnswer]);
    run.sim.script(SimCall::Check, vec![Fault::LostAnswer]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let mut params = AUTH.to_vec();
    params.extend([("oyun", "7"), ("kupur", "10"), ("referans", "6006")]);
    let err = client
        .get(url(&run.base, "/servis/pin_ekle.php", &params))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let stats = run.sim.stats();
    assert_eq!(
        (stats.purchases["6006"], stats.balance_kurus),
        (1, DEFAULT_BALANCE_KURUS - 10_40)
    );
    let (status, body) = get(
        &run.base,
        "/servis/pin_kontrol.php",
        &[AUTH[0], AUTH[1], ("tahsilat_api_islem_id", "6006")],
    )
    .await;
    assert!(
        matches!(
            classify_check(status, &body, &Codes::default()),
            CheckOutcome::Transient { .. }
        ),
        "lost check answers 503"
    );
    assert!(
        matches!(
            check_at(&run.base, "6006").await,
            CheckOutcome::Completed { .. }
        ),
        "the lost check counted"
    );
    assert_eq!(run.sim.stats().faults_injected, 2);
}

#[tokio::test]
async fn a_new_order_is_not_found_during_the_visibility_lag_but_never_bought_twice() {
    let run = start(SimConfig {
        visibility_lag: Duration::from_millis(300),
        checks_until_complete: 0,
        ..SimConfig::default()
    })
    .await;
    assert!(matches!(
        place_ok(&run.base, "6100").await,
        PlaceOutcome::Accepted { .. }
    ));
    assert!(matches!(
        check_at(&run.base, "6100").await,
        CheckOutcome::NotFound { code, .. } if code == "4"
    ));
    assert!(
        matches!(
            place_ok(&run.base, "6100").await,
            PlaceOutcome::Duplicate { .. }
        ),
        "placements see it at once"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(matches!(
        check_at(&run.base, "6100").await,
        CheckOutcome::Completed { .. }
    ));
    let (status, _) = get(&run.base, "/sim/visibility", &[("lag_ms", "0")]).await;
    assert_eq!(status, 200);
    assert!(matches!(
        place_ok(&run.base, "6101").await,
        PlaceOutcome::Accepted { .. }
    ));
    assert!(matches!(
        check_at(&run.base, "6101").await,
        CheckOutcome::Completed { .. }
    ));
    let stats = run.sim.stats();
    assert_eq!((stats.unseen_checks, stats.purchases["6100"]), (1, 1));
}

#[tokio::test]
async fn scripted_answers_come_after_scripted_faults_and_buy_nothing() {
    let run = start(SimConfig::default()).await;
    run.sim.script(SimCall::Place, vec![Fault::ServerError]);
    run.sim
        .script_answers(SimCall::Place, vec!["99|Bakım çalışması".into()]);
    let (status, _) = get(
        &run.base,
        "/sim/script",
        &[
            ("call", "check"),
            ("answer", "12|Sistem meşgul"),
            ("times", "2"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(matches!(
        place_ok(&run.base, "6200").await,
        PlaceOutcome::Unknown { .. }
    ));
    assert!(matches!(
        place_ok(&run.base, "6200").await,
        PlaceOutcome::Refused { code, .. } if code == "99"
    ));
    assert!(run.sim.stats().purchases.is_empty());
    assert!(matches!(
        place_ok(&run.base, "6200").await,
        PlaceOutcome::Accepted { .. }
    ));
    for _ in 0..2 {
        assert!(matches!(
            check_at(&run.base, "6200").await,
            CheckOutcome::Refused { code, .. } if code == "12"
        ));
    }
    assert!(matches!(
        check_at(&run.base, "6200").await,
        CheckOutcome::Pending
    ));
    assert_eq!(run.sim.stats().scripted_answers, 3);
}

#[tokio::test]
async fn shutdown_ends_hanging_answers() {
    let run = start(SimConfig::default()).await; // lost_answer_delay 30 s
    run.sim.script(SimCall::Place, vec![Fault::Timeout]);
    let base = run.base.clone();
    let hung = tokio::spawn(async move { place_at(&base, "6007", "412", "25").await });
    while run.sim.stats().faults_injected == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = run.stop.send(());
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), hung)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 503);
    tokio::time::timeout(Duration::from_secs(5), run.handle.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        run.sim.stats().placements.is_empty(),
        "a timeout has no effect"
    );
}

#[tokio::test]
async fn cancelled_orders_and_out_of_process_controls() {
    let run = start(SimConfig {
        cancel_rate: 1.0,
        checks_until_complete: 0,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(
        get(
            &run.base,
            "/sim/script",
            &[("call", "check"), ("faults", "garbage,empty_body")]
        )
        .await,
        (200, "ok".into())
    );
    assert_eq!(
        get(
            &run.base,
            "/sim/script",
            &[("call", "place"), ("faults", "bogus")]
        )
        .await
        .0,
        400
    );
    assert!(matches!(
        place_ok(&run.base, "7007").await,
        PlaceOutcome::Accepted { .. }
    ));
    assert!(matches!(
        check_at(&run.base, "7007").await,
        CheckOutcome::Transient { .. }
    ));
    assert!(matches!(
        check_at(&run.base, "7007").await,
        CheckOutcome::Transient { .. }
    ));
    assert!(
        matches!(check_at(&run.base, "7007").await, CheckOutcome::Cancelled { message } if message.contains("iptal"))
    );
    let (status, body) = get(&run.base, "/sim/stats", &[]).await;
    let stats: SimStats = serde_json::from_str(&body).unwrap();
    assert_eq!((status, stats.checks, stats.faults_injected), (200, 1, 2));
    assert_eq!(stats, run.sim.stats());
    let (status, body) = get(&run.base, "/servis/yok.php", &[]).await;
    assert!(status == 404 && body.contains("<html"));
    let (_, body) = get(&run.base, "/servis/pin_listesi.php", &AUTH).await;
    let catalog: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(catalog["result"].as_array().unwrap().len(), 5);
    assert_eq!(catalog["result"][0]["oyun_bilgi_id"], "412");
}

#[tokio::test]
async fn fault_waves_come_and_go_and_are_counted_by_kind() {
    let run = start(SimConfig {
        lost_answer_delay: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let wave = |kind: &str, rate: &str| {
        client
            .post(url(
                &run.base,
                "/sim/faults",
                &[("kind", kind), ("rate", rate)],
            ))
            .send()
    };
    assert_eq!(wave("garbage", "1").await.unwrap().status(), 200);
    assert!(matches!(
        place_ok(&run.base, "9101").await,
        PlaceOutcome::Unknown { .. }
    ));
    assert!(
        run.sim.stats().placements.is_empty(),
        "garbage has no effect"
    );
    assert_eq!(wave("slow", "1").await.unwrap().status(), 200);
    let started = std::time::Instant::now();
    assert!(matches!(
        place_ok(&run.base, "9101").await,
        PlaceOutcome::Accepted { .. }
    ));
    assert!(started.elapsed() >= Duration::from_millis(50), "slow");
    assert_eq!(wave("none", "").await.unwrap().status(), 200);
    assert!(matches!(
        check_at(&run.base, "9101").await,
        CheckOutcome::Pending
    ));
    assert_eq!(wave("bogus", "1").await.unwrap().status(), 400);
    assert_eq!(wave("html", "2").await.unwrap().status(), 400);
    run.sim.set_outage(true);
    assert!(matches!(
        check_at(&run.base, "9101").await,
        CheckOutcome::Transient { .. }
    ));
    let stats = run.sim.stats();
    assert_eq!(stats.faults_injected, 3);
    assert_eq!(
        stats.faults_by_kind,
        BTreeMap::from([
            ("garbage".into(), 1),
            ("outage".into(), 1),
            ("slow".into(), 1)
        ])
    );
    assert_eq!(run.sim.cancelled("9101"), Some(false));
    assert_eq!(run.sim.cancelled("9102"), None);
}

#[tokio::test]
async fn random_faults_are_seeded_and_never_buy_twice() {
    let run = start(SimConfig {
        fault_rate: 0.5,
        lost_answer_delay: Duration::from_millis(1),
        seed: 42,
        ..SimConfig::default()
    })
    .await;
    for i in 0..40 {
        let referans = format!("{}", 8000 + i % 10);
        let _ = place_ok(&run.base, &referans).await;
    }
    let stats = run.sim.stats();
    assert!(
        stats.faults_injected > 5 && stats.faults_injected < 35,
        "{}",
        stats.faults_injected
    );
    assert!(stats.purchases.values().all(|&n| n == 1));
    let spent = 24_25 * stats.purchases.len() as i64;
    assert_eq!(stats.balance_kurus, DEFAULT_BALANCE_KURUS - spent);
}

#[tokio::test]
async fn credentials_and_pins_are_never_logged() {
    use std::io::Write;
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests running in parallel register callsites while only their own subscriber
    // (or none) exists, and a callsite's interest is cached: ask every callsite again, so
    // this test's subscriber sees the simulator's debug lines.
    tracing::callsite::rebuild_interest_cache();
    let config = SimConfig {
        kod: "dealer-kod-77".into(),
        sifre: "hunter2-sifre".into(),
        checks_until_complete: 0,
        ..SimConfig::default()
    };
    assert!(!format!("{config:?}").contains("hunter2"));
    let run = start(config).await;
    let auth = [("kod", "dealer-kod-77"), ("sifre", "hunter2-sifre")];
    let mut params = auth.to_vec();
    params.extend([("oyun", "412"), ("kupur", "50"), ("referans", "9009")]);
    assert_eq!(get(&run.base, "/servis/pin_ekle.php", &params).await.0, 200);
    // The check answers with the PIN, so its log line must be captured for the test to
    // mean anything. A test on another thread can still race the interest cache (seen once
    // in CI: the check's line missing), so the check is asked again, up to five times,
    // until its line is here; every attempt's lines are scanned for secrets below.
    let mut pin = None;
    let mut logs = String::new();
    for _ in 0..5 {
        tracing::callsite::rebuild_interest_cache();
        let (status, body) = get(
            &run.base,
            "/servis/pin_kontrol.php",
            &[auth[0], auth[1], ("tahsilat_api_islem_id", "9009")],
        )
        .await;
        let CheckOutcome::Completed { pin: answered } =
            classify_check(status, &body, &Codes::default())
        else {
            panic!("not completed")
        };
        pin = Some(answered);
        logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        if logs.contains("completed") {
            break;
        }
    }
    let pin = pin.unwrap();
    assert!(
        logs.contains("9009") && logs.contains("completed"),
        "nothing captured: {logs}"
    );
    for secret in ["dealer-kod-77", "hunter2-sifre", pin.expose()] {
        assert!(!logs.contains(secret), "a secret was logged");
    }
}

#[tokio::test]
async fn the_accounts_calls_are_measured_per_second_and_at_once() {
    let run = start(SimConfig {
        latency: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await;
    // Five calls at once, then two more a while later; another dealer code is not counted.
    let balance = |kod: &'static str| {
        let base = run.base.clone();
        async move {
            get(
                &base,
                "/servis/bakiye_kontrol.php",
                &[("kod", kod), ("sifre", "sim-sifre")],
            )
            .await
        }
    };
    let at_once: Vec<_> = (0..5).map(|_| tokio::spawn(balance("sim-kod"))).collect();
    for call in at_once {
        call.await.unwrap();
    }
    balance("other-kod").await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    balance("sim-kod").await;
    balance("sim-kod").await;
    let stats = run.sim.stats();
    assert_eq!(stats.account_calls, 7);
    assert_eq!(stats.peak_in_flight, 5);
    assert_eq!(
        stats.peak_calls_per_second, 5,
        "the later two fall in another second"
    );
    let _ = run.stop.send(());
    run.handle.task.await.unwrap();
}
