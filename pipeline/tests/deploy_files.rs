//! The deployment files (ops/compose/, ops/k8s/, ops/prometheus/, ops/grafana/) checked
//! against the code, without Docker or a cluster: every `orderflow` subcommand and flag
//! they use exists; every ORDERFLOW_* variable is one that subcommand reads (from its
//! `--help`, `[env: …]`); ports agree (metrics listen address, container ports, probes,
//! health checks, Prometheus targets, the simulator's address in the accounts file);
//! every metric name in the alert rules and the dashboard is one the code registers;
//! KEDA's consumer groups and topics are the stages' own, within the topic's partitions;
//! files, Secrets and keys they reference exist.

use orderflow::kafka::topics::{name, TopicSpecs};
use serde::Deserialize as _;
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

// ---- what the binary says about itself ----------------------------------------------

/// One command's `--help`: its subcommands, or its flags with their variables and
/// defaults.
#[derive(Debug, Default)]
struct Help {
    subcommands: BTreeSet<String>,
    flags: BTreeSet<String>,
    /// variable → default value ("" when none).
    env: BTreeMap<String, String>,
}

fn help(path: &[String]) -> Help {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    cmd.args(path).arg("--help");
    // Set variables would show in the help; the defaults are what is wanted.
    for (key, _) in std::env::vars() {
        if key.starts_with("ORDERFLOW_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd.output().expect("running orderflow --help");
    assert!(out.status.success(), "orderflow {path:?} --help failed");
    parse_help(&String::from_utf8(out.stdout).unwrap())
}

fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = "";
    let mut block = String::new();
    let flush = |block: &mut String, help: &mut Help| {
        let first = block.lines().next().unwrap_or("").to_owned();
        for token in first.split_whitespace() {
            if let Some(flag) = token.strip_prefix("--") {
                help.flags.insert(flag.trim_end_matches(',').to_owned());
            }
        }
        if let Some(at) = block.find("[env: ") {
            let rest = &block[at + 6..];
            let end = rest.find(['=', ']']).unwrap();
            let default = block
                .find("[default: ")
                .map(|d| block[d + 10..].split(']').next().unwrap().to_owned())
                .unwrap_or_default();
            help.env.insert(rest[..end].to_owned(), default);
        }
        block.clear();
    };
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            flush(&mut block, &mut help);
            section = line;
            continue;
        }
        match section {
            "Commands:" => {
                if let Some(word) = line.split_whitespace().next() {
                    if line.starts_with("  ") && !line.starts_with("    ") && word != "help" {
                        help.subcommands.insert(word.to_owned());
                    }
                }
            }
            "Options:" => {
                if line.trim_start().starts_with('-') {
                    flush(&mut block, &mut help);
                }
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    flush(&mut block, &mut help);
    help
}

/// An `orderflow` invocation resolved against the binary: its subcommand path and the
/// leaf's help. Fails if a subcommand or flag does not exist.
#[derive(Debug)]
struct Invocation {
    path: Vec<String>,
    help: Help,
    flags: BTreeMap<String, String>,
}

impl Invocation {
    fn stage(&self) -> String {
        self.path.join(" ")
    }

    /// A setting's value: the flag, else the variable, else the default.
    fn setting(&self, env: &BTreeMap<String, String>, flag: &str, var: &str) -> String {
        self.flags
            .get(flag)
            .or_else(|| env.get(var))
            .cloned()
            .or_else(|| self.help.env.get(var).cloned())
            .unwrap_or_else(|| panic!("{}: {var} is not a setting of this command", self.stage()))
    }
}

fn resolve(args: &[String], what: &str) -> Invocation {
    let mut path = Vec::new();
    let mut rest = args.iter();
    let mut h = help(&path);
    while !h.subcommands.is_empty() {
        let sub = rest
            .next()
            .unwrap_or_else(|| panic!("{what}: `orderflow {}` needs a subcommand", path.join(" ")));
        assert!(
            h.subcommands.contains(sub),
            "{what}: `orderflow {} {sub}` is not a command (there are {:?})",
            path.join(" "),
            h.subcommands
        );
        path.push(sub.clone());
        h = help(&path);
    }
    let mut flags = BTreeMap::new();
    let rest: Vec<&String> = rest.collect();
    for (i, arg) in rest.iter().enumerate() {
        if let Some(flag) = arg.strip_prefix("--") {
            let (flag, value) = match flag.split_once('=') {
                Some((f, v)) => (f.to_owned(), v.to_owned()),
                None => (
                    flag.to_owned(),
                    rest.get(i + 1).map(|v| v.to_string()).unwrap_or_default(),
                ),
            };
            assert!(
                h.flags.contains(&flag),
                "{what}: `orderflow {}` has no flag --{flag}",
                path.join(" ")
            );
            flags.insert(flag, value);
        }
    }
    Invocation {
        path,
        help: h,
        flags,
    }
}

/// `orderflow …` invocations in a shell script: the words after `orderflow` up to the
/// end of the command.
fn invocations_in_script(script: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in script.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if *w == "orderflow" {
                found.push(
                    words[i + 1..]
                        .iter()
                        .take_while(|w| {
                            !matches!(**w, ">" | "|" | ";" | "&&" | "||") && !w.starts_with('>')
                        })
                        .map(|w| w.to_string())
                        .collect(),
                );
            }
        }
    }
    found
}

fn assert_env_accepted(what: &str, invocations: &[Invocation], vars: &BTreeSet<String>) {
    for var in vars.iter().filter(|v| v.starts_with("ORDERFLOW_")) {
        assert!(
            invocations.iter().any(|i| i.help.env.contains_key(var)),
            "{what}: {var} is read by none of {:?}",
            invocations
                .iter()
                .map(Invocation::stage)
                .collect::<Vec<_>>()
        );
    }
}

fn port_of(address: &str) -> u16 {
    let hostport = address.rsplit("://").next().unwrap();
    let hostport = hostport.split('/').next().unwrap();
    hostport
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no port in {address}"))
}

/// Names a scrape of the code's registry would show, with the suffixes Prometheus adds.
/// A labelled family shows only once it has a member, so each gets one here; a family
/// added to `Metrics` needs a line below before rules may use it.
fn metric_names() -> BTreeSet<String> {
    use orderflow::metrics::*;
    let m = Metrics::new();
    let topic = Metrics::topic("t");
    let outcome = OutcomeLabel { outcome: "o" };
    let call = CallLabels {
        account: "a".into(),
        call: "c",
        outcome: "o",
        class: "k",
    };
    m.messages_handled.get_or_create(&topic).inc();
    m.messages_fetched.get_or_create(&topic).inc();
    m.messages_waiting.get_or_create(&topic).set(1);
    m.oldest_waiting_due_timestamp_seconds
        .get_or_create(&topic)
        .set(1.0);
    m.check_lateness_seconds.get_or_create(&topic).observe(1.0);
    m.message_transit_seconds.get_or_create(&topic).observe(1.0);
    m.message_handling_seconds
        .get_or_create(&topic)
        .observe(1.0);
    m.check_outcomes.get_or_create(&outcome).inc();
    m.dispatch_to_final_seconds
        .get_or_create(&outcome)
        .observe(1.0);
    m.created_to_final_seconds
        .get_or_create(&outcome)
        .observe(1.0);
    m.events_written.get_or_create(&topic).inc();
    m.kafka_requests
        .get_or_create(&RequestLabels {
            client: "producer",
            request: "Produce".into(),
        })
        .inc();
    m.dead_lettered
        .get_or_create(&DeadLetterLabels {
            stage: "s",
            reason: "r",
        })
        .inc();
    m.provider_calls.get_or_create(&call).inc();
    m.provider_call_seconds.get_or_create(&call).observe(1.0);
    m.provider_breaker_open
        .get_or_create(&AccountLabel {
            account: "a".into(),
        })
        .set(1);
    m.dispatch_parked
        .get_or_create(&AccountLabel {
            account: "a".into(),
        })
        .inc();
    for gauge in [&m.account_balance, &m.account_balance_alert_below] {
        gauge
            .get_or_create(&AccountLabel {
                account: "a".into(),
            })
            .set(1.0);
    }
    m.consumer_lag
        .get_or_create(&PartitionLabels {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
        })
        .set(1);
    let text = m.render();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
                names.insert(format!("{name}_created"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count", "_created"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    assert!(
        names.len() > 10,
        "the registry rendered too little:\n{text}"
    );
    names
}

fn metric_names_used(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("orderflow_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            used.insert(text[start..end].to_owned());
        }
        i = end;
    }
    used
}

fn topic_partitions() -> BTreeMap<String, i32> {
    let specs = TopicSpecs::load(None).expect("the built-in topic spec");
    specs
        .topics
        .iter()
        .map(|t| (t.name.clone(), t.partitions))
        .collect()
}

/// The topics a stage's consumer group reads (without prefix).
fn consumed_topics(inv: &Invocation, env: &BTreeMap<String, String>) -> Vec<String> {
    match inv.stage().as_str() {
        "dispatch" => vec![
            name::ORDERS_CREATED.to_owned(),
            name::ORDERS_DISPATCH_RETRY.to_owned(),
        ],
        "sink" => vec![name::ORDERS_STATE.to_owned()],
        "poll" => {
            let mut topics = vec![name::ORDERS_DISPATCHED.to_owned()];
            let tiers = inv.setting(env, "check-tiers", "ORDERFLOW_CHECK_TIERS");
            topics.extend(tiers.split(',').map(|t| name::status_check(t.trim())));
            topics
        }
        _ => Vec::new(),
    }
}

/// The consumer group of a consumer-group stage.
fn group_of(inv: &Invocation, env: &BTreeMap<String, String>) -> Option<String> {
    let stage = inv.stage();
    if !["dispatch", "poll", "sink"].contains(&stage.as_str()) {
        return None;
    }
    let var = format!("ORDERFLOW_{}_GROUP", stage.to_uppercase());
    let group = inv.setting(env, &format!("{stage}-group"), &var);
    if !group.is_empty() {
        return Some(group);
    }
    // Unset, the group is the stage's default name under the topic prefix.
    let prefix = inv.setting(env, "topic-prefix", "ORDERFLOW_TOPIC_PREFIX");
    Some(format!("{prefix}orderflow.{stage}"))
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(str_of).collect())
        .unwrap_or_default()
}

// ---- checks ---------------------------------------------------------------------------

#[test]
fn metric_names_in_alerts_and_dashboard_exist_in_the_code() {
    let known = metric_names();
    for file in [
        "ops/prometheus/alerts.yml",
        "ops/grafana/dashboards/orderflow.json",
    ] {
        let used = metric_names_used(&read(file));
        assert!(!used.is_empty(), "{file} names no metric");
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the code does not export: {unknown:?}"
        );
    }
}

#[test]
fn compose_file_matches_the_code() {
    let mut compose: Value = serde_yaml_ng::from_str(&read("ops/compose/compose.yaml")).unwrap();
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let compose_dir = repo().join("ops/compose");
    let mut metrics_ports: BTreeMap<String, u16> = BTreeMap::new();
    let mut sims: BTreeMap<String, (u16, BTreeMap<String, String>)> = BTreeMap::new();
    let mut stages = BTreeSet::new();
    for (service, spec) in services {
        let service = str_of(service);
        let what = format!("compose service {service}");
        // Bind mounts name files that exist.
        for volume in strings(&spec["volumes"]) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    compose_dir.join(source).exists(),
                    "{what}: {source} does not exist"
                );
            }
        }
        if spec["image"].as_str() != Some("orderflow:local") {
            continue;
        }
        let build = &spec["build"];
        assert!(
            compose_dir
                .join(str_of(&build["context"]))
                .join(str_of(&build["dockerfile"]))
                .exists(),
            "{what}: the Dockerfile it builds does not exist"
        );
        let calls: Vec<Vec<String>> = match strings(&spec["entrypoint"]).as_slice() {
            [sh, c] if sh.ends_with("sh") && c == "-c" => {
                invocations_in_script(&strings(&spec["command"]).join("\n"))
            }
            [] => vec![strings(&spec["command"])],
            other => panic!("{what}: unexpected entrypoint {other:?}"),
        };
        assert!(!calls.is_empty(), "{what}: runs no orderflow command");
        let invocations: Vec<Invocation> = calls.iter().map(|c| resolve(c, &what)).collect();
        let env: BTreeMap<String, String> = spec["environment"]
            .as_mapping()
            .map(|m| m.iter().map(|(k, v)| (str_of(k), str_of(v))).collect())
            .unwrap_or_default();
        assert_env_accepted(&what, &invocations, &env.keys().cloned().collect());
        let health = strings(&spec["healthcheck"]["test"]).join(" ");
        let exposed: Vec<u16> = strings(&spec["expose"])
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        for inv in &invocations {
            let listen = match inv.stage().as_str() {
                "sim-znet" => Some(inv.setting(&env, "listen", "ORDERFLOW_SIM_LISTEN")),
                _ if inv.help.env.contains_key("ORDERFLOW_METRICS_LISTEN") => {
                    let listen = env.get("ORDERFLOW_METRICS_LISTEN").cloned();
                    assert!(listen.is_some(), "{what}: a stage without ORDERFLOW_METRICS_LISTEN has no health check or metrics");
                    listen
                }
                _ => None,
            };
            let Some(listen) = listen else { continue };
            assert!(
                listen.starts_with("0.0.0.0:"),
                "{what}: {listen} is not reachable from other containers"
            );
            let port = port_of(&listen);
            assert!(
                exposed.contains(&port),
                "{what}: port {port} is not exposed ({exposed:?})"
            );
            let url = health
                .split_whitespace()
                .find(|w| w.starts_with("http://"))
                .unwrap_or_else(|| panic!("{what}: no HTTP health check"));
            assert_eq!(port_of(url), port, "{what}: the health check asks {url}");
            if inv.stage() == "sim-znet" {
                sims.insert(service.clone(), (port, env.clone()));
            } else {
                assert!(
                    url.ends_with("/readyz") || url.ends_with("/healthz"),
                    "{what}: {url}"
                );
                metrics_ports.insert(service.clone(), port);
                stages.insert(service.clone());
            }
        }
        // Longer than the stage's shutdown grace.
        for inv in &invocations {
            if inv.help.env.contains_key("ORDERFLOW_SHUTDOWN_GRACE_MS") {
                let grace_ms: u64 = inv
                    .setting(&env, "shutdown-grace-ms", "ORDERFLOW_SHUTDOWN_GRACE_MS")
                    .parse()
                    .unwrap();
                let stop = str_of(&spec["stop_grace_period"]);
                let stop_s: u64 = stop.trim_end_matches('s').parse().unwrap();
                assert!(
                    stop_s * 1000 > grace_ms,
                    "{what}: stop_grace_period {stop} is not longer than {grace_ms} ms"
                );
            }
        }
    }
    assert!(stages.len() >= 4, "compose runs only {stages:?}");

    // Prometheus scrapes every stage, on its metrics port, as job "orderflow" (the alerts
    // select it), and loads the alert rules.
    let prometheus: Value = serde_yaml_ng::from_str(&read("ops/compose/prometheus.yml")).unwrap();
    let job = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["job_name"].as_str() == Some("orderflow"))
        .expect("a scrape job named orderflow (alerts.yml selects job=\"orderflow\")");
    let mut scraped = BTreeSet::new();
    for sd in job["dns_sd_configs"].as_sequence().unwrap() {
        let port: u16 = str_of(&sd["port"]).parse().unwrap();
        for name in strings(&sd["names"]) {
            assert_eq!(
                metrics_ports.get(&name),
                Some(&port),
                "Prometheus scrapes {name}:{port}, which serves no metrics there"
            );
            scraped.insert(name);
        }
    }
    assert_eq!(scraped, stages, "Prometheus must scrape exactly the stages");
    assert!(strings(&prometheus["rule_files"])
        .iter()
        .any(|f| f.ends_with("alerts.yml")));

    // The accounts file points at the simulator, with its credentials.
    let accounts: toml::Value = toml::from_str(&read("ops/compose/accounts.toml")).unwrap();
    for account in accounts["account"].as_array().unwrap() {
        let url = account["base_url"].as_str().unwrap();
        let host = url.trim_start_matches("http://").split(':').next().unwrap();
        let (port, env) = sims
            .get(host)
            .unwrap_or_else(|| panic!("accounts.toml: {url} is no simulator service"));
        assert_eq!(port_of(url), *port, "accounts.toml: {url}");
        assert_eq!(
            Some(account["kod"].as_str().unwrap()),
            env.get("ORDERFLOW_SIM_KOD").map(String::as_str)
        );
        assert_eq!(
            Some(account["sifre"].as_str().unwrap()),
            env.get("ORDERFLOW_SIM_SIFRE").map(String::as_str)
        );
    }
}

#[test]
fn kubernetes_manifests_match_the_code() {
    let mut docs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("ops/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let mut value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            value.apply_merge().unwrap();
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    let of_kind = |kind: &str| -> Vec<&Value> {
        docs.iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    };
    let named = |kind: &str, name: &str| -> Option<&Value> {
        docs.iter().find(|d| {
            d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
        })
    };
    let data_keys = |kind: &str, name: &str| -> BTreeSet<String> {
        let doc = named(kind, name).unwrap_or_else(|| panic!("no {kind} {name} in ops/k8s"));
        let mut keys = BTreeSet::new();
        for field in ["data", "stringData"] {
            if let Some(m) = doc[field].as_mapping() {
                keys.extend(m.keys().map(str_of));
            }
        }
        keys
    };
    let partitions = topic_partitions();
    let mut groups: BTreeMap<String, (String, Vec<String>, String)> = BTreeMap::new();

    for workload in of_kind("Deployment").into_iter().chain(of_kind("Job")) {
        let name = str_of(&workload["metadata"]["name"]);
        let pod = &workload["spec"]["template"]["spec"];
        let annotations = &workload["spec"]["template"]["metadata"]["annotations"];
        let volumes: BTreeMap<String, &Value> = pod["volumes"]
            .as_sequence()
            .map(|s| s.iter().map(|v| (str_of(&v["name"]), v)).collect())
            .unwrap_or_default();
        let containers = pod["initContainers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .chain(pod["containers"].as_sequence().unwrap());
        for container in containers {
            let what = format!("{name}/{}", str_of(&container["name"]));
            let inv = resolve(&strings(&container["args"]), &what);
            // The variables it gets and their values, ConfigMaps expanded.
            let mut env: BTreeMap<String, String> = BTreeMap::new();
            for from in container["envFrom"].as_sequence().into_iter().flatten() {
                let cm = str_of(&from["configMapRef"]["name"]);
                let doc =
                    named("ConfigMap", &cm).unwrap_or_else(|| panic!("{what}: no ConfigMap {cm}"));
                for (k, v) in doc["data"].as_mapping().unwrap() {
                    env.insert(str_of(k), str_of(v));
                }
            }
            for var in container["env"].as_sequence().into_iter().flatten() {
                let key = str_of(&var["name"]);
                let from = &var["valueFrom"];
                let value = if let Some(r) = from.get("secretKeyRef") {
                    let (secret, k) = (str_of(&r["name"]), str_of(&r["key"]));
                    assert!(
                        data_keys("Secret", &secret).contains(&k),
                        "{what}: Secret {secret} has no key {k}"
                    );
                    String::new()
                } else if let Some(r) = from.get("configMapKeyRef") {
                    let (cm, k) = (str_of(&r["name"]), str_of(&r["key"]));
                    named("ConfigMap", &cm)
                        .and_then(|d| d["data"].get(k.as_str()))
                        .map(str_of)
                        .unwrap_or_else(|| panic!("{what}: ConfigMap {cm} has no key {k}"))
                } else {
                    str_of(&var["value"])
                };
                env.insert(key, value);
            }
            assert_env_accepted(
                &what,
                std::slice::from_ref(&inv),
                &env.keys().cloned().collect(),
            );

            // Mounted files the settings name exist: the mount's Secret has that key.
            let mounts: Vec<(String, String)> = container["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|m| (str_of(&m["mountPath"]), str_of(&m["name"])))
                .collect();
            for (mount, volume) in &mounts {
                let v = volumes
                    .get(volume)
                    .unwrap_or_else(|| panic!("{what}: mounts undefined volume {volume}"));
                let secret = str_of(&v["secret"]["secretName"]);
                assert!(
                    named("Secret", &secret).is_some(),
                    "{what}: {mount} mounts missing Secret {secret}"
                );
            }
            for (var, value) in &env {
                if !(var.ends_with("_FILE") || var == "ORDERFLOW_PROVIDER_ACCOUNTS") {
                    continue;
                }
                let path = Path::new(value);
                let dir = path.parent().unwrap().to_str().unwrap();
                let file = path.file_name().unwrap().to_str().unwrap();
                let (_, volume) = mounts
                    .iter()
                    .find(|(m, _)| m == dir)
                    .unwrap_or_else(|| panic!("{what}: {var}={value} is in no mounted volume"));
                let secret = str_of(&volumes[volume]["secret"]["secretName"]);
                assert!(
                    data_keys("Secret", &secret).contains(file),
                    "{what}: {var}={value}, but Secret {secret} has no key {file}"
                );
            }

            // Ports: the metrics address, the container port, the probes, Prometheus'.
            if let Some(listen) = env.get("ORDERFLOW_METRICS_LISTEN") {
                assert!(
                    listen.starts_with("0.0.0.0:"),
                    "{what}: {listen} is not reachable by the kubelet"
                );
                let port = port_of(listen);
                let ports: BTreeMap<String, u16> = container["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap_or("").to_owned(),
                            str_of(&p["containerPort"]).parse().unwrap(),
                        )
                    })
                    .collect();
                assert!(
                    ports.values().any(|p| *p == port),
                    "{what}: no containerPort {port}"
                );
                for (probe, endpoint) in [
                    ("livenessProbe", "/healthz"),
                    ("readinessProbe", "/readyz"),
                    ("startupProbe", ""),
                ] {
                    let get = &container[probe]["httpGet"];
                    if probe != "startupProbe" {
                        assert_eq!(get["path"].as_str(), Some(endpoint), "{what}: {probe}");
                    } else if get.is_null() {
                        continue;
                    }
                    let p = match &get["port"] {
                        Value::String(n) => *ports
                            .get(n)
                            .unwrap_or_else(|| panic!("{what}: {probe} names unknown port {n}")),
                        v => str_of(v).parse().unwrap(),
                    };
                    assert_eq!(p, port, "{what}: {probe} port");
                }
                assert_eq!(
                    annotations["prometheus.io/port"]
                        .as_str()
                        .map(|p| p.parse::<u16>().unwrap()),
                    Some(port),
                    "{what}: prometheus.io/port"
                );
            } else {
                assert!(
                    !inv.help.env.contains_key("ORDERFLOW_METRICS_LISTEN"),
                    "{what}: a stage without ORDERFLOW_METRICS_LISTEN cannot be probed"
                );
            }

            // The kubelet waits longer than the stage's own shutdown grace.
            if inv.help.env.contains_key("ORDERFLOW_SHUTDOWN_GRACE_MS") {
                let grace_ms: u64 = inv
                    .setting(&env, "shutdown-grace-ms", "ORDERFLOW_SHUTDOWN_GRACE_MS")
                    .parse()
                    .unwrap();
                let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
                assert!(termination * 1000 > grace_ms, "{what}: terminationGracePeriodSeconds {termination} is not longer than {grace_ms} ms");
            }

            if let Some(group) = group_of(&inv, &env) {
                let prefix = env
                    .get("ORDERFLOW_TOPIC_PREFIX")
                    .cloned()
                    .unwrap_or_default();
                let topics = consumed_topics(&inv, &env);
                for t in &topics {
                    assert!(
                        partitions.contains_key(t),
                        "{what}: consumes {t}, which topics/topics.toml lacks"
                    );
                }
                let brokers = env
                    .get("ORDERFLOW_KAFKA_BROKERS")
                    .cloned()
                    .unwrap_or_default();
                groups.insert(
                    name.clone(),
                    (
                        group,
                        topics.iter().map(|t| format!("{prefix}{t}")).collect(),
                        brokers,
                    ),
                );
            }
        }
    }
    assert_eq!(
        groups.len(),
        3,
        "dispatch, poll and sink Deployments expected, found {:?}",
        groups.keys()
    );

    // Each consumer-group stage is scaled by KEDA on its own group and topic, never past
    // the topic's partitions.
    let mut scaled = BTreeSet::new();
    for so in of_kind("ScaledObject") {
        let name = str_of(&so["metadata"]["name"]);
        let target = str_of(&so["spec"]["scaleTargetRef"]["name"]);
        let (group, topics, brokers) = groups.get(&target).unwrap_or_else(|| {
            panic!("ScaledObject {name} scales {target}, which is no consumer-group stage")
        });
        let max: i32 = str_of(&so["spec"]["maxReplicaCount"]).parse().unwrap();
        for trigger in so["spec"]["triggers"].as_sequence().unwrap() {
            assert_eq!(trigger["type"].as_str(), Some("kafka"), "{name}");
            let meta = &trigger["metadata"];
            assert_eq!(
                &str_of(&meta["consumerGroup"]),
                group,
                "{name}: consumerGroup"
            );
            assert_eq!(
                &str_of(&meta["bootstrapServers"]),
                brokers,
                "{name}: bootstrapServers"
            );
            let topic = str_of(&meta["topic"]);
            assert!(
                topics.contains(&topic),
                "{name}: {target} does not consume {topic} ({topics:?})"
            );
            let unprefixed = topics
                .iter()
                .position(|t| *t == topic)
                .map(|i| consumed_topics_plain(&target, i, &groups))
                .unwrap();
            let p = partitions[&unprefixed];
            assert!(
                max <= p,
                "{name}: maxReplicaCount {max} > {p} partitions of {topic}"
            );
            assert!(str_of(&meta["lagThreshold"]).parse::<u64>().unwrap() > 0);
            if let Some(auth) = trigger["authenticationRef"]["name"].as_str() {
                let ta = named("TriggerAuthentication", auth)
                    .unwrap_or_else(|| panic!("{name}: no TriggerAuthentication {auth}"));
                for r in ta["spec"]["secretTargetRef"].as_sequence().unwrap() {
                    let (secret, key) = (str_of(&r["name"]), str_of(&r["key"]));
                    assert!(
                        data_keys("Secret", &secret).contains(&key),
                        "{auth}: Secret {secret} has no key {key}"
                    );
                }
            }
        }
        scaled.insert(target);
    }
    assert_eq!(
        scaled,
        groups.keys().cloned().collect(),
        "every consumer-group stage needs a ScaledObject"
    );
}

/// The spec name of the `i`-th consumed topic of `target` (the stored names carry the
/// prefix).
fn consumed_topics_plain(
    target: &str,
    i: usize,
    groups: &BTreeMap<String, (String, Vec<String>, String)>,
) -> String {
    let full = &groups[target].1[i];
    let partitions = topic_partitions();
    partitions
        .keys()
        .find(|t| full.ends_with(t.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("{full} is not in topics/topics.toml"))
}
