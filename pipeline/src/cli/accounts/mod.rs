//! `orderflow accounts`: the provider accounts as an operator needs to see them.
//!
//! - `list` and `show NAME` read what the running dispatch and poll processes last wrote to
//!   `account_status` (balance, breaker, answers of the last minutes; `crate::account_status`)
//!   with the accounts file's caps ([`status`]);
//! - `check [NAME]` asks each account for its balance with its own credentials, buying
//!   nothing, and fails if any account does not answer with one ([`provider`]);
//! - `products NAME` fetches the account's product list (znet: `pin_listesi`) ([`provider`]).
//!
//! Nothing here prints a credential (G5): accounts are named by id, and the provider's
//! answers are the classifier's details, with provider text scrubbed.

mod provider;
mod render;
mod status;

use super::CliError;
use crate::db::DbConfig;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// List every account: its last balance, breaker, caps and the answers of the last
    /// minutes, as the running stages last wrote them.
    List {
        /// The provider accounts file, for the caps and the accounts no stage wrote about
        /// yet (credentials are not needed).
        #[arg(long = "provider-accounts", env = "ORDERFLOW_PROVIDER_ACCOUNTS")]
        accounts_file: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbConfig,
    },
    /// Show one account in detail, with what each stage process sees of it.
    Show {
        /// The account's id (what orders name in provider_account).
        name: String,
        /// The provider accounts file, for the caps (credentials are not needed).
        #[arg(long = "provider-accounts", env = "ORDERFLOW_PROVIDER_ACCOUNTS")]
        accounts_file: Option<PathBuf>,
        #[command(flatten)]
        db: DbConfig,
    },
    /// Ask each account (or NAME) for its balance with its credentials, buying nothing;
    /// exits non-zero if any account does not answer with a balance.
    Check {
        /// Only this account.
        name: Option<String>,
        /// The provider accounts file (TOML, one [[account]] per account; see README).
        #[arg(long = "provider-accounts", env = "ORDERFLOW_PROVIDER_ACCOUNTS")]
        accounts_file: PathBuf,
    },
    /// Fetch and print the products an account may buy (znet: pin_listesi), with what an
    /// order's `product` must hold to buy each.
    Products {
        /// The account's id.
        name: String,
        /// The provider accounts file (TOML, one [[account]] per account; see README).
        #[arg(long = "provider-accounts", env = "ORDERFLOW_PROVIDER_ACCOUNTS")]
        accounts_file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// What `orderflow accounts` can fail with, besides reading the file and the database.
#[derive(Debug, thiserror::Error)]
pub enum AccountsCliError {
    /// A name the accounts file does not list (nor the status table, for `show`).
    #[error("no account {name} is configured in {file}; it lists {known}")]
    Unknown {
        name: String,
        file: String,
        known: String,
    },
    /// `show` of an account neither the file nor any stage knows.
    #[error("no account {0} is known: no stage wrote its status, and no accounts file was given (--provider-accounts)")]
    NotKnown(String),
    /// `check` found accounts that did not answer with a balance.
    #[error("{failed} of {total} accounts failed the check: {which}")]
    CheckFailed {
        failed: usize,
        total: usize,
        which: String,
    },
    /// `products` got no product list.
    #[error("account {account}: the product list could not be fetched ({class}: {detail})")]
    Products {
        account: String,
        class: &'static str,
        detail: String,
    },
}

pub async fn run(command: AccountsCommand) -> Result<ExitCode, CliError> {
    match command {
        AccountsCommand::List {
            accounts_file,
            json,
            db,
        } => status::list(accounts_file.as_deref(), json, &db).await,
        AccountsCommand::Show {
            name,
            accounts_file,
            db,
        } => status::show(&name, accounts_file.as_deref(), &db).await,
        AccountsCommand::Check {
            name,
            accounts_file,
        } => provider::check(name.as_deref(), &accounts_file).await,
        AccountsCommand::Products {
            name,
            accounts_file,
            json,
        } => provider::products(&name, &accounts_file, json).await,
    }
}
