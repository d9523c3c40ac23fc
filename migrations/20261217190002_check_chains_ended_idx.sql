-- no-transaction
-- The chains that ended in the last minutes, for the status page's throughput
-- (20261217190001_check_chain_ended_at.sql says why a column of its own). Partial: open
-- chains have no entry, and an ended chain gets one, once.
--
-- Built CONCURRENTLY so that the poll stage keeps writing `check_chains` meanwhile (hence
-- `no-transaction`, and one statement in this file: CONCURRENTLY cannot run in a
-- transaction). Should the build fail half-way, or this migration stop before it is
-- recorded, PostgreSQL leaves an index of this name behind (possibly INVALID): drop it and
-- run `orderflow migrate` again.
CREATE INDEX CONCURRENTLY check_chains_ended_idx
    ON check_chains (ended_at)
    WHERE ended_at IS NOT NULL;
