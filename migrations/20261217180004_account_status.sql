-- What each stage process sees of each provider account, for `orderflow accounts` and the
-- status page: the last balance the provider reported (with every placement, and from the
-- scheduled `bakiye_kontrol`), the circuit breaker, the caps, and the answers of the last
-- few minutes by call and class. One row per account and process (`written_by`), written
-- every few seconds off the hot path (`ORDERFLOW_ACCOUNT_STATUS_INTERVAL_SECS`); a process
-- that stops leaves its row, which ages (`updated_at`) and is deleted after a day.
-- Never holds a credential (G5): amounts are the provider's decimal text, failures the
-- stages' own sentences with provider text scrubbed.
CREATE TABLE account_status (
    account                  text             NOT NULL,
    -- `<stage> <host>:<pid>`: which process wrote the row.
    written_by               text             NOT NULL,
    stage                    text             NOT NULL,
    balance                  text,
    balance_at               timestamptz,
    -- Money spent per hour over the last hour of balance readings (drops only: a top-up
    -- is no spending); NULL until two readings exist.
    spend_per_hour           double precision,
    breaker                  text             NOT NULL
        CHECK (breaker IN ('closed', 'open', 'half_open')),
    -- Consecutive failed calls while closed.
    breaker_failures         integer          NOT NULL,
    breaker_open_until       timestamptz,
    max_concurrent           integer          NOT NULL,
    max_per_second           double precision NOT NULL,
    breaker_failures_to_open integer          NOT NULL,
    breaker_open_ms          bigint           NOT NULL,
    -- Calls to the account in flight in this process when the row was written.
    in_flight                integer          NOT NULL,
    -- {"<call>": {"<class>": <count>}} over the last `window_secs` (classes as in
    -- orderflow_provider_calls_total).
    answers                  jsonb            NOT NULL DEFAULT '{}',
    window_secs              integer          NOT NULL,
    last_failure             text,
    last_failure_at          timestamptz,
    updated_at               timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (account, written_by)
);
