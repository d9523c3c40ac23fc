//! Kafka at the edge: client settings, the connection check every command starts with,
//! topic specs and their application, headers, and the dead-letter queue. Any further
//! librdkafka property (SASL, SSL, timeouts) comes from configuration ([`properties`]).
//!
//! librdkafka reconnects by itself and never reports "wrong address" as an error, so every
//! command first asks the cluster for its metadata with a deadline and turns a failure into
//! one sentence (see [`KafkaConfig::check_reachable`]). A stage waits out a cluster that does
//! not answer, up to its patience ([`KafkaConfig::with_patience`], [`crate::outage`]); a
//! cluster that refuses the client (credentials, authorization: [`fault_of`]) or lacks a
//! topic ends it at once.

pub mod dlq;
pub mod emit;
pub mod headers;
pub mod lag;
pub mod properties;
pub mod requests;
pub mod stage;
pub mod topics;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::core::outage::{Fault, Outage, Verdict};
use crate::secret::Secret;
use crate::shutdown::Shutdown;
use properties::{PropertiesError, Property};
use std::time::Instant;

/// How long a stage's Kafka traffic may wait to be gathered into fewer, fuller requests.
/// A consumer's fetch names every partition it owns (librdkafka has no incremental fetch
/// sessions; the poll stage owns seven topics of 24 partitions), and librdkafka sends one
/// partition per produce request (its issue #1700). On a small cluster the broker's CPU,
/// and the clients', follow the number of requests and wake-ups more than the number of
/// records: at 1,000 orders/s a broker that answered every fetch as soon as one record
/// arrived, and producers that sent each record nearly alone, kept the 2-core benchmark
/// machine 95 % busy (README, "Traffic gathered by pace").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Someone waits for what follows (dispatch: a shop waits for `dispatched`): the broker
    /// holds a fetch at most 5 ms and the producer lingers 1 ms. Each hop adds a few
    /// milliseconds next to the provider's answer, and a stage fetches at most about 200
    /// times a second however fast records arrive. A batch's outputs are handed to the
    /// producer together, so they share requests without a long linger: at 1,000 orders/s
    /// dispatch's 5 ms cost 5–7 ms of created→dispatched at p50, against 1 ms, and saved
    /// 0.1 produce requests per order and no measurable CPU (README, "Dispatch's producer
    /// lingering 1 ms").
    Prompt,
    /// What follows is due seconds later at the earliest (poll: a check is due 30 s or more
    /// after its message in production) or only fills a table (the sink): the broker holds
    /// a fetch until it has 1 MB or 100 ms passed, and the producer lingers 10 ms so that
    /// a batch's outputs to one partition share a request more often (poll's batches also
    /// linger longer: `BATCH_LINGER_MS` in `poll/config.rs`). The producer's linger stays short: a check
    /// holds its in-flight place until its outputs are acknowledged, so a longer one lowers
    /// what a process can carry (at `max` rate poll fell behind with 25 ms in one run of
    /// two, and with 100 ms).
    Patient,
}

/// `fetch.min.bytes` of every stage: what the broker waits for before it answers a fetch;
/// in practice never reached by a caught-up consumer, so its pace's `fetch.wait.max.ms`
/// decides when the fetch is answered.
pub(crate) const FETCH_MIN_BYTES: &str = "1048576";

impl Pace {
    /// `fetch.wait.max.ms`: how long the broker may hold a fetch for more records.
    pub(crate) fn fetch_wait_max_ms(self) -> &'static str {
        match self {
            Pace::Prompt => "5",
            Pace::Patient => "100",
        }
    }

    /// `linger.ms` of the stage's producer.
    fn linger_ms(self) -> &'static str {
        match self {
            Pace::Prompt => "1",
            Pace::Patient => "10",
        }
    }
}

/// How to reach the cluster and which names the topics have there.
#[derive(Clone, Debug, clap::Args)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers, comma-separated host:port pairs.
    #[arg(
        long = "kafka-brokers",
        env = "ORDERFLOW_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,

    /// Prefix put in front of every topic name, to keep environments (or tests) apart on
    /// one cluster. Example: `staging.`.
    #[arg(
        long = "topic-prefix",
        env = "ORDERFLOW_TOPIC_PREFIX",
        default_value = ""
    )]
    pub topic_prefix: String,

    /// How long to wait for the cluster to answer before giving up at startup.
    #[arg(
        id = "kafka_connect_timeout_ms",
        long = "kafka-connect-timeout-ms",
        env = "ORDERFLOW_KAFKA_CONNECT_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub connect_timeout_ms: u64,

    /// A librdkafka property for every client, `key=value` (e.g. `socket.timeout.ms=30000`);
    /// repeat the flag, or separate entries by commas or newlines. Values never appear in
    /// logs; put secrets and values containing commas in --kafka-properties-file.
    /// See docs/managed-kafka.md.
    #[arg(
        id = "kafka_property",
        long = "kafka-property",
        env = "ORDERFLOW_KAFKA_PROPERTIES",
        value_name = "KEY=VALUE",
        hide_env_values = true,
        value_parser = secret_arg
    )]
    pub properties: Vec<Secret>,

    /// A file of librdkafka properties, one `key=value` per line, `#` comments (the place
    /// for sasl.password and similar secrets); entries of --kafka-property override it.
    #[arg(
        id = "kafka_properties_file",
        long = "kafka-properties-file",
        env = "ORDERFLOW_KAFKA_PROPERTIES_FILE",
        value_name = "PATH"
    )]
    pub properties_file: Option<PathBuf>,

    /// The properties above, read, checked and kept once per process (clones share them).
    #[arg(skip)]
    loaded: Arc<OnceLock<properties::Resolved>>,

    /// A stage's patience with a cluster that does not answer at start-up, and the signal
    /// that ends the wait early ([`KafkaConfig::with_patience`]); none: fail at once.
    #[arg(skip)]
    patience: Option<Box<(Duration, Shutdown)>>,
}

fn secret_arg(value: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(value))
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot reach the Kafka cluster at {brokers} within {waited:?} ({reason})")]
    Unreachable {
        brokers: String,
        waited: Duration,
        reason: String,
    },
    #[error("TLS with the Kafka cluster at {brokers} failed ({reason}); check ssl.ca.location (the CA that signed the brokers' certificates) and that the certificates name the hosts of --kafka-brokers")]
    Tls { brokers: String, reason: String },
    #[error("the Kafka cluster at {brokers} refused the SASL login ({reason}); check sasl.mechanisms, sasl.username and sasl.password")]
    LoginRefused { brokers: String, reason: String },
    #[error("invalid Kafka client setting ({})", properties::redacted(.0))]
    Client(KafkaError),
    #[error(transparent)]
    Properties(#[from] PropertiesError),
    #[error("the Kafka cluster at {brokers} has no topic {missing}; create the topics with `orderflow topics apply`, run with the same ORDERFLOW_CHECK_TIERS as the poll stage so that every tier gets its topic")]
    MissingTopics { brokers: String, missing: String },
    #[error("cannot reach the Kafka cluster at {brokers}: it has not answered for {} s, longer than the stage's patience (ORDERFLOW_OUTAGE_PATIENCE) ({reason})", .waited.as_secs())]
    OutlastedPatience {
        brokers: String,
        waited: Duration,
        reason: String,
    },
    #[error("the Kafka cluster at {brokers} refused this client ({reason}); check the credentials and ACLs in the Kafka properties")]
    Refused { brokers: String, reason: String },
    #[error("asked to stop while waiting for the Kafka cluster at {brokers}")]
    StoppedWaiting { brokers: String },
}

/// Whether waiting can cure a librdkafka error: the cluster refusing this client
/// (authentication, authorization, a SASL mechanism it does not offer) cannot; a TLS
/// handshake failing is waited out (brokers coming up fail a few), up to the patience; everything an outage, a leader election or a coordinator moving brings
/// (transport failures, all brokers down, timeouts, not leader, coordinator loading) can.
pub fn fault_of(code: RDKafkaErrorCode) -> Fault {
    use RDKafkaErrorCode as C;
    match code {
        C::Authentication
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::DelegationTokenAuthorizationFailed => Fault::Fatal,
        _ => Fault::Transient,
    }
}

/// The first error librdkafka reported that waiting cannot cure ([`fault_of`]), in this
/// process: its clients report them through [`Context::error`], not to the call that met them.
static REFUSAL: OnceLock<String> = OnceLock::new();

/// Why the cluster refuses this process's clients, if it did.
pub fn refusal() -> Option<String> {
    REFUSAL.get().cloned()
}

impl KafkaConfig {
    pub fn for_tests(brokers: &str, topic_prefix: &str) -> Self {
        KafkaConfig {
            brokers: brokers.to_owned(),
            topic_prefix: topic_prefix.to_owned(),
            connect_timeout_ms: 10_000,
            properties: Vec::new(),
            properties_file: None,
            loaded: Arc::default(),
            patience: None,
        }
    }

    /// These settings for a stage: at start-up ([`KafkaConfig::check_topics_off_runtime`])
    /// a cluster that does not answer is waited for, up to `patience` or until `shutdown`.
    pub fn with_patience(mut self, patience: Duration, shutdown: Shutdown) -> Self {
        self.patience = Some(Box::new((patience, shutdown)));
        self
    }

    /// A client for metadata requests only (the readiness watcher's).
    pub fn probe(&self) -> Result<BaseConsumer<Context>, KafkaSetupError> {
        self.properties()?;
        self.client_config()
            .create_with_context(Context::default())
            .map_err(KafkaSetupError::Client)
    }

    /// The configured librdkafka properties (file first, then flag or environment entries),
    /// each with where it came from; read and checked by librdkafka on first use.
    pub fn properties(&self) -> Result<&[(Property, String)], PropertiesError> {
        self.loaded
            .get_or_init(|| {
                let mut all = match &self.properties_file {
                    Some(path) => {
                        let text =
                            std::fs::read_to_string(path).map_err(|e| PropertiesError::File {
                                path: path.display().to_string(),
                                reason: e.to_string(),
                            })?;
                        properties::parse_file(&text, path)?
                    }
                    None => Vec::new(),
                };
                all.extend(properties::parse_list(&self.properties)?);
                properties::validate(&all)?;
                Ok(all)
            })
            .as_deref()
            .map_err(Clone::clone)
    }

    /// Sets the configured properties on `config`, last, so they override orderflow's
    /// defaults (the settings its guarantees depend on are refused when read).
    pub fn apply_properties(&self, config: &mut ClientConfig) -> Result<(), KafkaSetupError> {
        properties::apply(config, self.properties()?);
        Ok(())
    }

    /// The full name of a topic from `topics/`.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{}", self.topic_prefix, name)
    }

    /// A stage's consumer group: the one set explicitly, or the stage's default name under
    /// the topic prefix, so that two environments sharing a cluster by prefix never share
    /// a group by accident.
    pub fn group(&self, explicit: Option<&str>, default: &str) -> String {
        match explicit {
            Some(group) => group.to_owned(),
            None => self.topic(default),
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Settings shared by every client, the configured properties last. Every command
    /// checks the properties first ([`KafkaConfig::check_reachable`]); should a client be
    /// built without that check and the properties be unusable, a setting librdkafka
    /// refuses is left in place so that no client starts without them (say, without SASL).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "orderflow")
            .set_log_level(RDKafkaLogLevel::Warning);
        if self.apply_properties(&mut config).is_err() {
            config.set(
                "orderflow.kafka.properties.are.invalid",
                "see the startup error",
            );
        }
        config
    }

    /// A producer that never reorders or duplicates within a partition and only reports
    /// success once every in-sync replica has the record.
    /// Its records linger as a [`Pace::Prompt`] stage's.
    pub fn producer(&self) -> Result<FutureProducer<Context>, KafkaSetupError> {
        self.producer_with(Pace::Prompt, Context::default())
    }

    /// [`KafkaConfig::producer`] lingering as `pace` says, with `context`, a clone of which
    /// can count its requests later ([`Context::count_requests`]).
    pub fn producer_with(
        &self,
        pace: Pace,
        context: Context,
    ) -> Result<FutureProducer<Context>, KafkaSetupError> {
        self.producer_lingering(pace.linger_ms(), context)
    }

    /// [`KafkaConfig::producer`] whose records linger `linger_ms` (a stage's: its
    /// [`Pace`]; the benchmark's load: a shop's producer).
    pub fn producer_lingering(
        &self,
        linger_ms: &str,
        context: Context,
    ) -> Result<FutureProducer<Context>, KafkaSetupError> {
        let mut config = self.client_config();
        config
            // G2: a record is on every in-sync replica, once, before a stage moves on.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // A stage produces a batch's outputs together and awaits them together; the
            // linger lets them (and other batches' outputs) share produce requests: 1 ms
            // where someone waits, 10 ms where nobody does ([`Pace`]).
            .set("linger.ms", linger_ms)
            // Up to 10,000 records per request (librdkafka's default, named here), so that
            // a batch's outputs to one partition share requests up to the size below.
            .set("batch.num.messages", "10000")
            // But at most 32 KB of them (before compression; librdkafka's default is 1 MB):
            // what the stages that pause partitions fetch of one partition at a time
            // (`stage::Prefetch::Small`). A record batch larger than a fetch's share of its
            // partition comes back only when that partition is the fetch's first, one batch
            // a fetch: under load poll's batches grew past 32 KB and the stages reading
            // them fell up to a minute behind.
            .set("batch.size", "32768")
            // JSON events compress well, and lz4 costs little CPU.
            .set("compression.type", "lz4")
            // Its requests, counted once a stage asks (`Context::count_requests`).
            .set("statistics.interval.ms", "5000");
        // Again, so a configured linger.ms or compression.type wins over the defaults.
        self.apply_properties(&mut config)?;
        config
            .create_with_context(context)
            .map_err(KafkaSetupError::Client)
    }

    /// Fails with one sentence if the cluster does not answer in time or lacks one of
    /// `topics` (full names). A consumer subscribed to a topic that does not exist yet would
    /// only notice it at its next metadata refresh, minutes later; a topic created a moment
    /// ago is waited for, up to the connect timeout.
    pub fn check_topics(&self, topics: &[String]) -> Result<(), KafkaSetupError> {
        self.check_reachable()?;
        let probe: BaseConsumer<Context> = self
            .client_config()
            .create_with_context(Context::default())
            .map_err(KafkaSetupError::Client)?;
        let give_up = std::time::Instant::now() + self.connect_timeout();
        loop {
            let mut missing = Vec::new();
            for topic in topics {
                let known = probe
                    .fetch_metadata(Some(topic), self.connect_timeout())
                    .ok()
                    .is_some_and(|m| {
                        m.topics().iter().any(|t| {
                            t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                        })
                    });
                if !known {
                    missing.push(topic.as_str());
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= give_up {
                return Err(KafkaSetupError::MissingTopics {
                    brokers: self.brokers.clone(),
                    missing: missing.join(", "),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`KafkaConfig::check_topics`] on a blocking thread, for async callers. With a
    /// stage's patience ([`KafkaConfig::with_patience`]), a cluster that does not answer is
    /// asked again (1 s, doubling to 10 s) until it does or the patience is spent; a
    /// missing topic or a refusal ends the wait at once.
    pub async fn check_topics_off_runtime(
        &self,
        topics: Vec<String>,
    ) -> Result<(), KafkaSetupError> {
        let backoff = crate::core::backoff::Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        let mut outage = Outage::default();
        let mut attempt = 0;
        loop {
            let (kafka, wanted) = (self.clone(), topics.clone());
            let checked = tokio::task::spawn_blocking(move || kafka.check_topics(&wanted))
                .await
                .expect("the topic check does not panic");
            let Some((patience, shutdown)) = self.patience.as_deref() else {
                return checked_without_patience(checked);
            };
            let reason = match checked {
                Ok(()) => {
                    if let Some(down) = outage.answered(Instant::now()) {
                        tracing::info!(waited_s = down.as_secs(), "the Kafka cluster answers");
                    }
                    return Ok(());
                }
                Err(KafkaSetupError::Unreachable { reason, .. }) => reason,
                Err(other) => return Err(other),
            };
            if let Some(refused) = refusal() {
                return Err(KafkaSetupError::Refused {
                    brokers: self.brokers.clone(),
                    reason: refused,
                });
            }
            match outage.failed(Fault::Transient, Instant::now(), *patience) {
                Verdict::GiveUp { down } => {
                    return Err(KafkaSetupError::OutlastedPatience {
                        brokers: self.brokers.clone(),
                        waited: down,
                        reason,
                    })
                }
                Verdict::Wait { down, left } => tracing::warn!(
                    brokers = %self.brokers,
                    %reason,
                    down_s = down.as_secs(),
                    patience_left_s = left.as_secs(),
                    "the Kafka cluster does not answer; waiting for it (not ready)"
                ),
            }
            let delay = backoff.delay(attempt, crate::core::backoff::random_fraction());
            if shutdown.clone().sleep(delay).await.is_err() {
                return Err(KafkaSetupError::StoppedWaiting {
                    brokers: self.brokers.clone(),
                });
            }
            attempt += 1;
        }
    }

    /// Fails with one sentence if the cluster does not answer a metadata request in time,
    /// or at once if it cannot be spoken to: a failed TLS handshake (a wrong
    /// `ssl.ca.location`, a certificate without the broker's name) or a refused SASL login.
    /// librdkafka keeps retrying those as it would a broker that is down, and says why
    /// only to the client's error callback and log, so the probe asks in short steps and
    /// looks at what its context heard in between. Every other reason it heard (a name
    /// that does not resolve, a refused connection) goes into the timeout's sentence.
    pub fn check_reachable(&self) -> Result<(), KafkaSetupError> {
        self.properties()?;
        let probe: BaseConsumer<ProbeContext> = self
            .client_config()
            .create_with_context(ProbeContext::default())
            .map_err(KafkaSetupError::Client)?;
        let waited = self.connect_timeout();
        let give_up = std::time::Instant::now() + waited;
        loop {
            let left = give_up.saturating_duration_since(std::time::Instant::now());
            let error = match probe.fetch_metadata(None, left.min(Duration::from_millis(500))) {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            // Serves the client's queued errors (the context's callback below).
            let _ = probe.poll(Duration::ZERO);
            let brokers = self.brokers.clone();
            let reason = match probe.context().seen() {
                Some(Seen::Tls(reason)) => return Err(KafkaSetupError::Tls { brokers, reason }),
                Some(Seen::Sasl(reason)) => {
                    return Err(KafkaSetupError::LoginRefused { brokers, reason })
                }
                Some(Seen::Transport(reason)) => reason,
                None => match error.rdkafka_error_code() {
                    Some(code) => code.to_string(),
                    None => error.to_string(),
                },
            };
            if std::time::Instant::now() >= give_up {
                return Err(KafkaSetupError::Unreachable {
                    brokers,
                    waited,
                    reason,
                });
            }
        }
    }
}

/// Why the startup probe's connections failed, by librdkafka's words: the latest reason,
/// a TLS or SASL failure outranking the disconnects around it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Tls(String),
    Sasl(String),
    /// The connection failed otherwise (refused, closed: a plaintext client at a TLS
    /// listener ends here, and librdkafka's text says so).
    Transport(String),
}

/// The startup probe's client context: logs as [`Context`] does, except what it keeps for
/// the probe's sentence (why connections failed), which it logs at debug level only.
#[derive(Default)]
struct ProbeContext {
    seen: std::sync::Mutex<Option<Seen>>,
}

impl ProbeContext {
    fn seen(&self) -> Option<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps `seen`, except that a TLS or SASL failure outranks the disconnects around it.
    fn record(&self, seen: Seen) {
        let mut slot = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let decided = matches!(&*slot, Some(Seen::Tls(_) | Seen::Sasl(_)));
        if !(decided && matches!(seen, Seen::Transport(_))) {
            *slot = Some(seen);
        }
    }
}

impl Seen {
    /// A connection failure by librdkafka's words (its `FAIL` log lines; the error
    /// callback does not hear of every one, identical errors are suppressed there).
    fn of_text(reason: &str) -> Seen {
        let text = reason_text(reason);
        if text.contains("SSL handshake failed") || text.contains("certificate verify failed") {
            Seen::Tls(text)
        } else if text.contains("SASL authentication error") {
            Seen::Sasl(text)
        } else {
            Seen::Transport(text)
        }
    }
}

/// librdkafka's reason without the broker it names first (`sasl_ssl://host:port/id: `,
/// the sentence names the brokers) and its `(after 5ms in state X)` tail.
fn reason_text(reason: &str) -> String {
    // Log lines carry the thread's name first (`[thrd:sasl_ssl://host:port/id]: `); a
    // broker is `host:port/id`, with the protocol in front unless it is plaintext.
    let mut reason = reason;
    while let Some((broker, rest)) = reason.split_once(": ") {
        if broker.contains(char::is_whitespace) || !broker.contains('/') {
            break;
        }
        reason = rest;
    }
    let reason = match reason.rfind(" (after ") {
        Some(at) if reason.ends_with(')') => &reason[..at],
        _ => reason,
    };
    reason.replace(char::is_control, " ")
}

impl ClientContext for ProbeContext {
    /// A failed connection (facility `FAIL`) is logged at debug and kept: the probe's
    /// sentence reports it.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if facility != "FAIL" {
            return log_line(level, facility, message);
        }
        tracing::debug!(target: "librdkafka", facility, "{message}");
        self.record(Seen::of_text(message));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let seen = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::SSL) => Some(Seen::Tls(reason_text(reason))),
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                Some(Seen::Sasl(reason_text(reason)))
            }
            // Says nothing about why.
            Some(RDKafkaErrorCode::AllBrokersDown) => None,
            // A name that does not resolve, a refused or broken connection.
            _ => Some(Seen::of_text(reason)),
        };
        // What matters is in the probe's sentence; logged at debug only, so the sentence
        // is what the operator reads.
        tracing::debug!(target: "librdkafka", %error, "{reason}");
        if let Some(seen) = seen {
            self.record(seen);
        }
    }
}

impl ConsumerContext for ProbeContext {}

/// Without a patience, the check's answer as it is (a refusal named as such).
fn checked_without_patience(checked: Result<(), KafkaSetupError>) -> Result<(), KafkaSetupError> {
    match (checked, refusal()) {
        (Err(KafkaSetupError::Unreachable { brokers, .. }), Some(reason)) => {
            Err(KafkaSetupError::Refused { brokers, reason })
        }
        (checked, _) => checked,
    }
}

/// The client context of every orderflow Kafka client: librdkafka's own log lines go to
/// `tracing` under the `librdkafka` target, connection churn at debug level (it is
/// reported by the startup check and by readiness, and librdkafka recovers by itself).
/// A stage's producer also counts its requests ([`Context::count_requests`]).
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// Shared by the context's clones: the one given to librdkafka and the one kept to set.
    requests: Arc<OnceLock<requests::RequestCounter>>,
}

impl Context {
    /// Counts the requests of the client made with this context (or a clone of it) from its
    /// statistics from now on (a producer made with [`KafkaConfig::producer_with`] reports
    /// them every 5 s). The first counter set stays.
    pub fn count_requests(&self, counter: requests::RequestCounter) {
        let _ = self.requests.set(counter);
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(requests) = self.requests.get() {
            requests.record(&statistics);
        }
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_line(level, facility, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        report_error(error, reason)
    }
}

/// How every orderflow client logs a librdkafka log line: to `tracing` under the
/// `librdkafka` target, at the line's level.
pub(crate) fn log_line(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// How every orderflow client takes a librdkafka error: a refusal (credentials,
/// authorization) is kept for the startup sentence; connection churn is logged at debug.
pub(crate) fn report_error(error: KafkaError, reason: &str) {
    if let Some(code) = error.rdkafka_error_code() {
        if fault_of(code) == Fault::Fatal {
            let _ = REFUSAL.set(format!("{error}: {}", crate::secret::scrub(reason)));
        }
    }
    let churn = matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
    );
    if churn {
        tracing::debug!(target: "librdkafka", %error, "{reason}");
    } else {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

impl ConsumerContext for Context {}

#[cfg(test)]
mod tests {
    use super::{fault_of, reason_text, KafkaConfig, Seen};
    use crate::core::outage::Fault;
    use rdkafka::error::RDKafkaErrorCode as C;

    #[test]
    fn librdkafka_reasons_lose_the_broker_prefix_and_the_state_tail() {
        assert_eq!(
            reason_text("sasl_ssl://127.0.0.1:9392/bootstrap: SASL authentication error: Authentication failed (after 12ms in state AUTH_REQ)"),
            "SASL authentication error: Authentication failed"
        );
        assert_eq!(
            reason_text("[thrd:sasl_ssl://127.0.0.1:9392/bootstrap]: sasl_ssl://127.0.0.1:9392/bootstrap: Connect to ipv4#127.0.0.1:9392 failed: Connection refused (after 0ms in state CONNECT)"),
            "Connect to ipv4#127.0.0.1:9392 failed: Connection refused"
        );
        assert_eq!(
            reason_text("ssl://b-1.example:9094/1: SSL handshake failed: certificate verify failed (after 3ms in state SSL_HANDSHAKE, 2 identical error(s) suppressed)"),
            "SSL handshake failed: certificate verify failed"
        );
        assert_eq!(
            reason_text("[thrd:127.0.0.1:9392/bootstrap]: 127.0.0.1:9392/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 1ms in state APIVERSION_QUERY)"),
            "Disconnected: connection closed by peer: receive 0 after POLLIN"
        );
        assert!(matches!(
            Seen::of_text("[thrd:sasl_ssl://h:9/bootstrap]: sasl_ssl://h:9/bootstrap: error:0A000086:SSL routines::certificate verify failed (after 23ms in state SSL_HANDSHAKE)"),
            Seen::Tls(t) if t == "error:0A000086:SSL routines::certificate verify failed"
        ));
        assert!(matches!(
            Seen::of_text("sasl_ssl://h:9/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256 (after 5ms in state AUTH_REQ)"),
            Seen::Sasl(_)
        ));
        assert!(matches!(
            Seen::of_text("h:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused (after 0ms in state CONNECT)"),
            Seen::Transport(_)
        ));
        // Anything else is kept whole, on one line.
        assert_eq!(reason_text("a: b\nc"), "a: b c");
    }

    #[test]
    fn a_refusal_is_fatal_and_what_a_failover_brings_is_waited_out() {
        for code in [
            C::Authentication,
            C::SaslAuthenticationFailed,
            C::TopicAuthorizationFailed,
            C::GroupAuthorizationFailed,
            C::ClusterAuthorizationFailed,
        ] {
            assert_eq!(fault_of(code), Fault::Fatal, "{code:?}");
        }
        for code in [
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::RequestTimedOut,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::NotCoordinator,
            C::CoordinatorLoadInProgress,
            C::CoordinatorNotAvailable,
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::SSL,
        ] {
            assert_eq!(fault_of(code), Fault::Transient, "{code:?}");
        }
    }

    #[test]
    fn a_default_group_goes_under_the_topic_prefix_and_an_explicit_one_is_kept() {
        let staging = KafkaConfig::for_tests("127.0.0.1:9092", "staging.");
        assert_eq!(
            staging.group(None, "orderflow.poll"),
            "staging.orderflow.poll"
        );
        assert_eq!(staging.group(Some("shared"), "orderflow.poll"), "shared");
        let plain = KafkaConfig::for_tests("127.0.0.1:9092", "");
        assert_eq!(plain.group(None, "orderflow.poll"), "orderflow.poll");
    }
}
