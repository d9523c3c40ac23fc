//! librdkafka properties from configuration: `--kafka-property key=value` (repeatable),
//! `ORDERFLOW_KAFKA_PROPERTIES` (entries separated by commas or newlines) and a properties
//! file (`key=value` lines, `#` comments), for what a managed cluster needs (SASL, SSL,
//! timeouts). See docs/managed-kafka.md.
//!
//! Values are [`Secret`]s (a SASL password is one): no error, log line or `Debug` output
//! shows them, only keys and positions. Settings that orderflow's guarantees depend on
//! are refused (see [`REFUSED`]); everything else may override orderflow's defaults.

use crate::secret::Secret;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;
use std::path::Path;

/// Where the entries given by flag or environment come from, for error messages.
pub const LIST_SOURCE: &str = "--kafka-property/ORDERFLOW_KAFKA_PROPERTIES";

/// Properties orderflow sets itself and will not let configuration change, with why.
pub const REFUSED: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "use --kafka-brokers (ORDERFLOW_KAFKA_BROKERS)",
    ),
    (
        "metadata.broker.list",
        "use --kafka-brokers (ORDERFLOW_KAFKA_BROKERS)",
    ),
    (
        "group.id",
        "each stage's group is set by its --<stage>-group flag",
    ),
    (
        "enable.idempotence",
        "the producer must be idempotent so a retry never duplicates or reorders an event",
    ),
    (
        "acks",
        "events count as written only once every in-sync replica has them",
    ),
    (
        "request.required.acks",
        "events count as written only once every in-sync replica has them",
    ),
    (
        "enable.auto.commit",
        "offsets move only past finished work, which the stage loop controls",
    ),
    (
        "enable.auto.offset.store",
        "offsets move only past finished work, which the stage loop controls",
    ),
    (
        "auto.offset.reset",
        "a new consumer group must start from the earliest event so no order is skipped",
    ),
    (
        "statistics.interval.ms",
        "the orderflow_consumer_lag metric is computed from librdkafka's statistics",
    ),
];

/// The configured properties, each with where it came from, or why they are unusable.
pub type Resolved = Result<Vec<(Property, String)>, PropertiesError>;

/// One `key=value` setting; the value never prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Property {
    pub key: String,
    pub value: Secret,
    /// Cut from an entry at a comma: if librdkafka does not know the key, it may be part
    /// of the previous value (a password with a comma), so errors do not name it.
    pub after_comma: bool,
}

/// Why the configured properties cannot be used. No variant holds a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PropertiesError {
    #[error("Kafka property {place} is not key=value (no `=`; the value is not shown); a value that contains a comma belongs in the properties file (ORDERFLOW_KAFKA_PROPERTIES_FILE)")]
    NotKeyValue { place: String },
    #[error("Kafka property {place} has an empty key")]
    EmptyKey { place: String },
    #[error("the Kafka property {key} ({place}) cannot be set: {reason}")]
    Refused {
        key: String,
        place: String,
        reason: &'static str,
    },
    #[error(
        "librdkafka has no property {key} ({place}); see docs/managed-kafka.md for the usual ones"
    )]
    Unknown { key: String, place: String },
    #[error("Kafka property {place} is not one librdkafka knows (its key is not shown: it follows a comma and may be part of a value); a value that contains a comma belongs in the properties file (ORDERFLOW_KAFKA_PROPERTIES_FILE)")]
    UnknownAfterComma { place: String },
    #[error("the Kafka property {key} ({place}) has an invalid value: {reason}")]
    Invalid {
        key: String,
        place: String,
        reason: String,
    },
    #[error("cannot read the Kafka properties file {path} ({reason})")]
    File { path: String, reason: String },
}

/// Parses the flag and environment entries: each may hold several `key=value` separated
/// by commas or newlines; empty pieces are skipped.
pub fn parse_list(entries: &[Secret]) -> Result<Vec<(Property, String)>, PropertiesError> {
    let mut out = Vec::new();
    let mut n = 0;
    for entry in entries {
        for line in entry.expose().split(['\n', '\r']) {
            for (i, piece) in line.split(',').enumerate() {
                if piece.trim().is_empty() {
                    continue;
                }
                n += 1;
                let place = format!("entry {n} of {LIST_SOURCE}");
                let mut property = one(piece, &place)?;
                property.after_comma = i > 0;
                out.push((property, place));
            }
        }
    }
    Ok(out)
}

/// Parses a properties file: one `key=value` per line, blank lines and lines starting
/// with `#` skipped. The value is everything after the first `=` (commas and `#` kept),
/// without surrounding spaces.
pub fn parse_file(text: &str, path: &Path) -> Result<Vec<(Property, String)>, PropertiesError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let place = format!("line {} of {}", i + 1, path.display());
        out.push((one(trimmed, &place)?, place));
    }
    Ok(out)
}

fn one(text: &str, place: &str) -> Result<Property, PropertiesError> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(PropertiesError::NotKeyValue {
            place: place.to_owned(),
        });
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(PropertiesError::EmptyKey {
            place: place.to_owned(),
        });
    }
    if let Some((_, reason)) = REFUSED.iter().find(|(k, _)| *k == key) {
        return Err(PropertiesError::Refused {
            key: key.to_owned(),
            place: place.to_owned(),
            reason,
        });
    }
    Ok(Property {
        key: key.to_owned(),
        value: Secret::new(value.trim()),
        after_comma: false,
    })
}

/// Asks librdkafka whether it knows each property and accepts its value, without
/// creating a client, so a typo fails at startup in one sentence that shows no value.
pub fn validate(properties: &[(Property, String)]) -> Result<(), PropertiesError> {
    for (p, place) in properties {
        let mut config = ClientConfig::new();
        config.set(&p.key, p.value.expose());
        if let Err(error) = config.create_native_config() {
            return Err(match error {
                KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, ..)
                    if p.after_comma =>
                {
                    PropertiesError::UnknownAfterComma {
                        place: place.clone(),
                    }
                }
                KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, ..) => {
                    PropertiesError::Unknown {
                        key: p.key.clone(),
                        place: place.clone(),
                    }
                }
                other => PropertiesError::Invalid {
                    key: p.key.clone(),
                    place: place.clone(),
                    reason: redacted(&other),
                },
            });
        }
    }
    Ok(())
}

/// A librdkafka error as text with any configuration value it quotes replaced by `***`
/// (its own `Display` prints the value, and librdkafka's description often quotes it).
pub fn redacted(error: &KafkaError) -> String {
    match error {
        KafkaError::ClientConfig(_, description, key, value) => {
            let description = if value.is_empty() {
                description.clone()
            } else {
                description.replace(value.as_str(), "***")
            };
            format!("{key}: {description}")
        }
        other => other.to_string(),
    }
}

/// Sets `properties` on `config`, later ones winning.
pub fn apply(config: &mut ClientConfig, properties: &[(Property, String)]) {
    for (p, _) in properties {
        config.set(&p.key, p.value.expose());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Result<Vec<(Property, String)>, PropertiesError> {
        let entries: Vec<Secret> = entries.iter().map(|e| Secret::new(*e)).collect();
        parse_list(&entries)
    }

    fn keys_and_values(props: &[(Property, String)]) -> Vec<(&str, &str)> {
        props
            .iter()
            .map(|(p, _)| (p.key.as_str(), p.value.expose()))
            .collect()
    }

    #[test]
    fn entries_split_on_commas_and_newlines() {
        let props = list(&[
            "security.protocol=SASL_SSL,sasl.mechanism=PLAIN",
            "socket.timeout.ms = 30000\n\nsasl.username=abc,",
        ])
        .unwrap();
        assert_eq!(
            keys_and_values(&props),
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "PLAIN"),
                ("socket.timeout.ms", "30000"),
                ("sasl.username", "abc"),
            ]
        );
        assert_eq!(props[2].1, format!("entry 3 of {LIST_SOURCE}"));
    }

    #[test]
    fn a_value_may_contain_equals_signs() {
        let props = list(&["sasl.password=a=b=="]).unwrap();
        assert_eq!(keys_and_values(&props), [("sasl.password", "a=b==")]);
    }

    #[test]
    fn an_entry_without_equals_names_its_place_but_not_its_text() {
        let err = list(&["socket.timeout.ms=1000,sasl.password:hunter2"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("entry 2 of --kafka-property"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(matches!(
            list(&["=x"]),
            Err(PropertiesError::EmptyKey { .. })
        ));
    }

    #[test]
    fn settings_the_guarantees_depend_on_are_refused() {
        for key in [
            "enable.idempotence",
            "acks",
            "request.required.acks",
            "enable.auto.commit",
            "enable.auto.offset.store",
            "auto.offset.reset",
            "group.id",
            "bootstrap.servers",
        ] {
            let err = list(&[&format!("{key}=x")]).unwrap_err();
            assert!(
                matches!(&err, PropertiesError::Refused { key: k, .. } if k == key),
                "{key}: {err}"
            );
        }
        // Overriding orderflow's other defaults is allowed.
        assert!(list(&["linger.ms=20", "session.timeout.ms=45000"]).is_ok());
    }

    #[test]
    fn the_file_has_lines_comments_and_values_with_commas() {
        let text = "# Confluent Cloud\n\nsecurity.protocol=SASL_SSL\n  # indented comment\n\
                    ssl.cipher.suites=A,B\nsasl.password = p#ss, word \n";
        let props = parse_file(text, Path::new("/etc/kafka.properties")).unwrap();
        assert_eq!(
            keys_and_values(&props),
            [
                ("security.protocol", "SASL_SSL"),
                ("ssl.cipher.suites", "A,B"),
                ("sasl.password", "p#ss, word"),
            ]
        );
        assert_eq!(props[1].1, "line 5 of /etc/kafka.properties");
        let err = parse_file("a=1\nsasl.password hunter2\n", Path::new("f")).unwrap_err();
        assert_eq!(
            err,
            PropertiesError::NotKeyValue {
                place: "line 2 of f".into()
            }
        );
    }

    #[test]
    fn debug_output_never_shows_a_value() {
        let props = list(&["sasl.password=hunter2-9f8e"]).unwrap();
        let shown = format!("{props:?} {:#?}", props[0].0);
        assert!(shown.contains("sasl.password"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn librdkafka_judges_keys_and_values_without_showing_them() {
        assert!(
            validate(&list(&["socket.timeout.ms=30000", "sasl.mechanism=PLAIN"]).unwrap()).is_ok()
        );
        let err = validate(&list(&["no.such.property=hunter2"]).unwrap()).unwrap_err();
        assert!(matches!(&err, PropertiesError::Unknown { key, .. } if key == "no.such.property"));
        // A password cut at its comma: the second piece's key is part of the secret.
        let cut = parse_list(&[Secret::new("sasl.password=abc,def=ghi")]).unwrap();
        let err = validate(&cut).unwrap_err();
        assert!(
            matches!(err, PropertiesError::UnknownAfterComma { .. }),
            "{err:?}"
        );
        assert!(
            !err.to_string().contains("def") && !err.to_string().contains("ghi"),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"));
        let err = validate(&list(&["socket.timeout.ms=hunter2"]).unwrap()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PropertiesError::Invalid { .. }), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
