//! The status page's rendering, without a database or a broker: what the tiles and panels
//! say for a snapshot, that a source that did not answer is said so, and that the HTML is
//! escaped.

use super::collect::{Part, Snapshot, TierLag};
use super::panels::{panels, tiles};
use super::parts::{DlqCounts, StuckOrders};
use super::render::{escape, page};
use crate::db::overview::{Finished, TierChains};
use chrono::{DateTime, Utc};

fn at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-17T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn busy() -> Snapshot {
    let mut s = Snapshot::empty(at());
    s.finished = Part::Ok(vec![
        Finished {
            state: "completed".into(),
            reason: None,
            last_1m: 7,
            last_5m: 30,
            last_15m: 90,
        },
        Finished {
            state: "failed".into(),
            reason: Some("rejected".into()),
            last_1m: 1,
            last_5m: 2,
            last_15m: 3,
        },
    ]);
    s.being_placed = Part::Ok(4);
    s.tier_lag = Part::Ok(vec![
        TierLag {
            tier: "first".into(),
            topic: "orders.dispatched".into(),
            waiting: 5,
        },
        TierLag {
            tier: "30s".into(),
            topic: "orders.status-check.30s".into(),
            waiting: 11,
        },
    ]);
    s.tier_chains = Part::Ok(vec![TierChains {
        tier: "30s".into(),
        chains: 9,
    }]);
    s.dead_letters = Part::Ok(DlqCounts {
        per_reason: [("invalid_json".to_owned(), 2)].into(),
        read_at: at(),
    });
    s
}

fn panel<'a>(all: &'a [super::Panel], id: &str) -> &'a super::Panel {
    all.iter().find(|p| p.id == id).unwrap()
}

#[test]
fn tiles_and_panels_say_what_the_snapshot_holds() {
    let s = busy();
    let t = tiles(&s);
    let value = |id: &str| t.iter().find(|t| t.id == id).unwrap().value.clone();
    assert_eq!(value("completed-1m"), "7");
    assert_eq!(value("failed-1m"), "1");
    assert_eq!(
        value("open"),
        "18",
        "4 being placed + 5 waiting first + 9 between checks"
    );
    assert_eq!(value("waiting"), "16");
    assert_eq!(value("stuck"), "0");
    assert_eq!(value("dead-letters"), "2");

    let p = panels(&s);
    let finished = panel(&p, "finished");
    assert_eq!(finished.rows[0].key, "completed");
    assert_eq!(
        finished.rows[0].cells,
        ["completed", "7", "30", "90", "6.0"]
    );
    assert_eq!(finished.rows[1].key, "failed-rejected");
    let tiers = panel(&p, "tiers");
    assert_eq!(tiers.rows[1].cells, ["30s", "11", "9"]);
    assert_eq!(tiers.rows[0].cells[2], "0", "no open chain waits on first");
    let open = panel(&p, "open");
    assert_eq!(
        open.rows[1].cells,
        ["placed, waiting for the first check", "5"]
    );
    assert_eq!(
        panel(&p, "dead-letters").rows[0].cells,
        ["invalid_json", "2"]
    );
    assert!(panel(&p, "stuck").rows.is_empty());
}

#[test]
fn a_source_that_did_not_answer_is_said_so_and_shows_no_number() {
    let mut s = busy();
    s.tier_lag = Part::Unavailable("the Kafka cluster did not answer".into());
    s.stuck = Part::Unavailable("the database did not answer within 5 s".into());
    let t = tiles(&s);
    assert_eq!(t.iter().find(|t| t.id == "waiting").unwrap().value, "-");
    assert_eq!(t.iter().find(|t| t.id == "stuck").unwrap().value, "-");
    let p = panels(&s);
    let tiers = panel(&p, "tiers");
    assert_eq!(tiers.unavailable, ["the Kafka cluster did not answer"]);
    // PostgreSQL's chains still show, with Kafka's column empty.
    assert_eq!(tiers.rows[0].cells, ["30s", "-", "9"]);
    assert_eq!(t.iter().find(|t| t.id == "open").unwrap().value, "-");
    let html = page(&s);
    assert!(html.contains("<p class=\"unavailable\">the Kafka cluster did not answer</p>"));
}

#[test]
fn more_stuck_orders_than_listed_show_a_plus() {
    let mut s = busy();
    s.stuck = Part::Ok(StuckOrders {
        orders: Vec::new(),
        more: true,
    });
    assert_eq!(
        tiles(&s).iter().find(|t| t.id == "stuck").unwrap().value,
        "0+"
    );
}

#[test]
fn the_page_is_filled_in_and_escaped() {
    let mut s = busy();
    s.topic_prefix = "<script>alert(1)</script>{{panels}}".into();
    let html = page(&s);
    assert!(!html.contains("<script>alert(1)"), "not escaped");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;{{panels}}"));
    assert!(!html.contains("{{tiles}}") && !html.contains("{{taken}}"));
    assert!(html.contains("<tr data-key=\"completed\"><td>completed</td><td class=\"num\">7</td>"));
    assert!(html.contains("id=\"tile-open\"><div class=\"value\">18</div>"));
    assert!(html.contains("2026-12-17 10:00:00 UTC"));
    assert_eq!(escape("a&b\"c'<>"), "a&amp;b&quot;c&#39;&lt;&gt;");
}

#[test]
fn the_json_view_carries_the_snapshot_and_its_panels() {
    let s = busy();
    let json = serde_json::to_value(super::View::of(&s)).unwrap();
    assert_eq!(json["snapshot"]["being_placed"]["ok"], 4);
    assert_eq!(json["snapshot"]["tier_lag"]["ok"][1]["waiting"], 11);
    assert_eq!(json["panels"][0]["id"], "finished");
    assert_eq!(json["tiles"][0]["value"], "7");
}
