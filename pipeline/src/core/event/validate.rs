//! How raw bytes become a valid event: size, JSON, `schema_version`, then the fields,
//! within [`limits`] so that everything decoding accepts also fits the database. Errors
//! never quote a value, which may be secret (G5) or personal.

use super::{
    limits, InvalidEvent, InvalidKind, OrderCreated, OrderDispatched, OrderStateEvent, StatusCheck,
    Versioned,
};
use chrono::{DateTime, Utc};

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

/// Checks size, JSON, shape and `schema_version` of a payload, before its fields, and
/// brings a previous version that `T` still reads to the current shape ([`Versioned`]).
fn decode_object<T: Versioned>(
    bytes: &[u8],
    max_bytes: usize,
) -> Result<serde_json::Value, InvalidEvent> {
    if bytes.len() > max_bytes {
        return Err(InvalidEvent::new(
            InvalidKind::Oversized,
            format!("event is {} bytes, the limit is {max_bytes}", bytes.len()),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| InvalidEvent::new(InvalidKind::UnreadableJson, format!("not JSON: {e}")))?;
    T::VERSIONS.upgrade(value)
}

/// Decodes one of the pipeline's own events (`orders.dispatched`, `orders.status-check.*`,
/// `orders.state`): written by this code, so beyond the types only what the database would
/// refuse is checked ([`Validate`]), and no string anywhere in it may hold U+0000.
/// Errors name a missing field but never quote a value, since a value may be a PIN that a
/// broken producer put in the wrong place (G5).
pub fn decode<T: serde::de::DeserializeOwned + Validate + Versioned>(
    bytes: &[u8],
    max_bytes: usize,
) -> Result<T, InvalidEvent> {
    let value = decode_object::<T>(bytes, max_bytes)?;
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
        let value = decode_object::<OrderCreated>(bytes, max_bytes)?;
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
