//! The hostile input: events that must end in orders.dlq, each with its reason (malformed
//! JSON, wrong types, a huge payload, bad UUIDs, NUL bytes, deep nesting, unknown accounts,
//! an unsupported version, a wrong key, an unknown product), and the conflicting copies of
//! a valid order (the same id under another account, and with other content).

use crate::common::pipeline::{order, OTHER_ACCOUNT};
use orderflow::core::event::OrderCreated;
use uuid::Uuid;

/// An event that must end in orders.dlq with `reason`.
#[derive(Clone)]
pub struct Hostile {
    pub what: &'static str,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub reason: &'static str,
}

/// One round of hostile events; `n` makes their keys unique.
pub fn hostile_round(n: usize) -> Vec<Hostile> {
    let round = Round {
        n,
        valid: serde_json::to_value(order("50")).unwrap(),
    };
    let mut events = round.unreadable_and_wrong_fields();
    events.extend(round.oversized_unknown_and_misplaced());
    events
}

/// The round's number and the valid event its hostile ones are made from.
struct Round {
    n: usize,
    valid: serde_json::Value,
}

impl Round {
    fn h(&self, what: &'static str, payload: Vec<u8>, reason: &'static str) -> Hostile {
        Hostile {
            what,
            key: Some(format!("hostile-{}-{what}", self.n)),
            payload,
            reason,
        }
    }

    /// The valid event with `value` at `path`.
    fn with(&self, path: &str, value: serde_json::Value) -> Vec<u8> {
        let mut v = self.valid.clone();
        *v.pointer_mut(path).unwrap() = value;
        serde_json::to_vec(&v).unwrap()
    }

    /// Unreadable bytes, NUL bytes, wrong types, bad and nil UUIDs.
    fn unreadable_and_wrong_fields(&self) -> Vec<Hostile> {
        vec![
            self.h(
                "malformed",
                b"{\"order_id\": \"6f1d".to_vec(),
                "unreadable_json",
            ),
            self.h(
                "not-utf8",
                vec![0xff, 0xfe, 0x7b, 0x00, 0xc3, 0x28],
                "unreadable_json",
            ),
            self.h(
                "raw-nul-bytes",
                b"{\"order_id\":\0\0\0}".to_vec(),
                "unreadable_json",
            ),
            self.h(
                "nul-in-a-field",
                self.with("/tenant_id", serde_json::json!("shop\u{0}1")),
                "invalid_field",
            ),
            self.h(
                "wrong-type",
                self.with("/tenant_id", serde_json::json!(42)),
                "invalid_field",
            ),
            self.h(
                "product-wrong-type",
                self.with("/product", serde_json::json!({"oyun": 412, "kupur": [50]})),
                "invalid_field",
            ),
            self.h(
                "bad-uuid",
                self.with("/order_id", serde_json::json!("6f1d2c3e-zzzz")),
                "invalid_field",
            ),
            self.h(
                "nil-uuid",
                self.with("/order_id", serde_json::json!(Uuid::nil())),
                "invalid_field",
            ),
        ]
    }

    /// A huge payload, deep nesting, an unknown account, an unsupported version, not an
    /// object, empty, an unknown product, a key that is not the order id.
    fn oversized_unknown_and_misplaced(&self) -> Vec<Hostile> {
        let valid = &self.valid;
        let mut huge = valid.clone();
        huge["user_extra"] = serde_json::Value::String("x".repeat(200_000));
        let deep = format!("{}1{}", "[".repeat(3000), "]".repeat(3000));
        let mut deep_event = serde_json::to_string(valid).unwrap();
        deep_event.insert_str(1, &format!("\"nested\":{deep},"));
        vec![
            self.h("huge", serde_json::to_vec(&huge).unwrap(), "oversized"),
            self.h("deep-nesting", deep_event.into_bytes(), "unreadable_json"),
            self.h(
                "unknown-account",
                self.with("/provider_account", serde_json::json!("znet-nobody")),
                "unknown_provider_account",
            ),
            self.h(
                "unsupported-version",
                self.with("/schema_version", serde_json::json!(2)),
                "unsupported_version",
            ),
            self.h("not-an-object", b"[1,2,3]".to_vec(), "invalid_field"),
            self.h("empty", Vec::new(), "unreadable_json"),
            self.h(
                "unknown-product",
                self.with("/product", serde_json::json!({"oyun": "412"})),
                "invalid_product",
            ),
            // A valid event under a key that is not its order id.
            self.h(
                "key-is-not-the-order-id",
                serde_json::to_vec(&valid).unwrap(),
                "invalid_field",
            ),
        ]
    }
}

/// The same order id as `original`, under another account or with other content.
pub fn conflicts_of(original: &OrderCreated) -> Vec<Hostile> {
    let key = Some(original.order_id.to_string());
    let mut elsewhere = original.clone();
    elsewhere.provider_account = OTHER_ACCOUNT.into();
    let mut other = original.clone();
    let kupur = if original.product["kupur"] == "25" {
        "100"
    } else {
        "25"
    };
    other.product.insert("kupur".into(), kupur.into());
    vec![
        Hostile {
            what: "same-id-other-account",
            key: key.clone(),
            payload: elsewhere.encode(),
            reason: "account_conflict",
        },
        Hostile {
            what: "same-id-other-content",
            key,
            payload: other.encode(),
            reason: "conflicting_duplicate",
        },
    ]
}
