//! The stages' own counters, read from their `/metrics` before and after a run: per topic,
//! the messages a stage's consumer fetched from the broker against those it handled. More
//! fetched than handled means messages were fetched again (after a pause, a seek back or a
//! rebalance): the ratio is that amplification. A binary without the fetched counter shows
//! it as not available. Likewise the Kafka requests the stages' clients sent, by type, and
//! how many events each produce request carried; and per topic, the time its messages took
//! to reach a stage (transit) and to be handled there, as quantiles of the stages'
//! histograms over the run.

use std::collections::BTreeMap;
use std::time::Duration;

pub const FETCHED: &str = "orderflow_messages_fetched_total";
pub const HANDLED: &str = "orderflow_messages_handled_total";
pub const REQUESTS: &str = "orderflow_kafka_requests_total";
pub const WRITTEN: &str = "orderflow_events_written_total";
pub const TRANSIT: &str = "orderflow_message_transit_seconds";
pub const HANDLING: &str = "orderflow_message_handling_seconds";

/// `name=url`: a stage's metrics endpoint (`http://127.0.0.1:9464/metrics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((name, url)) if !name.is_empty() && url.starts_with("http") => Ok(Endpoint {
                name: name.to_owned(),
                url: url.to_owned(),
            }),
            _ => Err(format!(
                "{s:?} is not a metrics endpoint: give name=http://host:port/metrics"
            )),
        }
    }
}

/// Per topic, the sum of a counter's series over every label but `topic`.
pub type PerTopic = BTreeMap<String, f64>;

/// One scrape of every endpoint: per endpoint, the fetched counter (`None` when the
/// endpoint does not export it) and the handled counter. An endpoint that does not answer
/// is left out (with a warning).
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub stages: Vec<(String, Option<PerTopic>, PerTopic)>,
    /// Requests by type, summed over the endpoints that export them (`None`: none does).
    pub requests: Option<PerTopic>,
    /// Events the stages wrote, all topics.
    pub written: f64,
    /// Per topic, the transit and handling histograms, summed over the endpoints.
    pub transit: BTreeMap<String, Buckets>,
    pub handling: BTreeMap<String, Buckets>,
}

/// A histogram's cumulative buckets: (upper bound in seconds, observations at or below it),
/// by bound, `+Inf` last.
pub type Buckets = Vec<(f64, f64)>;

pub async fn scrape(endpoints: &[Endpoint]) -> Scrape {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client with default settings");
    let mut out = Scrape::default();
    for e in endpoints {
        let text = match client.get(&e.url).send().await {
            Ok(r) => r.text().await,
            Err(err) => Err(err),
        };
        match text {
            Ok(text) => {
                if let Some(requests) = counter_by(&text, REQUESTS, "request") {
                    let total = out.requests.get_or_insert_with(PerTopic::new);
                    for (request, n) in requests {
                        *total.entry(request).or_default() += n;
                    }
                }
                out.written += counter(&text, WRITTEN).map_or(0.0, |w| w.values().sum::<f64>());
                add_buckets(&mut out.transit, &text, TRANSIT);
                add_buckets(&mut out.handling, &text, HANDLING);
                out.stages.push((
                    e.name.clone(),
                    counter(&text, FETCHED),
                    counter(&text, HANDLED).unwrap_or_default(),
                ))
            }
            Err(err) => tracing::warn!(stage = %e.name, error = %err, "metrics not scraped"),
        }
    }
    out
}

/// The series of `metric` in a Prometheus text exposition, summed per `topic` label;
/// `None` when the metric does not appear at all.
pub fn counter(text: &str, metric: &str) -> Option<PerTopic> {
    counter_by(text, metric, "topic")
}

/// The series of `metric`, summed per value of the label `key`.
fn counter_by(text: &str, metric: &str, key: &str) -> Option<PerTopic> {
    let mut found = false;
    let mut per_topic = PerTopic::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(inner) => match inner.rsplit_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue, // another metric with this one's name as its prefix
        };
        let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        found = true;
        let topic = label(labels, key).unwrap_or_default();
        *per_topic.entry(topic).or_default() += value;
    }
    found.then_some(per_topic)
}

/// Adds the buckets of histogram `metric` in `text` to `into`, per topic.
fn add_buckets(into: &mut BTreeMap<String, Buckets>, text: &str, metric: &str) {
    let prefix = format!("{metric}_bucket{{");
    for line in text.lines() {
        let Some((labels, value)) = line
            .strip_prefix(&prefix)
            .and_then(|rest| rest.rsplit_once('}'))
        else {
            continue;
        };
        let bound = label(labels, "le").and_then(|le| match le.as_str() {
            "+Inf" => Some(f64::INFINITY),
            le => le.parse::<f64>().ok(),
        });
        let count = value.split_whitespace().next().and_then(|v| v.parse().ok());
        let (Some(bound), Some(count), Some(topic)) = (bound, count, label(labels, "topic")) else {
            continue;
        };
        let buckets = into.entry(topic).or_default();
        match buckets.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, n)) => *n += count,
            None => {
                buckets.push((bound, count));
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }
}

/// The `q` quantile (0 to 1) of what `buckets` counted, interpolated linearly within its
/// bucket as Prometheus' `histogram_quantile` does; `None` when nothing was counted. A
/// quantile in the `+Inf` bucket is given as the largest finite bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let share = (rank - below) / (count - below).max(f64::MIN_POSITIVE);
            return Some(lower + (bound - lower) * share);
        }
        (lower, below) = (bound, count);
    }
    Some(lower)
}

/// How long a topic's messages took, during the run: from their producer to a stage's
/// fetch (transit) and from being due there to durable (handling), p50 and p99 in ms.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Timing {
    pub topic: String,
    pub transit_p50_ms: Option<f64>,
    pub transit_p99_ms: Option<f64>,
    pub handled: f64,
    pub handling_p50_ms: Option<f64>,
    pub handling_p99_ms: Option<f64>,
}

/// The histograms' differences between two scrapes, per topic (the stage's prefix removed),
/// topics in name order; topics with nothing handled during the run are left out.
pub fn timings(before: &Scrape, after: &Scrape, prefix: &str) -> Vec<Timing> {
    let during = |b: &BTreeMap<String, Buckets>, a: &BTreeMap<String, Buckets>, topic: &str| {
        let earlier = b.get(topic);
        a.get(topic).map(|buckets| {
            buckets
                .iter()
                .map(|&(bound, n)| {
                    let was = earlier
                        .and_then(|e| e.iter().find(|(eb, _)| *eb == bound))
                        .map_or(0.0, |e| e.1);
                    (bound, n - was)
                })
                .collect::<Buckets>()
        })
    };
    let ms = |buckets: &Option<Buckets>, q: f64| {
        buckets
            .as_deref()
            .and_then(|b| quantile(b, q))
            .map(|s| s * 1000.0)
    };
    after
        .handling
        .keys()
        .filter_map(|topic| {
            let handling = during(&before.handling, &after.handling, topic);
            let transit = during(&before.transit, &after.transit, topic);
            let handled = handling
                .as_ref()
                .and_then(|b| b.last())
                .map_or(0.0, |l| l.1);
            (handled > 0.0).then(|| Timing {
                topic: topic.strip_prefix(prefix).unwrap_or(topic).to_owned(),
                transit_p50_ms: ms(&transit, 0.5),
                transit_p99_ms: ms(&transit, 0.99),
                handled,
                handling_p50_ms: ms(&handling, 0.5),
                handling_p99_ms: ms(&handling, 0.99),
            })
        })
        .collect()
}

/// The value of label `key` in `a="x",b="y"` (backslash escapes undone).
fn label(labels: &str, key: &str) -> Option<String> {
    let mut chars = labels.chars().peekable();
    loop {
        let name: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if name.is_empty() {
            return None;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => return None,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        if name.trim() == key {
            return Some(value);
        }
    }
}

/// Fetched against handled on one topic over the run, summed over the stages.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TopicCounts {
    pub topic: String,
    /// `None` when no stage exports the fetched counter (a binary without it).
    pub fetched: Option<f64>,
    pub handled: f64,
    /// fetched / handled.
    pub amplification: Option<f64>,
}

/// The differences between two scrapes, per topic (the stage's prefix removed from the
/// topic names), topics in name order.
pub fn compare(before: &Scrape, after: &Scrape, prefix: &str) -> Vec<TopicCounts> {
    let sum = |scrape: &Scrape, fetched: bool| -> Option<PerTopic> {
        let mut total: Option<PerTopic> = None;
        for (_, f, h) in &scrape.stages {
            let counts = if fetched { f.as_ref() } else { Some(h) };
            if let Some(counts) = counts {
                let total = total.get_or_insert_with(PerTopic::new);
                for (topic, n) in counts {
                    *total.entry(topic.clone()).or_default() += n;
                }
            }
        }
        total
    };
    let minus = |a: Option<PerTopic>, b: Option<PerTopic>| {
        a.map(|mut a| {
            for (topic, n) in b.unwrap_or_default() {
                *a.entry(topic).or_default() -= n;
            }
            a
        })
    };
    let handled = minus(sum(after, false), sum(before, false)).unwrap_or_default();
    let fetched = minus(sum(after, true), sum(before, true));
    let mut topics: Vec<&String> = handled.keys().collect();
    if let Some(f) = &fetched {
        topics.extend(f.keys().filter(|t| !handled.contains_key(*t)));
    }
    topics.sort();
    topics
        .into_iter()
        .filter(|t| !t.is_empty())
        .map(|topic| {
            let h = handled.get(topic).copied().unwrap_or(0.0);
            let f = fetched
                .as_ref()
                .map(|f| f.get(topic).copied().unwrap_or(0.0));
            TopicCounts {
                topic: topic.strip_prefix(prefix).unwrap_or(topic).to_owned(),
                fetched: f,
                handled: h,
                amplification: f.filter(|_| h > 0.0).map(|f| f / h),
            }
        })
        .collect()
}

/// The Kafka requests of one type the stages' clients sent during the run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RequestCount {
    pub request: String,
    pub count: f64,
    pub per_s: f64,
    pub per_order: f64,
}

/// The requests the stages sent during the run, most frequent first, and the events each
/// produce request carried on average.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Requests {
    pub by_type: Vec<RequestCount>,
    pub events_per_produce: Option<f64>,
}

/// The requests between two scrapes, `seconds` apart, for `orders` final orders; `None`
/// when no stage exports the counter (a binary without it).
pub fn requests(before: &Scrape, after: &Scrape, seconds: f64, orders: usize) -> Option<Requests> {
    let after_counts = after.requests.as_ref()?;
    let empty = PerTopic::new();
    let before_counts = before.requests.as_ref().unwrap_or(&empty);
    let mut by_type: Vec<RequestCount> = after_counts
        .iter()
        .map(|(request, n)| {
            let count = n - before_counts.get(request).copied().unwrap_or(0.0);
            RequestCount {
                request: request.clone(),
                count,
                per_s: count / seconds.max(f64::MIN_POSITIVE),
                per_order: count / orders.max(1) as f64,
            }
        })
        .filter(|r| r.count > 0.0)
        .collect();
    by_type.sort_by(|a, b| b.count.total_cmp(&a.count));
    let produce = by_type
        .iter()
        .find(|r| r.request == "Produce")
        .map(|r| r.count);
    Some(Requests {
        events_per_produce: produce.map(|p| (after.written - before.written) / p),
        by_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP orderflow_messages_handled Messages handled.
# TYPE orderflow_messages_handled counter
orderflow_messages_handled_total{topic="p.orders.created"} 100
orderflow_messages_handled_total{topic="p.orders.state",outcome="ok"} 7
orderflow_messages_handled_total{outcome="x",topic="p.orders.state"} 3
orderflow_messages_handled_total_extra{topic="p.orders.state"} 1000
orderflow_messages_fetched_total{topic="p.orders.created",partition="0"} 150
orderflow_messages_fetched_total{topic="p.orders.created",partition="1"} 50
"#;

    #[test]
    fn counters_are_summed_per_topic() {
        let handled = counter(TEXT, HANDLED).unwrap();
        assert_eq!(handled["p.orders.created"], 100.0);
        assert_eq!(handled["p.orders.state"], 10.0);
        assert_eq!(counter(TEXT, FETCHED).unwrap()["p.orders.created"], 200.0);
        assert_eq!(counter("# nothing\n", FETCHED), None);
        assert_eq!(
            label(r#"a="x\"y",topic="t""#, "topic").as_deref(),
            Some("t")
        );
        assert_eq!(label(r#"a="x\"y",topic="t""#, "a").as_deref(), Some("x\"y"));
    }

    #[test]
    fn amplification_is_fetched_over_handled_during_the_run() {
        let stage = |text: &str| {
            (
                "dispatch".to_owned(),
                counter(text, FETCHED),
                counter(text, HANDLED).unwrap_or_default(),
            )
        };
        let before = Scrape {
            stages: vec![stage(
                "orderflow_messages_handled_total{topic=\"p.orders.created\"} 10\norderflow_messages_fetched_total{topic=\"p.orders.created\"} 10\n",
            )],
            ..Scrape::default()
        };
        let after = Scrape {
            stages: vec![stage(TEXT)],
            ..Scrape::default()
        };
        let rows = compare(&before, &after, "p.");
        assert_eq!(rows[0].topic, "orders.created");
        assert_eq!(rows[0].fetched, Some(190.0));
        assert_eq!(rows[0].handled, 90.0);
        assert_eq!(rows[0].amplification, Some(190.0 / 90.0));
        // Without the fetched counter (an older binary): not available.
        let old = Scrape {
            stages: vec![("sink".into(), None, counter(TEXT, HANDLED).unwrap())],
            ..Scrape::default()
        };
        let rows = compare(&Scrape::default(), &old, "p.");
        assert_eq!(rows[1].topic, "orders.state");
        assert_eq!((rows[1].fetched, rows[1].amplification), (None, None));
    }

    #[test]
    fn timings_are_quantiles_of_the_histograms_over_the_run() {
        // Handling: 10 messages before the run; during it 100 more: 50 within 10 ms, 40
        // within 20 ms, 10 within 40 ms. Transit: nothing during the run.
        let scraped = |within: [u32; 3]| {
            let [a, b, c] = within;
            let text = format!(
                "orderflow_message_handling_seconds_bucket{{le=\"0.01\",topic=\"p.orders.created\"}} {a}\n\
                 orderflow_message_handling_seconds_bucket{{le=\"0.02\",topic=\"p.orders.created\"}} {b}\n\
                 orderflow_message_handling_seconds_bucket{{le=\"0.04\",topic=\"p.orders.created\"}} {c}\n\
                 orderflow_message_handling_seconds_bucket{{le=\"+Inf\",topic=\"p.orders.created\"}} {c}\n\
                 orderflow_message_transit_seconds_bucket{{le=\"0.01\",topic=\"p.orders.created\"}} 3\n\
                 orderflow_message_transit_seconds_bucket{{le=\"+Inf\",topic=\"p.orders.created\"}} 3\n"
            );
            let mut scrape = Scrape::default();
            add_buckets(&mut scrape.handling, &text, HANDLING);
            add_buckets(&mut scrape.transit, &text, TRANSIT);
            // A second stage on the topic adds to the same buckets.
            add_buckets(&mut scrape.handling, "orderflow_message_handling_seconds_bucket{topic=\"p.orders.created\",le=\"+Inf\"} 0\n", HANDLING);
            scrape
        };
        let (before, after) = (scraped([10, 10, 10]), scraped([60, 100, 110]));
        let t = &timings(&before, &after, "p.")[0];
        assert_eq!((t.topic.as_str(), t.handled), ("orders.created", 100.0));
        // The 50th of 100 is the last of the first bucket; the 99th lies 9/10 into the third.
        assert_eq!(t.handling_p50_ms, Some(10.0));
        assert!((t.handling_p99_ms.unwrap() - 38.0).abs() < 1e-9);
        assert_eq!((t.transit_p50_ms, t.transit_p99_ms), (None, None));
        assert_eq!(
            quantile(&[(0.01, 0.0), (f64::INFINITY, 4.0)], 0.5),
            Some(0.01)
        );
        assert!(
            timings(&after, &after, "p.").is_empty(),
            "nothing during the run"
        );
    }

    #[test]
    fn requests_are_counted_by_type_over_the_run() {
        // One stage's exposition: its produce and fetch totals, two heartbeats.
        let scraped = |produce: u32, fetch: u32, written: f64| {
            let text = format!(
                "orderflow_kafka_requests_total{{client=\"producer\",request=\"Produce\"}} {produce}\n\
                 orderflow_kafka_requests_total{{client=\"consumer\",request=\"Fetch\"}} {fetch}\n\
                 orderflow_kafka_requests_total{{client=\"consumer\",request=\"Heartbeat\"}} 2\n"
            );
            Scrape {
                requests: counter_by(&text, REQUESTS, "request"),
                written,
                ..Scrape::default()
            }
        };
        let (before, after) = (scraped(30, 12, 40.0), scraped(130, 62, 340.0));
        let r = requests(&before, &after, 10.0, 50).unwrap();
        assert_eq!(r.by_type.len(), 2, "a type with nothing sent is left out");
        assert_eq!(r.by_type[0].request, "Produce");
        assert_eq!((r.by_type[0].per_s, r.by_type[0].per_order), (10.0, 2.0));
        assert_eq!(r.by_type[1].count, 50.0);
        assert_eq!(r.events_per_produce, Some(3.0));
        assert_eq!(requests(&before, &Scrape::default(), 10.0, 50), None);
    }
}
