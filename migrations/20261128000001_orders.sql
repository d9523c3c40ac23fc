-- The latest state of every order, written by the sink from orders.state and read by the
-- shop. One row per order; a row in a final state never changes again (G3).

CREATE TABLE orders (
    order_id            uuid PRIMARY KEY,
    tenant_id           text        NOT NULL,
    provider_account    text        NOT NULL,
    -- Fixed per order before the first placement attempt; what status checks use.
    provider_reference  text,
    state               text        NOT NULL CHECK (state IN
                            ('received', 'dispatching', 'dispatched', 'processing', 'completed', 'failed')),
    failure_reason      text        CHECK (failure_reason IN ('rejected', 'cancelled', 'deadline', 'invalid')),
    -- The shop's existing columns, derived from state so they can never disagree with it.
    status              text        NOT NULL GENERATED ALWAYS AS (
                            CASE state WHEN 'completed' THEN 'approved'
                                       WHEN 'failed'    THEN 'rejected'
                                       ELSE 'pending' END) STORED,
    external_status     text        NOT NULL GENERATED ALWAYS AS (
                            CASE state WHEN 'completed'  THEN 'done'
                                       WHEN 'failed'     THEN 'failed'
                                       WHEN 'processing' THEN 'processing'
                                       ELSE 'sent' END) STORED,
    -- The PIN, encrypted with the shop's key; never stored or logged in clear (G5).
    pin_encrypted       bytea,
    -- Status checks made so far.
    attempts            integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_check_at       timestamptz,
    deadline            timestamptz,
    -- The provider's code and message, or the pipeline's explanation, of the last failure.
    last_error          text,
    -- Orders state events of one order; the upsert keeps the highest.
    version             bigint      NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'failed') = (failure_reason IS NOT NULL)),
    CHECK (state = 'completed' OR pin_encrypted IS NULL)
);

-- Support looks orders up by the provider's reference.
CREATE UNIQUE INDEX orders_provider_reference_idx
    ON orders (provider_account, provider_reference)
    WHERE provider_reference IS NOT NULL;

-- The reconciler's question: which unfinished orders are overdue for a check?
CREATE INDEX orders_next_check_at_idx
    ON orders (next_check_at)
    WHERE state NOT IN ('completed', 'failed');
