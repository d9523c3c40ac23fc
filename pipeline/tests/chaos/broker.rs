//! A Kafka broker of the test's own (ops/kafka/broker.sh in a directory and on ports of
//! its own), so the run can restart it without touching other tests.

use crate::settings::{free_port, repo, state_dir};
use std::path::PathBuf;
use std::process::Command;

/// A Kafka broker started by ops/kafka/broker.sh in a directory and on ports of its own, so
/// the test can restart it; stopped and removed on drop, the test failing included. Its log
/// cleaner is off, so orders.state keeps every record for the regression check.
pub struct PrivateBroker {
    dir: PathBuf,
    port: u16,
    controller_port: u16,
}

impl PrivateBroker {
    pub fn start(dir: PathBuf) -> PrivateBroker {
        // The jars of the shared broker, if there, spare a Maven run.
        let shared = state_dir().join("kafka/lib");
        std::fs::create_dir_all(dir.join("kafka")).unwrap();
        if shared.join(".pom.sha256").exists() {
            let copied = Command::new("cp")
                .arg("-a")
                .arg(&shared)
                .arg(dir.join("kafka/lib"))
                .status()
                .unwrap();
            assert!(copied.success(), "copying the broker's jars");
        }
        let broker = PrivateBroker {
            dir,
            port: free_port(),
            controller_port: free_port(),
        };
        broker.script("start");
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn script(&self, action: &str) {
        let out = Command::new("bash")
            .arg(repo().join("ops/kafka/broker.sh"))
            .arg(action)
            .env("ORDERFLOW_STATE_DIR", &self.dir)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_EXTRA_PROPERTIES", "log.cleaner.enable=false")
            .env("KAFKA_START_TIMEOUT", "120")
            .env_remove("KAFKA_FRESH")
            .output()
            .expect("running ops/kafka/broker.sh");
        assert!(
            out.status.success(),
            "broker.sh {action} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("ops/kafka/broker.sh"))
            .arg("stop")
            .env("ORDERFLOW_STATE_DIR", &self.dir)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .output();
        // A failed run keeps the broker's logs and data, to tell a record that never
        // reached the log from one a consumer skipped.
        if std::thread::panicking() {
            eprintln!(
                "chaos: the private broker's data and log are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
