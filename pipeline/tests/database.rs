//! Migrations, the `orders` table and the plans of the batch statements against the real
//! PostgreSQL.

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

/// Poll's finish of a batch of steps reads the batch's chains by primary key even while the
/// table has no statistics yet (a new database before autovacuum's first `ANALYZE`), when
/// the planner took 30,000 rows for few enough to read them all for every batch.
#[tokio::test]
async fn a_batch_finish_reads_its_chains_by_primary_key_before_any_statistics() {
    let db = common::TestDb::new_migrated().await;
    sqlx::query("ALTER TABLE check_chains SET (autovacuum_enabled = false)")
        .execute(&db.pool)
        .await
        .unwrap();
    let owner = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO check_chains (order_id, tenant_id, provider_account, provider_reference,
                                   dispatched_at, deadline, seq, step_done, attempts, version,
                                   final_state, ended_at)
         SELECT gen_random_uuid(), 'shop-1', 'znet-main', g::text, now(), now() + interval '1 day',
                2, true, 2, 5, 'completed', now()
           FROM generate_series(1, 30000) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let batch: Vec<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO check_chains (order_id, tenant_id, provider_account, provider_reference,
                                   dispatched_at, deadline, seq, step_done, attempts, version,
                                   lease_owner, lease_until)
         SELECT gen_random_uuid(), 'shop-1', 'znet-main', 'b' || g, now(),
                now() + interval '1 day', 1, false, 0, 3, $1, now() + interval '1 minute'
           FROM generate_series(1, 250) g
         RETURNING order_id",
    )
    .bind(owner)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let n = batch.len();
    let analyzed: Option<chrono::DateTime<Utc>> = sqlx::query_scalar(
        "SELECT greatest(last_analyze, last_autoanalyze) FROM pg_stat_user_tables
          WHERE relname = 'check_chains'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(analyzed, None, "the table must have no statistics yet");

    let plan = common::batch_plan(&db.pool, orderflow::db::chains::FINISH_STEPS, |q| {
        q.bind(owner)
            .bind(batch.clone())
            .bind(vec![1i64; n])
            .bind(vec![1i32; n])
            .bind(vec![4i64; n])
            .bind(vec![Some(Utc::now()); n])
            .bind(vec![None::<String>; n])
            .bind(vec![Some("1m".to_string()); n])
            .bind(vec![None::<String>; n])
    })
    .await;
    assert!(
        !plan.contains("Seq Scan on check_chains"),
        "the finish statement reads the whole table:\n{plan}"
    );
    assert!(plan.contains("check_chains_pkey"), "{plan}");
    db.drop_now().await;
}

/// The backend process of a batch connection's session.
async fn backend_pid(batch: &orderflow::db::BatchConnections) -> i32 {
    let conn = batch.acquire().await.expect("a batch connection");
    backend_pids([conn]).await[0]
}

/// The backend processes of connections held at once, each given back after answering.
async fn backend_pids(
    held: impl IntoIterator<Item = orderflow::db::batch_connections::BatchConnection>,
) -> Vec<i32> {
    let mut pids = Vec::new();
    for mut conn in held {
        let pid = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(conn.connection())
            .await;
        pids.push(conn.release(pid).expect("asking for the backend's pid"));
    }
    pids
}

/// A batch connection keeps its session from statement to statement (no reconnect, so no
/// round trip of sqlx's release ping either), with the planner settings of batch
/// statements; one whose statement was refused, or abandoned halfway, is not reused.
#[tokio::test]
async fn a_batch_connection_is_kept_only_after_its_statement_answered() {
    let db = common::TestDb::new_migrated().await;
    let batch = orderflow::db::BatchConnections::beside(&db.pool);
    assert_eq!(
        batch.idle_count(),
        0,
        "none is opened before the first statement"
    );

    let first = backend_pid(&batch).await;
    assert_eq!(backend_pid(&batch).await, first, "the session is kept");
    assert_eq!(batch.idle_count(), 1);
    let mut conn = batch.acquire().await.unwrap();
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings
          WHERE name IN ('enable_nestloop', 'enable_seqscan') ORDER BY name",
    )
    .fetch_all(conn.connection())
    .await
    .unwrap();
    assert_eq!(
        settings,
        [
            ("enable_nestloop".to_owned(), "off".to_owned()),
            ("enable_seqscan".to_owned(), "off".to_owned())
        ]
    );
    assert_eq!(batch.in_use(), 1);
    conn.release(Ok(())).unwrap();
    assert_eq!(batch.in_use(), 0);

    // The server refuses the statement: the connection is closed, not reused.
    let mut conn = batch.acquire().await.unwrap();
    let refused = sqlx::query("SELECT 1 / 0").execute(conn.connection()).await;
    assert!(conn.release(refused).is_err());
    let second = backend_pid(&batch).await;
    assert_ne!(second, first, "a refused statement's connection was reused");

    // A statement abandoned halfway (its future dropped, as at shutdown): the connection
    // is in an unknown state and is closed.
    let mut conn = batch.acquire().await.unwrap();
    let abandoned = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        sqlx::query("SELECT pg_sleep(2)").execute(conn.connection()),
    )
    .await;
    assert!(abandoned.is_err(), "the sleep answered within 200 ms");
    drop(conn);
    assert_eq!(batch.in_use(), 0);
    let third = backend_pid(&batch).await;
    assert_ne!(
        third, second,
        "an abandoned statement's connection was reused"
    );
    db.drop_now().await;
}

/// A stage opens its batch connections before its first message, so that its first
/// statements under load do not each open one: as many as the pool's bound, each a session
/// of its own; asked again, it opens none while they are open, and one closed since is
/// opened again.
#[tokio::test]
async fn every_batch_connection_is_opened_ahead() {
    let db = common::TestDb::new_migrated().await;
    let batch = orderflow::db::BatchConnections::beside(&db.pool);
    let bound = db.pool.options().get_max_connections() as usize;
    assert_eq!(bound, 4, "the test pool's max_connections");
    batch.open_ahead().await;
    assert_eq!(batch.idle_count(), bound);
    assert_eq!(batch.in_use(), 0);
    let before = backend_pids(idle_all(&batch, bound).await).await;
    batch.open_ahead().await;
    assert_eq!(batch.idle_count(), bound);
    let mut again = backend_pids(idle_all(&batch, bound).await).await;
    let mut pids = before;
    pids.sort();
    again.sort();
    assert_eq!(again, pids, "opened more while open ones were there");
    pids.dedup();
    assert_eq!(pids.len(), bound, "sessions shared");

    // One refused statement closes its connection; asked again, only that one is opened.
    let mut conn = batch.acquire().await.unwrap();
    let refused = sqlx::query("SELECT 1 / 0").execute(conn.connection()).await;
    assert!(conn.release(refused).is_err());
    assert_eq!(batch.idle_count(), bound - 1);
    batch.open_ahead().await;
    assert_eq!(batch.idle_count(), bound);

    let small = orderflow::db::DbConfig {
        max_connections: 2,
        ..orderflow::db::DbConfig::for_tests(&db.url)
    }
    .connect()
    .await
    .unwrap();
    let bounded = orderflow::db::BatchConnections::beside(&small);
    bounded.open_ahead().await;
    assert_eq!(bounded.idle_count(), 2, "not the pool's bound");
    drop(bounded);
    small.close().await;
    db.drop_now().await;
}

/// Every idle connection of `batch` (it holds `n`), taken at once.
async fn idle_all(
    batch: &orderflow::db::BatchConnections,
    n: usize,
) -> Vec<orderflow::db::batch_connections::BatchConnection> {
    let taken: Vec<_> = futures::future::join_all((0..n).map(|_| batch.acquire()))
        .await
        .into_iter()
        .map(|c| c.expect("an idle connection"))
        .collect();
    assert_eq!(batch.idle_count(), 0);
    taken
}

/// When PostgreSQL drops the sessions (a restart, an operator's `pg_terminate_backend`),
/// the statement on a dead connection fails, every idle one is closed with it, and the
/// next statement opens a new session: one failure for the caller to retry, not one per
/// idle connection.
#[tokio::test]
async fn batch_connections_lost_with_the_server_fail_one_statement() {
    let db = common::TestDb::new_migrated().await;
    let batch = orderflow::db::BatchConnections::beside(&db.pool);
    // Three sessions open and idle.
    let (a, b, c) = tokio::join!(batch.acquire(), batch.acquire(), batch.acquire());
    let pids = backend_pids([a.unwrap(), b.unwrap(), c.unwrap()]).await;
    assert_eq!(batch.idle_count(), 3);
    let ended: Vec<bool> =
        sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM UNNEST($1::int4[]) AS t(pid)")
            .bind(&pids)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(ended, [true, true, true]);
    // The terminated backends are gone once the server says so.
    for _ in 0..50 {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&pids)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let mut conn = batch.acquire().await.unwrap();
    let lost = sqlx::query("SELECT 1").execute(conn.connection()).await;
    assert!(conn.release(lost).is_err(), "a terminated session answered");
    assert_eq!(batch.idle_count(), 0, "the other dead sessions were kept");
    let pid = backend_pid(&batch).await;
    assert!(!pids.contains(&pid));
    db.drop_now().await;
}
