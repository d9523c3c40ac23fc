//! A znet-compatible provider simulator with fault injection (`orderflow sim-znet`, and
//! in-process for integration tests).
//!
//! Owns: the four `/servis/*.php` endpoints of `docs/design/znet-protocol.md` as our
//! parser (`crate::znet::protocol`) expects them, a small static catalog, the dealer balance,
//! referans uniqueness (one purchase per referans, ever), seeded randomness (rejections,
//! cancellations, faults, PINs), fault injection (scripted FIFO per call, then scripted
//! `<code>|<message>` answers, then the current wave of one kind, then random), a visibility
//! lag (a new order answers "not found" to checks for a while, as real providers' replicas
//! do) and the `/sim/*` control endpoints for out-of-process tests.
//!
//! It never logs kod, sifre or PINs (G5): debug events carry only referans, oyun, kupur and
//! outcome words.

use axum::extract::{Query, State as Shared};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::debug;

use crate::core::seeded::Seeded;

mod args;
pub use args::{ShareError, SimArgs};

// ----- public types -------------------------------------------------------------------

#[derive(Clone)]
pub struct SimConfig {
    /// Expected dealer code; a wrong kod or sifre gets the `8|...` answer.
    pub kod: String,
    pub sifre: String,
    /// Added to every `/servis` answer.
    pub latency: Duration,
    /// `pin_kontrol` answers durum 1 this many times per order, then its final state.
    pub checks_until_complete: u32,
    /// Share of purchased orders that are slow: they answer durum 1 `slow_checks` more times.
    pub slow_share: f64,
    pub slow_checks: u32,
    /// Share of valid placements answered `3|Kupur Bilgisi Bulunamadı`.
    pub rejection_rate: f64,
    /// Share of purchased orders that end cancelled (durum 3) instead of completed.
    pub cancel_rate: f64,
    /// Share of place and check calls that get a random fault from [`Fault::random_set`].
    pub fault_rate: f64,
    /// How long a `Timeout` or `LostAnswer` hangs before answering 503.
    pub lost_answer_delay: Duration,
    pub seed: u64,
    /// Kuruş (1/100 TRY).
    pub initial_balance_kurus: i64,
    /// How long a purchased order answers `4|Sipariş bulunamadı` to checks (a provider
    /// showing new orders with a lag). Placements still see it: a reused referans is refused.
    pub visibility_lag: Duration,
}

/// 1,000,000.00 TRY.
pub const DEFAULT_BALANCE_KURUS: i64 = 1_000_000 * 100;

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            kod: "sim-kod".into(),
            sifre: "sim-sifre".into(),
            latency: Duration::ZERO,
            checks_until_complete: 1,
            slow_share: 0.0,
            slow_checks: 0,
            rejection_rate: 0.0,
            cancel_rate: 0.0,
            fault_rate: 0.0,
            lost_answer_delay: Duration::from_secs(30),
            seed: 1,
            initial_balance_kurus: DEFAULT_BALANCE_KURUS,
            visibility_lag: Duration::ZERO,
        }
    }
}

/// Credentials are shown as `***`.
impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("kod", &"***")
            .field("sifre", &"***")
            .field("latency", &self.latency)
            .field("checks_until_complete", &self.checks_until_complete)
            .field("slow_share", &self.slow_share)
            .field("slow_checks", &self.slow_checks)
            .field("rejection_rate", &self.rejection_rate)
            .field("cancel_rate", &self.cancel_rate)
            .field("fault_rate", &self.fault_rate)
            .field("lost_answer_delay", &self.lost_answer_delay)
            .field("seed", &self.seed)
            .field("initial_balance_kurus", &self.initial_balance_kurus)
            .field("visibility_lag", &self.visibility_lag)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// HTTP 503 with a short HTML body; no effect.
    ServerError,
    /// Hangs `lost_answer_delay`, then 503; no effect (dropped before processing).
    Timeout,
    /// HTTP 200 with an HTML page (like a wrong base URL); no effect.
    Html,
    /// HTTP 200, empty body; no effect.
    EmptyBody,
    /// HTTP 200, a non-protocol text body; no effect.
    Garbage,
    /// The call IS processed, but the answer is lost: hangs `lost_answer_delay`, then 503.
    LostAnswer,
    /// The call IS processed and answered normally, but only after half of
    /// `lost_answer_delay` (slower than usual; within a client's timeout if that is longer).
    /// Never drawn by `fault_rate`: scripts and waves only.
    Slow,
    /// HTTP 403 with an HTML page, as a web application firewall in front of the provider
    /// answers; no effect. Scripts and waves only.
    Forbidden,
    /// HTTP 414 (the URL is too long for the front end); no effect. Scripts and waves only.
    UriTooLong,
    /// HTTP 200 with an error code no account lists (`99|...`, maintenance); no effect.
    /// Scripts and waves only.
    UnknownCode,
}

/// A wave of one kind of fault: while set, each place and check call gets `fault` with
/// probability `rate` (after scripted faults, before `fault_rate`'s random ones).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
pub struct FaultWave {
    pub fault: Fault,
    pub rate: f64,
}

impl Fault {
    /// The snake_case word used by the `/sim/*` endpoints and [`SimStats::faults_by_kind`].
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::ServerError => "server_error",
            Fault::Timeout => "timeout",
            Fault::Html => "html",
            Fault::EmptyBody => "empty_body",
            Fault::Garbage => "garbage",
            Fault::LostAnswer => "lost_answer",
            Fault::Slow => "slow",
            Fault::Forbidden => "forbidden",
            Fault::UriTooLong => "uri_too_long",
            Fault::UnknownCode => "unknown_code",
        }
    }

    /// The faults `fault_rate` draws from, uniformly.
    pub fn random_set() -> &'static [Fault] {
        &[
            Fault::ServerError,
            Fault::Timeout,
            Fault::Html,
            Fault::EmptyBody,
            Fault::Garbage,
            Fault::LostAnswer,
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SimCall {
    Place,
    Check,
    Balance,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SimStats {
    /// How many placement calls each referans received that reached the order logic
    /// (duplicates included, faults with "no effect" excluded).
    pub placements: BTreeMap<String, u32>,
    /// Every placement request per referans, faulted ones included: which references a
    /// client used, and how often.
    pub place_requests: BTreeMap<String, u32>,
    /// How many purchases each referans produced (never more than 1).
    pub purchases: BTreeMap<String, u32>,
    /// Authenticated check calls that reached the order logic (lost answers included).
    pub checks: u64,
    pub faults_injected: u64,
    /// `faults_injected` by kind ([`Fault::as_str`], and `outage` for calls refused by an
    /// outage).
    #[serde(default)]
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Placements answered with a rejection code (2, 3 or 6), duplicates (5) excluded.
    pub rejected: u64,
    /// Calls answered with a scripted `<code>|<message>` (no effect).
    #[serde(default)]
    pub scripted_answers: u64,
    /// Checks answered "not found" because the order was not visible yet.
    #[serde(default)]
    pub unseen_checks: u64,
    pub balance_kurus: i64,
}

pub struct SimHandle {
    /// `base_url = format!("http://{addr}")`.
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// The simulator; cheap to clone.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

// ----- state --------------------------------------------------------------------------

struct Inner {
    config: SimConfig,
    state: Mutex<State>,
    /// Becomes true at shutdown, so hanging answers end and graceful shutdown finishes.
    stopping: watch::Sender<bool>,
}

struct State {
    rng: Seeded,
    orders: HashMap<String, Order>,
    scripts: HashMap<SimCall, VecDeque<Fault>>,
    /// Bodies for the next calls of an endpoint, after scripted faults.
    answers: HashMap<SimCall, VecDeque<String>>,
    visibility_lag: Duration,
    /// While set, every place and check call answers 503 and has no effect.
    outage: bool,
    wave: Option<FaultWave>,
    /// When each referans was checked (calls that reached the order logic).
    check_times: HashMap<String, Vec<DateTime<Utc>>>,
    stats: SimStats,
}

struct Order {
    bought_at: std::time::Instant,
    checks_seen: u32,
    /// Checks answered "processing" before the final state.
    pending_checks: u32,
    cancelled: bool,
    pin: String,
}

impl State {
    /// A scripted fault for `call` first, else the current wave's, else a random one (place
    /// and check only).
    fn next_fault(&mut self, call: SimCall, fault_rate: f64) -> Option<Fault> {
        let scripted = self.scripts.get_mut(&call).and_then(VecDeque::pop_front);
        let fault = scripted.or_else(|| {
            if call == SimCall::Balance {
                return None;
            }
            let wave = self
                .wave
                .filter(|w| self.rng.chance(w.rate))
                .map(|w| w.fault);
            wave.or_else(|| {
                self.rng.chance(fault_rate).then(|| {
                    let set = Fault::random_set();
                    set[self.rng.below(set.len())]
                })
            })
        });
        if let Some(fault) = fault {
            self.count_fault(fault.as_str());
        }
        fault
    }

    fn count_fault(&mut self, kind: &str) {
        self.stats.faults_injected += 1;
        *self
            .stats
            .faults_by_kind
            .entry(kind.to_owned())
            .or_default() += 1;
    }

    fn pin(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let group = |rng: &mut Seeded| -> String {
            (0..4)
                .map(|_| ALPHABET[rng.below(ALPHABET.len())] as char)
                .collect()
        };
        let groups: Vec<String> = (0..4).map(|_| group(&mut self.rng)).collect();
        groups.join("-")
    }
}

// ----- catalog and answers ------------------------------------------------------------

struct Product {
    id: u32,
    oyun_bilgi_id: &'static str,
    oyun_id: &'static str,
    oyun_adi: &'static str,
    kupur: &'static str,
    price_kurus: i64,
}

/// (oyun_bilgi_id, oyun_id, oyun_adi) of the two games.
type Game = (&'static str, &'static str, &'static str);
const STEAM: Game = ("412", "41", "Steam Cüzdan Kodu");
const BOTTLE: Game = ("7", "3", "Oyun Parası Şişesi");

const fn product(id: u32, game: Game, kupur: &'static str, price_kurus: i64) -> Product {
    let (oyun_bilgi_id, oyun_id, oyun_adi) = game;
    Product {
        id,
        oyun_bilgi_id,
        oyun_id,
        oyun_adi,
        kupur,
        price_kurus,
    }
}

const CATALOG: &[Product] = &[
    product(1, STEAM, "25", 24_25),
    product(2, STEAM, "50", 48_50),
    product(3, STEAM, "100", 97_00),
    product(4, BOTTLE, "10", 10_40),
    product(5, BOTTLE, "20", 20_80),
];

const AUTH_FAILED: &str =
    "8|Bağlantı Hatası,Kullanıcı Api Yetki, Kısıtlı Ip yada Kullanıcı Bilgileri Hatalı";
const BAD_PARAMETERS: &str = "2|Eksik veya hatalı parametre";
const NO_KUPUR: &str = "3|Kupur Bilgisi Bulunamadı";
const ORDER_NOT_FOUND: &str = "4|Sipariş bulunamadı";
const DUPLICATE: &str = "5|Bu referans ile daha önce sipariş verilmiş";
/// Not in the protocol notes: the simulator's own answer for an empty balance.
const NO_BALANCE: &str = "6|Yetersiz bakiye";
const PENDING: &str = "OK|1| |İşleminiz devam ediyor";
const CANCELLED: &str = "OK|3| |Stok yetersiz, iptal edildi";
const GARBAGE: &str = "Sunucu meşgul, lütfen daha sonra tekrar deneyiniz.";
const UNAVAILABLE_HTML: &str =
    "<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1></body></html>";
const FORBIDDEN_HTML: &str =
    "<html><head><title>403 Forbidden</title></head><body><h1>Request blocked</h1></body></html>";
/// A code no account lists: maintenance, say.
const UNKNOWN_CODE: &str = "99|Sistem bakımda, lütfen daha sonra tekrar deneyin";
const WRONG_URL_HTML: &str =
    "<!DOCTYPE html><html><head><title>Bayi Paneli</title></head><body>Giriş yapınız</body></html>";
const NOT_FOUND_HTML: &str =
    "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>";

type Params = HashMap<String, String>;
type Logic = fn(&SimConfig, &mut State, &Params) -> String;

fn param<'a>(q: &'a Params, name: &str) -> &'a str {
    q.get(name).map(String::as_str).unwrap_or_default()
}

fn authorised(config: &SimConfig, q: &Params) -> bool {
    q.get("kod") == Some(&config.kod) && q.get("sifre") == Some(&config.sifre)
}

/// Kuruş as TRY with two decimals and a `.`.
fn money(kurus: i64) -> String {
    let sign = if kurus < 0 { "-" } else { "" };
    let abs = kurus.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

fn place(config: &SimConfig, st: &mut State, q: &Params) -> String {
    if !authorised(config, q) {
        debug!("pin_ekle: unauthorised");
        return AUTH_FAILED.into();
    }
    let (referans, oyun, kupur) = (param(q, "referans"), param(q, "oyun"), param(q, "kupur"));
    if referans.is_empty()
        || !referans.bytes().all(|b| b.is_ascii_digit())
        || oyun.is_empty()
        || kupur.is_empty()
    {
        st.stats.rejected += 1;
        debug!("pin_ekle: missing or malformed parameters");
        return BAD_PARAMETERS.into();
    }
    *st.stats.placements.entry(referans.to_owned()).or_default() += 1;
    let reject = |st: &mut State, answer: &str, outcome: &str| {
        st.stats.rejected += 1;
        debug!(referans, oyun, kupur, outcome, "pin_ekle");
        answer.to_owned()
    };
    if st.orders.contains_key(referans) {
        debug!(referans, oyun, kupur, outcome = "duplicate", "pin_ekle");
        return DUPLICATE.into();
    }
    let Some(product) = CATALOG
        .iter()
        .find(|p| p.oyun_bilgi_id == oyun && p.kupur == kupur)
    else {
        return reject(st, NO_KUPUR, "unknown kupur");
    };
    if st.rng.chance(config.rejection_rate) {
        return reject(st, NO_KUPUR, "rejected");
    }
    if st.stats.balance_kurus < product.price_kurus {
        return reject(st, NO_BALANCE, "no balance");
    }
    st.stats.balance_kurus -= product.price_kurus;
    let cancelled = st.rng.chance(config.cancel_rate);
    let slow = config.slow_share > 0.0 && st.rng.chance(config.slow_share);
    let pending_checks = config.checks_until_complete + if slow { config.slow_checks } else { 0 };
    let pin = st.pin();
    st.orders.insert(
        referans.to_owned(),
        Order {
            bought_at: std::time::Instant::now(),
            checks_seen: 0,
            pending_checks,
            cancelled,
            pin,
        },
    );
    *st.stats.purchases.entry(referans.to_owned()).or_default() += 1;
    let outcome = if cancelled {
        "purchased, will cancel"
    } else {
        "purchased"
    };
    debug!(referans, oyun, kupur, outcome, "pin_ekle");
    format!(
        "OK|{}|{}",
        money(product.price_kurus),
        money(st.stats.balance_kurus)
    )
}

fn check(config: &SimConfig, st: &mut State, q: &Params) -> String {
    if !authorised(config, q) {
        debug!("pin_kontrol: unauthorised");
        return AUTH_FAILED.into();
    }
    st.stats.checks += 1;
    let referans = param(q, "tahsilat_api_islem_id");
    let lag = st.visibility_lag;
    let Some(order) = st.orders.get_mut(referans) else {
        debug!(referans, outcome = "not found", "pin_kontrol");
        return ORDER_NOT_FOUND.into();
    };
    if order.bought_at.elapsed() < lag {
        st.stats.unseen_checks += 1;
        debug!(referans, outcome = "not visible yet", "pin_kontrol");
        return ORDER_NOT_FOUND.into();
    }
    order.checks_seen += 1;
    st.check_times
        .entry(referans.to_owned())
        .or_default()
        .push(Utc::now());
    let (answer, outcome) = if order.checks_seen <= order.pending_checks {
        (PENDING.to_owned(), "pending")
    } else if order.cancelled {
        (CANCELLED.to_owned(), "cancelled")
    } else {
        (format!("OK|2|{}|Tamamlandı", order.pin), "completed")
    };
    debug!(referans, outcome, "pin_kontrol");
    answer
}

fn balance(config: &SimConfig, st: &mut State, q: &Params) -> String {
    if !authorised(config, q) {
        debug!("bakiye_kontrol: unauthorised, empty answer");
        return String::new();
    }
    format!("OK|{}", money(st.stats.balance_kurus))
}

fn catalog_json(config: &SimConfig, q: &Params) -> String {
    if !authorised(config, q) {
        return serde_json::json!({"success": false, "result": [], "error": "Yetkisiz erişim"})
            .to_string();
    }
    let result: Vec<serde_json::Value> = CATALOG
        .iter()
        .map(|p| {
            serde_json::json!({
                "id": p.id, "adi": format!("{} {} TL", p.oyun_adi, p.kupur),
                "aciklama": "Dijital kod, anında teslim", "oyun_id": p.oyun_id,
                "oyun_adi": p.oyun_adi, "fiyat": money(p.price_kurus), "kupur": p.kupur,
                "oyun_bilgi_id": p.oyun_bilgi_id,
            })
        })
        .collect();
    serde_json::json!({"success": true, "result": result, "error": null}).to_string()
}

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

// ----- the simulator ------------------------------------------------------------------

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

    fn router(&self) -> Router {
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
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self
            .inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// Sleeps, or returns early when the server is shutting down.
    async fn pause(&self, duration: Duration) {
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

    async fn protocol_call(self, call: SimCall, q: Params, logic: Logic) -> Response {
        let config = &self.inner.config;
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
    fn snake<T: serde::de::DeserializeOwned>(word: &str) -> Option<T> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{BalanceOutcome, CheckOutcome, PlaceOutcome};
    use crate::znet::protocol::{classify_balance, classify_check, classify_place, Codes};

    struct Running {
        sim: Sim,
        base: String,
        handle: SimHandle,
        stop: tokio::sync::oneshot::Sender<()>,
    }

    async fn start(config: SimConfig) -> Running {
        let sim = Sim::new(config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let handle = sim
            .clone()
            .serve("127.0.0.1:0".parse().unwrap(), shutdown)
            .await
            .unwrap();
        let base = format!("http://{}", handle.addr);
        Running {
            sim,
            base,
            handle,
            stop,
        }
    }

    fn url(base: &str, path: &str, params: &[(&str, &str)]) -> reqwest::Url {
        reqwest::Url::parse_with_params(&format!("{base}{path}"), params).unwrap()
    }

    async fn get(base: &str, path: &str, params: &[(&str, &str)]) -> (u16, String) {
        let resp = reqwest::get(url(base, path, params)).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    const AUTH: [(&str, &str); 2] = [("kod", "sim-kod"), ("sifre", "sim-sifre")];

    async fn place_at(base: &str, referans: &str, oyun: &str, kupur: &str) -> (u16, String) {
        let mut params = AUTH.to_vec();
        params.extend([("oyun", oyun), ("kupur", kupur), ("referans", referans)]);
        params.extend([
            ("musteri_tel", "5551234567"),
            ("oyuncu_bilgi", "Şükrü Öğüt"),
        ]);
        get(base, "/servis/pin_ekle.php", &params).await
    }

    async fn check_at(base: &str, referans: &str) -> CheckOutcome {
        let mut params = AUTH.to_vec();
        params.push(("tahsilat_api_islem_id", referans));
        let (status, body) = get(base, "/servis/pin_kontrol.php", &params).await;
        classify_check(status, &body, &Codes::default())
    }

    async fn place_ok(base: &str, referans: &str) -> PlaceOutcome {
        let (status, body) = place_at(base, referans, "412", "25").await;
        classify_place(status, &body, &Codes::default())
    }

    #[tokio::test]
    async fn happy_path_pending_then_completed_with_a_pin() {
        let run = start(SimConfig {
            checks_until_complete: 2,
            ..SimConfig::default()
        })
        .await;
        assert_eq!(
            place_ok(&run.base, "1001").await,
            PlaceOutcome::Accepted {
                cost: Some("24.25".into()),
                balance: Some("999975.75".into())
            }
        );
        assert_eq!(check_at(&run.base, "1001").await, CheckOutcome::Pending);
        assert_eq!(check_at(&run.base, "1001").await, CheckOutcome::Pending);
        let CheckOutcome::Completed { pin } = check_at(&run.base, "1001").await else {
            panic!("not completed")
        };
        assert!(!crate::znet::protocol::is_blank_pin(pin.expose()));
        assert_eq!(pin.expose().len(), 19);
        assert_eq!(
            check_at(&run.base, "1001").await,
            CheckOutcome::Completed { pin },
            "same PIN every time"
        );
        let (status, body) = get(&run.base, "/servis/bakiye_kontrol.php", &AUTH).await;
        assert_eq!(
            classify_balance(status, &body),
            BalanceOutcome::Balance {
                balance: "999975.75".into(),
                debt: None
            }
        );
        let stats = run.sim.stats();
        assert_eq!(
            (stats.checks, stats.balance_kurus),
            (4, DEFAULT_BALANCE_KURUS - 24_25)
        );
        assert!(
            matches!(check_at(&run.base, "999").await, CheckOutcome::NotFound { code, .. } if code == "4")
        );
    }

    #[tokio::test]
    async fn a_duplicate_referans_never_buys_twice() {
        let run = start(SimConfig::default()).await;
        assert!(matches!(
            place_ok(&run.base, "2002").await,
            PlaceOutcome::Accepted { .. }
        ));
        assert!(
            matches!(place_ok(&run.base, "2002").await, PlaceOutcome::Duplicate { code, .. } if code == "5")
        );
        let stats = run.sim.stats();
        assert_eq!(stats.placements["2002"], 2);
        assert_eq!(stats.purchases["2002"], 1);
        assert_eq!(stats.balance_kurus, DEFAULT_BALANCE_KURUS - 24_25);
    }

    #[tokio::test]
    async fn unknown_kupur_bad_parameters_and_random_rejection() {
        let run = start(SimConfig::default()).await;
        let (status, body) = place_at(&run.base, "3003", "412", "30").await;
        assert_eq!(
            classify_place(status, &body, &Codes::default()),
            PlaceOutcome::Rejected {
                code: "3".into(),
                message: "Kupur Bilgisi Bulunamadı".into()
            }
        );
        let (status, body) = place_at(&run.base, "12ab", "412", "25").await;
        assert!(
            matches!(classify_place(status, &body, &Codes::default()), PlaceOutcome::Refused { code, .. } if code == "2")
        );
        let stats = run.sim.stats();
        assert_eq!((stats.rejected, stats.purchases.len()), (2, 0));

        let run = start(SimConfig {
            rejection_rate: 1.0,
            ..SimConfig::default()
        })
        .await;
        assert!(
            matches!(place_ok(&run.base, "3004").await, PlaceOutcome::Rejected { code, .. } if code == "3")
        );
    }

    #[tokio::test]
    async fn wrong_credentials_are_an_account_problem_and_an_empty_balance() {
        let run = start(SimConfig::default()).await;
        let bad = [("kod", "sim-kod"), ("sifre", "yanlis")];
        let mut params = bad.to_vec();
        params.extend([("oyun", "412"), ("kupur", "25"), ("referans", "4004")]);
        let (status, body) = get(&run.base, "/servis/pin_ekle.php", &params).await;
        assert!(matches!(
            classify_place(status, &body, &Codes::default()),
            PlaceOutcome::AccountProblem { .. }
        ));
        let (status, body) = get(
            &run.base,
            "/servis/pin_kontrol.php",
            &[bad[0], bad[1], ("tahsilat_api_islem_id", "4004")],
        )
        .await;
        assert!(matches!(
            classify_check(status, &body, &Codes::default()),
            CheckOutcome::AccountProblem { .. }
        ));
        let (status, body) = get(&run.base, "/servis/bakiye_kontrol.php", &bad).await;
        assert_eq!((status, body.as_str()), (200, ""));
        assert!(matches!(
            classify_balance(status, &body),
            BalanceOutcome::AccountProblem { .. }
        ));
        let (_, body) = get(&run.base, "/servis/pin_listesi.php", &bad).await;
        let catalog: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(catalog["success"], false);
        assert!(run.sim.stats().placements.is_empty());
    }

    #[tokio::test]
    async fn scripted_server_error_has_no_effect_then_success() {
        let run = start(SimConfig::default()).await;
        run.sim.script(SimCall::Place, vec![Fault::ServerError]);
        assert!(matches!(
            place_ok(&run.base, "5005").await,
            PlaceOutcome::Unknown { .. }
        ));
        assert!(run.sim.stats().placements.is_empty());
        assert!(matches!(
            place_ok(&run.base, "5005").await,
            PlaceOutcome::Accepted { .. }
        ));
        let stats = run.sim.stats();
        assert_eq!((stats.faults_injected, stats.purchases["5005"]), (1, 1));
    }

    #[tokio::test]
    async fn a_lost_answer_times_out_but_the_purchase_happened() {
        let run = start(SimConfig {
            lost_answer_delay: Duration::from_millis(200),
            ..SimConfig::default()
        })
        .await;
        run.sim.script(SimCall::Place, vec![Fault::LostAnswer]);
        run.sim.script(SimCall::Check, vec![Fault::LostAnswer]);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(50))
            .build()
            .unwrap();
        let mut params = AUTH.to_vec();
        params.extend([("oyun", "7"), ("kupur", "10"), ("referans", "6006")]);
        let err = client
            .get(url(&run.base, "/servis/pin_ekle.php", &params))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        let stats = run.sim.stats();
        assert_eq!(
            (stats.purchases["6006"], stats.balance_kurus),
            (1, DEFAULT_BALANCE_KURUS - 10_40)
        );
        let (status, body) = get(
            &run.base,
            "/servis/pin_kontrol.php",
            &[AUTH[0], AUTH[1], ("tahsilat_api_islem_id", "6006")],
        )
        .await;
        assert!(
            matches!(
                classify_check(status, &body, &Codes::default()),
                CheckOutcome::Transient { .. }
            ),
            "lost check answers 503"
        );
        assert!(
            matches!(
                check_at(&run.base, "6006").await,
                CheckOutcome::Completed { .. }
            ),
            "the lost check counted"
        );
        assert_eq!(run.sim.stats().faults_injected, 2);
    }

    #[tokio::test]
    async fn a_new_order_is_not_found_during_the_visibility_lag_but_never_bought_twice() {
        let run = start(SimConfig {
            visibility_lag: Duration::from_millis(300),
            checks_until_complete: 0,
            ..SimConfig::default()
        })
        .await;
        assert!(matches!(
            place_ok(&run.base, "6100").await,
            PlaceOutcome::Accepted { .. }
        ));
        assert!(matches!(
            check_at(&run.base, "6100").await,
            CheckOutcome::NotFound { code, .. } if code == "4"
        ));
        assert!(
            matches!(
                place_ok(&run.base, "6100").await,
                PlaceOutcome::Duplicate { .. }
            ),
            "placements see it at once"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(matches!(
            check_at(&run.base, "6100").await,
            CheckOutcome::Completed { .. }
        ));
        let (status, _) = get(&run.base, "/sim/visibility", &[("lag_ms", "0")]).await;
        assert_eq!(status, 200);
        assert!(matches!(
            place_ok(&run.base, "6101").await,
            PlaceOutcome::Accepted { .. }
        ));
        assert!(matches!(
            check_at(&run.base, "6101").await,
            CheckOutcome::Completed { .. }
        ));
        let stats = run.sim.stats();
        assert_eq!((stats.unseen_checks, stats.purchases["6100"]), (1, 1));
    }

    #[tokio::test]
    async fn scripted_answers_come_after_scripted_faults_and_buy_nothing() {
        let run = start(SimConfig::default()).await;
        run.sim.script(SimCall::Place, vec![Fault::ServerError]);
        run.sim
            .script_answers(SimCall::Place, vec!["99|Bakım çalışması".into()]);
        let (status, _) = get(
            &run.base,
            "/sim/script",
            &[
                ("call", "check"),
                ("answer", "12|Sistem meşgul"),
                ("times", "2"),
            ],
        )
        .await;
        assert_eq!(status, 200);
        assert!(matches!(
            place_ok(&run.base, "6200").await,
            PlaceOutcome::Unknown { .. }
        ));
        assert!(matches!(
            place_ok(&run.base, "6200").await,
            PlaceOutcome::Refused { code, .. } if code == "99"
        ));
        assert!(run.sim.stats().purchases.is_empty());
        assert!(matches!(
            place_ok(&run.base, "6200").await,
            PlaceOutcome::Accepted { .. }
        ));
        for _ in 0..2 {
            assert!(matches!(
                check_at(&run.base, "6200").await,
                CheckOutcome::Refused { code, .. } if code == "12"
            ));
        }
        assert!(matches!(
            check_at(&run.base, "6200").await,
            CheckOutcome::Pending
        ));
        assert_eq!(run.sim.stats().scripted_answers, 3);
    }

    #[tokio::test]
    async fn shutdown_ends_hanging_answers() {
        let run = start(SimConfig::default()).await; // lost_answer_delay 30 s
        run.sim.script(SimCall::Place, vec![Fault::Timeout]);
        let base = run.base.clone();
        let hung = tokio::spawn(async move { place_at(&base, "6007", "412", "25").await });
        while run.sim.stats().faults_injected == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = run.stop.send(());
        let (status, _) = tokio::time::timeout(Duration::from_secs(5), hung)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, 503);
        tokio::time::timeout(Duration::from_secs(5), run.handle.task)
            .await
            .unwrap()
            .unwrap();
        assert!(
            run.sim.stats().placements.is_empty(),
            "a timeout has no effect"
        );
    }

    #[tokio::test]
    async fn cancelled_orders_and_out_of_process_controls() {
        let run = start(SimConfig {
            cancel_rate: 1.0,
            checks_until_complete: 0,
            ..SimConfig::default()
        })
        .await;
        assert_eq!(
            get(
                &run.base,
                "/sim/script",
                &[("call", "check"), ("faults", "garbage,empty_body")]
            )
            .await,
            (200, "ok".into())
        );
        assert_eq!(
            get(
                &run.base,
                "/sim/script",
                &[("call", "place"), ("faults", "bogus")]
            )
            .await
            .0,
            400
        );
        assert!(matches!(
            place_ok(&run.base, "7007").await,
            PlaceOutcome::Accepted { .. }
        ));
        assert!(matches!(
            check_at(&run.base, "7007").await,
            CheckOutcome::Transient { .. }
        ));
        assert!(matches!(
            check_at(&run.base, "7007").await,
            CheckOutcome::Transient { .. }
        ));
        assert!(
            matches!(check_at(&run.base, "7007").await, CheckOutcome::Cancelled { message } if message.contains("iptal"))
        );
        let (status, body) = get(&run.base, "/sim/stats", &[]).await;
        let stats: SimStats = serde_json::from_str(&body).unwrap();
        assert_eq!((status, stats.checks, stats.faults_injected), (200, 1, 2));
        assert_eq!(stats, run.sim.stats());
        let (status, body) = get(&run.base, "/servis/yok.php", &[]).await;
        assert!(status == 404 && body.contains("<html"));
        let (_, body) = get(&run.base, "/servis/pin_listesi.php", &AUTH).await;
        let catalog: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(catalog["result"].as_array().unwrap().len(), 5);
        assert_eq!(catalog["result"][0]["oyun_bilgi_id"], "412");
    }

    #[tokio::test]
    async fn fault_waves_come_and_go_and_are_counted_by_kind() {
        let run = start(SimConfig {
            lost_answer_delay: Duration::from_millis(100),
            ..SimConfig::default()
        })
        .await;
        let client = reqwest::Client::new();
        let wave = |kind: &str, rate: &str| {
            client
                .post(url(
                    &run.base,
                    "/sim/faults",
                    &[("kind", kind), ("rate", rate)],
                ))
                .send()
        };
        assert_eq!(wave("garbage", "1").await.unwrap().status(), 200);
        assert!(matches!(
            place_ok(&run.base, "9101").await,
            PlaceOutcome::Unknown { .. }
        ));
        assert!(
            run.sim.stats().placements.is_empty(),
            "garbage has no effect"
        );
        assert_eq!(wave("slow", "1").await.unwrap().status(), 200);
        let started = std::time::Instant::now();
        assert!(matches!(
            place_ok(&run.base, "9101").await,
            PlaceOutcome::Accepted { .. }
        ));
        assert!(started.elapsed() >= Duration::from_millis(50), "slow");
        assert_eq!(wave("none", "").await.unwrap().status(), 200);
        assert!(matches!(
            check_at(&run.base, "9101").await,
            CheckOutcome::Pending
        ));
        assert_eq!(wave("bogus", "1").await.unwrap().status(), 400);
        assert_eq!(wave("html", "2").await.unwrap().status(), 400);
        run.sim.set_outage(true);
        assert!(matches!(
            check_at(&run.base, "9101").await,
            CheckOutcome::Transient { .. }
        ));
        let stats = run.sim.stats();
        assert_eq!(stats.faults_injected, 3);
        assert_eq!(
            stats.faults_by_kind,
            BTreeMap::from([
                ("garbage".into(), 1),
                ("outage".into(), 1),
                ("slow".into(), 1)
            ])
        );
        assert_eq!(run.sim.cancelled("9101"), Some(false));
        assert_eq!(run.sim.cancelled("9102"), None);
    }

    #[tokio::test]
    async fn random_faults_are_seeded_and_never_buy_twice() {
        let run = start(SimConfig {
            fault_rate: 0.5,
            lost_answer_delay: Duration::from_millis(1),
            seed: 42,
            ..SimConfig::default()
        })
        .await;
        for i in 0..40 {
            let referans = format!("{}", 8000 + i % 10);
            let _ = place_ok(&run.base, &referans).await;
        }
        let stats = run.sim.stats();
        assert!(
            stats.faults_injected > 5 && stats.faults_injected < 35,
            "{}",
            stats.faults_injected
        );
        assert!(stats.purchases.values().all(|&n| n == 1));
        let spent = 24_25 * stats.purchases.len() as i64;
        assert_eq!(stats.balance_kurus, DEFAULT_BALANCE_KURUS - spent);
    }

    #[tokio::test]
    async fn credentials_and_pins_are_never_logged() {
        use std::io::Write;
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let config = SimConfig {
            kod: "dealer-kod-77".into(),
            sifre: "hunter2-sifre".into(),
            checks_until_complete: 0,
            ..SimConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
        let run = start(config).await;
        let auth = [("kod", "dealer-kod-77"), ("sifre", "hunter2-sifre")];
        let mut params = auth.to_vec();
        params.extend([("oyun", "412"), ("kupur", "50"), ("referans", "9009")]);
        assert_eq!(get(&run.base, "/servis/pin_ekle.php", &params).await.0, 200);
        let (status, body) = get(
            &run.base,
            "/servis/pin_kontrol.php",
            &[auth[0], auth[1], ("tahsilat_api_islem_id", "9009")],
        )
        .await;
        let CheckOutcome::Completed { pin } = classify_check(status, &body, &Codes::default())
        else {
            panic!("not completed")
        };
        let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(
            logs.contains("9009") && logs.contains("completed"),
            "nothing captured: {logs}"
        );
        for secret in ["dealer-kod-77", "hunter2-sifre", pin.expose()] {
            assert!(!logs.contains(secret), "a secret was logged");
        }
    }
}
