-- no-transaction
-- Orders that failed before they were placed (rejected, expired, invalid) in the last
-- minutes, for the status page's throughput: a claim in one of these phases is not written
-- again, so its `updated_at` is when it failed. `updated_at` and `phase` are already in
-- dispatch_claims' indexes (dispatch_claims_unsettled_idx, dispatch_claims_placed_idx), so
-- this index keeps no update from being HOT that could be before; an entry is added only
-- for a claim that fails.
--
-- Built CONCURRENTLY so that the dispatch stage keeps writing meanwhile (hence
-- `no-transaction`, and one statement in this file). Should the build fail half-way, or
-- this migration stop before it is recorded, PostgreSQL leaves an index of this name behind
-- (possibly INVALID): drop it and run `orderflow migrate` again.
CREATE INDEX CONCURRENTLY dispatch_claims_ended_idx
    ON dispatch_claims (updated_at)
    WHERE phase IN ('rejected', 'expired', 'invalid');
