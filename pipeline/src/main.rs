//! The `orderflow` command: parses the command line, sets up logging (and traces, when
//! configured) and the runtime, and hands the command to `orderflow::cli`. Configuration
//! comes from flags or the environment variables named in `--help`; errors end the process
//! with one sentence on stderr and a non-zero exit code.

use anyhow::Context as _;
use clap::Parser;
use orderflow::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // A bad argument is one sentence, as every other error.
            eprintln!("{}", usage_sentence(&e.render().to_string()));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let tracing = match init_logging(&cli.log, &cli.log_format, cli.command.name()) {
        Ok(tracing) => tracing,
        Err(e) => {
            eprintln!("error: {}", one_sentence(&e));
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    let code = match runtime.block_on(cli::run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_sentence(&e.into()));
            ExitCode::FAILURE
        }
    };
    drop(runtime);
    // Flushes the last spans, if tracing is on.
    drop(tracing);
    code
}

/// Logs to stderr (text or JSON), and traces over OTLP when the environment asks for them.
fn init_logging(
    filter: &str,
    format: &str,
    command: &str,
) -> anyhow::Result<Option<orderflow::telemetry::Tracing>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("the log filter {filter:?} is invalid"))?;
    let (otel, tracing) = match orderflow::telemetry::layer(command)? {
        Some((layer, tracing)) => (Some(layer), Some(tracing)),
        None => (None, None),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let subscriber = tracing_subscriber::registry().with(otel).with(filter);
    if format == "json" {
        subscriber.with(fmt.json()).init();
    } else {
        subscriber.with(fmt).init();
    }
    Ok(tracing)
}

/// clap's message for a bad argument on one line: its first paragraph (the usage and the
/// pointer to `--help` that follow are left out), lines joined.
fn usage_sentence(rendered: &str) -> String {
    let first = rendered.split("\n\n").next().unwrap_or_default();
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The error and its causes on one line, leaving out causes that an outer message already
/// quotes.
fn one_sentence(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}
