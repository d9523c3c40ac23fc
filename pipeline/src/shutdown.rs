//! Graceful shutdown: one signal every task can wait on or look at.
//!
//! `main` triggers it on SIGINT/SIGTERM; stages stop taking new work, let work in flight
//! finish or step aside at a safe point, commit what is durable, and return.

use tokio::sync::watch;

/// Fires the shutdown signal; clones fire the same one (the signal handler, and a stage
/// that gives up waiting for an outage to end: `crate::outage`).
#[derive(Clone, Debug)]
pub struct Trigger(std::sync::Arc<watch::Sender<bool>>);

/// Observes the shutdown signal; cheap to clone into every task.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// A signal pair.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(std::sync::Arc::new(tx)), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the signal fires (immediately if it has).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// Sleeps for `duration` unless shutdown comes first; returns `Err(Interrupted)` then.
    pub async fn sleep(&mut self, duration: std::time::Duration) -> Result<(), Interrupted> {
        tokio::select! {
            _ = tokio::time::sleep(duration) => Ok(()),
            _ = self.wait() => Err(Interrupted),
        }
    }
}

/// Calls `call` until it succeeds, logging each failure as `what` and waiting `backoff`
/// between tries; only shutdown stops it. For writes that must become durable before an
/// offset moves (a broker or database outage waits instead of losing work).
pub async fn retry<T, E, F, Fut>(
    what: &str,
    backoff: &crate::core::backoff::Backoff,
    shutdown: &mut Shutdown,
    mut call: F,
) -> Result<T, Interrupted>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                shutdown
                    .sleep(backoff.delay(attempt, crate::core::backoff::random_fraction()))
                    .await?;
                attempt += 1;
            }
        }
    }
}

/// Work stopped at a safe point because of shutdown; it is not done and its offset must not
/// be committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by shutdown")]
pub struct Interrupted;

/// Fires `trigger` on SIGINT or SIGTERM.
pub async fn on_signals(trigger: Trigger) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
    trigger.fire();
}
