-- How often the poll stage dead-lettered a step of this chain since the chain last moved
-- (reset when a step is done). The reconciler stops re-enqueueing a chain once this reaches
-- its limit: every copy it sent would be dead-lettered again, forever.
ALTER TABLE poll_chains ADD COLUMN dead_lettered integer NOT NULL DEFAULT 0;

-- The reconciler's look at the chains it gave up on, without scanning every chain.
CREATE INDEX poll_chains_given_up_idx ON poll_chains (order_id)
    WHERE dead_lettered > 0 AND final_state IS NULL;
