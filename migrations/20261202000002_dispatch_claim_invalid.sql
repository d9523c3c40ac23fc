-- An order id whose first event could not be placed as given (its provider account is not
-- configured, its product is not one the provider sells) is claimed as `invalid` when the
-- stage answers it with `failed` (reason invalid). The claim makes that answer final for
-- the order id: a later event with the same id is a conflict (dead-lettered, never
-- placed), so a shop that refunded on the answer never sees the order bought after all,
-- and an order already claimed by a valid event is never answered `failed`.
ALTER TABLE dispatch_claims DROP CONSTRAINT dispatch_claims_phase_check;
ALTER TABLE dispatch_claims ADD CONSTRAINT dispatch_claims_phase_check
    CHECK (phase IN ('new', 'placing', 'placed', 'rejected', 'expired', 'invalid'));
