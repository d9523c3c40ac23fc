//! The `provider_slots` and `provider_slot_holders` tables: each provider account's caps as
//! slots, each one process's at a time, and the processes holding them under one lease per
//! process and account (`crate::core::caps` says why slots, `crate::account_caps` runs the
//! keeper that calls these). Off the calls' path: a keeper makes one statement a few times a
//! second, more only while its share changes.
//!
//! The lease is the holder's row: renewing it is one row, however many slots the process
//! holds. Two rules keep a slot with one process at a time:
//! - a holder renews its row only while it lives (`lease_until > now()`); a row found lapsed
//!   or gone is never brought back: the process joins again under a new name, from no slots;
//! - slots are taken in a transaction that holds the taker's own row `FOR SHARE` (so it
//!   cannot be reaped meanwhile), and a lapsed holder's slots are freed in the statement
//!   that deletes its row (whose row lock orders it after any renewal in flight).

use crate::core::caps::{Kind, Release};
use sqlx::PgPool;
use std::time::Duration;

/// Another process's wants, as its row says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherWants {
    pub holder: String,
    pub calls: u32,
    pub rates: u32,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Makes the account's slot rows match its caps (`calls` call slots, `rates` rate slots):
/// missing ones added, those above the caps deleted; and forgets holders a day past their
/// lease (with their slots).
pub async fn prepare(pool: &PgPool, account: &str, calls: u32, rates: u32) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    for (kind, n) in [(Kind::Call, calls), (Kind::Rate, rates)] {
        sqlx::query(
            "INSERT INTO provider_slots (account, kind, slot)
             SELECT $1, $2, g FROM generate_series(0, $3 - 1) AS g
             ON CONFLICT DO NOTHING",
        )
        .bind(account)
        .bind(kind.as_str())
        .bind(i64::from(n))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM provider_slots WHERE account = $1 AND kind = $2 AND slot >= $3")
            .bind(account)
            .bind(kind.as_str())
            .bind(i64::from(n))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    reap(pool, account).await
}

/// Renews `holder`'s lease (for `lease` from the database's now) with what it wants, and
/// reads what the other live holders want. `None`: the lease had lapsed or the row is gone;
/// the holder's slots are no longer its own, and it must [`join`] again under a new name.
pub async fn renew(
    pool: &PgPool,
    account: &str,
    holder: &str,
    calls: u32,
    rates: u32,
    lease: Duration,
) -> sqlx::Result<Option<Vec<OtherWants>>> {
    let rows: Vec<(bool, String, i32, i32)> = sqlx::query_as(
        "WITH mine AS (
             UPDATE provider_slot_holders
                SET calls = $3, rates = $4, lease_until = now() + make_interval(secs => $5)
              WHERE account = $1 AND holder = $2 AND lease_until > now()
             RETURNING holder, calls, rates
         )
         SELECT true, holder, calls, rates FROM mine
         UNION ALL
         SELECT false, holder, calls, rates FROM provider_slot_holders
          WHERE account = $1 AND holder <> $2 AND lease_until > now()",
    )
    .bind(account)
    .bind(holder)
    .bind(count(calls))
    .bind(count(rates))
    .bind(secs(lease))
    .fetch_all(pool)
    .await?;
    if !rows.iter().any(|(mine, ..)| *mine) {
        return Ok(None);
    }
    Ok(Some(others(rows)))
}

fn others(rows: Vec<(bool, String, i32, i32)>) -> Vec<OtherWants> {
    rows.into_iter()
        .filter(|(mine, ..)| !mine)
        .map(|(_, holder, calls, rates)| OtherWants {
            holder,
            calls: calls.max(0) as u32,
            rates: rates.max(0) as u32,
        })
        .collect()
}

/// Makes `holder` a holder of the account's slots, holding none yet, under a lease of
/// `lease`; `previous` (this process's earlier name, whose lease lapsed) is forgotten and
/// its slots freed. Returns what the other live holders want.
pub async fn join(
    pool: &PgPool,
    account: &str,
    holder: &str,
    previous: Option<&str>,
    calls: u32,
    rates: u32,
    lease: Duration,
) -> sqlx::Result<Vec<OtherWants>> {
    let mut tx = pool.begin().await?;
    if let Some(previous) = previous {
        // Unused since before its lease ended (its process stopped using them then), so
        // every rest they owed is over.
        sqlx::query(
            "WITH gone AS (
                 DELETE FROM provider_slot_holders WHERE account = $1 AND holder = $2
             )
             UPDATE provider_slots SET holder = NULL, free_at = NULL
              WHERE account = $1 AND holder = $2",
        )
        .bind(account)
        .bind(previous)
        .execute(&mut *tx)
        .await?;
    }
    let rows: Vec<(bool, String, i32, i32)> = sqlx::query_as(
        "WITH mine AS (
             INSERT INTO provider_slot_holders (account, holder, calls, rates, lease_until)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
         )
         SELECT false, holder, calls, rates FROM provider_slot_holders
          WHERE account = $1 AND holder <> $2 AND lease_until > now()",
    )
    .bind(account)
    .bind(holder)
    .bind(count(calls))
    .bind(count(rates))
    .bind(secs(lease))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(others(rows))
}

/// Deletes the account's holders whose lease lapsed and frees their slots: they stopped
/// using them before the lease ended, and a rate slot's rest is inside that margin.
pub async fn reap(pool: &PgPool, account: &str) -> sqlx::Result<()> {
    sqlx::query(
        "WITH dead AS (
             DELETE FROM provider_slot_holders
              WHERE account = $1 AND lease_until <= now()
             RETURNING holder
         )
         UPDATE provider_slots SET holder = NULL, free_at = NULL
          WHERE account = $1 AND holder IN (SELECT holder FROM dead)",
    )
    .bind(account)
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes up to `n` free slots of `kind` for `holder`: never held, or given back and rested
/// (lapsed holders are reaped first). `None`: `holder`'s own lease lapsed, nothing taken.
pub async fn acquire(
    pool: &PgPool,
    account: &str,
    holder: &str,
    kind: Kind,
    n: u32,
) -> sqlx::Result<Option<Vec<u32>>> {
    if n == 0 {
        return Ok(Some(Vec::new()));
    }
    reap(pool, account).await?;
    let mut tx = pool.begin().await?;
    // Held until the commit: a reaper deleting this row waits, and then frees what was
    // taken here only if the lease has lapsed by then, when this process no longer uses it.
    let live: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM provider_slot_holders
          WHERE account = $1 AND holder = $2 AND lease_until > now()
          FOR SHARE",
    )
    .bind(account)
    .bind(holder)
    .fetch_optional(&mut *tx)
    .await?;
    if live.is_none() {
        tx.rollback().await?;
        return Ok(None);
    }
    let got: Vec<i32> = sqlx::query_scalar(
        // MATERIALIZED: evaluated once. As a subquery joined to the UPDATE, the planner
        // may scan it again per row, and each scan locks and takes the next free slots:
        // a `LIMIT 1` took three.
        "WITH free AS MATERIALIZED (
             SELECT slot FROM provider_slots
              WHERE account = $1 AND kind = $3 AND holder IS NULL
                AND (free_at IS NULL OR free_at <= now())
              ORDER BY slot
              LIMIT $4
              FOR UPDATE SKIP LOCKED
         )
         UPDATE provider_slots s
            SET holder = $2, free_at = NULL
           FROM free
          WHERE s.account = $1 AND s.kind = $3 AND s.slot = free.slot
         RETURNING s.slot",
    )
    .bind(account)
    .bind(holder)
    .bind(kind.as_str())
    .bind(i64::from(n))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(got.into_iter().map(|s| s.max(0) as u32).collect()))
}

/// Gives slots back; a rate slot stays untaken for the rest it still owes.
pub async fn release(
    pool: &PgPool,
    account: &str,
    holder: &str,
    slots: &[Release],
) -> sqlx::Result<()> {
    if slots.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = slots.iter().map(|r| r.kind.as_str()).collect();
    let numbers: Vec<i32> = slots.iter().map(|r| count(r.slot)).collect();
    let rests: Vec<f64> = slots.iter().map(|r| secs(r.rest)).collect();
    sqlx::query(
        "UPDATE provider_slots s
            SET holder = NULL,
                free_at = CASE WHEN r.rest > 0 THEN now() + make_interval(secs => r.rest) END
           FROM UNNEST($3::text[], $4::int[], $5::float8[]) AS r(kind, slot, rest)
          WHERE s.account = $1 AND s.holder = $2 AND s.kind = r.kind AND s.slot = r.slot",
    )
    .bind(account)
    .bind(holder)
    .bind(&kinds)
    .bind(&numbers)
    .bind(&rests)
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives back `slots` (every slot `holder` holds, with the rests they owe) and forgets
/// `holder`: the process stops. Any other slot still naming it (one this process dropped
/// without the table knowing) is freed after `guard`, the longest a slot stays in use.
pub async fn leave(
    pool: &PgPool,
    account: &str,
    holder: &str,
    slots: &[Release],
    guard: Duration,
) -> sqlx::Result<()> {
    release(pool, account, holder, slots).await?;
    sqlx::query(
        "WITH gone AS (
             DELETE FROM provider_slot_holders WHERE account = $1 AND holder = $2
         )
         UPDATE provider_slots SET holder = NULL, free_at = now() + make_interval(secs => $3)
          WHERE account = $1 AND holder = $2",
    )
    .bind(account)
    .bind(holder)
    .bind(secs(guard))
    .execute(pool)
    .await?;
    Ok(())
}
