-- What keeps an unfinished order from moving, for `orderflow order show` and support: the
-- last failed attempt's reason (an account answering code 8, a timeout, a refusal) and
-- since when its attempts have failed without a break. Written only on the slow paths (a
-- placement backing off, a status check without a usable answer); a step that gets a usable
-- answer clears `failing_since`. Never holds a PIN or a credential (G5): the reasons are
-- the stages' own sentences, provider text filtered.
ALTER TABLE dispatch_claims ADD COLUMN last_error text, ADD COLUMN failing_since timestamptz;
ALTER TABLE poll_chains ADD COLUMN last_error text, ADD COLUMN failing_since timestamptz;
