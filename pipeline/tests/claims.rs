//! The claim protocol of `dispatch_claims` against the real PostgreSQL: one owner at a time,
//! a reference fixed once, and no write by an owner whose lease passed to another (G1).

mod common;

use chrono::Utc;
use orderflow::db::claims::{self, Begin, Claimed, Phase};
use std::time::Duration;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(30);

async fn held(c: Result<Claimed, sqlx::Error>) -> claims::Claim {
    match c.unwrap() {
        Claimed::Held(claim) => claim,
        Claimed::Busy { .. } => panic!("expected to hold the claim"),
    }
}

#[tokio::test]
async fn the_reference_is_fixed_once_and_one_owner_works_at_a_time() {
    let db = common::TestDb::new_migrated().await;
    let (order, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let deadline = Utc::now() + chrono::Duration::hours(1);

    let first =
        held(claims::claim(&db.pool, order, "shop-1", "acct", deadline, a, LEASE).await).await;
    assert_eq!((first.phase, first.place_calls), (Phase::New, 0));
    assert!(first.provider_reference.bytes().all(|c| c.is_ascii_digit()));

    // Another owner waits; the reference never changes.
    assert!(matches!(
        claims::claim(&db.pool, order, "shop-1", "acct", deadline, b, LEASE)
            .await
            .unwrap(),
        Claimed::Busy { .. }
    ));
    let again =
        held(claims::claim(&db.pool, order, "shop-1", "acct", deadline, a, LEASE).await).await;
    assert_eq!(again.provider_reference, first.provider_reference);

    // Two orders never share a reference.
    let other = held(
        claims::claim(
            &db.pool,
            Uuid::new_v4(),
            "shop-1",
            "acct",
            deadline,
            a,
            LEASE,
        )
        .await,
    )
    .await;
    assert_ne!(other.provider_reference, first.provider_reference);
    db.drop_now().await;
}

#[tokio::test]
async fn an_owner_whose_lease_passed_to_another_can_neither_place_nor_settle() {
    let db = common::TestDb::new_migrated().await;
    let (order, slow, next) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let deadline = Utc::now() + chrono::Duration::hours(1);
    let short = Duration::from_millis(200);

    held(claims::claim(&db.pool, order, "shop-1", "acct", deadline, slow, short).await).await;
    assert_eq!(
        claims::begin_placing(&db.pool, order, slow, short)
            .await
            .unwrap(),
        Begin::Ready(Phase::New)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;

    // The lease ran out: another owner takes the order over and sees a call may be out.
    let taken =
        held(claims::claim(&db.pool, order, "shop-1", "acct", deadline, next, LEASE).await).await;
    assert_eq!((taken.phase, taken.place_calls), (Phase::Placing, 1));

    assert_eq!(
        claims::begin_placing(&db.pool, order, slow, LEASE)
            .await
            .unwrap(),
        Begin::LeaseLost
    );
    assert!(
        claims::settle(&db.pool, order, slow, Phase::Rejected, Some("3"), Some("x"))
            .await
            .unwrap()
            .is_none()
    );
    let settled = claims::settle(&db.pool, order, next, Phase::Placed, None, None)
        .await
        .unwrap()
        .expect("the lease holder settles");
    assert_eq!(settled.phase, Phase::Placed);

    // Settled: anyone reads the outcome without taking a lease.
    let done =
        held(claims::claim(&db.pool, order, "shop-1", "acct", deadline, slow, LEASE).await).await;
    assert_eq!(done.phase, Phase::Placed);
    let done =
        held(claims::claim(&db.pool, order, "shop-1", "acct", deadline, next, LEASE).await).await;
    assert_eq!(done.phase, Phase::Placed);
    db.drop_now().await;
}

#[tokio::test]
async fn a_lapsed_lease_nobody_took_is_still_its_owners() {
    let db = common::TestDb::new_migrated().await;
    let (order, owner) = (Uuid::new_v4(), Uuid::new_v4());
    let deadline = Utc::now() + chrono::Duration::hours(1);
    held(
        claims::claim(
            &db.pool,
            order,
            "shop-1",
            "acct",
            deadline,
            owner,
            Duration::from_millis(50),
        )
        .await,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        claims::begin_placing(&db.pool, order, owner, LEASE)
            .await
            .unwrap(),
        Begin::Ready(Phase::New)
    );
    // A call that certainly never left resets the mark, so the order is new again.
    claims::unmark_placing(&db.pool, order, owner)
        .await
        .unwrap();
    assert_eq!(
        claims::get(&db.pool, order).await.unwrap().unwrap().phase,
        Phase::New
    );
    db.drop_now().await;
}

#[tokio::test]
async fn the_first_claim_keeps_its_account() {
    let db = common::TestDb::new_migrated().await;
    let (order, owner) = (Uuid::new_v4(), Uuid::new_v4());
    let deadline = Utc::now() + chrono::Duration::hours(1);
    held(claims::claim(&db.pool, order, "shop-1", "first", deadline, owner, LEASE).await).await;
    let later =
        held(claims::claim(&db.pool, order, "shop-1", "second", deadline, owner, LEASE).await)
            .await;
    assert_eq!(later.provider_account, "first");
    db.drop_now().await;
}

#[tokio::test]
async fn no_call_is_begun_past_the_deadline() {
    let db = common::TestDb::new_migrated().await;
    let (order, owner) = (Uuid::new_v4(), Uuid::new_v4());
    let deadline = Utc::now() + chrono::Duration::milliseconds(100);
    held(claims::claim(&db.pool, order, "shop-1", "acct", deadline, owner, LEASE).await).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        claims::begin_placing(&db.pool, order, owner, LEASE)
            .await
            .unwrap(),
        Begin::PastDeadline
    );
    db.drop_now().await;
}
