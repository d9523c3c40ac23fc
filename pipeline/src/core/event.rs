//! The events the pipeline reads and writes, and how raw bytes become a valid event.
//!
//! Owns the wire contracts of `orders.created`, `orders.dispatched` and `orders.state`
//! (their JSON Schemas live in `topics/schemas/`). Decoding is strict about what the
//! pipeline needs and tolerant of fields it does not know, so shop services can add fields
//! without breaking it. A payload that cannot be used becomes an [`InvalidEvent`], whose
//! reason goes into the DLQ's headers (G8).

use crate::core::lifecycle::{FailureReason, OrderState};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The only `schema_version` of each event this build writes and accepts.
pub const SCHEMA_VERSION: u32 = 1;

/// Upper bound on an `orders.created` payload; larger events are dead-lettered rather than
/// parsed (a shop bug, not an order).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024;

/// What a field may hold, so that every value decoding accepts also fits where it goes:
/// PostgreSQL's columns and indexes, and the broker. A value outside these limits is an
/// `invalid_field` at decoding, never a statement that fails again on every redelivery.
///
/// Text lengths are in bytes of UTF-8. The binding one is the btree limit: an index entry
/// holds at most about 2,704 bytes, and `orders` has a unique index on
/// (`provider_account`, `provider_reference`); the other limits are generous for what the
/// fields are (identifiers, short product codes, a phone number and player info) and keep
/// one bad field from filling a row.
pub mod limits {
    use chrono::{DateTime, NaiveDate, Utc};

    pub const TENANT_ID: usize = 256;
    /// Also the id of a configured account; indexed with the reference.
    pub const PROVIDER_ACCOUNT: usize = 128;
    /// znet's references are nine digits; indexed with the account.
    pub const PROVIDER_REFERENCE: usize = 128;
    // The unique index on (provider_account, provider_reference) takes every pair decoding
    // accepts, with room for the entry's own header.
    const _: () = assert!(PROVIDER_ACCOUNT + PROVIDER_REFERENCE < 2704 - 64);
    pub const PRODUCT_ENTRIES: usize = 32;
    pub const PRODUCT_KEY: usize = 64;
    pub const PRODUCT_VALUE: usize = 256;
    pub const USER_IDENTIFIER: usize = 256;
    pub const USER_EXTRA: usize = 1024;
    pub const FAILURE_CODE: usize = 64;
    /// The stages write scrubbed provider text of at most 200 characters and sentences of
    /// their own; this leaves room for both.
    pub const FAILURE_MESSAGE: usize = 4096;
    /// A sealed PIN (key id, nonce, ciphertext in base64).
    pub const SEALED_PIN: usize = 4096;

    /// The earliest accepted time: the Unix epoch. PostgreSQL's `timestamptz` reaches back
    /// to 4713 BC, but no order, deadline or check of this system is older than the epoch;
    /// an earlier time is a zeroed or broken clock.
    pub fn earliest() -> DateTime<Utc> {
        DateTime::UNIX_EPOCH
    }

    /// The latest accepted time: the end of year 9999. PostgreSQL's `timestamptz` goes on to
    /// 294276 AD, but RFC 3339 (the events' `date-time`) has four-digit years, and a time this
    /// far out leaves every sum the stages make (a deadline plus hours) well inside the
    /// database's range.
    pub fn latest() -> DateTime<Utc> {
        NaiveDate::from_ymd_opt(9999, 12, 31)
            .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
            .expect("a valid date")
            .and_utc()
    }
}

/// `orders.created` v1: a shop asks for an order to be placed with a provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub schema_version: u32,
    pub order_id: Uuid,
    pub tenant_id: String,
    /// Which configured provider account places the order.
    pub provider_account: String,
    /// The provider's product parameters; for znet `oyun` and `kupur`.
    pub product: BTreeMap<String, String>,
    /// First user field: for znet the customer's phone (`musteri_tel`).
    pub user_identifier: String,
    /// Second user field: for znet the player info (`oyuncu_bilgi`).
    #[serde(default)]
    pub user_extra: String,
    pub created_at: DateTime<Utc>,
    /// Overrides the default deadline (dispatch time + 24 h) when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
}

/// Why an event cannot be processed. `kind` is a stable machine-readable word for the DLQ's
/// `orderflow.dlq.reason` header; `detail` is one sentence for a person.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct InvalidEvent {
    pub kind: InvalidKind,
    pub detail: String,
    /// The SQLSTATE of the database's refusal, for `database_refused`.
    pub sqlstate: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidKind {
    Oversized,
    UnreadableJson,
    InvalidField,
    UnsupportedVersion,
    UnknownProviderAccount,
    InvalidProduct,
    /// The order id was first placed with another provider account.
    AccountConflict,
    /// The order id was first claimed with other content (product, user fields, tenant):
    /// the first event wins, this one is not placed.
    ConflictingDuplicate,
    /// The database refused what the event holds (SQLSTATE class 22, 23 or 54): a value
    /// decoding let through that a column, constraint or index does not take. Retrying the
    /// same data cannot help.
    DatabaseRefused,
}

impl InvalidKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidKind::Oversized => "oversized",
            InvalidKind::UnreadableJson => "unreadable_json",
            InvalidKind::InvalidField => "invalid_field",
            InvalidKind::UnsupportedVersion => "unsupported_version",
            InvalidKind::UnknownProviderAccount => "unknown_provider_account",
            InvalidKind::InvalidProduct => "invalid_product",
            InvalidKind::AccountConflict => "account_conflict",
            InvalidKind::ConflictingDuplicate => "conflicting_duplicate",
            InvalidKind::DatabaseRefused => "database_refused",
        }
    }
}

impl std::fmt::Display for InvalidKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl InvalidEvent {
    pub fn new(kind: InvalidKind, detail: impl Into<String>) -> Self {
        InvalidEvent {
            kind,
            detail: detail.into(),
            sqlstate: None,
        }
    }

    /// A `database_refused` reason with the refusal's SQLSTATE, when the database gave one.
    pub fn database_refused(detail: impl Into<String>, sqlstate: Option<String>) -> Self {
        InvalidEvent {
            sqlstate,
            ..InvalidEvent::new(InvalidKind::DatabaseRefused, detail)
        }
    }
}

/// A field's text: no U+0000 (PostgreSQL text cannot hold it) and at most `max` bytes.
/// The value is never quoted: it may be secret (G5) or personal.
fn check_text(field: &str, value: &str, max: usize) -> Result<(), InvalidEvent> {
    if value.contains('\0') {
        return Err(InvalidEvent::new(
            InvalidKind::InvalidField,
            format!("{field} contains a NUL character"),
        ));
    }
    if value.len() > max {
        return Err(InvalidEvent::new(
            InvalidKind::InvalidField,
            format!("{field} is {} bytes, the limit is {max}", value.len()),
        ));
    }
    Ok(())
}

/// A time within [`limits::earliest`] ..= [`limits::latest`].
fn check_time(field: &str, value: DateTime<Utc>) -> Result<(), InvalidEvent> {
    if value < limits::earliest() || value > limits::latest() {
        return Err(InvalidEvent::new(
            InvalidKind::InvalidField,
            format!("{field} is outside 1970-01-01 .. 9999-12-31"),
        ));
    }
    Ok(())
}

/// Whether any string of `value`, or any object key, holds U+0000. The sink stores state
/// events as `jsonb`, which refuses `\u0000` even in a field orderflow does not know.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// The checks of one of the pipeline's own events beyond its types: what the database would
/// refuse.
pub trait Validate {
    fn validate(&self) -> Result<(), InvalidEvent>;
}

/// Checks size, JSON, shape and `schema_version` of a payload, before its fields.
fn decode_object(bytes: &[u8], max_bytes: usize) -> Result<serde_json::Value, InvalidEvent> {
    if bytes.len() > max_bytes {
        return Err(InvalidEvent::new(
            InvalidKind::Oversized,
            format!("event is {} bytes, the limit is {max_bytes}", bytes.len()),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| InvalidEvent::new(InvalidKind::UnreadableJson, format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(InvalidEvent::new(
            InvalidKind::InvalidField,
            "the event is not a JSON object",
        ));
    }
    match value.get("schema_version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(SCHEMA_VERSION) => Ok(value),
        Some(v) => Err(InvalidEvent::new(
            InvalidKind::UnsupportedVersion,
            format!("schema_version {v} is not supported (expected {SCHEMA_VERSION})"),
        )),
        None => Err(InvalidEvent::new(
            InvalidKind::InvalidField,
            "schema_version is missing or not an integer",
        )),
    }
}

/// Decodes one of the pipeline's own events (`orders.dispatched`, `orders.status-check.*`,
/// `orders.state`): written by this code, so beyond the types only what the database would
/// refuse is checked ([`Validate`]), and no string anywhere in it may hold U+0000.
/// Errors name a missing field but never quote a value, since a value may be a PIN that a
/// broken producer put in the wrong place (G5).
pub fn decode<T: serde::de::DeserializeOwned + Validate>(
    bytes: &[u8],
    max_bytes: usize,
) -> Result<T, InvalidEvent> {
    let value = decode_object(bytes, max_bytes)?;
    if holds_nul(&value) {
        return Err(InvalidEvent::new(
            InvalidKind::InvalidField,
            "a string contains a NUL character",
        ));
    }
    let event: T = serde_json::from_value(value).map_err(|e| {
        let text = e.to_string();
        let detail = if text.starts_with("missing field") {
            text
        } else {
            "a field has a wrong type or value (not quoted: it may be secret)".to_owned()
        };
        InvalidEvent::new(InvalidKind::InvalidField, detail)
    })?;
    event.validate()?;
    Ok(event)
}

impl OrderCreated {
    /// Decodes and validates an `orders.created` payload.
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<OrderCreated, InvalidEvent> {
        let value = decode_object(bytes, max_bytes)?;
        let event: OrderCreated = serde_json::from_value(value)
            .map_err(|e| InvalidEvent::new(InvalidKind::InvalidField, e.to_string()))?;
        event.validate()?;
        Ok(event)
    }

    fn validate(&self) -> Result<(), InvalidEvent> {
        let blank = |field: &str| {
            InvalidEvent::new(
                InvalidKind::InvalidField,
                format!("{field} must not be blank"),
            )
        };
        if self.order_id.is_nil() {
            return Err(InvalidEvent::new(
                InvalidKind::InvalidField,
                "order_id must not be the nil UUID",
            ));
        }
        if self.tenant_id.trim().is_empty() {
            return Err(blank("tenant_id"));
        }
        if self.provider_account.trim().is_empty() {
            return Err(blank("provider_account"));
        }
        // PostgreSQL text cannot hold U+0000, an index entry has a size limit, and no shop
        // field needs either: refused here, nothing turns into a claim that fails forever.
        check_text("tenant_id", &self.tenant_id, limits::TENANT_ID)?;
        check_text(
            "provider_account",
            &self.provider_account,
            limits::PROVIDER_ACCOUNT,
        )?;
        check_text(
            "user_identifier",
            &self.user_identifier,
            limits::USER_IDENTIFIER,
        )?;
        check_text("user_extra", &self.user_extra, limits::USER_EXTRA)?;
        if self.product.len() > limits::PRODUCT_ENTRIES {
            return Err(InvalidEvent::new(
                InvalidKind::InvalidField,
                format!(
                    "product has {} entries, the limit is {}",
                    self.product.len(),
                    limits::PRODUCT_ENTRIES
                ),
            ));
        }
        for (key, value) in &self.product {
            check_text("product", key, limits::PRODUCT_KEY)?;
            check_text("product", value, limits::PRODUCT_VALUE)?;
        }
        check_time("created_at", self.created_at)?;
        if let Some(deadline) = self.deadline {
            check_time("deadline", deadline)?;
            if deadline <= self.created_at {
                return Err(InvalidEvent::new(
                    InvalidKind::InvalidField,
                    "deadline must be after created_at",
                ));
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an OrderCreated always serializes")
    }

    /// A digest (SHA-256, hex) of what the order buys and for whom: tenant, provider
    /// account, product, user fields. Two events with one order id and different digests
    /// are a conflict (the first claimed wins); equal digests are the same order sent again.
    /// `created_at`, `deadline` and unknown fields are left out: a shop that re-sends an
    /// order may stamp it anew.
    pub fn content_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        // Length-prefixed fields, so no two different contents give the same bytes.
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        };
        field(self.tenant_id.as_bytes());
        field(self.provider_account.as_bytes());
        field(&(self.product.len() as u64).to_be_bytes());
        for (key, value) in &self.product {
            field(key.as_bytes());
            field(value.as_bytes());
        }
        field(self.user_identifier.as_bytes());
        field(self.user_extra.as_bytes());
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `orders.dispatched` v1: the provider accepted the order; the poll stage takes it from
/// here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderDispatched {
    pub schema_version: u32,
    pub order_id: Uuid,
    pub tenant_id: String,
    pub provider_account: String,
    pub provider_reference: String,
    pub dispatched_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// The version of the `dispatched` state event; the poll stage's events follow it.
    pub version: i64,
    /// The shop's `created_at` of the order, for the created-to-final time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
}

/// `orders.status-check.<tier>` v1: an order's next status check, due at `due_at`. The
/// poll stage writes one per pending answer; the reconciler writes one for an order whose
/// check is overdue. `seq` numbers the messages of one order's check chain, so that two
/// copies of one step (a redelivery, a re-enqueue) continue the chain once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusCheck {
    pub schema_version: u32,
    pub order_id: Uuid,
    pub tenant_id: String,
    pub provider_account: String,
    pub provider_reference: String,
    pub dispatched_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// This step's number in the chain; the first check (from `orders.dispatched`) is 1.
    pub seq: i64,
    /// Status checks the provider has answered so far.
    pub attempts: i32,
    /// Not to be checked before this time.
    pub due_at: DateTime<Utc>,
    /// The version of the order's latest state event.
    pub version: i64,
    /// The shop's `created_at` of the order, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
}

impl StatusCheck {
    /// The first check of a dispatched order, `first_check` after its dispatch.
    pub fn first(dispatched: &OrderDispatched, first_check: std::time::Duration) -> StatusCheck {
        let due_at = chrono::Duration::from_std(first_check)
            .ok()
            .and_then(|d| dispatched.dispatched_at.checked_add_signed(d))
            .unwrap_or(dispatched.deadline)
            .min(dispatched.deadline);
        StatusCheck {
            schema_version: SCHEMA_VERSION,
            order_id: dispatched.order_id,
            tenant_id: dispatched.tenant_id.clone(),
            provider_account: dispatched.provider_account.clone(),
            provider_reference: dispatched.provider_reference.clone(),
            dispatched_at: dispatched.dispatched_at,
            deadline: dispatched.deadline,
            seq: 1,
            attempts: 0,
            due_at,
            version: dispatched.version,
            created_at: dispatched.created_at,
        }
    }
}

/// Details of a failure, as much as is known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub reason: FailureReason,
    /// The provider's code, when the provider gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The provider's message or the pipeline's explanation.
    pub message: String,
}

/// `orders.state` v1: one order's state after a change. The topic is compacted by order
/// id, so its latest event per key is the order's current state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderStateEvent {
    pub schema_version: u32,
    pub order_id: Uuid,
    pub tenant_id: String,
    pub provider_account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_reference: Option<String>,
    pub state: OrderState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// A completed order's PIN, sealed under the shop's key (G5); never in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<crate::core::sealed_pin::SealedPin>,
    /// Status checks made so far.
    pub attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// Orders this order's state events; see [`crate::core::lifecycle::version`].
    pub version: i64,
    pub changed_at: DateTime<Utc>,
}

/// The fields an event shares with the order it is about, checked alike in every event.
fn check_order_fields(
    tenant_id: &str,
    provider_account: &str,
    provider_reference: Option<&str>,
) -> Result<(), InvalidEvent> {
    check_text("tenant_id", tenant_id, limits::TENANT_ID)?;
    check_text(
        "provider_account",
        provider_account,
        limits::PROVIDER_ACCOUNT,
    )?;
    if let Some(reference) = provider_reference {
        check_text("provider_reference", reference, limits::PROVIDER_REFERENCE)?;
    }
    Ok(())
}

impl Validate for OrderDispatched {
    fn validate(&self) -> Result<(), InvalidEvent> {
        check_order_fields(
            &self.tenant_id,
            &self.provider_account,
            Some(&self.provider_reference),
        )?;
        check_time("dispatched_at", self.dispatched_at)?;
        check_time("deadline", self.deadline)?;
        if let Some(created_at) = self.created_at {
            check_time("created_at", created_at)?;
        }
        Ok(())
    }
}

impl Validate for StatusCheck {
    fn validate(&self) -> Result<(), InvalidEvent> {
        check_order_fields(
            &self.tenant_id,
            &self.provider_account,
            Some(&self.provider_reference),
        )?;
        check_time("dispatched_at", self.dispatched_at)?;
        check_time("deadline", self.deadline)?;
        check_time("due_at", self.due_at)?;
        if let Some(created_at) = self.created_at {
            check_time("created_at", created_at)?;
        }
        Ok(())
    }
}

impl Validate for OrderStateEvent {
    fn validate(&self) -> Result<(), InvalidEvent> {
        check_order_fields(
            &self.tenant_id,
            &self.provider_account,
            self.provider_reference.as_deref(),
        )?;
        if let Some(failure) = &self.failure {
            if let Some(code) = &failure.code {
                check_text("failure.code", code, limits::FAILURE_CODE)?;
            }
            check_text("failure.message", &failure.message, limits::FAILURE_MESSAGE)?;
        }
        if let Some(pin) = &self.pin {
            check_text("pin", pin.as_str(), limits::SEALED_PIN)?;
        }
        if let Some(next) = self.next_check_at {
            check_time("next_check_at", next)?;
        }
        if let Some(deadline) = self.deadline {
            check_time("deadline", deadline)?;
        }
        check_time("changed_at", self.changed_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "schema_version": 1,
            "order_id": "6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f",
            "tenant_id": "shop-1",
            "provider_account": "znet-main",
            "product": {"oyun": "412", "kupur": "100"},
            "user_identifier": "5551234567",
            "user_extra": "player#1",
            "created_at": "2026-11-28T10:00:00Z"
        })
    }

    fn decode(v: &serde_json::Value) -> Result<OrderCreated, InvalidEvent> {
        OrderCreated::decode(&serde_json::to_vec(v).unwrap(), DEFAULT_MAX_EVENT_BYTES)
    }

    #[test]
    fn a_valid_event_decodes() {
        let e = decode(&valid()).unwrap();
        assert_eq!(e.product["kupur"], "100");
        assert_eq!(e.deadline, None);
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let mut v = valid();
        v["coupon"] = serde_json::json!({"code": "X"});
        assert!(decode(&v).is_ok());
    }

    #[test]
    fn each_missing_required_field_is_named() {
        for field in [
            "order_id",
            "tenant_id",
            "provider_account",
            "product",
            "user_identifier",
            "created_at",
        ] {
            let mut v = valid();
            v.as_object_mut().unwrap().remove(field);
            let err = decode(&v).unwrap_err();
            assert_eq!(err.kind, InvalidKind::InvalidField, "{field}");
            assert!(err.detail.contains(field), "{field}: {}", err.detail);
        }
    }

    #[test]
    fn wrong_types_and_bad_values_are_invalid_fields() {
        let cases = [
            ("order_id", serde_json::json!("not-a-uuid")),
            ("order_id", serde_json::json!(42)),
            ("tenant_id", serde_json::json!(7)),
            ("tenant_id", serde_json::json!("  ")),
            ("product", serde_json::json!(["oyun"])),
            ("created_at", serde_json::json!("yesterday")),
            ("deadline", serde_json::json!("2026-11-27T10:00:00Z")),
        ];
        for (field, bad) in cases {
            let mut v = valid();
            v[field] = bad.clone();
            let err = decode(&v).unwrap_err();
            assert_eq!(err.kind, InvalidKind::InvalidField, "{field}={bad}");
        }
    }

    #[test]
    fn versions_are_checked_before_fields() {
        let mut v = valid();
        v["schema_version"] = serde_json::json!(2);
        v.as_object_mut().unwrap().remove("order_id");
        assert_eq!(
            decode(&v).unwrap_err().kind,
            InvalidKind::UnsupportedVersion
        );
    }

    #[test]
    fn oversized_events_are_not_parsed() {
        let bytes = vec![b' '; 100];
        let err = OrderCreated::decode(&bytes, 99).unwrap_err();
        assert_eq!(err.kind, InvalidKind::Oversized);
    }

    #[test]
    fn unreadable_json_is_reported_as_such() {
        let err = OrderCreated::decode(b"{\"order_id\": ", 1000).unwrap_err();
        assert_eq!(err.kind, InvalidKind::UnreadableJson);
        let err = OrderCreated::decode(b"[1,2]", 1000).unwrap_err();
        assert_eq!(err.kind, InvalidKind::InvalidField);
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let e = decode(&valid()).unwrap();
        assert_eq!(
            OrderCreated::decode(&e.encode(), DEFAULT_MAX_EVENT_BYTES).unwrap(),
            e
        );
    }

    #[test]
    fn nul_characters_are_invalid_fields() {
        for (field, path) in [
            ("tenant_id", "/tenant_id"),
            ("user_identifier", "/user_identifier"),
            ("user_extra", "/user_extra"),
            ("product", "/product/kupur"),
        ] {
            let mut v = valid();
            *v.pointer_mut(path).unwrap() = serde_json::json!("a\0b");
            let err = decode(&v).unwrap_err();
            assert_eq!(err.kind, InvalidKind::InvalidField, "{field}");
            assert!(err.detail.starts_with(field), "{}", err.detail);
        }
    }

    #[test]
    fn the_content_digest_covers_what_is_bought_and_for_whom() {
        let e = decode(&valid()).unwrap();
        let mut resent = e.clone();
        resent.created_at = chrono::Utc::now();
        resent.deadline = Some(resent.created_at + chrono::Duration::hours(1));
        assert_eq!(resent.content_digest(), e.content_digest(), "a re-send");
        let changes: [fn(&mut OrderCreated); 5] = [
            |o| o.tenant_id.push('x'),
            |o| o.provider_account.push('x'),
            |o| {
                o.product.insert("kupur".into(), "50".into());
            },
            |o| o.user_identifier.push('1'),
            |o| o.user_extra.push('!'),
        ];
        for change in changes {
            let mut other = e.clone();
            change(&mut other);
            assert_ne!(other.content_digest(), e.content_digest());
        }
        // Field boundaries count: moving a character between fields changes the digest.
        let (mut a, mut b) = (e.clone(), e.clone());
        a.user_identifier = "12".into();
        a.user_extra = "3".into();
        b.user_identifier = "1".into();
        b.user_extra = "23".into();
        assert_ne!(a.content_digest(), b.content_digest());
        assert_eq!(e.content_digest().len(), 64);
    }

    #[test]
    fn times_outside_the_accepted_window_are_invalid_fields() {
        for (field, bad) in [
            ("created_at", "1969-12-31T23:59:59Z"),
            ("created_at", "0001-01-01T00:00:00Z"),
            ("created_at", "-4714-11-24T00:00:00Z"),
            ("deadline", "+10000-01-01T00:00:00Z"),
            ("deadline", "+200000-01-01T00:00:00Z"),
        ] {
            let mut v = valid();
            v[field] = serde_json::json!(bad);
            let err = decode(&v).unwrap_err();
            assert_eq!(err.kind, InvalidKind::InvalidField, "{field}={bad}");
        }
        let mut v = valid();
        v["created_at"] = serde_json::json!("1970-01-01T00:00:00Z");
        v["deadline"] = serde_json::json!("9999-12-31T23:59:59.999999Z");
        assert!(decode(&v).is_ok(), "the window's ends are inside it");
    }

    #[test]
    fn each_text_field_is_limited_at_its_documented_length() {
        for (path, limit) in [
            ("/tenant_id", limits::TENANT_ID),
            ("/provider_account", limits::PROVIDER_ACCOUNT),
            ("/user_identifier", limits::USER_IDENTIFIER),
            ("/user_extra", limits::USER_EXTRA),
            ("/product/kupur", limits::PRODUCT_VALUE),
        ] {
            let mut v = valid();
            *v.pointer_mut(path).unwrap() = serde_json::json!("é".repeat(limit / 2));
            assert!(decode(&v).is_ok(), "{path} at its limit");
            *v.pointer_mut(path).unwrap() = serde_json::json!("x".repeat(limit + 1));
            let err = decode(&v).unwrap_err();
            assert_eq!(err.kind, InvalidKind::InvalidField, "{path}");
            assert!(err.detail.contains("bytes, the limit is"), "{}", err.detail);
            assert!(!err.detail.contains("xxxx"), "the value is not quoted");
        }
        let mut v = valid();
        v["product"]["k".repeat(limits::PRODUCT_KEY + 1)] = serde_json::json!("1");
        assert_eq!(decode(&v).unwrap_err().kind, InvalidKind::InvalidField);
        let mut v = valid();
        for i in 0..=limits::PRODUCT_ENTRIES {
            v["product"][format!("k{i}")] = serde_json::json!("1");
        }
        assert_eq!(decode(&v).unwrap_err().kind, InvalidKind::InvalidField);
    }

    fn state_event() -> serde_json::Value {
        serde_json::json!({
            "schema_version": 1,
            "order_id": "6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f",
            "tenant_id": "shop-1",
            "provider_account": "znet-main",
            "provider_reference": "100000042",
            "state": "failed",
            "failure": {"reason": "rejected", "code": "3", "message": "no stock"},
            "attempts": 0,
            "deadline": "2026-11-29T10:00:00Z",
            "version": 2,
            "changed_at": "2026-11-28T10:00:00Z"
        })
    }

    #[test]
    fn the_pipelines_own_events_are_held_to_the_same_limits() {
        let decode_state = |v: &serde_json::Value| {
            super::decode::<OrderStateEvent>(&serde_json::to_vec(v).unwrap(), 1 << 16)
        };
        assert!(decode_state(&state_event()).is_ok());
        let cases: [(&str, serde_json::Value); 7] = [
            ("/provider_reference", serde_json::json!("9".repeat(3000))),
            ("/provider_account", serde_json::json!("a".repeat(200))),
            ("/tenant_id", serde_json::json!("a\u{0}b")),
            ("/failure/message", serde_json::json!("m".repeat(5000))),
            ("/deadline", serde_json::json!("+10000-01-01T00:00:00Z")),
            ("/changed_at", serde_json::json!("1900-01-01T00:00:00Z")),
            // jsonb refuses U+0000 even in a field orderflow does not know.
            ("/failure/extra", serde_json::json!("\u{0}")),
        ];
        for (path, bad) in cases {
            let mut v = state_event();
            let (parent, leaf) = path.rsplit_once('/').unwrap();
            v.pointer_mut(if parent.is_empty() { "" } else { parent })
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert(leaf.to_owned(), bad);
            let err = decode_state(&v).unwrap_err();
            assert_eq!(err.kind, InvalidKind::InvalidField, "{path}");
        }
        let check = serde_json::json!({
            "schema_version": 1,
            "order_id": "6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f",
            "tenant_id": "shop-1",
            "provider_account": "znet-main",
            "provider_reference": "100000042",
            "dispatched_at": "2026-11-28T10:00:00Z",
            "deadline": "2026-11-29T10:00:00Z",
            "seq": 1,
            "attempts": 0,
            "due_at": "2026-11-28T10:01:00Z",
            "version": 2
        });
        let decode_check = |v: &serde_json::Value| {
            super::decode::<StatusCheck>(&serde_json::to_vec(v).unwrap(), 1 << 14)
        };
        assert!(decode_check(&check).is_ok());
        for (field, bad) in [
            ("due_at", serde_json::json!("0001-01-01T00:00:00Z")),
            ("provider_reference", serde_json::json!("1".repeat(129))),
        ] {
            let mut v = check.clone();
            v[field] = bad;
            assert_eq!(
                decode_check(&v).unwrap_err().kind,
                InvalidKind::InvalidField,
                "{field}"
            );
        }
    }

    proptest! {
        /// Whatever bytes arrive, decoding answers with an event or a reason; it never
        /// panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = OrderCreated::decode(&bytes, DEFAULT_MAX_EVENT_BYTES);
        }

        /// Whatever text fields an event has, decoding accepts it only if every field fits
        /// its column: no NUL, within its limit.
        #[test]
        fn an_accepted_event_fits_the_database(
            tenant in "[a-z\u{0}é]{0,300}",
            extra in "[a-z\u{0}]{0,1100}",
            reference_len in 0usize..2000,
        ) {
            let mut v = valid();
            v["tenant_id"] = serde_json::json!(tenant);
            v["user_extra"] = serde_json::json!(extra);
            v["product"]["ref"] = serde_json::json!("1".repeat(reference_len));
            if let Ok(e) = decode(&v) {
                prop_assert!(e.tenant_id.len() <= limits::TENANT_ID && !e.tenant_id.contains('\0'));
                prop_assert!(e.user_extra.len() <= limits::USER_EXTRA && !e.user_extra.contains('\0'));
                prop_assert!(e.product.values().all(|p| p.len() <= limits::PRODUCT_VALUE));
            } else {
                let fits = tenant.trim().len() == tenant.len() && !tenant.trim().is_empty()
                    && tenant.len() <= limits::TENANT_ID && !tenant.contains('\0')
                    && extra.len() <= limits::USER_EXTRA && !extra.contains('\0')
                    && reference_len <= limits::PRODUCT_VALUE;
                prop_assert!(!fits, "a fitting event was refused");
            }
        }

        /// Whatever time an event names, it is accepted only inside the window.
        #[test]
        fn an_accepted_time_is_inside_the_window(secs in -300_000_000_000i64..300_000_000_000i64) {
            let Some(at) = DateTime::<Utc>::from_timestamp(secs, 0) else { return Ok(()); };
            let mut v = valid();
            v["created_at"] = serde_json::to_value(at).unwrap();
            let inside = at >= limits::earliest() && at <= limits::latest();
            prop_assert_eq!(decode(&v).is_ok(), inside, "{}", at);
        }

        #[test]
        fn arbitrary_field_values_never_panic(field in "[a-z_]{1,16}", value in ".{0,40}") {
            let mut v = valid();
            v[field] = serde_json::Value::String(value);
            let _ = decode(&v);
        }
    }
}
