//! Publish one order to orderflow and wait for its answer on orders.state: the Rust
//! counterpart of docs/examples/publish_order.py (see docs/shop-guide.md).
//!
//! ```sh
//! cargo run --example publish_order -- 127.0.0.1:9092 znet-demo
//! ```

use orderflow::core::event::{OrderCreated, OrderStateEvent, SCHEMA_VERSION};
use orderflow::core::lifecycle::OrderState;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let account = args.next().unwrap_or_else(|| "znet-demo".into());

    let order = OrderCreated {
        schema_version: SCHEMA_VERSION,
        order_id: uuid::Uuid::new_v4(),
        tenant_id: "shop-1".into(),
        provider_account: account,
        product: BTreeMap::from([("oyun".into(), "412".into()), ("kupur".into(), "50".into())]),
        user_identifier: "5551234567".into(),
        user_extra: "oyuncu#1".into(),
        created_at: chrono::Utc::now(),
        deadline: None,
    };
    let key = order.order_id.to_string();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .create()?;
    producer
        .send(
            FutureRecord::to("orders.created")
                .key(&key)
                .payload(&order.encode()),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)?;
    println!("published order {key}");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("shop-example-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&["orders.state"])?;
    let answer = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let message = consumer.recv().await?;
            if message.key() != Some(key.as_bytes()) {
                continue;
            }
            let state: OrderStateEvent =
                serde_json::from_slice(message.payload().unwrap_or_default())?;
            if matches!(
                state.state,
                OrderState::Dispatched | OrderState::Completed | OrderState::Failed
            ) {
                return anyhow::Ok(state);
            }
        }
    })
    .await;
    match answer {
        Ok(state) => {
            let state = state?;
            println!(
                "state {}, provider reference {:?}, failure {:?}",
                state.state, state.provider_reference, state.failure
            );
        }
        Err(_) => println!("no answer within 60 s; it will come (orders are never dropped)"),
    }
    Ok(())
}
