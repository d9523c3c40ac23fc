//! What a command can fail with: each module's own error, passed through unchanged so the
//! binary prints the same one sentence (its text and causes) as before, plus the few
//! failures the commands themselves name.

use crate::core::schedule::ScheduleError;
use crate::db::DbError;
use crate::dispatch::DispatchError;
use crate::kafka::topics::TopicsError;
use crate::metrics::MetricsError;
use crate::pin::PinKeyError;
use crate::poll::reconcile::ReconcileError;
use crate::poll::PollError;
use crate::provider::accounts::AccountsError;
use crate::sink::SinkError;
use crate::status::StatusPageError;

use super::accounts::AccountsCliError;
use super::dlq::DlqError;
use super::order::{RevealError, SubmitError};

/// A command's failure. The binary prints it and its causes on one line and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Topics(#[from] TopicsError),
    /// `--check-tiers` (or its variable) does not parse.
    #[error("ORDERFLOW_CHECK_TIERS is invalid: {0}")]
    CheckTiers(ScheduleError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Query(#[from] sqlx::Error),
    #[error(transparent)]
    Accounts(#[from] AccountsError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Outage(#[from] crate::outage::OutageError),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    #[error(transparent)]
    Poll(#[from] PollError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    PinKey(#[from] PinKeyError),
    #[error(transparent)]
    StatusPage(#[from] StatusPageError),
    #[error(transparent)]
    Reveal(#[from] RevealError),
    #[error(transparent)]
    AccountsCommand(#[from] AccountsCliError),
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// `order show` for an id no table knows.
    #[error("no order {0} is known to this database")]
    NoOrder(uuid::Uuid),
    /// `order show --reference` or `--phone` that finds nothing (the value is not repeated:
    /// a phone number is personal data).
    #[error("no order with this {0} is known to this database")]
    NoMatch(&'static str),
    #[error("order show --phone needs the lookup keys the dispatch stage digests phone numbers with (ORDERFLOW_LOOKUP_KEYS or ORDERFLOW_LOOKUP_KEYS_FILE)")]
    NoLookupKeys,
    #[error("the phone number holds no digit")]
    NotAPhoneNumber,
    #[error(transparent)]
    LookupKeys(#[from] crate::lookup::LookupKeyError),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaSetupError),
    #[error("cannot write the output ({0})")]
    Output(std::io::Error),
    #[cfg(feature = "testbed")]
    #[error(transparent)]
    Testbed(#[from] super::testbed::TestbedError),
}
