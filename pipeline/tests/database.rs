//! Migrations and the `orders` table against the real PostgreSQL.

mod common;

use chrono::Utc;
use orderflow::core::event::{Failure, OrderStateEvent, SCHEMA_VERSION};
use orderflow::core::lifecycle::{FailureReason, OrderState};
use orderflow::db::orders::{self, OrderRow};

fn event(state: OrderState, version: i64) -> OrderStateEvent {
    OrderStateEvent {
        schema_version: SCHEMA_VERSION,
        order_id: uuid::Uuid::nil(),
        tenant_id: "shop-1".into(),
        provider_account: "znet-main".into(),
        provider_reference: Some("100000042".into()),
        state,
        failure: None,
        pin: None,
        attempts: 0,
        next_check_at: None,
        deadline: Some(Utc::now() + chrono::Duration::hours(24)),
        version,
        changed_at: Utc::now(),
    }
}

#[tokio::test]
async fn an_empty_database_migrates_and_a_row_round_trips() {
    let db = common::TestDb::new_empty().await;
    orderflow::db::migrate(&db.pool).await.unwrap();
    // Applying again is a no-op, not an error.
    orderflow::db::migrate(&db.pool).await.unwrap();

    let id = uuid::Uuid::new_v4();
    let mut e = event(OrderState::Processing, 4);
    e.order_id = id;
    e.attempts = 2;
    e.next_check_at = Some(Utc::now());
    let row = OrderRow::from_event(&e);
    assert!(orders::upsert(&db.pool, &row).await.unwrap());

    let read = orders::get(&db.pool, id).await.unwrap().expect("the row");
    // timestamptz keeps microseconds.
    let trunc = |t: Option<chrono::DateTime<Utc>>| t.map(|t| t.timestamp_micros());
    assert_eq!(trunc(read.next_check_at), trunc(row.next_check_at));
    assert_eq!(trunc(read.deadline), trunc(row.deadline));
    assert_eq!(
        OrderRow {
            next_check_at: None,
            deadline: None,
            ..read
        },
        OrderRow {
            next_check_at: None,
            deadline: None,
            ..row
        }
    );
    assert_eq!(
        orders::shop_status(&db.pool, id).await.unwrap(),
        Some(("pending".into(), "processing".into()))
    );
    db.drop_now().await;
}

#[tokio::test]
async fn older_events_and_final_rows_are_never_overwritten() {
    let db = common::TestDb::new_migrated().await;
    let id = uuid::Uuid::new_v4();
    let at = |state, version| {
        let mut e = event(state, version);
        e.order_id = id;
        if state == OrderState::Failed {
            e.failure = Some(Failure {
                reason: FailureReason::Rejected,
                code: Some("3".into()),
                message: "Kupur Bilgisi Bulunamadı".into(),
            });
        }
        OrderRow::from_event(&e)
    };

    assert!(orders::upsert(&db.pool, &at(OrderState::Processing, 5))
        .await
        .unwrap());
    assert!(
        !orders::upsert(&db.pool, &at(OrderState::Dispatched, 2))
            .await
            .unwrap(),
        "an older event"
    );
    assert!(
        !orders::upsert(&db.pool, &at(OrderState::Processing, 5))
            .await
            .unwrap(),
        "a duplicate"
    );
    assert!(orders::upsert(&db.pool, &at(OrderState::Failed, 6))
        .await
        .unwrap());
    assert!(
        !orders::upsert(&db.pool, &at(OrderState::Processing, 9))
            .await
            .unwrap(),
        "after final"
    );

    let row = orders::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!((row.state.as_str(), row.version), ("failed", 6));
    assert_eq!(
        row.last_error.as_deref(),
        Some("3|Kupur Bilgisi Bulunamadı")
    );
    assert_eq!(
        orders::shop_status(&db.pool, id).await.unwrap(),
        Some(("rejected".into(), "failed".into()))
    );
    db.drop_now().await;
}
