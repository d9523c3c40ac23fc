//! A keyed event with headers survives a trip through the real broker.

mod common;

use orderflow::kafka::headers;
use orderflow::kafka::topics::name;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use std::time::Duration;

#[tokio::test]
async fn a_keyed_event_with_headers_round_trips() {
    let kafka = common::kafka_with_topics("roundtrip").await;
    let topic = kafka.topic(name::ORDERS_CREATED);
    let producer = kafka.producer().unwrap();
    let key = uuid::Uuid::new_v4().to_string();
    let payload = r#"{"schema_version":1,"note":"ü ş ğ"}"#;
    producer
        .send(
            FutureRecord::to(&topic)
                .key(&key)
                .payload(payload)
                .headers(headers::build([
                    (headers::EVENT, "orders.created"),
                    (headers::SCHEMA_VERSION, "1"),
                ])),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", common::unique("g-roundtrip-"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("the event arrives within 30 s")
        .unwrap();

    assert_eq!(message.key(), Some(key.as_bytes()));
    assert_eq!(message.payload(), Some(payload.as_bytes()));
    let h = message.headers().expect("headers");
    assert_eq!(h.count(), 2);
    assert_eq!(headers::get(h, headers::EVENT), Some("orders.created"));
    assert_eq!(headers::get(h, headers::SCHEMA_VERSION), Some("1"));
}
