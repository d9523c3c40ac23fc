//! The `provider_slots` and `provider_slot_wants` tables: each provider account's caps as
//! slots that one process at a time holds under a lease, and what each process wants of
//! them (`crate::core::caps` says why slots, `crate::account_caps` runs the keeper that
//! calls these). Every statement is one round trip, off the calls' path.

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

/// What one [`sync`] learned: the slots still this process's, and the others' wants.
#[derive(Clone, Debug, Default)]
pub struct Synced {
    pub calls: Vec<u32>,
    pub rates: Vec<u32>,
    pub others: Vec<OtherWants>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Makes the account's slot rows match its caps (`calls` call slots, `rates` rate slots):
/// missing ones added, those above the caps deleted; and forgets wants a day old.
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
    sqlx::query("DELETE FROM provider_slot_wants WHERE seen_until < now() - interval '1 day'")
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Records what `holder` wants, renews the leases of the slots it holds (for `lease` from
/// the database's now) and reads what the other live processes want.
pub async fn sync(
    pool: &PgPool,
    account: &str,
    holder: &str,
    calls: u32,
    rates: u32,
    lease: Duration,
) -> sqlx::Result<Synced> {
    let rows: Vec<(String, String, i32, i32)> = sqlx::query_as(
        "WITH mine AS (
             INSERT INTO provider_slot_wants (account, holder, calls, rates, seen_until)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
             ON CONFLICT (account, holder) DO UPDATE
                SET calls = EXCLUDED.calls, rates = EXCLUDED.rates,
                    seen_until = EXCLUDED.seen_until
         ), renewed AS (
             UPDATE provider_slots SET lease_until = now() + make_interval(secs => $5)
              WHERE account = $1 AND holder = $2
             RETURNING kind, slot
         )
         SELECT 'slot', kind, slot, 0 FROM renewed
         UNION ALL
         SELECT 'want', holder, calls, rates FROM provider_slot_wants
          WHERE account = $1 AND holder <> $2 AND seen_until > now()",
    )
    .bind(account)
    .bind(holder)
    .bind(i32::try_from(calls).unwrap_or(i32::MAX))
    .bind(i32::try_from(rates).unwrap_or(i32::MAX))
    .bind(secs(lease))
    .fetch_all(pool)
    .await?;
    let mut synced = Synced::default();
    for (what, name, a, b) in rows {
        let (a, b) = (a.max(0) as u32, b.max(0) as u32);
        match (what.as_str(), Kind::parse(&name)) {
            ("slot", Some(Kind::Call)) => synced.calls.push(a),
            ("slot", Some(Kind::Rate)) => synced.rates.push(a),
            ("want", _) => synced.others.push(OtherWants {
                holder: name,
                calls: a,
                rates: b,
            }),
            _ => {}
        }
    }
    Ok(synced)
}

/// Takes up to `n` free slots of `kind` for `holder`: never held, given back and rested,
/// or whose holder's lease lapsed. Returns the slots taken.
pub async fn acquire(
    pool: &PgPool,
    account: &str,
    holder: &str,
    kind: Kind,
    n: u32,
    lease: Duration,
) -> sqlx::Result<Vec<u32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let got: Vec<i32> = sqlx::query_scalar(
        "UPDATE provider_slots s
            SET holder = $2, lease_until = now() + make_interval(secs => $5)
           FROM (SELECT slot FROM provider_slots
                  WHERE account = $1 AND kind = $3
                    AND (lease_until IS NULL OR lease_until <= now())
                  ORDER BY slot
                  LIMIT $4
                  FOR UPDATE SKIP LOCKED) AS free
          WHERE s.account = $1 AND s.kind = $3 AND s.slot = free.slot
         RETURNING s.slot",
    )
    .bind(account)
    .bind(holder)
    .bind(kind.as_str())
    .bind(i64::from(n))
    .bind(secs(lease))
    .fetch_all(pool)
    .await?;
    Ok(got.into_iter().map(|s| s.max(0) as u32).collect())
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
    let numbers: Vec<i32> = slots
        .iter()
        .map(|r| i32::try_from(r.slot).unwrap_or(i32::MAX))
        .collect();
    let rests: Vec<f64> = slots.iter().map(|r| secs(r.rest)).collect();
    sqlx::query(
        "UPDATE provider_slots s
            SET holder = NULL,
                lease_until = CASE WHEN r.rest > 0
                                   THEN now() + make_interval(secs => r.rest) END
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

/// Forgets what `holder` wants (it stops).
pub async fn leave(pool: &PgPool, account: &str, holder: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM provider_slot_wants WHERE account = $1 AND holder = $2")
        .bind(account)
        .bind(holder)
        .execute(pool)
        .await?;
    Ok(())
}
