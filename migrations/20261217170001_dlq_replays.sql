-- What `orderflow dlq replay` sent back, one row per DLQ entry (issue 17): a second run
-- skips an entry replayed before unless asked (`--again`). Keyed by the entry's position;
-- the digest of its key and payload tells a position reused by another entry (the DLQ
-- topic deleted and created again) from the one replayed, so that one is not skipped.
-- Nothing here is needed for correctness: a replay sent twice is a redelivery, which the
-- stages take without buying anything twice (G1).
CREATE TABLE dlq_replays (
    dlq_topic          text        NOT NULL,
    dlq_partition      integer     NOT NULL,
    dlq_offset         bigint      NOT NULL,
    -- SHA-256 (hex) of the entry's key and payload.
    entry_digest       text        NOT NULL,
    reason             text        NOT NULL,
    source_topic       text        NOT NULL,
    order_id           uuid,
    -- How often it was sent back (more than once only with --again).
    replays            integer     NOT NULL DEFAULT 1 CHECK (replays > 0),
    first_replayed_at  timestamptz NOT NULL DEFAULT now(),
    last_replayed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
