//! TLS and SASL for real (issue 18): the stages run as `orderflow` processes through a
//! Kafka broker whose only client listener is SASL_SSL (SCRAM-SHA-256, a certificate of a
//! CA made for the test; ops/kafka/secure-broker.sh) and a PostgreSQL that takes only TLS
//! connections over TCP (`ssl = on`, `hostssl` lines; ops/postgres/secure-db.sh), with
//! certificate verification on (librdkafka's default hostname check, sslmode=verify-full).
//! A wrong CA or a wrong password, for either, ends the command with one sentence, a
//! non-zero exit, no panic and no password.
//!
//! The test starts both services unless they run already, and stops what it started.

mod common;

use common::pipeline::{
    account_entry, order, serve, ACCOUNT, DEFAULT_ACCOUNT_SETTINGS, KOD, SIFRE,
};
use common::{repo_root, spawn_logged, stage_command, unique, ChildGuard};
use orderflow::db::DbConfig;
use orderflow::kafka::topics::{self, name};
use orderflow::kafka::KafkaConfig;
use orderflow::pin::PinKeys;
use orderflow::testbed::sim::{Sim, SimConfig};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use sqlx::{Connection, PgConnection};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const BROKERS: &str = "127.0.0.1:9392";
const FIRST_CHECK: &str = "1s";
const TIERS: &str = "1s";
const ORDERS: usize = 20;

fn script(path: &str, arg: &str) -> (bool, String) {
    let out = Command::new("bash")
        .arg(repo_root().join(path))
        .arg(arg)
        .output()
        .expect("running a project script");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The two TLS services; stops on drop the ones this test started.
struct Secure {
    started: Vec<&'static str>,
    client_properties: PathBuf,
    admin_url: String,
    tls_dir: PathBuf,
}

const KAFKA_SCRIPT: &str = "ops/kafka/secure-broker.sh";
const PG_SCRIPT: &str = "ops/postgres/secure-db.sh";

impl Secure {
    fn start() -> Secure {
        let mut started = Vec::new();
        let mut starting = Vec::new();
        for path in [KAFKA_SCRIPT, PG_SCRIPT] {
            if !script(path, "status").0 {
                started.push(path);
            }
            starting.push(std::thread::spawn(move || (path, script(path, "start"))));
        }
        let state = PathBuf::from(
            std::env::var("ORDERFLOW_STATE_DIR").unwrap_or_else(|_| "/var/lib/orderflow".into()),
        );
        let mut secure = Secure {
            started,
            client_properties: state.join("kafka-secure/client.properties"),
            admin_url: String::new(),
            tls_dir: state.join("tls"),
        };
        for thread in starting {
            let (path, (ok, text)) = thread.join().unwrap();
            assert!(ok, "{path} start failed:\n{text}");
            eprintln!("{}", text.trim());
        }
        let (ok, url) = script(PG_SCRIPT, "url");
        assert!(ok, "{url}");
        secure.admin_url = url.trim().to_owned();
        secure
    }

    /// The SASL password the broker gave orderflow's user.
    fn sasl_password(&self) -> String {
        let text = std::fs::read_to_string(&self.client_properties).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("sasl.password="))
            .expect("sasl.password in the client settings")
            .to_owned()
    }

    /// The database role's password, from the admin URL.
    fn db_password(&self) -> String {
        let after = self.admin_url.split_once("://orderflow:").unwrap().1;
        after.split_once('@').unwrap().0.to_owned()
    }

    /// The URL of database `name` (same role, TLS settings).
    fn db_url(&self, name: &str) -> String {
        let (base, query) = self.admin_url.split_once('?').unwrap();
        let (server, _) = base.rsplit_once('/').unwrap();
        format!("{server}/{name}?{query}")
    }
}

impl Drop for Secure {
    fn drop(&mut self) {
        for path in self.started.iter().rev() {
            let (_, text) = script(path, "stop");
            eprintln!("{}", text.trim());
        }
    }
}

/// Runs `orderflow args` with `env`; (exit code, stderr, how long it took).
fn orderflow(args: &[&str], env: &[(String, String)]) -> (i32, String, Duration) {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(args)
        .env_remove("ORDERFLOW_KAFKA_PROPERTIES")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running orderflow");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t0.elapsed(),
    )
}

/// The command failed with one line, the sentence, no panic, none of `secrets`.
fn assert_one_sentence(
    what: &str,
    (code, stderr, _): &(i32, String, Duration),
    starts: &str,
    secrets: &[&str],
) -> String {
    assert_ne!(*code, 0, "{what}: exit code 0\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what}: a panic\n{stderr}");
    for secret in secrets {
        assert!(
            !stderr.contains(secret),
            "{what}: a password shown\n{stderr}"
        );
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: not one line:\n{stderr}");
    let last = lines[0];
    assert!(
        last.starts_with(&format!("error: {starts}")),
        "{what}: not the sentence:\n{stderr}"
    );
    eprintln!("{what}: {last}");
    last.to_owned()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_runs_through_sasl_ssl_kafka_and_tls_postgres_and_bad_settings_are_one_sentence(
) {
    let t0 = Instant::now();
    let secure = Secure::start();
    eprintln!("TLS services up in {:.1?}", t0.elapsed());
    let sasl_password = secure.sasl_password();
    let db_password = secure.db_password();
    let secrets = [sasl_password.as_str(), db_password.as_str()];
    let properties = secure.client_properties.display().to_string();

    // Kafka through SASL_SSL from the test itself: the topics.
    let mut kafka = KafkaConfig::for_tests(BROKERS, &format!("{}.", unique("t-tls-")));
    kafka.properties_file = Some(secure.client_properties.clone());
    kafka.connect_timeout_ms = 30_000;
    // The spec's topics at common::TEST_PARTITIONS with the one status-check tier of TIERS.
    let specs = common::with_only_tiers(common::test_specs(), TIERS);
    let report = topics::apply(&kafka, &specs)
        .await
        .expect("topics over SASL_SSL");
    assert!(report.is_clean(), "{report:?}");

    // PostgreSQL through TLS: the test's database, created over a verify-full connection.
    let db_name = unique("orderflow_test_");
    let mut admin = PgConnection::connect(&secure.admin_url)
        .await
        .expect("TLS to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let db_url = secure.db_url(&db_name);

    // --- Wrong settings: one sentence each, before any stage runs. ---
    let tls = &secure.tls_dir;
    let other_ca = tls.join("other-ca.pem").display().to_string();
    let db_env = |url: &str| {
        env(&[
            ("ORDERFLOW_DATABASE_URL", url),
            ("ORDERFLOW_DATABASE_CONNECT_TIMEOUT_MS", "10000"),
        ])
    };
    let wrong_ca_url = db_url.replace(&tls.join("ca.pem").display().to_string(), &other_ca);
    assert_ne!(wrong_ca_url, db_url);
    let line = assert_one_sentence(
        "PostgreSQL, wrong CA",
        &orderflow(&["migrate"], &db_env(&wrong_ca_url)),
        "TLS with PostgreSQL at",
        &secrets,
    );
    assert!(line.contains("certificate verify failed"), "{line}");
    let wrong_password_url = db_url.replace(&format!(":{db_password}@"), ":not-the-password@");
    assert_ne!(wrong_password_url, db_url);
    let line = assert_one_sentence(
        "PostgreSQL, wrong password",
        &orderflow(&["migrate"], &db_env(&wrong_password_url)),
        "PostgreSQL at",
        &secrets,
    );
    assert!(
        line.contains("refused the login") && line.contains("password authentication failed"),
        "{line}"
    );
    assert!(!line.contains("not-the-password"), "{line}");
    // The server takes TLS only: a client without it is turned away.
    let plain = db_url.replace("sslmode=verify-full", "sslmode=disable");
    let refused = DbConfig::for_tests(&plain)
        .connect()
        .await
        .expect_err("a connection without TLS");
    assert!(refused.to_string().contains("no encryption"), "{refused}");

    let props_dir = std::env::temp_dir().join(unique("orderflow-tls-"));
    std::fs::create_dir_all(&props_dir).unwrap();
    let settings = std::fs::read_to_string(&secure.client_properties).unwrap();
    let variant = |file: &str, from: &str, to: &str| {
        assert!(settings.contains(from));
        let path = props_dir.join(file);
        std::fs::write(&path, settings.replace(from, to)).unwrap();
        path.display().to_string()
    };
    let wrong_ca = variant(
        "wrong-ca.properties",
        &tls.join("ca.pem").display().to_string(),
        &other_ca,
    );
    let wrong_password = variant(
        "wrong-password.properties",
        &format!("sasl.password={sasl_password}"),
        "sasl.password=not-the-password",
    );
    let kafka_env = |file: &str| {
        env(&[
            ("ORDERFLOW_KAFKA_BROKERS", BROKERS),
            ("ORDERFLOW_TOPIC_PREFIX", &kafka.topic_prefix),
            ("ORDERFLOW_KAFKA_PROPERTIES_FILE", file),
            ("ORDERFLOW_KAFKA_CONNECT_TIMEOUT_MS", "30000"),
        ])
    };
    let apply = |file: &str| orderflow(&["topics", "apply"], &kafka_env(file));
    let out = apply(&wrong_ca);
    let line = assert_one_sentence(
        "Kafka, wrong CA",
        &out,
        "TLS with the Kafka cluster at 127.0.0.1:9392 failed",
        &secrets,
    );
    assert!(line.contains("certificate verify failed"), "{line}");
    // Told at the first refusal, not after the 30 s connect timeout.
    assert!(out.2 < Duration::from_secs(20), "took {:?}", out.2);
    let out = apply(&wrong_password);
    let line = assert_one_sentence(
        "Kafka, wrong password",
        &out,
        "the Kafka cluster at 127.0.0.1:9392 refused the SASL login",
        &secrets,
    );
    assert!(line.contains("Authentication failed"), "{line}");
    assert!(!out.1.contains("not-the-password"), "{}", out.1);
    assert!(out.2 < Duration::from_secs(20), "took {:?}", out.2);

    // --- The pipeline: migrate, then dispatch, poll and sink through both. ---
    let (code, stderr, _) = orderflow(&["migrate"], &db_env(&db_url));
    assert_eq!(code, 0, "migrate over TLS:\n{stderr}");

    let sim = Sim::new(SimConfig {
        kod: KOD.into(),
        sifre: SIFRE.into(),
        checks_until_complete: 1,
        ..SimConfig::default()
    });
    let served = serve(&sim).await;
    let accounts = props_dir.join("accounts.toml");
    std::fs::write(
        &accounts,
        account_entry(ACCOUNT, &served.url, 1000, DEFAULT_ACCOUNT_SETTINGS),
    )
    .unwrap();
    let keys = props_dir.join("pin-keys");
    std::fs::write(&keys, PinKeys::generate_key_line("tls1")).unwrap();
    let mut stage_env = kafka_env(&properties);
    stage_env.extend(env(&[
        ("ORDERFLOW_DATABASE_URL", &db_url),
        ("ORDERFLOW_PROVIDER_ACCOUNTS", accounts.to_str().unwrap()),
        ("ORDERFLOW_PIN_KEYS_FILE", keys.to_str().unwrap()),
        ("ORDERFLOW_DISPATCH_GROUP", &unique("g-tls-dispatch-")),
        ("ORDERFLOW_POLL_GROUP", &unique("g-tls-poll-")),
        ("ORDERFLOW_SINK_GROUP", &unique("g-tls-sink-")),
        ("ORDERFLOW_FIRST_CHECK", FIRST_CHECK),
        ("ORDERFLOW_CHECK_TIERS", TIERS),
        ("ORDERFLOW_SHUTDOWN_GRACE_MS", "3000"),
        ("ORDERFLOW_DATABASE_MAX_CONNECTIONS", "2"),
        ("ORDERFLOW_METRICS_LISTEN", "127.0.0.1:0"),
        ("ORDERFLOW_LOG", "info,librdkafka=info"),
    ]));
    let mut stages: Vec<(PathBuf, ChildGuard)> = ["dispatch", "poll", "sink"]
        .iter()
        .map(|stage| {
            let log_path = props_dir.join(format!("{stage}.log"));
            let mut command = stage_command(stage, &stage_env);
            let child = spawn_logged(command.env_remove("ORDERFLOW_KAFKA_PROPERTIES"), &log_path);
            (log_path, child)
        })
        .collect();

    let t_pipeline = Instant::now();
    let producer = kafka.producer().expect("a producer over SASL_SSL");
    let topic = kafka.topic(name::ORDERS_CREATED);
    let mut ids = Vec::new();
    for _ in 0..ORDERS {
        let order = order("25");
        let key = order.order_id.to_string();
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&order.encode()),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("publishing over SASL_SSL");
        ids.push(order.order_id);
    }

    // The sink's table, read over TLS, shows every order completed.
    let pool = DbConfig::for_tests(&db_url)
        .connect()
        .await
        .expect("TLS to the test database");
    let deadline = Instant::now() + Duration::from_secs(90);
    let completed = loop {
        let completed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE order_id = ANY($1) AND state = 'completed'",
        )
        .bind(&ids)
        .fetch_one(&pool)
        .await
        .unwrap();
        for (log, child) in &mut stages {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}):\n{}",
                    log.display(),
                    std::fs::read_to_string(&*log).unwrap_or_default()
                );
            }
        }
        if completed == ORDERS as i64 || Instant::now() > deadline {
            break completed;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    eprintln!(
        "{completed} of {ORDERS} orders completed through SASL_SSL and TLS in {:.1?}",
        t_pipeline.elapsed()
    );
    let ssl_connections: Vec<(bool, String)> = sqlx::query_as(
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = $1",
    )
    .bind(&db_name)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        !ssl_connections.is_empty() && ssl_connections.iter().all(|(ssl, _)| *ssl),
        "{ssl_connections:?}"
    );
    pool.close().await;
    let purchases = sim.stats().purchases;

    for (_, child) in &mut stages {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let stop_deadline = Instant::now() + Duration::from_secs(20);
    for (log, child) in &mut stages {
        while child.try_wait().unwrap().is_none() && Instant::now() < stop_deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(&*log).unwrap();
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{}: a password logged",
                log.display()
            );
        }
        assert!(
            !text.contains("panicked"),
            "{}: a panic\n{text}",
            log.display()
        );
    }
    let logs: Vec<String> = stages
        .iter()
        .map(|(log, _)| std::fs::read_to_string(log).unwrap())
        .collect();
    drop(stages);
    assert_eq!(
        completed,
        ORDERS as i64,
        "orders completed within 90 s; logs:\n{}",
        logs.join("\n----\n")
    );
    assert!(
        purchases.len() == ORDERS && purchases.values().all(|n| *n == 1),
        "each order bought once: {purchases:?}"
    );

    drop(served);
    sqlx::query(&format!("DROP DATABASE {db_name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    std::fs::remove_dir_all(&props_dir).ok();
    drop(secure);
}
