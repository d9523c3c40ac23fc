//! Sharing each provider account's caps among every dispatch and poll process of the
//! cluster, through PostgreSQL (issue 18): the configured `max_concurrent` and
//! `max_per_second` are the account's, whatever the number of processes.
//!
//! The caps are slots (`crate::core::caps`): rows of `provider_slots`, each held by one
//! process at a time, under that process's lease (one row of `provider_slot_holders` per
//! process and account, `crate::db::caps`). Per account, each process runs a keeper that, a
//! few times a second and whenever a caller starts waiting, (1) renews its lease with what
//! the process wants (calls running and waiting; rate slots used in the last second, or all
//! of them while a caller waits), reading what the others want, in one statement of one
//! row; (2) computes everyone's fair share from those wants (the same computation in every
//! process, `fair_shares`), and splits what nobody wants evenly among them as room for a
//! burst (`with_room`: a burst above a process's recent wants would otherwise wait for a
//! look and a statement; measured, that put the benchmark's created→dispatched p95 at
//! 223 ms with the machine idle), (3) gives back the slots above its share, a rate slot with the
//! rest it still owes, and (4) takes free slots up to its share, freeing first those of
//! processes whose lease lapsed. Steps 3 and 4 wait until a holding is off its share by
//! more than an eighth (`band`), and cost a statement only then.
//! Calls never wait for the database: a call takes a slot this process already holds.
//!
//! Safety does not depend on the processes agreeing on the shares, only on the slots: a
//! slot is used by one process at a time, a rate slot at most once per rest across
//! hand-overs, and a process whose lease could not be renewed stops using its slots while
//! its lease has more than a call's length and a rest left, so no one else can take them
//! while they are in use. A process whose lease lapsed (or that stopped using its slots
//! for want of a renewal) joins again under a new name, from no slots. Shares only decide
//! who waits. The room costs the waiting elsewhere: a process whose wants grow past its
//! share, or one joining, gets the room others hold at their next look (within
//! [`TICK_IDLE`]), not from free rows at once.

use crate::account_status::written_by;
use crate::core::caps::{fair_shares, keep, rate_slots, take, with_room, Kind, Wants};
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
/// A lease lasts this much beyond the longest a slot is in use (a call and a rest): the
/// time a keeper has to renew it before its process must stop using the slots.
const LEASE_SLACK: Duration = Duration::from_secs(5);
/// The longest one statement of a keeper may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The keepers of a process's accounts; [`Keepers::stop`] gives their slots back.
pub struct Keepers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Why a stage cannot share its accounts' caps. Neither variant holds a secret: sqlx's
/// database errors carry the server's message, not the connection's URL.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The slot tables are missing: the stage runs against a database this release's
    /// `orderflow migrate` has not brought up to date.
    #[error("the database has no provider_slots table: run this release's `orderflow migrate` before its stages")]
    NotMigrated,
    #[error("cannot share the provider accounts' caps through the database ({0})")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for ShareError {
    fn from(e: sqlx::Error) -> Self {
        // 42P01: undefined_table.
        let undefined_table = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|code| code == "42P01");
        if undefined_table {
            ShareError::NotMigrated
        } else {
            ShareError::Database(e)
        }
    }
}

/// Shares the caps of `accounts` with the other processes from now on: makes the slot rows
/// match the caps, drops the slots the accounts held alone, and starts a keeper per
/// account. `stage` names the process in the table (`dispatch`, `poll`).
pub async fn share(
    stage: &str,
    accounts: Vec<Arc<Account>>,
    pool: PgPool,
    metrics: Arc<Metrics>,
) -> Result<Keepers, ShareError> {
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
            stage: stage.to_owned(),
            holder: holder_name(stage),
            named: false,
            lapsed: false,
            usable_until: None,
            metrics: Arc::clone(&metrics),
        };
        tasks.push(tokio::spawn(keeper.run(stopping.clone())));
    }
    tracing::info!(
        process = %written_by(stage),
        "provider caps shared with the other processes through PostgreSQL"
    );
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

/// One run of one process as a holder of slots: `<stage> <host>:<pid> <random>`; a new
/// one each time the process joins.
fn holder_name(stage: &str) -> String {
    format!(
        "{} {}",
        written_by(stage),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The longest a slot is in use: a call (its timeout), then a rate slot's rest; and a
/// second.
fn guard(account: &Account) -> Duration {
    let (_, rest) = rate_slots(account.limits().max_per_second);
    account.request_timeout + rest + Duration::from_secs(1)
}

fn lease(account: &Account) -> Duration {
    guard(account) + LEASE_SLACK
}

struct Keeper {
    account: Arc<Account>,
    pool: PgPool,
    stage: String,
    /// This process's name in the tables, for as long as its lease lives.
    holder: String,
    /// Whether `holder` may have rows in the tables (a join was attempted under it).
    named: bool,
    /// `holder`'s lease is known to have lapsed: join again at the next look.
    lapsed: bool,
    /// Until when the slots may be used, from the last renewal.
    usable_until: Option<Instant>,
    metrics: Arc<Metrics>,
    lease: Duration,
    guard: Duration,
}

impl Keeper {
    async fn run(mut self, mut stopping: watch::Receiver<bool>) {
        let account = Arc::clone(&self.account);
        let caps = &account.caps;
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
        let gone = table::leave(&self.pool, id, &self.holder, &back, self.guard);
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

    /// Joins under a new name, from no slots: first, or after this process's lease lapsed
    /// or its slots went unrenewed too long. The previous name, if any, is forgotten with
    /// its slots.
    async fn rejoin(&mut self, mine: Wants) -> Result<Vec<table::OtherWants>, LookError> {
        self.account.caps.forget_all();
        self.usable_until = None;
        let previous = std::mem::replace(&mut self.holder, holder_name(&self.stage));
        let previous = self.named.then_some(previous);
        // Until the join is known to have committed, the next attempt forgets this name too.
        self.named = true;
        self.lapsed = true;
        let others = timed(table::join(
            &self.pool,
            &self.account.id,
            &self.holder,
            previous.as_deref(),
            mine.calls,
            mine.rates,
            self.lease,
        ))
        .await?;
        self.lapsed = false;
        Ok(others)
    }

    /// One look: the lease renewed with what this process wants, shares computed, slots
    /// given back and taken. `Ok(true)` while callers wait or this process holds less than
    /// its share.
    async fn look(&mut self, mine: Wants, sent: Instant) -> Result<bool, LookError> {
        let id = self.account.id.clone();
        let unrenewed = self.usable_until.is_some_and(|until| sent >= until);
        let renewed = if self.named && !self.lapsed && !unrenewed {
            timed(table::renew(
                &self.pool,
                &id,
                &self.holder,
                mine.calls,
                mine.rates,
                self.lease,
            ))
            .await?
        } else {
            None
        };
        let others = match renewed {
            Some(others) => others,
            None => {
                if self.named && !self.lapsed {
                    tracing::warn!(account = %id, "provider caps: this process's lease on its slots lapsed; it joins again from no slots");
                }
                self.rejoin(mine).await?
            }
        };
        // Renewed from `sent` on at the earliest: usable until the lease's end less the
        // longest a slot stays in use. Past that, the slots are dropped at their next use.
        let until = sent + self.lease - self.guard;
        self.usable_until = Some(until);
        let caps = &self.account.caps;
        caps.usable_until(until);
        let mut all: Vec<(&str, Wants)> = others
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
        let share =
            |cap: u32, wants: &[u32]| with_room(cap, &fair_shares(cap, wants, turn), turn)[me];
        let my_calls = share(caps.total(Kind::Call), &calls);
        let my_rates = share(caps.total(Kind::Rate), &rates);
        let (held_calls, held_rates) = caps.held();
        let back = caps.aim(
            keep(my_calls, held_calls as u32),
            keep(my_rates, held_rates as u32),
            Instant::now(),
        );
        timed(table::release(&self.pool, &id, &self.holder, &back)).await?;
        let (held_calls, held_rates) = caps.held();
        for (kind, share, held) in [
            (Kind::Call, my_calls, held_calls),
            (Kind::Rate, my_rates, held_rates),
        ] {
            let missing = take(share, held as u32);
            if missing > 0 {
                let got =
                    timed(table::acquire(&self.pool, &id, &self.holder, kind, missing)).await?;
                match got {
                    Some(got) => caps.add(kind, &got),
                    // Lapsed since the renewal (a stall): join again at the next look.
                    None => {
                        caps.forget_all();
                        self.lapsed = true;
                        return Ok(true);
                    }
                }
            }
        }
        let (held_calls, held_rates) = caps.held();
        let short = take(my_calls, held_calls as u32) > 0 || take(my_rates, held_rates as u32) > 0;
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
