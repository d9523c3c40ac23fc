//! What the simulator answers, without IO: the static catalog, the protocol's answer lines
//! (`<code>|<message>`, `OK|...`), and the place, check, balance and catalog logic on the
//! state. A referans buys at most once, ever. Never puts kod, sifre or a PIN in a log (G5).

use super::state::{Order, State};
use super::SimConfig;
use chrono::Utc;
use std::collections::HashMap;
use tracing::debug;

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
pub(super) const GARBAGE: &str = "Sunucu meşgul, lütfen daha sonra tekrar deneyiniz.";
pub(super) const UNAVAILABLE_HTML: &str =
    "<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1></body></html>";
pub(super) const FORBIDDEN_HTML: &str =
    "<html><head><title>403 Forbidden</title></head><body><h1>Request blocked</h1></body></html>";
/// A code no account lists: maintenance, say.
pub(super) const UNKNOWN_CODE: &str = "99|Sistem bakımda, lütfen daha sonra tekrar deneyin";
pub(super) const WRONG_URL_HTML: &str =
    "<!DOCTYPE html><html><head><title>Bayi Paneli</title></head><body>Giriş yapınız</body></html>";
pub(super) const NOT_FOUND_HTML: &str =
    "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>";

pub(super) type Params = HashMap<String, String>;
pub(super) type Logic = fn(&SimConfig, &mut State, &Params) -> String;

pub(super) fn param<'a>(q: &'a Params, name: &str) -> &'a str {
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

pub(super) fn place(config: &SimConfig, st: &mut State, q: &Params) -> String {
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

pub(super) fn check(config: &SimConfig, st: &mut State, q: &Params) -> String {
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

pub(super) fn balance(config: &SimConfig, st: &mut State, q: &Params) -> String {
    if !authorised(config, q) {
        debug!("bakiye_kontrol: unauthorised, empty answer");
        return String::new();
    }
    format!("OK|{}", money(st.stats.balance_kurus))
}

pub(super) fn catalog_json(config: &SimConfig, q: &Params) -> String {
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
