//! Stages ride out what they can wait out (issue 19, item 3), from the outside: a stage
//! started while its PostgreSQL is down waits, not ready on /readyz, and becomes ready once
//! the server is up; the server stopping under it makes it not ready without ending it; a
//! cluster that stays away longer than the patience ends it with one sentence; a database
//! that does not exist, or a topic that does not exist, ends it at once.

mod common;

use common::private_pg::PrivatePostgres;
use common::{free_port, ChildGuard};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `orderflow sink` with `env`, its /metrics on `port`, its stderr piped.
fn sink(env: &[(&str, String)], port: u16) -> ChildGuard {
    let child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .arg("sink")
        .env_remove("ORDERFLOW_KAFKA_PROPERTIES")
        .env_remove("ORDERFLOW_KAFKA_PROPERTIES_FILE")
        .env("ORDERFLOW_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .env("ORDERFLOW_LOG", "info,librdkafka=off,rdkafka=off")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting orderflow sink");
    ChildGuard(child)
}

/// The status of /readyz, or `None` while nothing answers on the port.
fn readyz(port: u16) -> Option<u16> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    conn.write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    // "HTTP/1.0 200 OK"
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// Waits up to `within` for /readyz to answer `status`; panics with what it saw otherwise.
fn wait_readyz(port: u16, status: u16, within: Duration, child: &mut ChildGuard) {
    let deadline = Instant::now() + within;
    let mut seen = None;
    while Instant::now() < deadline {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the stage ended while it should wait: {}",
            stderr_of(child)
        );
        seen = readyz(port);
        if seen == Some(status) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("/readyz never answered {status} within {within:?} (last: {seen:?})");
}

/// What an ended child wrote to stderr.
fn stderr_of(child: &mut ChildGuard) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

/// Waits for the child to end within `within`; returns its exit code, the time it took
/// and its last stderr line (which must be its one sentence).
fn ended(child: &mut ChildGuard, within: Duration) -> (i32, Duration, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < within,
            "the stage did not end within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = stderr_of(child);
    let last = stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (status.code().unwrap_or(-1), start.elapsed(), last)
}

#[test]
fn a_stage_waits_out_a_postgres_that_is_down_not_ready_and_resumes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kafka = rt.block_on(common::kafka_with_topics("outage-pg"));
    let pg = PrivatePostgres::start();
    pg.psql("postgres", "CREATE DATABASE orderflow");
    let url = pg.url("orderflow");
    let migrated = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    // Down before the stage starts: it must wait, not exit.
    pg.stop();
    let port = free_port();
    let env = [
        ("ORDERFLOW_KAFKA_BROKERS", kafka.brokers.clone()),
        ("ORDERFLOW_TOPIC_PREFIX", kafka.topic_prefix.clone()),
        ("ORDERFLOW_DATABASE_URL", url.clone()),
        ("ORDERFLOW_SINK_GROUP", common::unique("g-outage-")),
        ("ORDERFLOW_OUTAGE_PATIENCE", "2m".into()),
    ];
    let mut stage = sink(&env, port);
    wait_readyz(port, 503, Duration::from_secs(20), &mut stage);
    // Not ready for as long as the server is down, and still running.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(readyz(port), Some(503));
    assert!(stage.try_wait().unwrap().is_none());

    pg.start_again();
    wait_readyz(port, 200, Duration::from_secs(60), &mut stage);

    // Down under a running stage: not ready, not ended; back: ready again.
    pg.stop();
    wait_readyz(port, 503, Duration::from_secs(20), &mut stage);
    std::thread::sleep(Duration::from_secs(3));
    assert!(stage.try_wait().unwrap().is_none());
    pg.start_again();
    wait_readyz(port, 200, Duration::from_secs(60), &mut stage);
    pg.stop();
}

#[test]
fn a_cluster_away_longer_than_the_patience_ends_the_stage_with_one_sentence() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(common::TestDb::new_migrated());
    let port = free_port();
    let env = [
        // Nothing listens there.
        (
            "ORDERFLOW_KAFKA_BROKERS",
            format!("127.0.0.1:{}", free_port()),
        ),
        ("ORDERFLOW_DATABASE_URL", db.url.clone()),
        ("ORDERFLOW_KAFKA_CONNECT_TIMEOUT_MS", "1000".into()),
        ("ORDERFLOW_OUTAGE_PATIENCE", "6s".into()),
    ];
    let mut stage = sink(&env, port);
    wait_readyz(port, 503, Duration::from_secs(5), &mut stage);
    let (code, took, line) = ended(&mut stage, Duration::from_secs(60));
    assert_ne!(code, 0);
    assert!(took >= Duration::from_secs(3), "it did not wait: {took:?}");
    assert!(
        line.starts_with("error: ")
            && line.contains("the Kafka cluster at")
            && line.contains("longer than the stage's patience"),
        "{line}"
    );
    rt.block_on(db.drop_now());
}

#[test]
fn what_waiting_cannot_cure_ends_the_stage_at_once() {
    // A database that does not exist (SQLSTATE 3D000).
    let admin = common::admin_database_url();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let env = [
        ("ORDERFLOW_KAFKA_BROKERS", common::brokers()),
        (
            "ORDERFLOW_DATABASE_URL",
            format!("{base}/{}", common::unique("no_such_db_")),
        ),
    ];
    let mut stage = sink(&env, free_port());
    let (code, took, line) = ended(&mut stage, Duration::from_secs(30));
    assert_ne!(code, 0);
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(
        line.starts_with("error: cannot connect to PostgreSQL") && line.contains("does not exist"),
        "{line}"
    );

    // A topic that does not exist: the cluster answers, so nothing is waited for.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(common::TestDb::new_migrated());
    let env = [
        ("ORDERFLOW_KAFKA_BROKERS", common::brokers()),
        ("ORDERFLOW_TOPIC_PREFIX", common::unique("t-none-") + "."),
        ("ORDERFLOW_DATABASE_URL", db.url.clone()),
        ("ORDERFLOW_KAFKA_CONNECT_TIMEOUT_MS", "2000".into()),
    ];
    let mut stage = sink(&env, free_port());
    let (code, took, line) = ended(&mut stage, Duration::from_secs(30));
    assert_ne!(code, 0);
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(line.contains("has no topic"), "{line}");
    rt.block_on(db.drop_now());
}
