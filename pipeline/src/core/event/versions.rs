//! Which `schema_version`s of an event a build reads, and how an older version's JSON
//! becomes the current shape before it is decoded (docs/design/upgrades.md).
//!
//! Each event type the stages consume has a [`Versions`]: the version this build writes
//! (`current`) and one pure step per older version it still reads, from version `v` to
//! `v + 1`. A build reads the current version and every version it has a step from;
//! anything else is dead-lettered as `unsupported_version`. A rolling upgrade that changes
//! an event therefore ships in two releases: first readers of both versions (writers still
//! on the old one, written through the steps down, [`Versions::write_as`]), then the
//! writers of the new one. Pure: no IO, no clock.

use super::{InvalidEvent, InvalidKind};
use serde_json::{Map, Value};

/// One step of an event's history: turns an object of version `from` into one of version
/// `from + 1` (its `schema_version` is set by [`Versions::upgrade`]). An object the step
/// cannot turn is an invalid event, with a reason that never quotes a value (G5).
pub type Upgrade = fn(Map<String, Value>) -> Result<Map<String, Value>, InvalidEvent>;

/// The versions of one event type that this build reads and writes.
#[derive(Clone, Copy, Debug)]
pub struct Versions {
    /// The version this build writes, and the shape its types decode.
    pub current: u32,
    /// `(from, step)`: how version `from` becomes `from + 1`; one entry per older version
    /// still read, so `from` runs over `current - steps.len() .. current`.
    pub steps: &'static [(u32, Upgrade)],
    /// `(to, step)`: how version `to + 1` becomes `to`, for writers that must still write
    /// an older version while readers of the current one are rolled out (the first step
    /// of docs/design/upgrades.md); `to` runs down from `current - 1`, one entry per older
    /// version that can be written.
    pub down: &'static [(u32, Upgrade)],
}

impl Versions {
    /// Only the current version, no older one: what every event type has while version 1
    /// is the only one there is.
    pub const fn only(current: u32) -> Versions {
        Versions {
            current,
            steps: &[],
            down: &[],
        }
    }

    /// Whether this build can write `version`: the current one, or an older one it has
    /// steps down to.
    pub fn writes(&self, version: u32) -> bool {
        version <= self.current && self.current - version <= self.down.len() as u32
    }

    /// `event` (of the current version) as `version`: each step down from `current` to
    /// `version` applied in turn, `schema_version` set to each step's result. An event a
    /// step cannot write, or a version this build does not write, is an error.
    pub fn write_as(&self, event: Value, version: u32) -> Result<Value, InvalidEvent> {
        if !self.writes(version) {
            return Err(InvalidEvent::new(
                InvalidKind::UnsupportedVersion,
                format!(
                    "schema_version {version} cannot be written (this build writes {} to {})",
                    self.current - self.down.len() as u32,
                    self.current
                ),
            ));
        }
        let Value::Object(mut object) = event else {
            return Err(InvalidEvent::new(
                InvalidKind::InvalidField,
                "the event is not a JSON object",
            ));
        };
        for (to, step) in self.down {
            if *to < version {
                break;
            }
            object = step(object)?;
            object.insert("schema_version".into(), Value::from(*to));
        }
        Ok(Value::Object(object))
    }

    /// The oldest version read.
    pub fn oldest(&self) -> u32 {
        self.current - self.steps.len() as u32
    }

    /// Whether this build reads `version`.
    pub fn reads(&self, version: u64) -> bool {
        (u64::from(self.oldest())..=u64::from(self.current)).contains(&version)
    }

    /// The event as the current version: `value` must be an object with a readable
    /// `schema_version`; each step from its version up to `current` is applied in turn,
    /// and `schema_version` is set to each step's result version.
    pub fn upgrade(&self, value: Value) -> Result<Value, InvalidEvent> {
        let Value::Object(mut object) = value else {
            return Err(InvalidEvent::new(
                InvalidKind::InvalidField,
                "the event is not a JSON object",
            ));
        };
        let version = match object.get("schema_version").and_then(|v| v.as_u64()) {
            Some(v) if self.reads(v) => v as u32,
            Some(v) => {
                return Err(InvalidEvent::new(
                    InvalidKind::UnsupportedVersion,
                    format!(
                        "schema_version {v} is not supported (this build reads {} to {})",
                        self.oldest(),
                        self.current
                    ),
                ))
            }
            None => {
                return Err(InvalidEvent::new(
                    InvalidKind::InvalidField,
                    "schema_version is missing or not an integer",
                ))
            }
        };
        for (from, step) in self.steps {
            if *from < version {
                continue;
            }
            object = step(object)?;
            object.insert("schema_version".into(), Value::from(from + 1));
        }
        Ok(Value::Object(object))
    }

    /// Checks the table: steps in order, one per version, ending at `current`, none from
    /// version 0. A table that fails this is a programming error; the unit tests call it on
    /// every event type's table.
    pub fn check(&self) -> Result<(), String> {
        if self.current == 0 || self.steps.len() as u32 >= self.current {
            return Err(format!(
                "{} steps cannot lead to version {}",
                self.steps.len(),
                self.current
            ));
        }
        for (i, (from, _)) in self.steps.iter().enumerate() {
            if *from != self.oldest() + i as u32 {
                return Err(format!("step {i} starts at version {from}"));
            }
        }
        if self.down.len() as u32 >= self.current {
            return Err(format!(
                "{} steps down from version {}",
                self.down.len(),
                self.current
            ));
        }
        for (i, (to, _)) in self.down.iter().enumerate() {
            if *to != self.current - 1 - i as u32 {
                return Err(format!("step down {i} ends at version {to}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Versioned;
    use proptest::prelude::*;

    // A test-only history: v1 had `amount` in kuruş as a string, v2 made it an integer,
    // v3 renamed it `amount_kurus`. No event of orderflow has a version 2 yet.
    fn v1_to_v2(mut o: Map<String, Value>) -> Result<Map<String, Value>, InvalidEvent> {
        let amount = o
            .get("amount")
            .and_then(|a| a.as_str())
            .and_then(|a| a.parse::<i64>().ok())
            .ok_or_else(|| InvalidEvent::new(InvalidKind::InvalidField, "amount is unreadable"))?;
        o.insert("amount".into(), Value::from(amount));
        Ok(o)
    }
    fn v2_to_v3(mut o: Map<String, Value>) -> Result<Map<String, Value>, InvalidEvent> {
        let amount = o.remove("amount").unwrap_or(Value::Null);
        o.insert("amount_kurus".into(), amount);
        Ok(o)
    }
    fn v3_to_v2(mut o: Map<String, Value>) -> Result<Map<String, Value>, InvalidEvent> {
        let amount = o.remove("amount_kurus").unwrap_or(Value::Null);
        o.insert("amount".into(), amount);
        Ok(o)
    }
    fn v2_to_v1(mut o: Map<String, Value>) -> Result<Map<String, Value>, InvalidEvent> {
        let amount = o.get("amount").and_then(|a| a.as_i64()).ok_or_else(|| {
            InvalidEvent::new(InvalidKind::InvalidField, "amount is not an integer")
        })?;
        o.insert("amount".into(), Value::from(amount.to_string()));
        Ok(o)
    }
    const HISTORY: Versions = Versions {
        current: 3,
        steps: &[(1, v1_to_v2), (2, v2_to_v3)],
        down: &[(2, v3_to_v2), (1, v2_to_v1)],
    };

    #[test]
    fn the_tables_of_the_consumed_events_are_well_formed() {
        for versions in [
            super::super::OrderCreated::VERSIONS,
            super::super::OrderDispatched::VERSIONS,
            super::super::StatusCheck::VERSIONS,
            super::super::OrderStateEvent::VERSIONS,
            HISTORY,
        ] {
            versions.check().unwrap();
        }
        let gap = Versions {
            current: 3,
            steps: &[(2, v2_to_v3), (2, v2_to_v3)],
            down: &[],
        };
        let upside_down = Versions {
            current: 3,
            steps: &[],
            down: &[(1, v2_to_v1), (2, v3_to_v2)],
        };
        assert!(upside_down.check().is_err());
        assert!(gap.check().is_err());
        assert!(Versions::only(0).check().is_err());
    }

    #[test]
    fn an_older_version_is_brought_to_the_current_shape() {
        let v1 = serde_json::json!({"schema_version": 1, "amount": "2500", "other": true});
        let v2 = serde_json::json!({"schema_version": 2, "amount": 2500, "other": true});
        let v3 = serde_json::json!({"schema_version": 3, "amount_kurus": 2500, "other": true});
        assert_eq!(HISTORY.upgrade(v1).unwrap(), v3);
        assert_eq!(HISTORY.upgrade(v2).unwrap(), v3);
        assert_eq!(HISTORY.upgrade(v3.clone()).unwrap(), v3);
    }

    #[test]
    fn versions_outside_the_table_are_unsupported() {
        for v in [0, 4, 1000] {
            let e = HISTORY
                .upgrade(serde_json::json!({"schema_version": v}))
                .unwrap_err();
            assert_eq!(e.kind, InvalidKind::UnsupportedVersion, "{v}");
        }
        let only = Versions::only(1);
        assert!(only.reads(1) && !only.reads(0) && !only.reads(2));
        assert!(only.writes(1) && !only.writes(0) && !only.writes(2));
        let e = HISTORY
            .write_as(serde_json::json!({"schema_version": 3}), 0)
            .unwrap_err();
        assert_eq!(e.kind, InvalidKind::UnsupportedVersion);
        let e = only
            .upgrade(serde_json::json!({"schema_version": "1"}))
            .unwrap_err();
        assert_eq!(e.kind, InvalidKind::InvalidField);
    }

    #[test]
    fn a_step_that_cannot_read_the_event_makes_it_invalid_without_quoting_it() {
        let e = HISTORY
            .upgrade(serde_json::json!({"schema_version": 1, "amount": "PIN-1234"}))
            .unwrap_err();
        assert_eq!(e.kind, InvalidKind::InvalidField);
        assert!(!e.to_string().contains("PIN-1234"), "{e}");
    }

    proptest! {
        /// Whatever version an event of the history is written in, reading it gives the
        /// same current event, and the fields no step knows pass through.
        #[test]
        fn every_readable_version_reads_as_the_same_event(
            amount in any::<i64>(), from in 1u32..=3, extra in "[a-z]{0,8}"
        ) {
            let event = match from {
                1 => serde_json::json!({"schema_version": 1, "amount": amount.to_string(), "x": extra}),
                2 => serde_json::json!({"schema_version": 2, "amount": amount, "x": extra}),
                _ => serde_json::json!({"schema_version": 3, "amount_kurus": amount, "x": extra}),
            };
            let current = HISTORY.upgrade(event).unwrap();
            prop_assert_eq!(
                current,
                serde_json::json!({"schema_version": 3, "amount_kurus": amount, "x": extra})
            );
        }

        /// What a writer writes in any version it can write, a reader of the current
        /// version reads as the event it started from.
        #[test]
        fn every_writable_version_reads_back_as_the_event_written(
            amount in any::<i64>(), to in 1u32..=3, extra in "[a-z]{0,8}"
        ) {
            let event = serde_json::json!({"schema_version": 3, "amount_kurus": amount, "x": extra});
            let written = HISTORY.write_as(event.clone(), to).unwrap();
            prop_assert_eq!(written.get("schema_version"), Some(&Value::from(to)));
            prop_assert_eq!(HISTORY.upgrade(written).unwrap(), event);
        }

        /// Every version the table does not list is refused, whatever the event holds.
        #[test]
        fn unlisted_versions_are_refused(v in 4u64.., amount in any::<i64>()) {
            let e = HISTORY
                .upgrade(serde_json::json!({"schema_version": v, "amount_kurus": amount}))
                .unwrap_err();
            prop_assert_eq!(e.kind, InvalidKind::UnsupportedVersion);
        }
    }
}
