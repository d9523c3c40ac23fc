-- Support finds a customer's orders by phone number (`orderflow order show --phone`)
-- without the number being stored: the dispatch stage writes, with the claim it makes
-- anyway (no extra statement), a keyed digest of the order's first user field (znet's
-- musteri_tel): `<key id>:<HMAC-SHA256 of its last ten digits, 128 bits in hex>` under
-- the first of ORDERFLOW_LOOKUP_KEYS (see pipeline/src/lookup.rs). Without the key the
-- digest gives nothing back, unlike a plain hash of a phone number, which has too few
-- possible values to hide it. NULL when no lookup key is configured, on claims made before
-- this column, and for events that could not be placed as given.
ALTER TABLE dispatch_claims ADD COLUMN user_digest text;

CREATE INDEX dispatch_claims_user_digest_idx ON dispatch_claims (user_digest)
    WHERE user_digest IS NOT NULL;
