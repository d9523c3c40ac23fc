//! The `orderflow` binary's answers to bad configuration: one sentence, non-zero exit,
//! within seconds.

use std::process::Command;
use std::time::{Duration, Instant};

fn orderflow(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String, Duration) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(args)
        .env_remove("ORDERFLOW_KAFKA_BROKERS")
        .env_remove("ORDERFLOW_DATABASE_URL")
        .envs(env.iter().copied())
        .output()
        .expect("running orderflow");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0]
}

#[test]
fn an_unreachable_broker_is_one_clear_line() {
    // A port nothing listens on.
    let (code, _, stderr, took) = orderflow(
        &[
            "topics",
            "apply",
            "--kafka-brokers",
            "127.0.0.1:1",
            "--kafka-connect-timeout-ms",
            "3000",
        ],
        &[],
    );
    assert_ne!(code, 0);
    let line = one_error_line(&stderr);
    assert!(
        line.contains("cannot reach the Kafka cluster at 127.0.0.1:1"),
        "{line}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[test]
fn an_unresolvable_broker_name_is_one_clear_line() {
    let (code, _, stderr, took) = orderflow(
        &["topics", "apply", "--kafka-connect-timeout-ms", "3000"],
        &[("ORDERFLOW_KAFKA_BROKERS", "no-such-host.invalid:9092")],
    );
    assert_ne!(code, 0);
    assert!(one_error_line(&stderr).contains("no-such-host.invalid:9092"));
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[test]
fn a_wrong_database_is_one_clear_line_without_the_password() {
    for url in [
        "postgres://orderflow:s3cret@127.0.0.1:1/orderflow",
        "postgres://orderflow:s3cret@127.0.0.1:5432/no_such_database_here",
        "mysql://nope",
    ] {
        let (code, _, stderr, took) = orderflow(&["migrate", "--database-url", url], &[]);
        assert_ne!(code, 0, "{url}");
        let line = one_error_line(&stderr);
        assert!(!line.contains("s3cret"), "{line}");
        assert!(took < Duration::from_secs(15), "{url}: {took:?}");
    }
}

/// A value of the wrong kind, and one out of range: a pool of no connections cannot be built
/// (sqlx panicked on it), so clap answers first.
#[test]
fn a_bad_argument_is_answered_by_clap_not_a_panic() {
    for (flag, value) in [
        ("--dispatch-max-in-flight", "many"),
        ("--database-max-connections", "0"),
    ] {
        let (code, _, stderr, _) = orderflow(&["dispatch", flag, value], &[]);
        assert_eq!(code, 2, "{flag}");
        assert!(
            stderr.contains(&format!("invalid value '{value}'")),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn help_lists_only_working_subcommands() {
    let (code, stdout, _, _) = orderflow(&["--help"], &[]);
    assert_eq!(code, 0);
    for sub in [
        "topics",
        "migrate",
        "dispatch",
        "poll",
        "reconcile",
        "pin-key",
        "load",
        "bench",
        "sim-znet",
    ] {
        assert!(stdout.contains(sub), "{sub} missing from:\n{stdout}");
    }
}

#[test]
fn a_missing_accounts_file_is_one_clear_line() {
    let (code, _, stderr, _) = orderflow(
        &[
            "dispatch",
            "--provider-accounts",
            "/nonexistent/accounts.toml",
            "--database-url",
            "postgres://orderflow:orderflow@127.0.0.1:1/x",
        ],
        &[],
    );
    assert_ne!(code, 0);
    let line = one_error_line(&stderr);
    assert!(
        line.contains("provider accounts file /nonexistent/accounts.toml"),
        "{line}"
    );
}

/// A valid accounts file for commands that load one before anything else.
fn accounts_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("orderflow-cli-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[[account]]\nid = \"znet-main\"\nprovider = \"znet\"\n\
         base_url = \"http://127.0.0.1:1\"\nkod = \"k\"\nsifre = \"s\"\n",
    )
    .unwrap();
    path
}

#[test]
fn poll_without_a_pin_key_or_with_bad_tiers_is_one_clear_line() {
    let accounts = accounts_file();
    let accounts = accounts.to_str().unwrap();
    let db = "postgres://orderflow:orderflow@127.0.0.1:1/x";
    let (code, _, stderr, _) = orderflow(
        &[
            "poll",
            "--provider-accounts",
            accounts,
            "--database-url",
            db,
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        one_error_line(&stderr).contains("no PIN key is configured"),
        "{stderr}"
    );
    let (code, _, stderr, _) = orderflow(
        &[
            "poll",
            "--provider-accounts",
            accounts,
            "--database-url",
            db,
            "--check-tiers",
            "30s,5x",
        ],
        &[(
            "ORDERFLOW_PIN_KEYS",
            "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )],
    );
    assert_ne!(code, 0);
    let line = one_error_line(&stderr);
    assert!(line.contains("\"5x\" is not a duration"), "{line}");
    let (code, _, stderr, _) = orderflow(
        &[
            "poll",
            "--provider-accounts",
            accounts,
            "--database-url",
            db,
        ],
        &[("ORDERFLOW_PIN_KEYS", "k1:c2hvcnQ=")],
    );
    assert_ne!(code, 0);
    let line = one_error_line(&stderr);
    assert!(line.contains("k1") && !line.contains("c2hvcnQ"), "{line}");
}

#[test]
fn pin_key_new_prints_a_usable_key() {
    let (code, stdout, _, _) = orderflow(&["pin-key", "new", "--id", "shop-2027"], &[]);
    assert_eq!(code, 0);
    let line = stdout.trim();
    assert!(line.starts_with("shop-2027:"), "{line}");
    assert!(orderflow::pin::PinKeys::parse(line).is_ok());
    let (_, again, _, _) = orderflow(&["pin-key", "new", "--id", "shop-2027"], &[]);
    assert_ne!(again.trim(), line, "keys are random");
}

/// The shop guide's Python example opens what the pipeline seals (the shop's side of G5).
#[test]
fn the_shop_guide_example_opens_a_sealed_pin() {
    use orderflow::pin::PinKeys;
    use orderflow::secret::Secret;
    use std::io::Write;
    let has_cryptography = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_cryptography,
        "python3 with the cryptography package is needed to check docs/examples/open_pin.py"
    );
    let (old, new) = (
        PinKeys::generate_key_line("old"),
        PinKeys::generate_key_line("new"),
    );
    let order = uuid::Uuid::new_v4();
    let sealed = PinKeys::parse(&old)
        .unwrap()
        .seal(order, &Secret::new("ŞİFRE-1234-ığüö"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/open_pin.py");
    let mut child = Command::new("python3")
        .args([script, &order.to_string(), sealed.as_str()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Rotated keys: the newest first, the one that sealed it after.
    write!(child.stdin.take().unwrap(), "{new}\n{old}\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ŞİFRE-1234-ığüö"
    );
}

#[test]
fn topics_delete_needs_a_prefix_and_bench_names_bad_flags() {
    let (code, _, stderr, _) = orderflow(&["topics", "delete"], &[("ORDERFLOW_TOPIC_PREFIX", "")]);
    assert_ne!(code, 0);
    assert!(
        one_error_line(&stderr).contains("non-empty --topic-prefix"),
        "{stderr}"
    );

    let (code, _, stderr, _) = orderflow(&["bench", "throughput", "--rate", "fast"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("positive number") && stderr.contains("max"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (code, _, stderr, _) = orderflow(&["bench", "throughput", "--process", "poll"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("name=pid"), "{stderr}");
}

/// The subcommands `help` (the output of `--help`) lists under "Commands:", without `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// G5: `--help` of every subcommand names the environment variables that may hold a secret
/// but never prints their values (clap shows an `env` argument's current value otherwise).
#[test]
fn help_never_prints_a_secret_from_the_environment() {
    const MARKER: &str = "Zq7SECRETmarker";
    let secret_env = [
        (
            "ORDERFLOW_DATABASE_URL",
            format!("postgres://orderflow:{MARKER}@db.internal:5432/orderflow"),
        ),
        ("ORDERFLOW_SIM_KOD", format!("kod-{MARKER}")),
        ("ORDERFLOW_SIM_SIFRE", format!("sifre-{MARKER}")),
        (
            "ORDERFLOW_KAFKA_PROPERTIES",
            format!("sasl.password={MARKER}"),
        ),
        ("ORDERFLOW_PIN_KEYS", format!("k1:{MARKER}")),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("authorization=Bearer {MARKER}"),
        ),
    ];
    let env: Vec<(&str, &str)> = secret_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut pending: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let (code, stdout, stderr, _) = orderflow(&args, &env);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(
            !stdout.contains(MARKER) && !stderr.contains(MARKER),
            "`orderflow {}` printed a secret from the environment:\n{stdout}",
            args.join(" ")
        );
        for sub in subcommands(&stdout) {
            let mut next = path.clone();
            next.push(sub);
            pending.push(next);
        }
        seen += 1;
    }
    // The walk reached the nested subcommands (topics apply, order show, bench …).
    assert!(seen > 15, "only {seen} help pages");
    // The variables are still named, so operators know where the value comes from.
    let (_, stdout, _, _) = orderflow(&["sink", "--help"], &env);
    assert!(stdout.contains("ORDERFLOW_DATABASE_URL"), "{stdout}");
}

#[test]
fn a_huge_order_deadline_is_one_clear_line() {
    let accounts = accounts_file();
    for value in ["1000000000000000000", "18446744073709551615", "0"] {
        let (code, _, stderr, took) = orderflow(
            &[
                "dispatch",
                "--provider-accounts",
                accounts.to_str().unwrap(),
                "--database-url",
                "postgres://orderflow:orderflow@127.0.0.1:1/x",
            ],
            &[("ORDERFLOW_ORDER_DEADLINE_SECS", value)],
        );
        assert_ne!(code, 0, "{value}");
        let line = one_error_line(&stderr);
        assert!(
            line.contains("ORDERFLOW_ORDER_DEADLINE_SECS") && line.contains("at most"),
            "{line}"
        );
        assert!(took < Duration::from_secs(15), "{took:?}");
    }
}
