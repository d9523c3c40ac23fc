//! PostgreSQL at the edge: connecting, migrating, and the tables' repositories.
//!
//! `orders` holds each order's latest state for the shop (written from `orders.state`);
//! `dispatch_claims` is the dispatch stage's durable memory of each order's provider
//! reference and placement progress (G1); `check_chains` is the poll stage's record of each
//! order's status-check chain, which the reconciler reads; `dlq_replays` which DLQ entries
//! `orderflow dlq replay` sent back; `account_status` what each stage process sees of each
//! provider account (balance, breaker, caps, recent answers), read by `orderflow accounts`
//! and the status page; `provider_slots` and `provider_slot_holders` each account's caps as
//! slots shared by the processes under one lease each (`caps`).
//!
//! The stages' batch statements run on connections of their own ([`BatchConnections`]:
//! planner settings per session, no ping when one is given back); the rest on sqlx's pool.

pub mod account_status;
pub mod batch_connections;
pub mod caps;
pub mod chains;
pub mod claims;
pub mod find;
pub mod journey;
pub mod orders;
pub mod overview;
pub mod replays;

pub use batch_connections::BatchConnections;

use crate::core::outage::Fault;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, built into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Clone, Debug, clap::Args)]
pub struct DbConfig {
    /// PostgreSQL connection URL.
    // The environment's value may hold a password: `--help` names the variable only (G5).
    #[arg(
        long = "database-url",
        env = "ORDERFLOW_DATABASE_URL",
        default_value = "postgres://orderflow:orderflow@127.0.0.1:5432/orderflow",
        hide_default_value = false,
        hide_env_values = true
    )]
    pub url: String,

    /// Connections in the pool (at least 1).
    #[arg(
        long = "database-max-connections",
        env = "ORDERFLOW_DATABASE_MAX_CONNECTIONS",
        default_value_t = 8,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,

    /// How long to wait for a connection before failing.
    #[arg(
        id = "database_connect_timeout_ms",
        long = "database-connect-timeout-ms",
        env = "ORDERFLOW_DATABASE_CONNECT_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub connect_timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the database URL {url} is invalid ({reason})")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot connect to PostgreSQL at {url} ({source})")]
    Unreachable { url: String, source: sqlx::Error },
    #[error("TLS with PostgreSQL at {url} failed ({reason}); check sslrootcert in the database URL (the CA that signed the server's certificate) and that the certificate names the URL's host, or sslmode")]
    Tls { url: String, reason: String },
    #[error("PostgreSQL at {url} refused the login ({reason}); check the user and password in the database URL")]
    LoginRefused { url: String, reason: String },
    #[error("applying the migrations failed ({0})")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a database query failed ({0})")]
    Query(#[from] sqlx::Error),
    #[error("{last}, for {} s, longer than the stage's patience (ORDERFLOW_OUTAGE_PATIENCE)", .waited.as_secs())]
    OutlastedPatience {
        waited: Duration,
        last: Box<DbError>,
    },
}

impl DbError {
    /// Whether waiting can cure this failure ([`crate::core::outage`]).
    pub fn fault(&self) -> Fault {
        match self {
            DbError::Unreachable { source, .. } | DbError::Query(source) => fault_of(source),
            DbError::OutlastedPatience { last, .. } => last.fault(),
            // A CA or a certificate that does not match, or a password the server refuses,
            // stays wrong however long the stage waits.
            DbError::InvalidUrl { .. }
            | DbError::Tls { .. }
            | DbError::LoginRefused { .. }
            | DbError::Migrate(_) => Fault::Fatal,
        }
    }
}

/// Whether waiting can cure a driver error: the server's verdicts by SQLSTATE
/// ([`crate::core::outage::sqlstate_fault`]); a setting the driver refuses (the URL's
/// options, TLS) is fatal; what the network does (refused, reset, timed out, a pool that
/// found no connection) is not.
pub fn fault_of(error: &sqlx::Error) -> Fault {
    match error {
        sqlx::Error::Database(db) => db.code().map_or(Fault::Transient, |code| {
            crate::core::outage::sqlstate_fault(&code)
        }),
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => Fault::Fatal,
        _ => Fault::Transient,
    }
}

/// The database refused a statement because of the data it was given, as opposed to being
/// unreachable, busy or wrong itself: the same data would be refused again, so the event it
/// came from is dead-lettered (reason `database_refused`) instead of retried forever.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the database refused the data{}: {message}", sqlstate.as_deref().map(|s| format!(" (SQLSTATE {s})")).unwrap_or_default())]
pub struct Refused {
    /// PostgreSQL's SQLSTATE; `None` when the driver refused to encode a value.
    pub sqlstate: Option<String>,
    /// The server's message, scrubbed: it may quote a value (G5).
    pub message: String,
}

/// Whether a SQLSTATE is about the data: class 22 (data exception: a value out of range, a
/// NUL byte, a bad encoding), 23 (integrity constraint violation: a check, a unique key, a
/// not-null) or 54 (program limit exceeded: an index row too large). Everything else is
/// retried: 08 (connection), 40 (serialization failure, deadlock), 53 (out of disk or
/// memory), 57 (the server shutting down) pass; 42 (syntax, a missing column or
/// privilege) and XX (internal) are a bug or an operator's to fix, and dead-lettering
/// every event until then would lose them all.
pub fn is_data_sqlstate(code: &str) -> bool {
    ["22", "23", "54"]
        .iter()
        .any(|class| code.starts_with(class))
}

impl Refused {
    /// `Some` when `error` says the data was refused; see [`is_data_sqlstate`].
    pub fn of(error: &sqlx::Error) -> Option<Refused> {
        match error {
            sqlx::Error::Database(db) => {
                let code = db.code()?;
                is_data_sqlstate(&code).then(|| Refused {
                    sqlstate: Some(code.into_owned()),
                    message: crate::secret::scrub(db.message()),
                })
            }
            // The driver could not encode a value (one the server's type cannot hold).
            sqlx::Error::Encode(e) => Some(Refused {
                sqlstate: None,
                message: crate::secret::scrub(&e.to_string()),
            }),
            _ => None,
        }
    }
}

/// [`crate::shutdown::retry`] for a statement that carries an event's data: retries until it
/// succeeds, except that a refusal of the data ends it with `Ok(Err(refused))`, for the
/// caller to dead-letter the event.
pub async fn retry_unless_refused<T, F, Fut>(
    what: &str,
    backoff: &crate::core::backoff::Backoff,
    shutdown: &mut crate::shutdown::Shutdown,
    mut call: F,
) -> Result<Result<T, Refused>, crate::shutdown::Interrupted>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    crate::shutdown::retry(what, backoff, shutdown, || {
        let done = call();
        async move {
            match done.await {
                Ok(value) => Ok(Ok(value)),
                Err(e) => match Refused::of(&e) {
                    Some(refused) => Ok(Err(refused)),
                    None => Err(e),
                },
            }
        }
    })
    .await
}

impl DbError {
    /// A failed first connection, told apart: TLS (a wrong CA, a name the certificate
    /// lacks, a server without TLS), a refused login, or anything else. The server's
    /// messages name the user, never the password; they are scrubbed all the same (G5).
    fn of_connect(url: String, source: sqlx::Error) -> DbError {
        match &source {
            // OpenSSL's text names the check that failed and the certificate, no secret.
            sqlx::Error::Tls(e) => DbError::Tls {
                url,
                reason: e.to_string().replace(char::is_control, " "),
            },
            // 28P01 invalid_password, 28000 invalid_authorization_specification (pg_hba).
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("28P01" | "28000")) =>
            {
                DbError::LoginRefused {
                    url,
                    reason: crate::secret::scrub(db.message()),
                }
            }
            _ => DbError::Unreachable { url, source },
        }
    }
}

impl DbConfig {
    pub fn for_tests(url: &str) -> Self {
        DbConfig {
            url: url.to_owned(),
            max_connections: 4,
            connect_timeout_ms: 5_000,
        }
    }

    /// Connects, failing within the connect timeout if the server does not answer.
    pub async fn connect(&self) -> Result<PgPool, DbError> {
        let shown = redact_url(&self.url);
        let invalid = |reason: String| DbError::InvalidUrl {
            url: shown.clone(),
            reason,
        };
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(invalid("it must start with postgres://".into()));
        }
        let options = PgConnectOptions::from_str(&self.url).map_err(|e| invalid(e.to_string()))?;
        // One connection first: a pool only says "timed out" where this says why.
        let timeout = Duration::from_millis(self.connect_timeout_ms);
        match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
            Ok(Ok(conn)) => drop(conn),
            Ok(Err(source)) => return Err(DbError::of_connect(shown, source)),
            Err(_) => {
                return Err(DbError::Unreachable {
                    url: shown,
                    source: sqlx::Error::PoolTimedOut,
                })
            }
        }
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            // No ping before each acquire (sqlx's default): a round trip per statement.
            // A broken connection fails its statement instead, and every caller retries
            // (sqlx still pings once when a connection goes back to the pool; the stages'
            // batch statements use `BatchConnections`, which does not).
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_millis(self.connect_timeout_ms))
            .connect_with(options)
            .await
            .map_err(|source| DbError::Unreachable { url: shown, source })
    }
}

/// Applies every migration not yet applied.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The URL with its secrets replaced, for messages (G5): the password of the user info,
/// and the value of every query parameter whose name looks like a secret (`password=`,
/// `sslpassword=`, `sifre=`, `token=` …: libpq and sqlx take a password there too).
///
/// URLs in configuration are often not well formed (an `@` or `/` in a password left
/// unencoded), so it errs on hiding: the user info ends at the last `@`, and a user info
/// that holds a `/`, `?` or `#` (that `@` was not the user info's) is hidden whole.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, after)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let shown = if user.contains(['/', '?', '#']) {
                "***".to_owned()
            } else if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            (format!("{shown}@"), after)
        }
        None => (String::new(), rest),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => format!("{path}?{}", redact_query(query)),
        None => rest.to_owned(),
    };
    format!("{scheme}://{userinfo}{rest}")
}

/// A URL's query with the values of secret-looking parameters replaced.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether a query parameter's name says its value is a secret ([`crate::secret::names_a_secret`]).
fn is_secret_key(key: &str) -> bool {
    crate::secret::names_a_secret(key)
}

#[cfg(test)]
mod tests {
    use super::{is_data_sqlstate, redact_url};

    #[test]
    fn only_data_errors_are_refusals() {
        for code in [
            "22008", "22021", "22P05", "23505", "23514", "23502", "54000",
        ] {
            assert!(is_data_sqlstate(code), "{code}");
        }
        for code in [
            "40001", "40P01", "08006", "53100", "57P01", "42703", "42501", "XX000",
        ] {
            assert!(!is_data_sqlstate(code), "{code}");
        }
        assert!(super::Refused::of(&sqlx::Error::PoolTimedOut).is_none());
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://u:p%40ss@h:5432/d"),
            "postgres://u:***@h:5432/d"
        );
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact_url("postgres://h/d"), "postgres://h/d");
        assert_eq!(redact_url("nonsense"), "nonsense");
    }

    #[test]
    fn a_password_in_the_query_string_is_hidden() {
        assert_eq!(
            redact_url("postgres://h:5432/d?user=u&password=s3cret&sslmode=require"),
            "postgres://h:5432/d?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u:p@h/d?sslpassword=s3cret&PassWord=s3cret&sifre=s3cret"),
            "postgres://u:***@h/d?sslpassword=***&PassWord=***&sifre=***"
        );
        // Nothing secret: the URL as it was.
        assert_eq!(
            redact_url("postgres://u@h/d?sslmode=require&application_name=orderflow"),
            "postgres://u@h/d?sslmode=require&application_name=orderflow"
        );
    }

    #[test]
    fn a_malformed_url_errs_on_hiding() {
        // An unencoded `/`, `?` or `@` in the password.
        for url in [
            "postgres://u:pa/ss3cret@h/d",
            "postgres://u:pa?s3cret@h/d",
            "postgres://u:p@s3cret@h/d",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("s3cret"), "{url} -> {shown}");
            assert!(shown.starts_with("postgres://u:***@"), "{url} -> {shown}");
        }
        // An `@` in a query value: the last `@` is taken for the user info's, and what
        // stands before it is hidden whole rather than shown.
        let shown = redact_url("postgres://h/d?password=s3cret@x");
        assert!(!shown.contains("s3cret"), "{shown}");
        let shown = redact_url("postgres://h/d?password=s3cret#x&y=1");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
