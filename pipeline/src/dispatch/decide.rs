//! The dispatch stage's pure decisions about an event, no IO: whether a decoded order is
//! placed or refused, and how ([`Refusal`]: the DLQ only, or the DLQ and a `failed`
//! answer); what a conflicting or refused claim puts on the DLQ instead of an answer (G2:
//! every order gets an answer, a conflicting duplicate gets none of its own).

use super::placement::Settled;
use crate::core::event::{InvalidEvent, InvalidKind, OrderCreated};
use uuid::Uuid;

/// Why an event is not placed.
pub(super) enum Refusal {
    /// The DLQ only: the event names no order it could be answered for.
    Unusable(InvalidEvent),
    /// A well-formed order that cannot be placed as given: the DLQ, and `failed` (invalid)
    /// unless its order id is claimed already.
    Unplaceable(Box<OrderCreated>, InvalidEvent),
}

/// Whether a message's key is its order id. The key decides the partition, and so the
/// order of one order's events: an event under another key is not answered under its
/// order id. A message without a key passes.
pub(super) fn keyed(key: Option<&[u8]>, order_id: Uuid) -> bool {
    key.is_none_or(|key| key == order_id.to_string().as_bytes())
}

/// A decoded order, or why it is not placed: `placeable` says whether its account is
/// configured and sells its product, `keyed` whether its message's key is its order id.
pub(super) fn admit(
    order: OrderCreated,
    placeable: Result<(), InvalidEvent>,
    keyed: bool,
) -> Result<OrderCreated, Refusal> {
    match (placeable, keyed) {
        (Ok(()), true) => Ok(order),
        (Ok(()), false) => Err(Refusal::Unusable(InvalidEvent::new(
            InvalidKind::InvalidField,
            "the message key is not the event's order_id",
        ))),
        (Err(why), true) => Err(Refusal::Unplaceable(Box::new(order), why)),
        (Err(why), false) => Err(Refusal::Unusable(why)),
    }
}

/// What goes on the DLQ for an event whose claim placed nothing for it: its order id was
/// first claimed under another account or with other content (the first event wins), or
/// the database refused the event's data. `None` for an outcome that is published.
pub(super) fn dead_letter_reason(order: &OrderCreated, settled: &Settled) -> Option<InvalidEvent> {
    match settled {
        Settled::AccountConflict(claim) => Some(InvalidEvent::new(
            InvalidKind::AccountConflict,
            format!(
                "order {} was placed with provider_account {:?}, this event names {:?}",
                order.order_id, claim.provider_account, order.provider_account
            ),
        )),
        // The detail names no field value: user fields may be personal data.
        Settled::ContentConflict(_) => Some(InvalidEvent::new(
            InvalidKind::ConflictingDuplicate,
            format!(
                "order {} was first received with other content (tenant, product or \
                 user fields); the first event wins and this one is not placed",
                order.order_id
            ),
        )),
        Settled::Refused(refused) => Some(InvalidEvent::database_refused(
            format!("claiming order {} failed: {refused}", order.order_id),
            refused.sqlstate.clone(),
        )),
        _ => None,
    }
}

/// The message of the `failed` (invalid) answer to an order that cannot be placed as given.
/// The shop's own values (an account id, a product check's sentence), no secret; cut so
/// the event stays within what the sink takes.
pub(super) fn invalid_message(why: &InvalidEvent) -> String {
    format!("the order cannot be placed as given: {}", why.detail)
        .chars()
        .take(1000)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::claims::{Claim, Phase};
    use chrono::Utc;
    use std::collections::BTreeMap;

    fn order() -> OrderCreated {
        OrderCreated {
            schema_version: 1,
            order_id: Uuid::new_v4(),
            tenant_id: "shop".into(),
            provider_account: "znet-main".into(),
            product: BTreeMap::new(),
            user_identifier: "5550000000".into(),
            user_extra: String::new(),
            created_at: Utc::now(),
            deadline: None,
        }
    }

    fn claim(order: &OrderCreated, account: &str) -> Claim {
        Claim {
            order_id: order.order_id,
            provider_account: account.into(),
            provider_reference: "ref-1".into(),
            phase: Phase::Placed,
            place_calls: 1,
            deadline: Utc::now(),
            outcome_code: None,
            outcome_message: None,
            content_digest: None,
            first_not_found_at: None,
        }
    }

    fn unknown_account() -> InvalidEvent {
        InvalidEvent::new(InvalidKind::UnknownProviderAccount, "not configured")
    }

    #[test]
    fn a_key_other_than_the_order_id_is_not_keyed() {
        let id = Uuid::new_v4();
        assert!(keyed(None, id));
        assert!(keyed(Some(id.to_string().as_bytes()), id));
        assert!(!keyed(Some(Uuid::new_v4().to_string().as_bytes()), id));
        assert!(!keyed(Some(b""), id));
    }

    #[test]
    fn only_a_keyed_order_is_answered_for() {
        let placed = admit(order(), Ok(()), true);
        assert!(placed.is_ok());
        let misrouted = admit(order(), Ok(()), false);
        assert!(
            matches!(misrouted, Err(Refusal::Unusable(why)) if why.kind == InvalidKind::InvalidField)
        );
        let unplaceable = admit(order(), Err(unknown_account()), true);
        assert!(
            matches!(unplaceable, Err(Refusal::Unplaceable(_, why)) if why.kind == InvalidKind::UnknownProviderAccount)
        );
        // Not keyed: no order to answer for, whatever else is wrong with it.
        let both = admit(order(), Err(unknown_account()), false);
        assert!(
            matches!(both, Err(Refusal::Unusable(why)) if why.kind == InvalidKind::UnknownProviderAccount)
        );
    }

    #[test]
    fn conflicts_and_refusals_are_dead_lettered_and_outcomes_are_not() {
        let o = order();
        let account = dead_letter_reason(&o, &Settled::AccountConflict(claim(&o, "other")));
        let account = account.expect("an account conflict is dead-lettered");
        assert_eq!(account.kind, InvalidKind::AccountConflict);
        assert!(account.detail.contains("\"other\"") && account.detail.contains("\"znet-main\""));
        let content = dead_letter_reason(&o, &Settled::ContentConflict(claim(&o, "znet-main")));
        assert_eq!(
            content.map(|why| why.kind),
            Some(InvalidKind::ConflictingDuplicate)
        );
        let refused = crate::db::Refused {
            sqlstate: Some("22021".into()),
            message: "invalid byte sequence".into(),
        };
        let refused = dead_letter_reason(&o, &Settled::Refused(refused)).expect("refused");
        assert_eq!(refused.kind, InvalidKind::DatabaseRefused);
        assert_eq!(refused.sqlstate.as_deref(), Some("22021"));
        for published in [
            Settled::Placed(claim(&o, "znet-main")),
            Settled::Expired(claim(&o, "znet-main")),
            Settled::Invalid(claim(&o, "znet-main")),
        ] {
            assert_eq!(dead_letter_reason(&o, &published), None);
        }
    }

    #[test]
    fn the_invalid_answer_is_cut_to_a_thousand_characters() {
        let short = invalid_message(&unknown_account());
        assert_eq!(short, "the order cannot be placed as given: not configured");
        let long = InvalidEvent::new(InvalidKind::InvalidProduct, "ü".repeat(5000));
        assert_eq!(invalid_message(&long).chars().count(), 1000);
    }
}
