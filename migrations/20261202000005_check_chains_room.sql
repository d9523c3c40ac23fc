-- Room on check_chains' pages, as 20261202000004 leaves on orders': taking a check step
-- (seq, step_done and the lease, none of them indexed) can then stay on its page as a
-- heap-only tuple. Finishing one moves next_check_at, which the reconciler's index needs,
-- so that update stays a regular one.
ALTER TABLE check_chains SET (fillfactor = 75);
