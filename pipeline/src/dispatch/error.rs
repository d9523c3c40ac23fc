//! The dispatch stage's start-up errors: a setting out of range, an accounts file that
//! does not load, Kafka or the consumer loop failing to start. Typed, for `main` to report.

use super::config::MAX_DEADLINE_SECS;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(
        "ORDERFLOW_ORDER_DEADLINE_SECS (--order-deadline-secs) is {0}, but it must be from 1 \
         to at most {MAX_DEADLINE_SECS} seconds (30 days)"
    )]
    DeadlineOutOfRange(u64),
    #[error(transparent)]
    LookupKeys(#[from] crate::lookup::LookupKeyError),
    #[error(transparent)]
    Accounts(#[from] crate::provider::accounts::AccountsError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaSetupError),
    #[error(transparent)]
    Stage(#[from] crate::kafka::stage::StageError),
    #[error(transparent)]
    Caps(#[from] crate::account_caps::ShareError),
}
