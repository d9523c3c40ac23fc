//! The connections a stage keeps for its batch statements (dispatch's claim and settle,
//! poll's begin and finish of steps, the sink's upsert), beside sqlx's pool, which serves
//! everything else.
//!
//! Two round trips per statement are saved this way, and at a paced rate PostgreSQL's CPU
//! goes mostly to the kernel's side of round trips and commits (`perf` at 300 orders/s),
//! not to running statements:
//! - **No ping on release.** sqlx's pool sends a `Sync` and waits for the answer every time
//!   a connection goes back to it (sqlx-core 0.8's `return_to_pool`, in a task spawned for
//!   it), whatever the options; a connection here goes back as it is once its statement
//!   has answered.
//! - **Planner settings per session, not per transaction.** A batch update joins the table
//!   to `UNNEST(…)` of the batch, for which the planner, estimating about one row, chooses
//!   a nested loop that compares every row with every element, or, on a table without
//!   statistics, a sequential scan (both measured: [`PLANNER_SETTINGS`]). These
//!   connections open with nested loops and sequential scans off, so each statement runs
//!   alone and commits on its own, instead of in a transaction of `BEGIN … SET LOCAL`,
//!   the statement and `COMMIT`. Every statement run here names its rows by primary key
//!   and joins nothing but the batch, so neither plan is ever the one to choose for them;
//!   nothing else runs on these connections.
//!
//! A connection is kept only after its statement answered; one whose statement failed or
//! whose future was dropped halfway (shutdown) is closed, and a failure that is not the
//! server's verdict on the statement (the connection lost, PostgreSQL restarted) closes
//! the idle ones too, since they most likely went with it. There are at most as many as
//! the pool's `max_connections` (`--database-max-connections` bounds each of the two); a
//! stage opens all of them before it takes its first message
//! ([`BatchConnections::open_ahead`]), and one closed is opened again on demand.

use futures::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, PgConnection};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The planner settings of every batch connection (startup options, so no round trip).
///
/// Measured on 2026-12-03: with the defaults, poll's finish took 7.7 ms per batch of 56 in
/// a nested loop where a hash join takes under 1 ms (`auto_explain` and `perf` over a
/// 100,000-order benchmark), and a new database read all of `check_chains` 864 times in one
/// 60,000-order run (`pg_stat_user_tables`), before autovacuum's first `ANALYZE`.
pub const PLANNER_SETTINGS: [(&str, &str); 2] =
    [("enable_nestloop", "off"), ("enable_seqscan", "off")];

/// Connections [`BatchConnections::open_ahead`] opens at once. Each costs tens of
/// milliseconds of CPU on both sides (TLS, SCRAM), so more at once finish no sooner on a
/// small machine; all at once, 150 of them (`--database-max-connections 150`) all ran
/// past the 5 s connect timeout on this project's 2-core machine.
const OPENING_AT_ONCE: usize = 4;

/// The batch statements' connections of one process (cheap to clone: shared).
#[derive(Clone)]
pub struct BatchConnections {
    shared: Arc<Shared>,
}

struct Shared {
    options: PgConnectOptions,
    connect_timeout: Duration,
    max: usize,
    idle: Mutex<Vec<PgConnection>>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for BatchConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchConnections")
            .field("idle", &self.idle_count())
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl BatchConnections {
    /// Connections to the database of `pool`, with its connect options (TLS, user, the
    /// URL's own `options`) and [`PLANNER_SETTINGS`] added, at most as many at once as
    /// the pool may hold, and the pool's acquire timeout for opening one. None is opened
    /// before the first statement.
    pub fn beside(pool: &PgPool) -> BatchConnections {
        let options = (*pool.connect_options()).clone().options(PLANNER_SETTINGS);
        let max = pool.options().get_max_connections().max(1) as usize;
        BatchConnections {
            shared: Arc::new(Shared {
                options,
                connect_timeout: pool.options().get_acquire_timeout(),
                max,
                idle: Mutex::new(Vec::with_capacity(max)),
                permits: Arc::new(Semaphore::new(max)),
            }),
        }
    }

    /// A connection for one statement: an idle one, or a new one when none is idle. Waits
    /// while all are in use.
    pub async fn acquire(&self) -> Result<BatchConnection, sqlx::Error> {
        let permit = Arc::clone(&self.shared.permits)
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.shared.idle.lock().expect("idle list poisoned").pop();
        let conn = match idle {
            Some(conn) => conn,
            None => tokio::time::timeout(
                self.shared.connect_timeout,
                PgConnection::connect_with(&self.shared.options),
            )
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??,
        };
        Ok(BatchConnection {
            conn: Some(conn),
            shared: Arc::clone(&self.shared),
            _permit: permit,
        })
    }

    /// Opens every connection the bound allows now, [`OPENING_AT_ONCE`] at a time, and
    /// keeps them idle for the first statements: a stage calls it before it creates its
    /// consumer. Opening one costs far more than a statement: a backend started, TLS
    /// (sqlx's native-tls handshake builds an OpenSSL connector for each connection, which
    /// reads the system's CA bundle), and SCRAM's key derivation on both sides. Opened on
    /// demand under load, each cost dispatch about 45 ms of CPU; the first batches'
    /// statements slowed, overlapped and opened more, and the first second's orders
    /// waited 100–300 ms (README, "Every batch connection opened before the first
    /// message"). At the first that cannot be opened (the server's `max_connections`
    /// reached, say) it stops with one warning; the rest open on demand, as any other
    /// (the stage checked the database at start).
    pub async fn open_ahead(&self) {
        // Every connection not in use, the idle ones among them: all are held until the
        // end, so that each acquire past the idle ones opens a new one.
        let wanted = self.shared.permits.available_permits();
        let mut opening = futures::stream::iter(0..wanted)
            .map(|_| self.acquire())
            .buffer_unordered(OPENING_AT_ONCE);
        let mut held = Vec::with_capacity(wanted);
        while let Some(conn) = opening.next().await {
            match conn {
                Ok(conn) => held.push(conn),
                Err(e) => {
                    tracing::warn!(opened = held.len(), wanted, error = %e, "could not open every batch connection ahead; the others open on demand");
                    break;
                }
            }
        }
        drop(opening);
        for conn in held {
            let _ = conn.release(Ok::<(), sqlx::Error>(()));
        }
    }

    /// Connections open and waiting for a statement.
    pub fn idle_count(&self) -> usize {
        self.shared.idle.lock().expect("idle list poisoned").len()
    }

    /// Connections running a statement now.
    pub fn in_use(&self) -> usize {
        self.shared.max - self.shared.permits.available_permits()
    }
}

/// Whether `error` says the session itself is gone: anything but the server's answer to the
/// statement, or an answer of class 08 (connection exception) or 57 (operator
/// intervention: the backend terminated, the server shutting down or restarting).
fn session_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => true,
    }
}

impl Shared {
    /// Closes every idle connection (the next statements open new ones).
    fn close_idle(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().expect("idle list poisoned"));
        drop(idle);
    }
}

/// One connection taken for a statement. Dropped without [`BatchConnection::release`], it
/// is closed: its statement failed, or was abandoned halfway with the connection in an unknown
/// state.
pub struct BatchConnection {
    conn: Option<PgConnection>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl BatchConnection {
    /// The connection, to run a statement on.
    pub fn connection(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a batch connection is held until released")
    }

    /// Gives the connection back with its statement's `answer`, which it returns: kept for
    /// the next statement if the statement answered; closed if it failed; and if the
    /// failure is not the server's verdict on the statement (the connection lost,
    /// PostgreSQL restarted), the idle connections are closed as well, since they most
    /// likely went with it.
    pub fn release<T>(mut self, answer: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        match &answer {
            Ok(_) => {
                if let Some(conn) = self.conn.take() {
                    self.shared
                        .idle
                        .lock()
                        .expect("idle list poisoned")
                        .push(conn);
                }
            }
            Err(e) if session_lost(e) => self.shared.close_idle(),
            // The server's verdict on the statement: the connection is sound, but closed
            // all the same (refusals are rare: a refused batch is retried order by order).
            Err(_) => {}
        }
        answer
    }
}
