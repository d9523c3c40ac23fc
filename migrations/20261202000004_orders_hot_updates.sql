-- The sink rewrites an order's row at every state change (three to four times per order).
-- orders_next_check_at_idx answered the reconciler's first question, which check_chains
-- answers now (check_chains_overdue_idx); nothing reads orders by next_check_at any more.
-- Kept, it made every one of those rewrites a non-HOT update (next_check_at and state are
-- in it), each adding an entry to every index of the table. Without it, a rewrite changes
-- no indexed column (provider_reference is fixed once the order is dispatched), so it can
-- stay on its page as a heap-only tuple when the page has room: the fill factor leaves
-- that room, and pruning on the page reclaims it as the order's older versions die.
DROP INDEX IF EXISTS orders_next_check_at_idx;
ALTER TABLE orders SET (fillfactor = 75);
