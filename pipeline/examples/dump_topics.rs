//! Dump every message of some topics, in partition and offset order, as JSON lines
//! (`topic` without the prefix, `partition`, `offset`, `key`, `headers`, `value`): how
//! ops/previous-release-fixtures.sh captures what a release wrote, for the upgrade test
//! (pipeline/tests/upgrade.rs).
//!
//! ```sh
//! cargo run --example dump_topics -- BROKERS PREFIX TOPIC... > events.jsonl
//! ```

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::io::Write;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: dump_topics BROKERS PREFIX TOPIC...";
    let brokers = args.next().context(usage)?;
    let prefix = args.next().context(usage)?;
    let topics: Vec<String> = args.collect();
    anyhow::ensure!(!topics.is_empty(), usage);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "orderflow-dump-topics")
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(10);
    let mut out = std::io::stdout().lock();
    for topic in &topics {
        let full = format!("{prefix}{topic}");
        let metadata = consumer.fetch_metadata(Some(&full), timeout)?;
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len() as i32)
            .context("no such topic")?;
        for partition in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(&full, partition, timeout)?;
            if high <= low {
                continue;
            }
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&full, partition, Offset::Offset(low))?;
            consumer.assign(&list)?;
            let started = Instant::now();
            let mut next = low;
            while next < high {
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(60),
                    "{full} stalled"
                );
                let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                    continue;
                };
                let message = message?;
                next = message.offset() + 1;
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                let headers: Vec<(String, Option<String>)> = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), text(h.value)))
                            .collect()
                    })
                    .unwrap_or_default();
                let line = serde_json::json!({
                    "topic": topic,
                    "partition": partition,
                    "offset": message.offset(),
                    "key": text(message.key()),
                    "headers": headers,
                    "value": text(message.payload()),
                });
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}
