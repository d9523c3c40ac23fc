//! Unit and property tests of the events: decoding, validation, limits and digests.

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
