-- The orders.state event that set each row, as it came. The sink republishes it when an
-- older event for the order arrives later on the compacted topic, so that the topic's last
-- record per order is always its newest state and a replay rebuilds the same table.
ALTER TABLE orders ADD COLUMN state_event jsonb;
