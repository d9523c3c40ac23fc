//! The six stages as `orderflow` child processes: two dispatch, two poll, the sink and
//! the reconciler, each with its log file and /metrics port across incarnations, killed with
//! SIGKILL, started again, supervised and, at the end, stopped with SIGTERM.

use crate::common::{free_port, ChildGuard};
use crate::settings::{FIRST_CHECK, TIERS};
use orderflow::kafka::KafkaConfig;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One `orderflow` process of the pipeline: every incarnation appends to one log file and
/// serves /metrics on one port.
pub struct Stage {
    pub name: String,
    command: &'static str,
    env: Vec<(String, String)>,
    pub metrics_port: u16,
    pub log: PathBuf,
    pub child: Option<ChildGuard>,
    pub kills: u32,
    /// Incarnations that ended by themselves (say, started while the broker was down).
    pub exits: u32,
}

impl Stage {
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .arg(self.command)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "ORDERFLOW_METRICS_LISTEN",
                format!("127.0.0.1:{}", self.metrics_port),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting orderflow");
        self.child = Some(ChildGuard(child));
    }

    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                self.kills += 1;
            } else {
                self.exits += 1;
            }
            child.wait().unwrap();
        }
    }

    /// Starts again an incarnation that ended by itself.
    pub fn supervise(&mut self) {
        let ended = match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_some(),
            None => false,
        };
        if ended {
            self.exits += 1;
            self.spawn();
        }
    }

    /// SIGTERM, so traces are flushed; SIGKILL after 20 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

pub type Stages = Arc<Mutex<Vec<Stage>>>;

/// What every stage is started with: the private broker and database, the accounts and
/// keys files, the scaled-down schedules, debug logs and the trace receiver.
pub fn env(
    kafka: &KafkaConfig,
    db_url: &str,
    accounts_file: &Path,
    keys_file: &Path,
    otlp: &str,
) -> Vec<(String, String)> {
    [
        ("ORDERFLOW_KAFKA_BROKERS", kafka.brokers.clone()),
        ("ORDERFLOW_TOPIC_PREFIX", kafka.topic_prefix.clone()),
        ("ORDERFLOW_DATABASE_URL", db_url.into()),
        ("ORDERFLOW_PROVIDER_ACCOUNTS", accounts_file.display().to_string()),
        ("ORDERFLOW_PIN_KEYS_FILE", keys_file.display().to_string()),
        ("ORDERFLOW_DISPATCH_GROUP", crate::common::unique("g-chaos-dispatch-")),
        ("ORDERFLOW_POLL_GROUP", crate::common::unique("g-chaos-poll-")),
        ("ORDERFLOW_SINK_GROUP", crate::common::unique("g-chaos-sink-")),
        ("ORDERFLOW_DISPATCH_RETRY_MIN_MS", "200".into()),
        ("ORDERFLOW_DISPATCH_RETRY_MAX_MS", "2000".into()),
        // Orders parked during a provider wave come back within seconds of its end.
        ("ORDERFLOW_DISPATCH_PARK_MIN_MS", "500".into()),
        ("ORDERFLOW_DISPATCH_PARK_MAX_MS", "5000".into()),
        ("ORDERFLOW_FIRST_CHECK", FIRST_CHECK.into()),
        ("ORDERFLOW_CHECK_TIERS", TIERS.into()),
        ("ORDERFLOW_RECONCILE_EVERY", "2s".into()),
        ("ORDERFLOW_RECONCILE_GRACE", "10s".into()),
        ("ORDERFLOW_RECONCILE_LOOKBACK", "1h".into()),
        ("ORDERFLOW_SHUTDOWN_GRACE_MS", "3000".into()),
        ("ORDERFLOW_DATABASE_MAX_CONNECTIONS", "4".into()),
        (
            "ORDERFLOW_LOG",
            "debug,librdkafka=info,rdkafka=info,sqlx=warn,h2=info,hyper=info,hyper_util=info,reqwest=info,tower=info"
                .into(),
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "500".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Starts the six stages; kills go round robin in this order, so no group loses two
/// members in a row.
pub fn start_all(env: &[(String, String)], logs: &Path) -> Stages {
    let stages: Stages = Arc::new(Mutex::new(
        [
            // Round-robin kills: no group loses two members in a row.
            ("dispatch-1", "dispatch"),
            ("poll-1", "poll"),
            ("sink", "sink"),
            ("dispatch-2", "dispatch"),
            ("poll-2", "poll"),
            ("reconcile", "reconcile"),
        ]
        .into_iter()
        .map(|(name, command)| Stage {
            name: name.into(),
            command,
            env: env.to_vec(),
            metrics_port: free_port(),
            log: logs.join(format!("{name}.log")),
            child: None,
            kills: 0,
            exits: 0,
        })
        .collect(),
    ));
    for stage in stages.lock().unwrap().iter_mut() {
        stage.spawn();
    }
    stages
}
