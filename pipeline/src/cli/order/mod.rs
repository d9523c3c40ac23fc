//! `orderflow order`: support's commands, one module each. [`show`] prints one order's
//! journey (by id, provider reference or phone number), [`list`] finds orders with filters
//! (a table for people, JSON lines for scripts), [`submit`] publishes one `orders.created`
//! event by hand and can follow it to its final state. None of them ever prints a PIN
//! unless `show --reveal` is given the key (G5).

mod list;
mod show;
mod submit;

pub use list::StuckArgs;
pub use show::{render, RevealError};
pub use submit::SubmitError;

use super::CliError;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum OrderCommand {
    /// Print an order's journey: state, attempts, tier, next check, deadline, provider
    /// reference, last error, and its PIN masked. By order id, --reference or --phone.
    Show(show::ShowArgs),
    /// List orders, oldest first: filter by state, tenant, account, age, or stuck (no
    /// progress for longer than the schedule explains); a table, or JSON lines with --json.
    List(list::ListArgs),
    /// Publish one orders.created event from flags or a JSON file, validated as the dispatch
    /// stage does; with --wait, follow it to its final state and print its journey.
    ///
    /// Exit codes: 0 published (with --wait: completed), 1 an error (the event is invalid,
    /// the broker or database unreachable), 2 bad arguments, 3 the order ended failed,
    /// 4 --timeout passed before the order was final.
    Submit(submit::SubmitArgs),
}

pub async fn run(command: OrderCommand) -> Result<ExitCode, CliError> {
    match command {
        OrderCommand::Show(args) => show::run(args).await,
        OrderCommand::List(args) => list::run(args).await,
        OrderCommand::Submit(args) => submit::run(args).await,
    }
}

/// Writes `text` to stdout. A reader that went away (`| head`) ends the output quietly:
/// it has what it wanted.
pub(crate) fn emit(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e)),
        _ => Ok(()),
    }
}

/// Parses a human duration: `90s`, `10m`, `2h`, `3d`, `250ms`.
pub(crate) fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let trimmed = text.trim();
    if let Some(days) = trimmed.strip_suffix('d') {
        if let Ok(n) = days.parse::<u64>() {
            if let Some(secs) = n.checked_mul(86_400) {
                return Ok(std::time::Duration::from_secs(secs));
            }
        }
    }
    crate::core::schedule::parse_duration(trimmed)
        .map_err(|_| format!("{trimmed:?} is not a duration like 90s, 10m, 2h or 3d"))
}

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages_are_human_durations() {
        assert_eq!(parse_age("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_age("3d"), Ok(Duration::from_secs(3 * 86_400)));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        for bad in ["", "ten", "10", "5w", "-1m", "1.5h"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
