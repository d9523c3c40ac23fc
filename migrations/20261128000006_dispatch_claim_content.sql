-- What the first event of an order asked for (OrderCreated::content_digest: SHA-256 of
-- tenant, provider account, product and user fields), fixed with the claim. A later event
-- with the same order id and another digest is a conflicting duplicate: the first wins and
-- the later one goes to orders.dlq (reason conflicting_duplicate). An exact re-send has the
-- same digest and is answered with the first one's outcome. NULL on claims made before
-- this column existed: those are not compared.
ALTER TABLE dispatch_claims ADD COLUMN content_digest text;
