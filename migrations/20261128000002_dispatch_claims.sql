-- The dispatch stage's memory of each order (G1): the provider reference fixed before the
-- first placement attempt, and how far placement got. A row is written before any call
-- to the provider, so a crash, a redelivery or a rebalance finds it and settles the order
-- by checking that reference instead of placing it again under a new one.

-- References are digits only (znet's referans) and never reused.
CREATE SEQUENCE provider_reference_seq START WITH 100000001;

CREATE TABLE dispatch_claims (
    order_id            uuid PRIMARY KEY,
    provider_account    text        NOT NULL,
    provider_reference  text        NOT NULL UNIQUE DEFAULT nextval('provider_reference_seq')::text,
    -- new:      reference fixed, no call made yet
    -- placing:  a placement call may have reached the provider; settle by checking
    -- placed:   the provider has the order
    -- rejected: the provider refused it (outcome_code, outcome_message)
    -- expired:  never placed before its deadline
    phase               text        NOT NULL DEFAULT 'new'
                            CHECK (phase IN ('new', 'placing', 'placed', 'rejected', 'expired')),
    place_calls         integer     NOT NULL DEFAULT 0,
    deadline            timestamptz NOT NULL,
    -- One worker at a time works on an order: whoever holds an unexpired lease.
    lease_owner         uuid,
    lease_until         timestamptz,
    outcome_code        text,
    outcome_message     text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dispatch_claims_unsettled_idx
    ON dispatch_claims (updated_at)
    WHERE phase IN ('new', 'placing');
