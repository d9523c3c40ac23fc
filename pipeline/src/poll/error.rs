//! The poll stage's start-up errors (a check that fails at run time is retried or
//! dead-lettered, never an error of the stage).

use crate::core::schedule::ScheduleError;
use crate::pin::PinKeyError;

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Accounts(#[from] crate::provider::accounts::AccountsError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaSetupError),
    #[error(transparent)]
    Stage(#[from] crate::kafka::stage::StageError),
    #[error(transparent)]
    Caps(#[from] crate::account_caps::ShareError),
    #[error("the check schedule is invalid: {0}")]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    PinKeys(#[from] PinKeyError),
    #[error("no PIN key is configured: set ORDERFLOW_PIN_KEYS or ORDERFLOW_PIN_KEYS_FILE (`orderflow pin-key new` makes one)")]
    NoPinKeys,
}
