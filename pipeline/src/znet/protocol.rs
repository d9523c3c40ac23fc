//! znet's answers, parsed and classified (`docs/design/znet-protocol.md`).
//!
//! Pure functions from (HTTP status, body, the account's [`Codes`]) to a provider outcome.
//! They are deliberately suspicious: anything that is not a documented shape is `Unknown`
//! for a placement (it may have bought something) and `Transient` for a check. A
//! `<code>|<message>` answer means what the account's code lists say, and nothing more
//! (G9): only a permanent code rejects an order, only a not-found code says a check found
//! nothing; any other code is a refusal for now. Details describe the shape of an odd
//! answer, never its content, because a check's body can hold a PIN (G5); the provider's
//! messages pass [`crate::secret::scrub`] before they leave this module.

use crate::provider::{BalanceOutcome, CheckOutcome, PlaceOutcome, Product, ProductsOutcome};
use crate::secret::{scrub, Secret};

pub use crate::provider::codes::{
    Codes, DEFAULT_ACCOUNT_PROBLEM_CODES, DEFAULT_DUPLICATE_CODES, DEFAULT_NOT_FOUND_CODES,
    DEFAULT_PERMANENT_CODES,
};

fn listed(list: &[String], code: &str) -> bool {
    list.iter().any(|c| c == code)
}

/// The shape of a body, after trimming.
#[derive(Debug, PartialEq, Eq)]
enum Body<'a> {
    Empty,
    Html,
    /// `OK|...`: the fields after `OK`, trimmed.
    Ok(Vec<&'a str>),
    /// `<digits>|<message>`, the message already scrubbed.
    Error {
        code: &'a str,
        message: String,
    },
    Garbage,
}

fn shape(body: &str) -> Body<'_> {
    let body = body.trim_start_matches('\u{feff}').trim();
    if body.is_empty() {
        return Body::Empty;
    }
    let lower_head: String = body.chars().take(64).collect::<String>().to_lowercase();
    if lower_head.starts_with('<') || lower_head.contains("<html") {
        return Body::Html;
    }
    let mut fields = body.split('|').map(str::trim);
    let head = fields.next().unwrap_or_default();
    if head.eq_ignore_ascii_case("ok") {
        return Body::Ok(fields.collect());
    }
    if !head.is_empty() && head.bytes().all(|b| b.is_ascii_digit()) && body.contains('|') {
        let message = body
            .split_once('|')
            .map(|(_, m)| scrub(m))
            .unwrap_or_default();
        return Body::Error {
            code: head,
            message,
        };
    }
    Body::Garbage
}

fn amount(field: Option<&&str>) -> Option<String> {
    let text = field?.trim();
    let ok = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        && text.parse::<f64>().is_ok();
    ok.then(|| text.to_owned())
}

/// An HTML page is not a znet answer: a maintenance or error page of a proxy or the
/// provider's front end as often as a wrong base URL or a blocked IP. It is not counted as
/// an account problem (which pages an operator): a wrong base URL shows as HTTP 404, a
/// blocked IP as HTML on every call, which the breaker and the provider-errors alert see.
const HTML_DETAIL: &str =
    "HTML answer: a maintenance or error page, a wrong base URL or a blocked IP";

/// Classifies the answer to `pin_ekle.php`.
pub fn classify_place(http_status: u16, body: &str, codes: &Codes) -> PlaceOutcome {
    match http_status {
        200..=299 => {}
        // No such page: the base URL is wrong and `pin_ekle.php` never ran.
        404 => {
            return PlaceOutcome::AccountProblem {
                detail: "HTTP 404: check the account's base URL".to_owned(),
                not_placed: true,
            }
        }
        // Other 4xx (408, 429, 403 ...) may come from a proxy, after forwarding or not.
        400..=499 => {
            return PlaceOutcome::Unknown {
                detail: format!("HTTP {http_status}"),
            }
        }
        // A 5xx may come from a proxy after the provider processed the order.
        _ => {
            return PlaceOutcome::Unknown {
                detail: format!("HTTP {http_status}"),
            }
        }
    }
    match shape(body) {
        Body::Ok(fields) => PlaceOutcome::Accepted {
            cost: amount(fields.first()),
            balance: amount(fields.get(1)),
        },
        Body::Error { code, message } if listed(&codes.account_problem, code) => {
            PlaceOutcome::AccountProblem {
                detail: format!("{code}|{message}"),
                not_placed: true,
            }
        }
        Body::Error { code, message } if listed(&codes.duplicate, code) => {
            PlaceOutcome::Duplicate {
                code: code.to_owned(),
                message,
            }
        }
        Body::Error { code, message } if listed(&codes.permanent, code) => PlaceOutcome::Rejected {
            code: code.to_owned(),
            message,
        },
        // Maintenance, a rate limit, a code never seen: the provider answered, so this call
        // bought nothing, but the order may still go through later (G9).
        Body::Error { code, message } => PlaceOutcome::Refused {
            code: code.to_owned(),
            message,
        },
        // Usually a wrong base URL or a blocked IP, but a PHP warning page printed after the
        // order was stored looks the same.
        Body::Html => PlaceOutcome::Unknown {
            detail: HTML_DETAIL.to_owned(),
        },
        Body::Empty => PlaceOutcome::Unknown {
            detail: "empty answer".to_owned(),
        },
        Body::Garbage => PlaceOutcome::Unknown {
            detail: format!("unrecognised answer of {} bytes", body.len()),
        },
    }
}

/// Classifies the answer to `pin_kontrol.php`.
pub fn classify_check(http_status: u16, body: &str, codes: &Codes) -> CheckOutcome {
    if !(200..=299).contains(&http_status) {
        return CheckOutcome::Transient {
            detail: format!("HTTP {http_status}"),
        };
    }
    match shape(body) {
        Body::Ok(fields) => {
            let durum = fields.first().copied().unwrap_or_default();
            let pin = fields.get(1).copied().unwrap_or_default();
            let description = fields.get(2..).map(|d| d.join("|")).unwrap_or_default();
            match durum {
                "1" => CheckOutcome::Pending,
                "2" if is_blank_pin(pin) => CheckOutcome::Unclear {
                    detail: "completed without a PIN".to_owned(),
                },
                "2" => CheckOutcome::Completed {
                    pin: Secret::new(pin),
                },
                "3" => CheckOutcome::Cancelled {
                    message: scrub(&description),
                },
                _ => CheckOutcome::Unclear {
                    detail: format!("unknown durum of {} characters", durum.chars().count()),
                },
            }
        }
        Body::Error { code, message } if listed(&codes.account_problem, code) => {
            CheckOutcome::AccountProblem {
                detail: format!("{code}|{message}"),
            }
        }
        Body::Error { code, message } if listed(&codes.not_found, code) => CheckOutcome::NotFound {
            code: code.to_owned(),
            message,
        },
        // Not proof that nothing was bought: only a listed not-found code is.
        Body::Error { code, message } => CheckOutcome::Refused {
            code: code.to_owned(),
            message,
        },
        Body::Html => CheckOutcome::Transient {
            detail: HTML_DETAIL.to_owned(),
        },
        Body::Empty => CheckOutcome::Transient {
            detail: "empty answer".to_owned(),
        },
        Body::Garbage => CheckOutcome::Transient {
            detail: format!("unrecognised answer of {} bytes", body.len()),
        },
    }
}

/// What a 404 says: the base URL is wrong.
const WRONG_URL_DETAIL: &str = "HTTP 404: check the account's base URL";

/// Classifies the answer to `bakiye_kontrol.php`.
pub fn classify_balance(http_status: u16, body: &str) -> BalanceOutcome {
    match http_status {
        200..=299 => {}
        404 => {
            return BalanceOutcome::AccountProblem {
                detail: WRONG_URL_DETAIL.to_owned(),
            }
        }
        _ => {
            return BalanceOutcome::Transient {
                detail: format!("HTTP {http_status}"),
            }
        }
    }
    match shape(body) {
        Body::Ok(fields) => match amount(fields.first()) {
            Some(balance) => BalanceOutcome::Balance {
                balance,
                debt: amount(fields.get(1)),
            },
            None => BalanceOutcome::Transient {
                detail: "balance answer without an amount".to_owned(),
            },
        },
        Body::Empty => BalanceOutcome::AccountProblem {
            detail: "empty answer: wrong dealer code, API access disabled or IP mismatch"
                .to_owned(),
        },
        Body::Html => BalanceOutcome::Transient {
            detail: HTML_DETAIL.to_owned(),
        },
        Body::Error { code, message } => BalanceOutcome::AccountProblem {
            detail: format!("{code}|{message}"),
        },
        Body::Garbage => BalanceOutcome::Transient {
            detail: format!("unrecognised answer of {} bytes", body.len()),
        },
    }
}

/// Classifies the answer to `pin_listesi.php`: JSON `{"success": true, "result": [...],
/// "error": null}`, each entry with `id`, `adi`, `oyun_adi`, `fiyat`, `kupur` and
/// `oyun_bilgi_id` as text or numbers. An entry without `oyun_bilgi_id` or `kupur` cannot
/// be ordered and is skipped (counted). `success: false` is the account's problem (the call
/// takes no other parameter); its `error` text is scrubbed.
pub fn classify_products(http_status: u16, body: &str) -> ProductsOutcome {
    match http_status {
        200..=299 => {}
        404 => {
            return ProductsOutcome::AccountProblem {
                detail: WRONG_URL_DETAIL.to_owned(),
            }
        }
        _ => {
            return ProductsOutcome::Transient {
                detail: format!("HTTP {http_status}"),
            }
        }
    }
    let trimmed = body.trim_start_matches('\u{feff}').trim();
    let Ok(answer) = serde_json::from_str::<serde_json::Value>(trimmed) else {
        return match shape(body) {
            Body::Empty => ProductsOutcome::AccountProblem {
                detail: "empty answer: wrong dealer code, API access disabled or IP mismatch"
                    .to_owned(),
            },
            Body::Error { code, message } => ProductsOutcome::AccountProblem {
                detail: format!("{code}|{message}"),
            },
            Body::Html => ProductsOutcome::Transient {
                detail: HTML_DETAIL.to_owned(),
            },
            Body::Ok(_) | Body::Garbage => ProductsOutcome::Transient {
                detail: format!("unrecognised answer of {} bytes", body.len()),
            },
        };
    };
    if answer.get("success").and_then(serde_json::Value::as_bool) != Some(true) {
        let error = answer.get("error").map(field).unwrap_or_default();
        return ProductsOutcome::AccountProblem {
            detail: format!("catalog refused: {}", scrub(&error)),
        };
    }
    let Some(entries) = answer.get("result").and_then(serde_json::Value::as_array) else {
        return ProductsOutcome::Transient {
            detail: "catalog answer without a result list".to_owned(),
        };
    };
    let products: Vec<Product> = entries.iter().filter_map(product).collect();
    ProductsOutcome::Products {
        skipped: entries.len() - products.len(),
        products,
    }
}

/// A JSON value as text: strings as they are, numbers as written, anything else empty;
/// control characters become spaces, so a name cannot garble a terminal.
fn field(value: &serde_json::Value) -> String {
    let text = match value {
        serde_json::Value::String(text) => text.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One catalog entry, if it names what an order needs.
fn product(entry: &serde_json::Value) -> Option<Product> {
    let get = |name: &str| entry.get(name).map(field).unwrap_or_default();
    let (oyun, kupur) = (get("oyun_bilgi_id"), get("kupur"));
    if oyun.is_empty() || kupur.is_empty() {
        return None;
    }
    let price = get("fiyat");
    Some(Product {
        id: get("id"),
        name: get("adi"),
        group: get("oyun_adi"),
        price: amount(Some(&price.as_str())),
        product: [("oyun", oyun), ("kupur", kupur)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    })
}

/// znet marks "no PIN yet" with a space, a dash or nothing.
pub fn is_blank_pin(pin: &str) -> bool {
    let pin = pin.trim();
    pin.is_empty() || pin.chars().all(|c| c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Classifies with the default code lists.
    fn place(status: u16, body: &str) -> PlaceOutcome {
        classify_place(status, body, &Codes::default())
    }

    fn check(status: u16, body: &str) -> CheckOutcome {
        classify_check(status, body, &Codes::default())
    }

    #[test]
    fn place_ok_with_amounts() {
        assert_eq!(
            place(200, "OK|97.50|1402.25\n"),
            PlaceOutcome::Accepted {
                cost: Some("97.50".into()),
                balance: Some("1402.25".into())
            }
        );
    }

    #[test]
    fn place_ok_with_odd_amounts_is_still_accepted() {
        assert_eq!(
            place(200, "OK|abc"),
            PlaceOutcome::Accepted {
                cost: None,
                balance: None
            }
        );
    }

    #[test]
    fn unknown_denomination_is_a_rejection_with_turkish_message() {
        assert_eq!(
            place(200, "3|Kupur Bilgisi Bulunamadı"),
            PlaceOutcome::Rejected {
                code: "3".into(),
                message: "Kupur Bilgisi Bulunamadı".into()
            }
        );
    }

    #[test]
    fn auth_ip_or_permission_is_an_account_problem() {
        let body =
            "8|Bağlantı Hatası,Kullanıcı Api Yetki, Kısıtlı Ip yada Kullanıcı Bilgileri Hatalı";
        assert!(matches!(
            place(200, body),
            PlaceOutcome::AccountProblem { .. }
        ));
        assert!(matches!(
            check(200, body),
            CheckOutcome::AccountProblem { .. }
        ));
    }

    #[test]
    fn html_is_no_answer_and_no_account_problem() {
        let html = "<!DOCTYPE html><html><body>Bakım çalışması</body></html>";
        // A placement answered with a page may have been stored before the page was
        // printed: unknown, settled by a check.
        assert!(matches!(place(200, html), PlaceOutcome::Unknown { .. }));
        assert!(matches!(check(200, html), CheckOutcome::Transient { .. }));
        assert!(matches!(
            classify_balance(200, html),
            BalanceOutcome::Transient { .. }
        ));
    }

    #[test]
    fn an_unclear_placement_is_unknown_never_transient() {
        for (status, body) in [
            (200, ""),
            (200, "   \n"),
            (200, "Sunucu meşgul"),
            (500, "OK|1|2"),
            (502, "<html>bad gateway</html>"),
            (503, ""),
        ] {
            assert!(
                matches!(place(status, body), PlaceOutcome::Unknown { .. }),
                "{status} {body:?}"
            );
        }
    }

    #[test]
    fn only_a_missing_page_or_code_8_proves_nothing_was_placed() {
        assert!(matches!(
            place(404, "not found"),
            PlaceOutcome::AccountProblem {
                not_placed: true,
                ..
            }
        ));
        assert!(matches!(
            place(200, "8|Bağlantı Hatası"),
            PlaceOutcome::AccountProblem {
                not_placed: true,
                ..
            }
        ));
        assert!(matches!(
            place(200, "<html>Warning: mysql</html>"),
            PlaceOutcome::Unknown { .. }
        ));
        for status in [403, 408, 429] {
            assert!(
                matches!(place(status, ""), PlaceOutcome::Unknown { .. }),
                "{status}"
            );
        }
    }

    #[test]
    fn check_states() {
        assert_eq!(check(200, "OK|1| |"), CheckOutcome::Pending);
        assert_eq!(check(200, "OK|1|-|Beklemede"), CheckOutcome::Pending);
        assert_eq!(
            check(200, "OK|2| ABCD-1234 |Tamamlandı"),
            CheckOutcome::Completed {
                pin: Secret::new("ABCD-1234")
            }
        );
        assert_eq!(
            check(200, "OK|3| |Stok yok, iptal edildi"),
            CheckOutcome::Cancelled {
                message: "Stok yok, iptal edildi".into()
            }
        );
        assert_eq!(
            check(200, "4|Sipariş bulunamadı"),
            CheckOutcome::NotFound {
                code: "4".into(),
                message: "Sipariş bulunamadı".into()
            }
        );
    }

    #[test]
    fn a_blank_pin_is_never_a_pin() {
        for pin in ["", " ", "-", " - ", "--"] {
            let body = format!("OK|2|{pin}|Tamamlandı");
            assert!(
                matches!(check(200, &body), CheckOutcome::Unclear { .. }),
                "{pin:?}"
            );
        }
    }

    #[test]
    fn a_reused_reference_is_a_duplicate_not_a_rejection() {
        assert!(matches!(
            place(200, "5|Bu referans ile daha önce sipariş verilmiş"),
            PlaceOutcome::Duplicate { .. }
        ));
    }

    #[test]
    fn odd_check_answers_are_transient_and_do_not_echo_the_body() {
        for (status, body) in [
            (200, ""),
            (200, "OK|9|SECRETPIN|x"),
            (200, "SECRETPIN garbage"),
            (503, "SECRETPIN"),
        ] {
            match check(status, body) {
                CheckOutcome::Transient { detail } | CheckOutcome::Unclear { detail } => {
                    assert!(!detail.contains("SECRETPIN"), "{detail}")
                }
                other => panic!("{body:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn balance_shapes() {
        assert_eq!(
            classify_balance(200, "OK|1500.00"),
            BalanceOutcome::Balance {
                balance: "1500.00".into(),
                debt: None
            }
        );
        assert_eq!(
            classify_balance(200, "OK|1500.00|-20.5"),
            BalanceOutcome::Balance {
                balance: "1500.00".into(),
                debt: Some("-20.5".into())
            }
        );
        assert!(matches!(
            classify_balance(200, ""),
            BalanceOutcome::AccountProblem { .. }
        ));
    }

    #[test]
    fn a_missing_balance_page_is_the_base_url() {
        assert_eq!(
            classify_balance(404, "<html>Not Found</html>"),
            BalanceOutcome::AccountProblem {
                detail: "HTTP 404: check the account's base URL".into()
            }
        );
        assert!(matches!(
            classify_balance(503, ""),
            BalanceOutcome::Transient { .. }
        ));
    }

    #[test]
    fn the_catalog_lists_what_orders_name() {
        let body = r#"{"success": true, "error": null, "result": [
            {"id": 1, "adi": "Steam Cüzdan Kodu 25 TL", "aciklama": "x", "oyun_id": "41",
             "oyun_adi": "Steam Cüzdan Kodu", "fiyat": "24.25", "kupur": "25",
             "oyun_bilgi_id": "412"},
            {"id": "2", "adi": "Şişe\n10", "oyun_adi": "Oyun Parası", "fiyat": 10.4,
             "kupur": 10, "oyun_bilgi_id": 7},
            {"id": 3, "adi": "no kupur", "oyun_bilgi_id": "9"}
        ]}"#;
        let ProductsOutcome::Products { products, skipped } = classify_products(200, body) else {
            panic!("{:?}", classify_products(200, body))
        };
        assert_eq!(skipped, 1);
        assert_eq!(products.len(), 2);
        assert_eq!(products[0].id, "1");
        assert_eq!(products[0].name, "Steam Cüzdan Kodu 25 TL");
        assert_eq!(products[0].group, "Steam Cüzdan Kodu");
        assert_eq!(products[0].price.as_deref(), Some("24.25"));
        assert_eq!(products[0].product["oyun"], "412");
        assert_eq!(products[0].product["kupur"], "25");
        assert_eq!(
            products[1].name, "Şişe 10",
            "control characters become spaces"
        );
        assert_eq!(products[1].price.as_deref(), Some("10.4"));
        assert_eq!(products[1].product["oyun"], "7");
        assert_eq!(products[1].product["kupur"], "10");
    }

    #[test]
    fn a_refused_catalog_is_the_accounts_problem() {
        assert_eq!(
            classify_products(
                200,
                r#"{"success": false, "result": [], "error": "Yetkisiz erişim"}"#
            ),
            ProductsOutcome::AccountProblem {
                detail: "catalog refused: Yetkisiz erişim".into()
            }
        );
        for body in ["", "8|Bağlantı Hatası"] {
            assert!(
                matches!(
                    classify_products(200, body),
                    ProductsOutcome::AccountProblem { .. }
                ),
                "{body:?}"
            );
        }
        assert!(matches!(
            classify_products(404, ""),
            ProductsOutcome::AccountProblem { .. }
        ));
        for (status, body) in [
            (200, "<html>bakım</html>"),
            (200, "Sunucu meşgul"),
            (200, r#"{"success": true}"#),
            (502, "{}"),
        ] {
            assert!(
                matches!(
                    classify_products(status, body),
                    ProductsOutcome::Transient { .. }
                ),
                "{status} {body:?}"
            );
        }
    }

    #[test]
    fn bom_and_whitespace_are_ignored() {
        assert_eq!(check(200, "\u{feff}  OK|1|-|\r\n"), CheckOutcome::Pending);
    }

    #[test]
    fn only_the_accounts_permanent_codes_reject_a_placement() {
        assert!(matches!(
            place(200, "3|Kupur Bilgisi Bulunamadı"),
            PlaceOutcome::Rejected { .. }
        ));
        // Maintenance, a rate limit, a code never seen: refused for now, never a rejection.
        for body in [
            "99|Bakım çalışması",
            "6|Yetersiz bakiye",
            "429|Çok fazla istek",
        ] {
            let PlaceOutcome::Refused { code, message } = place(200, body) else {
                panic!("{body:?} gave {:?}", place(200, body))
            };
            assert_eq!(format!("{code}|{message}"), body);
        }
        // Another account's lists decide differently.
        let codes = Codes {
            permanent: vec!["3".into(), "77".into()],
            duplicate: vec!["12".into()],
            ..Codes::default()
        };
        assert!(matches!(
            classify_place(200, "77|Ürün kaldırıldı", &codes),
            PlaceOutcome::Rejected { .. }
        ));
        assert!(matches!(
            classify_place(200, "12|Referans kullanımda", &codes),
            PlaceOutcome::Duplicate { .. }
        ));
        assert!(matches!(
            classify_place(200, "5|Bu referans ile daha önce sipariş verilmiş", &codes),
            PlaceOutcome::Refused { .. }
        ));
    }

    #[test]
    fn only_the_accounts_not_found_codes_say_a_check_found_nothing() {
        assert!(matches!(
            check(200, "4|Sipariş bulunamadı"),
            CheckOutcome::NotFound { .. }
        ));
        for body in ["99|Bakım çalışması", "3|Hata", "12|Sistem meşgul"] {
            assert!(
                matches!(check(200, body), CheckOutcome::Refused { .. }),
                "{body:?} gave {:?}",
                check(200, body)
            );
        }
        let codes = Codes {
            not_found: vec!["404".into()],
            ..Codes::default()
        };
        assert!(matches!(
            classify_check(200, "404|Kayıt yok", &codes),
            CheckOutcome::NotFound { .. }
        ));
        assert!(matches!(
            classify_check(200, "4|Sipariş bulunamadı", &codes),
            CheckOutcome::Refused { .. }
        ));
    }

    #[test]
    fn provider_messages_are_scrubbed_of_pin_shapes() {
        let PlaceOutcome::Refused { message, .. } =
            place(200, "99|Hata: ABCD-1234-EF56-7890 kodu\nsatır")
        else {
            panic!("not refused")
        };
        assert!(!message.contains("ABCD-1234"), "{message}");
        assert!(!message.contains('\n'), "{message}");
        let CheckOutcome::Cancelled { message } = check(200, "OK|3| |İptal: 1234567890123456")
        else {
            panic!("not cancelled")
        };
        assert!(!message.contains("1234567890"), "{message}");
        assert!(message.starts_with("İptal"), "{message}");
    }

    fn any_body() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,80}",
            "(OK|ok|[0-9]{1,2}|<html>)?(\\|[ -~ıİşŞğĞüÜöÖçÇ]{0,12}){0,5}",
        ]
    }

    proptest! {
        /// No answer can make a placement look settled unless it says OK or code|message
        /// with a 2xx status: the classifier errs on the side of "unknown" (G1).
        #[test]
        fn only_documented_shapes_settle_a_placement(status in 100u16..600, body in any_body()) {
            match place(status, &body) {
                PlaceOutcome::Accepted { .. } => {
                    prop_assert!((200..300).contains(&status));
                    let trimmed = body.trim_start_matches('\u{feff}').trim().to_lowercase();
                    prop_assert!(trimmed.starts_with("ok"));
                }
                PlaceOutcome::Rejected { code, .. } => {
                    prop_assert!((200..300).contains(&status));
                    // Only a permanent code of the account rejects an order (G9).
                    prop_assert!(DEFAULT_PERMANENT_CODES.contains(&code.as_str()));
                }
                _ => {}
            }
        }

        /// Only a not-found code of the account says a check found nothing, and only a
        /// permanent one rejects a placement, whatever else the body holds (G9).
        #[test]
        fn only_listed_codes_are_believed(status in 100u16..600, body in any_body()) {
            if let CheckOutcome::NotFound { code, .. } = check(status, &body) {
                prop_assert!(DEFAULT_NOT_FOUND_CODES.contains(&code.as_str()));
            }
            if let PlaceOutcome::Refused { code, .. } = place(status, &body) {
                prop_assert!(!DEFAULT_PERMANENT_CODES.contains(&code.as_str()));
            }
        }

        /// A completed check always carries a non-blank, trimmed PIN.
        #[test]
        fn completed_always_has_a_real_pin(status in 200u16..300, body in any_body()) {
            if let CheckOutcome::Completed { pin } = check(status, &body) {
                prop_assert!(!is_blank_pin(pin.expose()));
                prop_assert_eq!(pin.expose().trim(), pin.expose());
            }
        }

        /// Details of unclear answers never repeat the answer's text.
        #[test]
        fn transient_details_do_not_echo_bodies(body in "[A-Z]{12,20}") {
            for outcome in [check(200, &body), check(500, &body)] {
                if let CheckOutcome::Transient { detail } = outcome {
                    prop_assert!(!detail.contains(&body));
                }
            }
        }
    }
}
