//! Kafka of the test's own, so the run can restart it without touching other tests: one
//! broker (ops/kafka/broker.sh) or a cluster of three (ops/kafka/cluster.sh), in a
//! directory and on ports of its own.

use crate::common::{free_port, repo_root};
use crate::settings::state_dir;
use std::path::PathBuf;
use std::process::Command;

/// One broker or a three-node cluster, started by the project's scripts in a directory and
/// on ports of its own, so the test can restart (or kill) it; stopped and removed on drop,
/// the test failing included. Its log cleaner is off, so orders.state keeps every record
/// for the regression check.
pub struct PrivateBroker {
    dir: PathBuf,
    /// The brokers' ports: one, or three for a cluster.
    ports: Vec<u16>,
    controller_ports: Vec<u16>,
}

impl PrivateBroker {
    /// One broker (node 1, its own controller).
    pub fn start(dir: PathBuf) -> PrivateBroker {
        Self::start_nodes(dir, 1)
    }

    /// Three nodes, each a broker and a voter of the controller quorum.
    pub fn start_cluster(dir: PathBuf) -> PrivateBroker {
        Self::start_nodes(dir, 3)
    }

    fn start_nodes(dir: PathBuf, nodes: usize) -> PrivateBroker {
        // The jars of the shared broker, if there, spare a Maven run.
        let shared = state_dir().join("kafka/lib");
        let lib = if nodes == 1 {
            dir.join("kafka/lib")
        } else {
            dir.join("kafka-cluster/lib")
        };
        std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
        if shared.join(".pom.sha256").exists() {
            let copied = Command::new("cp")
                .arg("-a")
                .arg(&shared)
                .arg(&lib)
                .status()
                .unwrap();
            assert!(copied.success(), "copying the broker's jars");
        }
        let broker = PrivateBroker {
            dir,
            ports: (0..nodes).map(|_| free_port()).collect(),
            controller_ports: (0..nodes).map(|_| free_port()).collect(),
        };
        broker.script("start");
        broker
    }

    pub fn is_cluster(&self) -> bool {
        self.ports.len() > 1
    }

    /// The bootstrap list.
    pub fn brokers(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The script with this broker's settings: broker.sh for one, cluster.sh for three.
    fn command(&self) -> Command {
        let join = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut command = Command::new("bash");
        command
            .env("ORDERFLOW_STATE_DIR", &self.dir)
            .env("KAFKA_EXTRA_PROPERTIES", "log.cleaner.enable=false")
            .env("KAFKA_START_TIMEOUT", "120")
            .env_remove("KAFKA_FRESH");
        if self.is_cluster() {
            command
                .arg(repo_root().join("ops/kafka/cluster.sh"))
                .env("KAFKA_CLUSTER_DIR", self.dir.join("kafka-cluster"))
                .env("KAFKA_CLUSTER_PORTS", join(&self.ports))
                .env(
                    "KAFKA_CLUSTER_CONTROLLER_PORTS",
                    join(&self.controller_ports),
                );
        } else {
            command
                .arg(repo_root().join("ops/kafka/broker.sh"))
                .env("KAFKA_PORT", self.ports[0].to_string())
                .env(
                    "KAFKA_CONTROLLER_PORT",
                    self.controller_ports[0].to_string(),
                );
        }
        command
    }

    /// `start`, `stop` (of the broker, or of the whole cluster); for a cluster also
    /// `start-node N`, `stop-node N`, `kill-node N`, `pid N`. Returns its stdout.
    pub fn script(&self, action: &str) -> String {
        let out = self
            .command()
            .args(action.split_whitespace())
            .output()
            .expect("running the broker script");
        assert!(
            out.status.success(),
            "{action} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A cluster node's process id.
    pub fn pid(&self, node: i32) -> i32 {
        self.script(&format!("pid {node}")).trim().parse().unwrap()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.command().arg("stop").output();
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
