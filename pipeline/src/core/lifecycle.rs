//! Order states, the transitions between them and the shop's view of them.
//!
//! Owns the rules of `docs/design/lifecycle.md` that do not need IO: which states are
//! final, how a state maps to the shop's `status` / `external_status` columns, and the
//! `version` that orders state events so that an older event never overwrites a newer one
//! (G3).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where an order is in its life. `Completed` and `Failed` are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Received,
    Dispatching,
    Dispatched,
    Processing,
    Completed,
    Failed,
}

/// Why a failed order failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The provider refused the order (for znet: a `code|message` answer to a placement).
    Rejected,
    /// The provider accepted the order and later cancelled it.
    Cancelled,
    /// The order was not final before its deadline.
    Deadline,
    /// The order could not be placed as given.
    Invalid,
}

/// The shop's `status` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShopStatus {
    Pending,
    Approved,
    Rejected,
}

/// The shop's `external_status` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExternalStatus {
    Sent,
    Processing,
    Done,
    Failed,
}

impl OrderState {
    pub const ALL: [OrderState; 6] = [
        OrderState::Received,
        OrderState::Dispatching,
        OrderState::Dispatched,
        OrderState::Processing,
        OrderState::Completed,
        OrderState::Failed,
    ];

    pub fn is_final(self) -> bool {
        matches!(self, OrderState::Completed | OrderState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Received => "received",
            OrderState::Dispatching => "dispatching",
            OrderState::Dispatched => "dispatched",
            OrderState::Processing => "processing",
            OrderState::Completed => "completed",
            OrderState::Failed => "failed",
        }
    }

    /// The shop's columns for this state (lifecycle.md, "States").
    pub fn shop_view(self) -> (ShopStatus, ExternalStatus) {
        match self {
            OrderState::Completed => (ShopStatus::Approved, ExternalStatus::Done),
            OrderState::Failed => (ShopStatus::Rejected, ExternalStatus::Failed),
            OrderState::Processing => (ShopStatus::Pending, ExternalStatus::Processing),
            OrderState::Received | OrderState::Dispatching | OrderState::Dispatched => {
                (ShopStatus::Pending, ExternalStatus::Sent)
            }
        }
    }

    /// Whether an order may move from `self` to `next`. Final states admit nothing;
    /// `processing` may repeat (one event per status check).
    pub fn may_become(self, next: OrderState) -> bool {
        use OrderState::*;
        match (self, next) {
            (Completed | Failed, _) => false,
            (_, Failed) => true,
            (Received, Dispatching) => true,
            (Dispatching, Dispatched) => true,
            (Dispatched | Processing, Processing | Completed) => true,
            _ => false,
        }
    }
}

/// Whether a state event at (`version`, `state`) replaces what an order's row holds at
/// (`current_version`, `current_state`) (G3): never a final row; otherwise a higher
/// version, or a final state at an equal version (a status check redone after a crash may
/// end an order where its first try, whose event is already out, found it pending). The
/// sink's SQL guard and its in-batch merge both follow this rule.
pub fn supersedes(
    (version, state): (i64, OrderState),
    (current_version, current_state): (i64, OrderState),
) -> bool {
    !current_state.is_final()
        && (version > current_version || (version == current_version && state.is_final()))
}

/// What the sink compares of a state event, or of the row it set: [`supersedes`]'s
/// (version, state), and whether the event names a provider reference. Every state event
/// of a placed (or claimed to be placed) order does; only the `failed` (invalid) answer to
/// an order that could not be placed as given does not: nothing was ever sent for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rank {
    pub version: i64,
    pub state: OrderState,
    pub placed: bool,
}

/// Whether a state event ranked `event` replaces a row ranked `current`: [`supersedes`],
/// with one exception and its mirror (docs/design/lifecycle.md, G3). A row `failed` without
/// a reference (the invalid answer) is replaced by an event with one: the order was placed
/// after all, which only a replayed event of it can bring about. And an event without a
/// reference never replaces a row with one, so that the invalid answer, republished or
/// late, never ends an order placed after all. The sink's SQL guard and its in-batch merge
/// both follow this rule.
pub fn replaces(event: Rank, current: Rank) -> bool {
    if current.state == OrderState::Failed && !current.placed {
        return event.placed;
    }
    if !event.placed && current.placed {
        return false;
    }
    supersedes(
        (event.version, event.state),
        (current.version, current.state),
    )
}

impl std::str::FromStr for OrderState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not an order state"))
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Rejected => "rejected",
            FailureReason::Cancelled => "cancelled",
            FailureReason::Deadline => "deadline",
            FailureReason::Invalid => "invalid",
        }
    }
}

/// Versions of the state events one order goes through. Each stage emits the version of
/// the state it produces; the sink keeps the highest version and never touches a final
/// row (G3). Status check `n` (1-based) yields `PROCESSING_BASE + n`, and a final state
/// takes the version after the last event before it.
pub mod version {
    pub const DISPATCHING: i64 = 1;
    pub const DISPATCHED: i64 = 2;
    pub const PROCESSING_BASE: i64 = DISPATCHED;

    /// The version of the state event that follows one of version `previous`. Saturating:
    /// `previous` may come from a message, and a hostile `i64::MAX` must neither panic nor
    /// wrap to a lowest version (the poll stage refuses such a message before it gets here).
    pub fn after(previous: i64) -> i64 {
        previous.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_after_the_highest_is_still_the_highest() {
        assert_eq!(version::after(version::DISPATCHED), 3);
        assert_eq!(version::after(i64::MAX), i64::MAX);
    }

    #[test]
    fn final_states_admit_no_transition() {
        for from in [OrderState::Completed, OrderState::Failed] {
            for to in OrderState::ALL {
                assert!(!from.may_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn the_happy_path_is_allowed_in_order_only() {
        use OrderState::*;
        let path = [
            Received,
            Dispatching,
            Dispatched,
            Processing,
            Processing,
            Completed,
        ];
        for pair in path.windows(2) {
            assert!(pair[0].may_become(pair[1]), "{} -> {}", pair[0], pair[1]);
        }
        assert!(!Dispatched.may_become(Dispatching));
        assert!(!Received.may_become(Completed));
    }

    #[test]
    fn every_non_final_state_may_fail() {
        for from in OrderState::ALL.into_iter().filter(|s| !s.is_final()) {
            assert!(from.may_become(OrderState::Failed), "{from}");
        }
    }

    #[test]
    fn shop_view_matches_the_existing_columns() {
        assert_eq!(
            OrderState::Completed.shop_view(),
            (ShopStatus::Approved, ExternalStatus::Done)
        );
        assert_eq!(
            OrderState::Failed.shop_view(),
            (ShopStatus::Rejected, ExternalStatus::Failed)
        );
        assert_eq!(
            OrderState::Dispatched.shop_view(),
            (ShopStatus::Pending, ExternalStatus::Sent)
        );
        assert_eq!(
            OrderState::Processing.shop_view(),
            (ShopStatus::Pending, ExternalStatus::Processing)
        );
    }

    /// One order's legal path as (version, state) events: dispatching, dispatched, n
    /// processing events, then a final one; plus duplicates.
    fn journey() -> impl proptest::strategy::Strategy<Value = Vec<(i64, OrderState)>> {
        use proptest::prelude::*;
        (
            0i64..8,
            any::<bool>(),
            prop::collection::vec(0usize..12, 0..6),
        )
            .prop_map(|(checks, completed, duplicates)| {
                let mut events = vec![
                    (version::DISPATCHING, OrderState::Dispatching),
                    (version::DISPATCHED, OrderState::Dispatched),
                ];
                for n in 1..=checks {
                    events.push((version::PROCESSING_BASE + n, OrderState::Processing));
                }
                let last = version::PROCESSING_BASE + checks + 1;
                let end = if completed {
                    OrderState::Completed
                } else {
                    OrderState::Failed
                };
                events.push((last, end));
                for d in duplicates {
                    let copy = events[d % events.len()];
                    events.push(copy);
                }
                events
            })
    }

    fn apply(events: &[(i64, OrderState)]) -> (i64, OrderState) {
        let mut row = events[0];
        for e in &events[1..] {
            if supersedes(*e, row) {
                row = *e;
            }
        }
        row
    }

    proptest::proptest! {
        #[test]
        fn any_arrival_order_ends_in_the_final_state(
            events in journey(),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let expected = *events.iter().max_by_key(|(v, s)| (*v, s.is_final())).unwrap();
            let mut shuffled = events.clone();
            // A deterministic shuffle from the seed.
            let mut rng = crate::core::seeded::Seeded::new(seed);
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.below(i + 1));
            }
            proptest::prop_assert_eq!(apply(&shuffled), expected);
        }
    }

    #[test]
    fn a_final_row_is_never_replaced() {
        use OrderState::*;
        assert!(!supersedes((9, Processing), (3, Completed)));
        assert!(!supersedes((9, Failed), (3, Completed)));
        assert!(supersedes((4, Completed), (4, Processing)));
        assert!(!supersedes((4, Processing), (4, Processing)));
        assert!(!supersedes((3, Processing), (4, Processing)));
    }

    #[test]
    fn only_a_placed_order_replaces_the_invalid_answer() {
        use OrderState::*;
        let rank = |version, state, placed| Rank {
            version,
            state,
            placed,
        };
        let invalid = rank(version::DISPATCHED, Failed, false);
        // The replayed order's events, whatever their version, replace the answer.
        for (v, state) in [
            (1, Dispatching),
            (2, Dispatched),
            (3, Processing),
            (4, Completed),
        ] {
            assert!(replaces(rank(v, state, true), invalid), "{state}");
        }
        // The answer again, or late, never replaces what the placed order reached.
        assert!(!replaces(invalid, invalid));
        for (v, state) in [(1, Dispatching), (2, Dispatched), (3, Processing)] {
            assert!(!replaces(invalid, rank(v, state, true)), "{state}");
        }
        // Nothing else changes: final placed rows stay, versions rule among placed events.
        assert!(!replaces(
            rank(9, Processing, true),
            rank(3, Completed, true)
        ));
        assert!(!replaces(rank(9, Failed, true), rank(3, Failed, true)));
        assert!(replaces(
            rank(4, Completed, true),
            rank(4, Processing, true)
        ));
        assert!(!replaces(
            rank(3, Processing, true),
            rank(4, Processing, true)
        ));
        // A row never placed and not final (none is written so) follows the version rule.
        assert!(replaces(invalid, rank(1, Received, false)));
    }

    #[test]
    fn serialized_names_are_the_documented_ones() {
        for s in OrderState::ALL {
            assert_eq!(s.as_str().parse::<OrderState>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
