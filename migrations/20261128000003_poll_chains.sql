-- The poll stage's memory of each order's status-check chain (G2, G4): which step of the
-- chain is being worked on or was finished last, and when the next check is due. Each
-- `orders.status-check.*` message carries its step number (`seq`); a step is begun only if
-- the chain is just before it (or a crashed worker left it unfinished), so a duplicate
-- message, a redelivery or a reconciler re-enqueue continues the chain once, never twice.

CREATE TABLE poll_chains (
    order_id            uuid PRIMARY KEY,
    tenant_id           text        NOT NULL,
    provider_account    text        NOT NULL,
    provider_reference  text        NOT NULL,
    dispatched_at       timestamptz NOT NULL,
    deadline            timestamptz NOT NULL,
    -- The step being worked on (step_done false) or finished last (step_done true).
    seq                 bigint      NOT NULL CHECK (seq >= 0),
    step_done           boolean     NOT NULL,
    -- Status checks the provider answered; the version of the order's latest state event.
    attempts            integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    version             bigint      NOT NULL,
    -- When step seq + 1 is due; NULL once the order is final.
    next_check_at       timestamptz,
    -- completed or failed once the chain has ended.
    final_state         text        CHECK (final_state IN ('completed', 'failed')),
    lease_owner         uuid,
    lease_until         timestamptz,
    -- How often, and when last, the reconciler brought this chain back.
    requeued            integer     NOT NULL DEFAULT 0,
    requeued_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The reconciler's question: which unfinished chains are overdue?
CREATE INDEX poll_chains_overdue_idx
    ON poll_chains (next_check_at)
    WHERE final_state IS NULL;

-- The reconciler also brings back placed orders whose first check never started (a lost
-- orders.dispatched message); it needs the tenant for their events.
ALTER TABLE dispatch_claims ADD COLUMN tenant_id text;

CREATE INDEX dispatch_claims_placed_idx
    ON dispatch_claims (updated_at)
    WHERE phase = 'placed';
