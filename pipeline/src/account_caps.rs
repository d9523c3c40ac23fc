//! Sharing each provider account's caps among every dispatch and poll process of the
//! cluster, through PostgreSQL (issue 18): the configured `max_concurrent` and
//! `max_per_second` are the account's, whatever the number of processes.
//!
//! The caps are slots (`crate::core::caps`): rows of `provider_slots`, each held by one
//! process at a time under a lease. Per account, each process runs a keeper that, a few
//! times a second and whenever a caller starts waiting, (1) records what the process wants
//! (calls running and waiting; rate slots used in the last second, or all of them while a
//! caller waits) and renews its leases, reading what the others want, in one statement;
//! (2) computes everyone's fair share from those wants (the same computation in every
//! process, `fair_shares`), (3) gives back the slots above its share, a rate slot with the
//! rest it still owes, and (4) takes free slots up to its share. Calls never wait for the
//! database: a call takes a slot this process already holds.
//!
//! Safety does not depend on the processes agreeing on the shares, only on the slots: a
//! slot is used by one process at a time, a rate slot at most once per rest across
//! hand-overs, and a process whose lease could not be renewed stops using its slots while
//! its lease has more than a call's length (and a rest) left, so no one else can take them
//! while they are in use. Shares only decide who waits.

use crate::account_status::written_by;
use crate::core::caps::{fair_shares, rate_slots, Kind, Wants};
use crate::db::caps as table;
use crate::metrics::{Metrics, SlotLabels};
use crate::provider::accounts::Account;
use sqlx::PgPool;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often a keeper looks while callers wait or it holds less than its share (at most
/// a few statements each time).
pub const TICK_BUSY: Duration = Duration::from_millis(200);
/// How often it looks otherwise (renewing its leases, following the others' wants).
pub const TICK_IDLE: Duration = Duration::from_secs(1);
/// The least time between two looks when callers keep arriving.
const TICK_MIN: Duration = Duration::from_millis(20);
/// How long the leftover slots (fewer slots than processes wanting them) stay with the
/// same processes before the turn passes on.
pub const TURN: Duration = Duration::from_secs(3);
/// How long a want is remembered: a process between two calls still wants its slots.
const WANTS_MEMORY: Duration = Duration::from_secs(1);
/// A lease lasts this much beyond the longest a slot is in use (a call, a rest): the time a
/// keeper has to renew it before its process must stop using the slots.
const LEASE_SLACK: Duration = Duration::from_secs(5);
/// The longest one statement of a keeper may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The keepers of a process's accounts; [`Keepers::stop`] gives their slots back.
pub struct Keepers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Shares the caps of `accounts` with the other processes from now on: makes the slot rows
/// match the caps, drops the slots the accounts held alone, and starts a keeper per
/// account. `stage` names the process in the table (`dispatch`, `poll`).
pub async fn share(
    stage: &str,
    accounts: Vec<Arc<Account>>,
    pool: PgPool,
    metrics: Arc<Metrics>,
) -> Result<Keepers, sqlx::Error> {
    let holder = format!(
        "{} {}",
        written_by(stage),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (stop, stopping) = watch::channel(false);
    let mut tasks = Vec::new();
    for account in accounts {
        let limits = account.limits();
        table::prepare(
            &pool,
            &account.id,
            account.caps.total(Kind::Call),
            rate_slots(limits.max_per_second).0,
        )
        .await?;
        account.caps.share();
        let keeper = Keeper {
            lease: lease(&account),
            guard: guard(&account),
            account,
            pool: pool.clone(),
            holder: holder.clone(),
            metrics: Arc::clone(&metrics),
        };
        tasks.push(tokio::spawn(keeper.run(stopping.clone())));
    }
    tracing::info!(%holder, "provider caps shared with the other processes through PostgreSQL");
    Ok(Keepers { stop, tasks })
}

impl Keepers {
    /// Stops the keepers, each giving its slots back (rate slots with the rest they owe).
    /// Call once the stage has stopped calling.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// The longest a slot is in use: a call (its timeout), a rate slot's rest; and a second.
fn guard(account: &Account) -> Duration {
    let (_, rest) = rate_slots(account.limits().max_per_second);
    account.request_timeout.max(rest) + Duration::from_secs(1)
}

fn lease(account: &Account) -> Duration {
    guard(account) + LEASE_SLACK
}

struct Keeper {
    account: Arc<Account>,
    pool: PgPool,
    holder: String,
    metrics: Arc<Metrics>,
    lease: Duration,
    guard: Duration,
}

impl Keeper {
    async fn run(self, mut stopping: watch::Receiver<bool>) {
        let caps = &self.account.caps;
        let wanted = caps.wanted();
        let mut recent: VecDeque<(Instant, Wants)> = VecDeque::new();
        let mut failing = false;
        loop {
            let sent = Instant::now();
            recent.push_back((sent, caps.wants(sent)));
            while recent
                .front()
                .is_some_and(|(t, _)| sent.duration_since(*t) > WANTS_MEMORY)
            {
                recent.pop_front();
            }
            let mine = recent.iter().fold(Wants::default(), |a, (_, w)| Wants {
                calls: a.calls.max(w.calls),
                rates: a.rates.max(w.rates),
            });
            let busy = match self.look(mine, sent).await {
                Ok(busy) => {
                    if failing {
                        tracing::info!(account = %self.account.id, "provider caps: the database answers again");
                        failing = false;
                    }
                    busy
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(account = %self.account.id, %error, "provider caps: cannot reach the slot table; calls go on with the slots held while their lease lasts");
                        failing = true;
                    }
                    true
                }
            };
            self.show_held();
            // While short, a look every TICK_BUSY; otherwise a caller starting to wait
            // brings the next look forward.
            let next = async {
                if busy {
                    tokio::time::sleep(TICK_BUSY).await;
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(TICK_IDLE) => {}
                        _ = wanted.notified() => tokio::time::sleep(TICK_MIN).await,
                    }
                }
            };
            tokio::select! {
                _ = next => {}
                _ = stopping.changed() => break,
            }
            if *stopping.borrow() {
                break;
            }
        }
        let back = caps.release_all(Instant::now(), self.guard);
        let id = &self.account.id;
        let gone = async {
            table::release(&self.pool, id, &self.holder, &back).await?;
            table::leave(&self.pool, id, &self.holder).await
        };
        let failed = match tokio::time::timeout(STATEMENT_TIMEOUT, gone).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(LookError::Slow.to_string()),
        };
        if let Some(error) = failed {
            tracing::warn!(account = %id, %error, "provider caps: slots not given back; their lease lapses");
        }
        self.show_held();
    }

    /// Sets `orderflow_provider_slots_held` to the slots held now.
    fn show_held(&self) {
        let (calls, rates) = self.account.caps.held();
        for (kind, n) in [(Kind::Call, calls), (Kind::Rate, rates)] {
            let labels = SlotLabels {
                account: self.account.id.clone(),
                kind: kind.as_str(),
            };
            self.metrics
                .provider_slots_held
                .get_or_create(&labels)
                .set(n as i64);
        }
    }

    /// One look: wants recorded and leases renewed, shares computed, slots given back and
    /// taken. `Ok(true)` while callers wait or this process holds less than its share.
    async fn look(&self, mine: Wants, sent: Instant) -> Result<bool, LookError> {
        let caps = &self.account.caps;
        let id = &self.account.id;
        let synced = timed(table::sync(
            &self.pool,
            id,
            &self.holder,
            mine.calls,
            mine.rates,
            self.lease,
        ))
        .await?;
        // Renewed from `sent` on at the earliest: usable until the lease's end less the
        // longest a slot stays in use. Past that, the slots are dropped at their next use.
        caps.usable_until(sent + self.lease - self.guard);
        let strays = caps.reconcile(&synced.calls, &synced.rates, self.guard);
        let mut all: Vec<(&str, Wants)> = synced
            .others
            .iter()
            .map(|o| {
                (
                    o.holder.as_str(),
                    Wants {
                        calls: o.calls,
                        rates: o.rates,
                    },
                )
            })
            .collect();
        all.push((&self.holder, mine));
        all.sort_by(|a, b| a.0.cmp(b.0));
        let me = all
            .iter()
            .position(|(h, _)| *h == self.holder)
            .expect("this process is listed");
        let turn = (chrono::Utc::now().timestamp().max(0) as u64 / TURN.as_secs()) as usize;
        let calls: Vec<u32> = all.iter().map(|(_, w)| w.calls).collect();
        let rates: Vec<u32> = all.iter().map(|(_, w)| w.rates).collect();
        let my_calls = fair_shares(caps.total(Kind::Call), &calls, turn)[me];
        let my_rates = fair_shares(caps.total(Kind::Rate), &rates, turn)[me];
        let mut back = caps.aim(my_calls, my_rates, Instant::now());
        back.extend(strays);
        timed(table::release(&self.pool, id, &self.holder, &back)).await?;
        let (held_calls, held_rates) = caps.held();
        for (kind, share, held) in [
            (Kind::Call, my_calls, held_calls),
            (Kind::Rate, my_rates, held_rates),
        ] {
            let missing = share.saturating_sub(held as u32);
            if missing > 0 {
                let got = timed(table::acquire(
                    &self.pool,
                    id,
                    &self.holder,
                    kind,
                    missing,
                    self.lease,
                ))
                .await?;
                caps.add(kind, &got);
            }
        }
        let (held_calls, held_rates) = caps.held();
        let short = (held_calls as u32) < my_calls || (held_rates as u32) < my_rates;
        let waiting = mine.calls > held_calls as u32 || mine.rates > held_rates as u32;
        Ok(short || waiting)
    }
}

#[derive(Debug, thiserror::Error)]
enum LookError {
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    #[error("a statement took longer than {STATEMENT_TIMEOUT:?}")]
    Slow,
}

async fn timed<T>(
    statement: impl std::future::Future<Output = sqlx::Result<T>>,
) -> Result<T, LookError> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, statement).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(LookError::Slow),
    }
}
