-- no-transaction
-- When orders became final, for the status page's throughput (orders that reached a final
-- state in the last 1, 5 and 15 minutes, `db::overview::finished_recently`): a final row
-- never changes again (G3), so its `updated_at` is that moment, and without this index the
-- question would scan the whole table every few seconds. Partial: only final rows, so the
-- sink's updates of open orders never touch it.
--
-- Built CONCURRENTLY so that a large live `orders` table keeps taking the sink's writes
-- meanwhile (hence `no-transaction`, and one statement in this file: CONCURRENTLY cannot
-- run in a transaction). Should the build fail half-way, or this migration stop before it
-- is recorded, PostgreSQL leaves an index of this name behind (possibly INVALID): drop it
-- and run `orderflow migrate` again.
CREATE INDEX CONCURRENTLY orders_finished_at_idx
    ON orders (updated_at)
    WHERE state IN ('completed', 'failed');
