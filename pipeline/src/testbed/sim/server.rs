//! The simulator over HTTP: the `/servis/*.php` endpoints with latency, faults and scripted
//! answers in front of the answer logic, the `/sim/*` control endpoints, serving until
//! shutdown (hanging answers end then), and the handle tests drive it with.

use super::answers::{
    balance, catalog_json, check, param, place, Logic, Params, FORBIDDEN_HTML, GARBAGE,
    NOT_FOUND_HTML, UNAVAILABLE_HTML, UNKNOWN_CODE, WRONG_URL_HTML,
};
use super::state::{Inner, State};
use super::{Fault, FaultWave, Sim, SimCall, SimConfig, SimHandle, SimStats};
use crate::core::seeded::Seeded;
use axum::extract::{Query, State as Shared};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::debug;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body.into()).into_response()
}
fn text(status: StatusCode, body: impl Into<String>) -> Response {
    reply(status, "text/plain; charset=utf-8", body)
}
fn html(status: StatusCode, body: &'static str) -> Response {
    reply(status, "text/html; charset=utf-8", body)
}
fn json(body: String) -> Response {
    reply(StatusCode::OK, "application/json; charset=utf-8", body)
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let state = State {
            rng: Seeded::new(config.seed),
            orders: HashMap::new(),
            scripts: HashMap::new(),
            answers: HashMap::new(),
            visibility_lag: config.visibility_lag,
            outage: false,
            wave: None,
            check_times: HashMap::new(),
            arrivals: VecDeque::new(),
            in_flight: 0,
            stats: SimStats {
                balance_kurus: config.initial_balance_kurus,
                ..SimStats::default()
            },
        };
        let (stopping, _) = watch::channel(false);
        Sim {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
                stopping,
            }),
        }
    }

    /// Binds (use "127.0.0.1:0" in tests) and serves until `shutdown` resolves.
    pub async fn serve(
        self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<SimHandle> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        self.inner.stopping.send_replace(false);
        let sim = self.clone();
        let signal = async move {
            shutdown.await;
            sim.inner.stopping.send_replace(true);
        };
        let router = self.router();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::error!(%error, "znet simulator stopped");
            }
        });
        tracing::info!(%addr, "znet simulator listening");
        Ok(SimHandle { addr, task })
    }

    /// Faults for the next calls of an endpoint, consumed in order before random faults.
    pub fn script(&self, call: SimCall, faults: Vec<Fault>) {
        self.with_state(|st| st.scripts.entry(call).or_default().extend(faults));
    }

    /// Bodies (`<code>|<message>`) for the next calls of an endpoint, consumed in order
    /// after scripted faults and before waves and random faults. A scripted answer has no
    /// effect: nothing is bought or checked. `GET /sim/script?call=place&answer=99|Bakım&times=2`
    /// does the same over HTTP.
    pub fn script_answers(&self, call: SimCall, answers: Vec<String>) {
        self.with_state(|st| st.answers.entry(call).or_default().extend(answers));
    }

    /// How long new orders stay invisible to checks from now on (`GET
    /// /sim/visibility?lag_ms=<n>` does the same over HTTP).
    pub fn set_visibility_lag(&self, lag: Duration) {
        self.with_state(|st| st.visibility_lag = lag);
    }

    pub fn stats(&self) -> SimStats {
        self.with_state(|st| st.stats.clone())
    }

    /// Starts or ends an outage: while it lasts every place and check call gets a 503 and
    /// changes nothing (`GET /sim/outage?on=true|false` does the same over HTTP).
    pub fn set_outage(&self, on: bool) {
        self.with_state(|st| st.outage = on);
    }

    /// Starts a wave of one kind of fault, or ends it (`None`). `GET` or `POST
    /// /sim/faults?kind=<fault>&rate=<0..1>` does the same over HTTP (`kind=none` ends it).
    pub fn set_wave(&self, wave: Option<FaultWave>) {
        self.with_state(|st| st.wave = wave);
    }

    /// Whether the order bought under `referans` ends cancelled (`None`: nothing was bought
    /// under it), for tests to compare with what was delivered.
    pub fn cancelled(&self, referans: &str) -> Option<bool> {
        self.with_state(|st| st.orders.get(referans).map(|o| o.cancelled))
    }

    /// When `referans` was checked, oldest first.
    pub fn check_times(&self, referans: &str) -> Vec<DateTime<Utc>> {
        self.with_state(|st| st.check_times.get(referans).cloned().unwrap_or_default())
    }

    /// The PIN the simulator issued for `referans`, for tests to compare with what was
    /// delivered.
    pub fn pin_of(&self, referans: &str) -> Option<crate::secret::Secret> {
        self.with_state(|st| {
            st.orders
                .get(referans)
                .map(|o| crate::secret::Secret::new(o.pin.clone()))
        })
    }

    pub(super) fn router(&self) -> Router {
        Router::new()
            .route(
                "/servis/pin_ekle.php",
                get(|s: Shared<Sim>, q: Query<Params>| {
                    s.0.protocol_call(SimCall::Place, q.0, place)
                }),
            )
            .route(
                "/servis/pin_kontrol.php",
                get(|s: Shared<Sim>, q: Query<Params>| {
                    s.0.protocol_call(SimCall::Check, q.0, check)
                }),
            )
            .route(
                "/servis/bakiye_kontrol.php",
                get(|s: Shared<Sim>, q: Query<Params>| {
                    s.0.protocol_call(SimCall::Balance, q.0, balance)
                }),
            )
            .route("/servis/pin_listesi.php", get(catalog_handler))
            .route(
                "/sim/stats",
                get(|s: Shared<Sim>| async move {
                    json(serde_json::to_string(&s.0.stats()).unwrap_or_default())
                }),
            )
            .route("/sim/script", get(script_handler))
            .route("/sim/faults", get(faults_handler).post(faults_handler))
            .route(
                "/sim/visibility",
                get(|s: Shared<Sim>, q: Query<Params>| async move {
                    match param(&q.0, "lag_ms").parse::<u64>() {
                        Ok(ms) => s.0.set_visibility_lag(Duration::from_millis(ms)),
                        Err(_) => return text(StatusCode::BAD_REQUEST, "lag_ms=<milliseconds>"),
                    }
                    text(StatusCode::OK, "ok")
                }),
            )
            .route(
                "/sim/outage",
                get(|s: Shared<Sim>, q: Query<Params>| async move {
                    match param(&q.0, "on") {
                        "true" => s.0.set_outage(true),
                        "false" => s.0.set_outage(false),
                        _ => return text(StatusCode::BAD_REQUEST, "on=true or on=false"),
                    }
                    text(StatusCode::OK, "ok")
                }),
            )
            .fallback(|| async { html(StatusCode::NOT_FOUND, NOT_FOUND_HTML) })
            .with_state(self.clone())
    }

    /// Never holds the lock across an await.
    pub(super) fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self
            .inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// Sleeps, or returns early when the server is shutting down.
    pub(super) async fn pause(&self, duration: Duration) {
        if duration.is_zero() {
            return;
        }
        let mut stopping = self.inner.stopping.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = async move {
                // The watch guard must not live across the await: test, then wait.
                loop {
                    let stop = *stopping.borrow_and_update();
                    if stop || stopping.changed().await.is_err() {
                        break;
                    }
                }
            } => {}
        }
    }

    pub(super) async fn protocol_call(self, call: SimCall, q: Params, logic: Logic) -> Response {
        let config = &self.inner.config;
        // The dealer account's calls, from arrival to answer (or to the client hanging up).
        let _in_progress = (q.get("kod") == Some(&config.kod)).then(|| {
            self.with_state(|st| st.call_arrived(std::time::Instant::now()));
            InProgress(self.clone())
        });
        self.pause(config.latency).await;
        if let (SimCall::Place, Some(referans)) = (call, q.get("referans")) {
            self.with_state(|st| {
                *st.stats.place_requests.entry(referans.clone()).or_default() += 1
            });
        }
        let scripted = self.with_state(|st| {
            if st.outage || st.scripts.get(&call).is_some_and(|s| !s.is_empty()) {
                return None;
            }
            let answer = st.answers.get_mut(&call).and_then(VecDeque::pop_front);
            if answer.is_some() {
                st.stats.scripted_answers += 1;
            }
            answer
        });
        if let Some(answer) = scripted {
            debug!(?call, "a scripted answer");
            return text(StatusCode::OK, answer);
        }
        let fault = self.with_state(|st| {
            if st.outage && call != SimCall::Balance {
                st.count_fault("outage");
                return Some(Fault::ServerError);
            }
            st.next_fault(call, config.fault_rate)
        });
        let Some(fault) = fault else {
            return text(StatusCode::OK, self.with_state(|st| logic(config, st, &q)));
        };
        debug!(?call, ?fault, "injecting a fault");
        match fault {
            Fault::ServerError => html(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_HTML),
            Fault::Html => html(StatusCode::OK, WRONG_URL_HTML),
            Fault::Forbidden => html(StatusCode::FORBIDDEN, FORBIDDEN_HTML),
            Fault::UriTooLong => text(StatusCode::URI_TOO_LONG, "Request-URI Too Long"),
            Fault::UnknownCode => text(StatusCode::OK, UNKNOWN_CODE),
            Fault::EmptyBody => text(StatusCode::OK, ""),
            Fault::Garbage => text(StatusCode::OK, GARBAGE),
            Fault::Timeout | Fault::LostAnswer => {
                if fault == Fault::LostAnswer {
                    let _lost = self.with_state(|st| logic(config, st, &q));
                }
                self.pause(config.lost_answer_delay).await;
                html(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_HTML)
            }
            Fault::Slow => {
                let answer = self.with_state(|st| logic(config, st, &q));
                self.pause(config.lost_answer_delay / 2).await;
                text(StatusCode::OK, answer)
            }
        }
    }
}

/// A call of the dealer account in progress; ends when dropped.
struct InProgress(Sim);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.with_state(State::call_ended);
    }
}

async fn catalog_handler(Shared(sim): Shared<Sim>, Query(q): Query<Params>) -> Response {
    sim.pause(sim.inner.config.latency).await;
    json(catalog_json(&sim.inner.config, &q))
}

/// `GET|POST /sim/faults?kind=garbage&rate=0.3` starts a wave, `kind=none` ends it.
async fn faults_handler(Shared(sim): Shared<Sim>, Query(q): Query<Params>) -> Response {
    let rate = param(&q, "rate").parse::<f64>().ok();
    let wave = match (param(&q, "kind").trim(), rate) {
        ("none", _) => None,
        (kind, Some(rate)) if (0.0..=1.0).contains(&rate) => {
            match serde_json::from_value::<Fault>(serde_json::Value::String(kind.to_owned())) {
                Ok(fault) => Some(FaultWave { fault, rate }),
                Err(_) => return text(StatusCode::BAD_REQUEST, "unknown fault kind"),
            }
        }
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "expected kind=<fault>&rate=<0 to 1>, or kind=none",
            )
        }
    };
    sim.set_wave(wave);
    text(StatusCode::OK, "ok")
}

/// `GET /sim/script?call=place&faults=server_error,lost_answer`, or
/// `GET /sim/script?call=place&answer=99|Bakım&times=3` (`times` defaults to 1).
async fn script_handler(Shared(sim): Shared<Sim>, Query(q): Query<Params>) -> Response {
    pub(super) fn snake<T: serde::de::DeserializeOwned>(word: &str) -> Option<T> {
        serde_json::from_value(serde_json::Value::String(word.trim().to_owned())).ok()
    }
    let call = snake::<SimCall>(param(&q, "call"));
    if let Some(answer) = q.get("answer") {
        let times = match q.get("times").map(|t| t.parse::<usize>()) {
            None => Ok(1),
            Some(parsed) => parsed,
        };
        return match (call, times) {
            (Some(call), Ok(times)) if times <= 10_000 => {
                sim.script_answers(call, vec![answer.clone(); times]);
                text(StatusCode::OK, "ok")
            }
            _ => text(
                StatusCode::BAD_REQUEST,
                "expected call=place|check|balance&answer=<code>|<message>&times=<n>",
            ),
        };
    }
    let faults: Option<Vec<Fault>> = param(&q, "faults")
        .split(',')
        .filter(|w| !w.trim().is_empty())
        .map(snake)
        .collect();
    match (call, faults) {
        (Some(call), Some(faults)) => {
            sim.script(call, faults);
            text(StatusCode::OK, "ok")
        }
        _ => text(
            StatusCode::BAD_REQUEST,
            "expected call=place|check|balance&faults=<fault>,...",
        ),
    }
}
