//! The test bed's commands (feature `testbed`): `orderflow load`, `orderflow bench` and
//! `orderflow sim-znet`, each run until done or until the shutdown signal. Not production:
//! `--no-default-features` builds the binary without them.

use super::CliError;
use crate::kafka::KafkaConfig;
use crate::shutdown::{self, Shutdown};
use crate::testbed::bench::{self, BenchCommand, BenchError};
use crate::testbed::load::{self, LoadConfig, LoadError};
use crate::testbed::sim::{ShareError, Sim, SimServerConfig};
use std::net::SocketAddr;
use std::process::ExitCode;

/// What a test-bed command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the simulator stopped unexpectedly")]
    SimStopped(#[source] tokio::task::JoinError),
}

/// The shutdown signal, listened for in the background.
fn on_signals() -> Shutdown {
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(shutdown::on_signals(trigger));
    shutdown
}

/// `orderflow load`: exits 4 when some orders got no answer.
pub async fn load(kafka: KafkaConfig, config: LoadConfig) -> Result<ExitCode, CliError> {
    let report = load::run(&kafka, &config, &mut (), None, on_signals())
        .await
        .map_err(TestbedError::from)?;
    print!("{}", report.render());
    Ok(if report.missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    })
}

/// `orderflow bench throughput|memory`.
pub async fn bench(command: BenchCommand) -> Result<ExitCode, CliError> {
    let text = bench::run(command, on_signals())
        .await
        .map_err(TestbedError::from)?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `orderflow sim-znet`: serves until the shutdown signal.
pub async fn sim_znet(args: SimServerConfig) -> Result<ExitCode, CliError> {
    let config = args.config().map_err(TestbedError::from)?;
    let mut shutdown = on_signals();
    let handle = Sim::new(config)
        .serve(args.listen, async move { shutdown.wait().await })
        .await
        .map_err(|source| TestbedError::Listen {
            addr: args.listen,
            source,
        })?;
    println!("znet simulator listening on http://{}", handle.addr);
    handle.task.await.map_err(TestbedError::SimStopped)?;
    Ok(ExitCode::SUCCESS)
}
