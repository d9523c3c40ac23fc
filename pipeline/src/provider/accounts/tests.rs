//! Unit tests of the accounts file, the caps and the breaker of an account.

use super::*;
use crate::core::breaker::BreakerConfig;
use crate::provider::{CheckOutcome, PlaceOutcome, Placement};
use std::time::Instant;

/// Parses with every account's client a [`Down`] provider: these tests are about the file.
fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Accounts, String> {
    Accounts::parse(text, env, |_| {
        Ok(Box::new(Down(Arc::default())) as Box<dyn Provider>)
    })
}

const FILE: &str = r#"
    [[account]]
    id = "znet-main"
    provider = "znet"
    base_url = "http://127.0.0.1:1"
    kod = "K-123"
    sifre_env = "TEST_SIFRE"
    max_per_second = 5
"#;

#[test]
fn parses_and_reads_secrets_from_the_environment() {
    let accounts = parse(FILE, |v| (v == "TEST_SIFRE").then(|| "S-456".into())).unwrap();
    let a = accounts.get("znet-main").unwrap();
    assert_eq!(a.request_timeout, Duration::from_secs(10));
    assert!(!format!("{a:?}").contains("K-123"));
}

#[test]
fn errors_name_the_problem_without_the_secret() {
    let err = parse(FILE, |_| None).unwrap_err();
    assert!(
        err.contains("TEST_SIFRE") && err.contains("not set"),
        "{err}"
    );
    let err = parse(&FILE.replace("http://", "ftp://"), |_| Some("x".into())).unwrap_err();
    assert!(err.contains("base_url") && !err.contains("K-123"), "{err}");
    let err = parse(&FILE.replace("znet\"", "other\""), |_| Some("x".into())).unwrap_err();
    assert!(err.contains("unknown variant"), "{err}");
    assert!(parse("", |_| None).unwrap_err().contains("no [[account]]"));
}

#[test]
fn code_lists_have_documented_defaults_and_are_checked() {
    let accounts = parse(FILE, |_| Some("x".into())).unwrap();
    let a = accounts.get("znet-main").unwrap();
    assert_eq!(a.visibility_window, Duration::from_secs(300));
    assert_eq!(a.max_retrying(), DEFAULT_MAX_RETRYING);
    let with = |extra: &str| parse(&format!("{FILE}{extra}"), |_| Some("x".into()));
    let a = with("permanent_codes = [\"3\", 77]\nvisibility_window_ms = 2000\n").unwrap();
    assert_eq!(
        a.get("znet-main").unwrap().visibility_window,
        Duration::from_secs(2)
    );
    let err = with("not_found_codes = [\"4\", \"8\"]\n").unwrap_err();
    assert!(
        err.contains("code 8") && err.contains("not_found_codes"),
        "{err}"
    );
    let err = with("permanent_codes = [\"3\", \"5\"]\n").unwrap_err();
    assert!(err.contains("duplicate_codes"), "{err}");
    let err = with("permanent_codes = [\"E3\"]\n").unwrap_err();
    assert!(err.contains("digits"), "{err}");
    let err = with("visibility_window_ms = 999999999999\n").unwrap_err();
    assert!(err.contains("visibility_window_ms"), "{err}");
    let a = with("max_retrying = 2\n").unwrap();
    let a = a.get("znet-main").unwrap();
    let (first, second) = (a.try_retrying(), a.try_retrying());
    assert!(first.is_some() && second.is_some());
    assert!(
        a.try_retrying().is_none(),
        "a third order is parked instead"
    );
    drop(first);
    assert!(a.try_retrying().is_some(), "a place is free again");
    let err = with("max_retrying = 0\n").unwrap_err();
    assert!(err.contains("max_retrying"), "{err}");
    assert!(with("max_concurrent = 4096\n").is_ok());
    let err = with("max_concurrent = 100000\n").unwrap_err();
    assert!(
        err.contains("max_concurrent is 100000") && err.contains("4096"),
        "{err}"
    );
    let err = with("not_found_code = [\"4\"]\n").unwrap_err();
    assert!(err.contains("unknown field"), "{err}");
}

#[tokio::test]
async fn the_rate_cap_holds_in_any_second() {
    let accounts = parse(FILE, |_| Some("x".into())).unwrap();
    let a = accounts.get("znet-main").unwrap();
    let start = Instant::now();
    let mut starts = Vec::new();
    for _ in 0..7 {
        let mut permit = a.permit().await;
        starts.push(permit.start().await);
        permit.record("check", "pending", Instant::now(), true);
    }
    // Five at once, then the sixth and seventh once the first slots have rested a second
    // after their calls ended.
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    for (i, t) in starts.iter().enumerate() {
        let within = starts[i..]
            .iter()
            .filter(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(within <= 5, "{within} calls within a second");
    }
}

#[tokio::test]
async fn a_permit_dropped_unused_leaves_its_rate_slot_unspent() {
    let accounts = parse(FILE, |_| Some("x".into())).unwrap();
    let a = accounts.get("znet-main").unwrap();
    let start = Instant::now();
    for _ in 0..20 {
        drop(a.permit().await);
    }
    assert!(start.elapsed() < Duration::from_millis(500));
}

/// A provider that never answers usefully, counting the calls it gets.
struct Down(Arc<std::sync::atomic::AtomicU32>);

impl Provider for Down {
    fn validate_product(
        &self,
        _: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), String> {
        Ok(())
    }
    fn place<'a>(&'a self, _: &'a Placement) -> futures::future::BoxFuture<'a, PlaceOutcome> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async {
            PlaceOutcome::Unknown {
                detail: "HTTP 503".into(),
            }
        })
    }
    fn check<'a>(&'a self, _: &'a str) -> futures::future::BoxFuture<'a, CheckOutcome> {
        Box::pin(async {
            CheckOutcome::Transient {
                detail: "HTTP 503".into(),
            }
        })
    }
    fn balance(&self) -> futures::future::BoxFuture<'_, crate::provider::BalanceOutcome> {
        unimplemented!("not called")
    }
    fn products(&self) -> futures::future::BoxFuture<'_, crate::provider::ProductsOutcome> {
        unimplemented!("not called")
    }
}

#[tokio::test]
async fn a_failing_provider_is_left_alone_while_the_breaker_is_open() {
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let down = Box::new(Down(Arc::clone(&calls)));
    let limits = Limits {
        max_concurrent: 4,
        max_per_second: 1000.0,
        breaker: BreakerConfig {
            failures_to_open: 3,
            open_for: Duration::from_millis(400),
        },
    };
    let account = Account::new("a".into(), down, Duration::from_secs(1), limits);
    let placement = Placement {
        reference: "1".into(),
        product: Default::default(),
        user_identifier: String::new(),
        user_extra: String::new(),
    };
    let start = Instant::now();
    let mut attempts = 0;
    while start.elapsed() < Duration::from_millis(1_000) {
        account.permit().await.place(&placement).await;
        attempts += 1;
    }
    let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
    // 3 calls open it; then one probe per 400 ms: at most 3 more within a second.
    assert!((4..=6).contains(&calls), "{calls} calls");
    assert_eq!(
        attempts, calls,
        "every attempt waited for the breaker, none was refused"
    );
}

#[tokio::test]
async fn a_caller_in_a_hurry_is_told_how_long_an_open_breaker_stays_open() {
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let limits = Limits {
        max_concurrent: 1,
        max_per_second: 1000.0,
        breaker: BreakerConfig {
            failures_to_open: 1,
            open_for: Duration::from_secs(30),
        },
    };
    let account = Account::new(
        "a".into(),
        Box::new(Down(Arc::clone(&calls))),
        Duration::from_secs(1),
        limits,
    );
    let placement = Placement {
        reference: "1".into(),
        product: Default::default(),
        user_identifier: String::new(),
        user_extra: String::new(),
    };
    let patience = Duration::from_millis(200);
    let permit = account.permit_within(patience).await.expect("closed");
    // The cap is full while the permit is held: the wait is the caller's patience.
    let started = Instant::now();
    assert_eq!(account.permit_within(patience).await.err(), Some(patience));
    assert!(started.elapsed() >= patience);
    permit.place(&placement).await;
    let started = Instant::now();
    let wait = account.permit_within(patience).await.err().expect("open");
    assert!(wait > Duration::from_secs(29), "{wait:?}");
    assert!(
        started.elapsed() < patience,
        "told at once, not after waiting"
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}
