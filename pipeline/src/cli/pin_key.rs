//! `orderflow pin-key new`: prints a new random PIN key line. The key goes to stdout only,
//! never to the logs (G5).

use super::CliError;
use crate::pin::PinKeys;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum PinKeyCommand {
    /// Print a new random key as `key_id:base64`; put it first in ORDERFLOW_PIN_KEYS (or the
    /// keys file) to seal new PINs with it, and keep the older keys after it to open old ones.
    New {
        /// The key's id: letters, digits, `_` or `-`, up to 32.
        #[arg(long, default_value = "k1")]
        id: String,
    },
}

pub fn run(command: PinKeyCommand) -> Result<ExitCode, CliError> {
    let PinKeyCommand::New { id } = command;
    let line = PinKeys::generate_key_line(&id);
    PinKeys::parse(&line)?;
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
