//! The events the pipeline reads and writes, and how raw bytes become a valid event.
//!
//! Owns the wire contracts of `orders.created`, `orders.dispatched` and `orders.state`
//! (their JSON Schemas live in `topics/schemas/`). Decoding is strict about what the
//! pipeline needs and tolerant of fields it does not know, so shop services can add fields
//! without breaking it. A payload that cannot be used becomes an [`InvalidEvent`], whose
//! reason goes into the DLQ's headers (G8).

//!
//! The event types are here; [`limits`] says what a field may hold, [`InvalidEvent`] why a
//! payload cannot be used, and `validate` how bytes are decoded and checked.

mod invalid;
pub mod limits;
mod validate;
pub mod versions;

pub use invalid::{InvalidEvent, InvalidKind, UnknownReason};
pub use validate::{decode, Validate};
pub use versions::Versions;

use crate::core::lifecycle::{FailureReason, OrderState};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The `schema_version` of each event this build writes. What it reads is each event
/// type's [`Versioned::VERSIONS`]: today version 1 only, the only version there has been.
pub const SCHEMA_VERSION: u32 = 1;

/// An event type's versions: which `schema_version`s this build reads, and how an older
/// one becomes the current shape (see [`versions`] and docs/design/upgrades.md).
pub trait Versioned {
    const VERSIONS: Versions;
}

impl Versioned for OrderCreated {
    const VERSIONS: Versions = Versions::only(SCHEMA_VERSION);
}
impl Versioned for OrderDispatched {
    const VERSIONS: Versions = Versions::only(SCHEMA_VERSION);
}
impl Versioned for StatusCheck {
    const VERSIONS: Versions = Versions::only(SCHEMA_VERSION);
}
impl Versioned for OrderStateEvent {
    const VERSIONS: Versions = Versions::only(SCHEMA_VERSION);
}

/// Upper bound on an `orders.created` payload; larger events are dead-lettered rather than
/// parsed (a shop bug, not an order).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024;

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

impl OrderCreated {
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

#[cfg(test)]
mod tests;
