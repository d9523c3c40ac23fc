//! The sink's start-up errors (a row the database refuses is dead-lettered, an outage
//! retried: neither is an error of the stage).

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaSetupError),
    #[error(transparent)]
    Stage(#[from] crate::kafka::stage::StageError),
}
