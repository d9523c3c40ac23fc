-- The transactional outbox of a shop's database (docs/outbox.md): the shop writes each
-- order's orders.created event into this table in the same transaction as the order, and
-- Debezium's PostgreSQL connector (ops/connect/) reads the inserts from the write-ahead
-- log and publishes them. Run it once per shop database, with psql, as the table's owner
-- (the slot needs the REPLICATION attribute or a superuser):
--
--   psql -v cdc_role=orderflow_cdc -v slot=orderflow_outbox -f docs/examples/outbox.sql
--
-- The server must run with wal_level = logical. Both variables may be left out; the
-- defaults are below. Running it again changes nothing.

\set ON_ERROR_STOP on
\if :{?slot}
\else
  \set slot orderflow_outbox
\endif
\if :{?cdc_role}
\else
  \set cdc_role orderflow_cdc
\endif

-- One row per event. Rows are only ever inserted by the shop; only inserts are published.
CREATE TABLE IF NOT EXISTS orderflow_outbox (
    -- The event's own id: Debezium puts it in the message's `id` header.
    id          uuid        PRIMARY KEY,
    -- Where the event goes, without the pipeline's topic prefix. Only orders.created is
    -- routed; anything else would be refused here rather than sent nowhere.
    topic       text        NOT NULL CHECK (topic = 'orders.created'),
    -- The message key: the event's order id (dispatch dead-letters an event whose key
    -- differs from its order_id, so the table refuses one here, in the shop's transaction).
    order_id    uuid        NOT NULL,
    -- The event exactly as the shop guide describes it (schema_version 1, ...): the
    -- message's value is this JSON's text.
    payload     jsonb       NOT NULL,
    -- An optional W3C trace context: becomes the message's `traceparent` header.
    traceparent text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orderflow_outbox_keyed CHECK ((payload ->> 'order_id')::uuid = order_id)
);
-- For the clean-up of old rows (docs/outbox.md: deletes are not published).
CREATE INDEX IF NOT EXISTS orderflow_outbox_created_at ON orderflow_outbox (created_at);

-- What logical decoding publishes: inserts into the outbox, nothing else.
SELECT 'CREATE PUBLICATION orderflow_outbox FOR TABLE orderflow_outbox WITH (publish = ''insert'')'
  WHERE NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'orderflow_outbox') \gexec

-- The connector's role reads the table (the REPLICATION attribute is given where the role
-- is made, docs/outbox.md).
SELECT format('GRANT SELECT ON orderflow_outbox TO %I', :'cdc_role')
  WHERE EXISTS (SELECT FROM pg_roles WHERE rolname = :'cdc_role') \gexec

-- The replication slot, made now rather than by the connector's first start: the server
-- keeps every insert from this moment on until the connector has confirmed it, so an
-- order saved before the connector ever ran is published all the same.
SELECT 'slot ' || slot_name || ' created'
  FROM pg_create_logical_replication_slot(:'slot', 'pgoutput')
  WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = :'slot');
