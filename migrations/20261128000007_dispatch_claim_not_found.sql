-- When a `placing` order's reference was first checked and not found since its last
-- placement call (G9). Providers show a new order with a lag, so "not found" right after an
-- unclear call proves nothing: the order is placed again, under the same reference, only
-- once the reference has stayed not-found for the account's visibility window counted from
-- this time. Every placement call clears it (a new call may land unseen in its turn), and
-- it is kept in the table, not in memory, so a restart does not shorten the wait. NULL:
-- not seen not-found since the last call.
ALTER TABLE dispatch_claims ADD COLUMN first_not_found_at timestamptz;
