//! The claim protocol of `dispatch_claims` against the real PostgreSQL: one owner at a time,
//! a reference fixed once, and no write by an owner whose lease passed to another (G1).

mod common;

use chrono::Utc;
use orderflow::db::claims::{self, Begin, Claimed, NewClaim, Outcome, Phase};
use orderflow::db::BatchConnections;
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

/// Claims `count` new orders for `owner` in batches of 500, as dispatch does.
async fn claim_new(pool: &sqlx::PgPool, owner: Uuid, count: usize) -> Vec<Uuid> {
    let batch = BatchConnections::beside(pool);
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    let deadline = Utc::now() + chrono::Duration::hours(1);
    for chunk in ids.chunks(500) {
        let new: Vec<NewClaim> = chunk
            .iter()
            .map(|&order_id| NewClaim {
                order_id,
                tenant_id: "shop-1",
                provider_account: "acct",
                content_digest: "digest",
                user_digest: None,
                deadline,
                lease: LEASE,
            })
            .collect();
        let claimed = claims::claim_new_batch(&batch, &new, owner).await.unwrap();
        assert_eq!(claimed.len(), chunk.len());
    }
    ids
}

fn placed(ids: &[Uuid]) -> Vec<Outcome<'static>> {
    ids.iter()
        .map(|&order_id| Outcome {
            order_id,
            phase: Phase::Placed,
            code: None,
            message: None,
        })
        .collect()
}

/// A batch's settle reads the batch's own claims by primary key. The partial index of
/// unsettled claims still holds an entry for every claim settled since the table's last
/// vacuum; a plan that reads it costs every batch as much as all orders settled since.
#[tokio::test]
async fn settling_a_batch_does_not_read_the_claims_settled_before_it() {
    let db = common::TestDb::new_migrated().await;
    // What autovacuum would clean up is left in place, as between two of its runs.
    sqlx::query("ALTER TABLE dispatch_claims SET (autovacuum_enabled = false)")
        .execute(&db.pool)
        .await
        .unwrap();
    let owner = Uuid::new_v4();
    let connections = BatchConnections::beside(&db.pool);
    let settled_before = claim_new(&db.pool, owner, 5_000).await;
    for chunk in settled_before.chunks(500) {
        let settled = claims::settle_batch(&connections, owner, &placed(chunk))
            .await
            .unwrap();
        assert_eq!(settled.len(), chunk.len());
    }
    // The planner now knows that claims being placed are few.
    sqlx::query("ANALYZE dispatch_claims")
        .execute(&db.pool)
        .await
        .unwrap();

    let batch = claim_new(&db.pool, owner, 14).await;
    let n = batch.len();
    let plan = common::batch_plan(&db.pool, claims::SETTLE_BATCH, |q| {
        q.bind(owner)
            .bind(batch.clone())
            .bind(vec!["placed"; n])
            .bind(vec![None::<&str>; n])
            .bind(vec![None::<&str>; n])
    })
    .await;
    assert!(
        !plan.contains("dispatch_claims_unsettled_idx"),
        "the settle statement reads the index of unsettled claims:\n{plan}"
    );
    assert!(plan.contains("dispatch_claims_pkey"), "{plan}");

    let settled = claims::settle_batch(&connections, owner, &placed(&batch))
        .await
        .unwrap();
    assert_eq!(settled.len(), batch.len());
    assert!(settled.iter().all(|c| c.phase == Phase::Placed));
    db.drop_now().await;
}
