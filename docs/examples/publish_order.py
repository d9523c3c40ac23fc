"""Publish one order to orderflow and wait for its answer on orders.state.

The shop side of the contract in docs/shop-guide.md, runnable as is:

    pip install confluent-kafka
    python3 docs/examples/publish_order.py --brokers 127.0.0.1:9092 --account znet-demo

This publishes directly, for trying the pipeline and re-sending by hand. In production a
shop does not publish after saving an order (a crash in between loses the order): it
writes the event into its database's outbox table in the order's transaction and
Debezium publishes it (docs/outbox.md). Publishing the same order twice is harmless (same
order id, one placement), so a retry after an error is always safe.

To try the pipeline before writing a producer, `orderflow order submit ... --wait`
publishes one order by hand and follows it (docs/shop-guide.md, "A first order by hand").
"""

import argparse
import json
import sys
import time
import uuid
from datetime import datetime, timezone

from confluent_kafka import Consumer, Producer, TopicPartition


def order_created(order_id, account, oyun, kupur, phone, player):
    """An orders.created v1 event (topics/schemas/orders.created.v1.json)."""
    return {
        "schema_version": 1,
        "order_id": str(order_id),
        "tenant_id": "shop-1",
        "provider_account": account,
        "product": {"oyun": oyun, "kupur": kupur},
        "user_identifier": phone,
        "user_extra": player,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }


def publish(brokers, prefix, event):
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all"})
    errors = []
    producer.produce(
        prefix + "orders.created",
        key=event["order_id"],  # the key is the order id: one order, one partition
        value=json.dumps(event).encode("utf-8"),
        on_delivery=lambda err, _msg: err and errors.append(err),
    )
    if producer.flush(10) != 0 or errors:
        raise RuntimeError(f"the order was not published: {errors or 'timeout'}")


def wait_for_state(brokers, prefix, order_id, timeout_s):
    """Reads orders.state (keyed by order id) until this order is dispatched or final."""
    topic = prefix + "orders.state"
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"shop-example-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() or msg.key() != str(order_id).encode():
                continue
            state = json.loads(msg.value())
            if state["state"] in ("dispatched", "completed", "failed"):
                return state
    finally:
        consumer.close()
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--topic-prefix", default="")
    parser.add_argument("--account", default="znet-demo")
    parser.add_argument("--kupur", default="50")
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()

    order_id = uuid.uuid4()
    publish(args.brokers, args.topic_prefix,
            order_created(order_id, args.account, "412", args.kupur, "5551234567", "oyuncu#1"))
    print(f"published order {order_id}")
    state = wait_for_state(args.brokers, args.topic_prefix, order_id, args.timeout)
    if state is None:
        print("no answer yet; it will come (orders are never dropped)", file=sys.stderr)
        return 1
    failure = state.get("failure")
    print(f"state {state['state']}, provider reference {state.get('provider_reference')}"
          + (f", failed: {failure['reason']} {failure.get('code', '')} {failure['message']}" if failure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
