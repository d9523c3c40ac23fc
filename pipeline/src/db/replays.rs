//! `dlq_replays`: which DLQ entries `orderflow dlq replay` sent back, so that a second run
//! skips them unless asked (see the migration `dlq_replays`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// One entry sent back.
#[derive(Clone, Debug)]
pub struct Replay<'a> {
    pub dlq_topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub entry_digest: &'a str,
    pub reason: &'a str,
    pub source_topic: &'a str,
    pub order_id: Option<Uuid>,
}

/// A recorded replay: how often, and when last.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Recorded {
    pub dlq_partition: i32,
    pub dlq_offset: i64,
    pub entry_digest: String,
    pub replays: i32,
    pub last_replayed_at: DateTime<Utc>,
}

/// The recorded replays of the entries of `dlq_topic` at `positions` (partition, offset).
pub async fn recorded(
    pool: &PgPool,
    dlq_topic: &str,
    positions: &[(i32, i64)],
) -> Result<Vec<Recorded>, sqlx::Error> {
    let partitions: Vec<i32> = positions.iter().map(|p| p.0).collect();
    let offsets: Vec<i64> = positions.iter().map(|p| p.1).collect();
    sqlx::query_as(
        "SELECT r.dlq_partition, r.dlq_offset, r.entry_digest, r.replays, r.last_replayed_at
           FROM dlq_replays r
           JOIN UNNEST($2::int4[], $3::int8[]) AS t(p, o)
             ON r.dlq_partition = t.p AND r.dlq_offset = t.o
          WHERE r.dlq_topic = $1",
    )
    .bind(dlq_topic)
    .bind(&partitions)
    .bind(&offsets)
    .fetch_all(pool)
    .await
}

/// Records that `replay` was sent back (once more, if it was before).
pub async fn record(pool: &PgPool, replay: &Replay<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dlq_replays AS r (dlq_topic, dlq_partition, dlq_offset, entry_digest,
                                       reason, source_topic, order_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO UPDATE
            SET replays = CASE WHEN r.entry_digest = EXCLUDED.entry_digest
                               THEN r.replays + 1 ELSE 1 END,
                entry_digest = EXCLUDED.entry_digest, reason = EXCLUDED.reason,
                source_topic = EXCLUDED.source_topic, order_id = EXCLUDED.order_id,
                last_replayed_at = now()",
    )
    .bind(replay.dlq_topic)
    .bind(replay.partition)
    .bind(replay.offset)
    .bind(replay.entry_digest)
    .bind(replay.reason)
    .bind(replay.source_topic)
    .bind(replay.order_id)
    .execute(pool)
    .await?;
    Ok(())
}
