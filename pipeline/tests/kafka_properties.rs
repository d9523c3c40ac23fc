//! librdkafka properties from configuration, from the outside: a bad one stops the
//! `orderflow` binary at startup with one sentence that shows no value; good ones (from
//! the flag, the environment and a file) reach every client and the command works against
//! the real broker.

mod common;

use std::process::Command;

fn orderflow(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(args)
        .env_remove("ORDERFLOW_KAFKA_PROPERTIES")
        .env_remove("ORDERFLOW_KAFKA_PROPERTIES_FILE")
        .env("ORDERFLOW_KAFKA_BROKERS", common::brokers())
        .envs(env.iter().copied())
        .output()
        .expect("running orderflow");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0]
}

fn prefix(test: &str) -> String {
    format!("{}.", common::unique(&format!("t-{test}-")))
}

#[test]
fn a_bad_property_is_one_sentence_without_its_value() {
    let topic_prefix = prefix("props-bad");
    // (flags, environment, what the error line says)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (
            &["--kafka-property", "no.such.property=hunter2"],
            &[],
            "librdkafka has no property no.such.property",
        ),
        (
            &[],
            &[(
                "ORDERFLOW_KAFKA_PROPERTIES",
                "socket.timeout.ms=30000,sasl.password:hunter2",
            )],
            "entry 2 of --kafka-property/ORDERFLOW_KAFKA_PROPERTIES is not key=value",
        ),
        (
            &["--kafka-property", "socket.timeout.ms=hunter2"],
            &[],
            "socket.timeout.ms",
        ),
        (
            &["--kafka-property", "enable.idempotence=false"],
            &[],
            "enable.idempotence",
        ),
        (
            &["--kafka-properties-file", "/nonexistent/kafka.properties"],
            &[],
            "cannot read the Kafka properties file /nonexistent/kafka.properties",
        ),
    ];
    for (flags, env, expected) in cases {
        let mut args = vec!["topics", "apply", "--topic-prefix", &topic_prefix];
        args.extend_from_slice(flags);
        let (code, stdout, stderr) = orderflow(&args, env);
        assert_ne!(code, 0, "{args:?}: {stdout}");
        let line = one_error_line(&stderr);
        assert!(line.contains(expected), "{args:?}: {line}");
        assert!(!line.contains("hunter2"), "{line}");
        // Nothing was created under the prefix: the command stopped before any client.
        assert!(!stdout.contains("created"), "{stdout}");
    }
}

#[test]
fn good_properties_reach_the_clients_and_the_command_works() {
    let topic_prefix = prefix("props-good");
    let file =
        std::env::temp_dir().join(format!("orderflow-kafka-{}.properties", common::unique("")));
    std::fs::write(
        &file,
        "# timeouts for a slow network\nsocket.timeout.ms=30000\nmetadata.max.age.ms = 60000\n",
    )
    .unwrap();
    let (code, stdout, stderr) = orderflow(
        &[
            "topics",
            "apply",
            "--topic-prefix",
            &topic_prefix,
            "--kafka-property",
            "socket.connection.setup.timeout.ms=20000",
            "--kafka-properties-file",
            file.to_str().unwrap(),
        ],
        &[(
            "ORDERFLOW_KAFKA_PROPERTIES",
            "request.timeout.ms=30000\nlinger.ms=10",
        )],
    );
    let _ = std::fs::remove_file(&file);
    // The flag replaces the environment's entries (clap: a flag wins over its variable);
    // either way every entry is a valid property and the apply succeeds.
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("created   {topic_prefix}orders.created")),
        "{stdout}"
    );
    // The same with the entries from the environment alone.
    let (code, stdout, stderr) = orderflow(
        &["topics", "apply", "--topic-prefix", &topic_prefix],
        &[(
            "ORDERFLOW_KAFKA_PROPERTIES",
            "request.timeout.ms=30000,linger.ms=10",
        )],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("0 created"), "{stdout}");
}
