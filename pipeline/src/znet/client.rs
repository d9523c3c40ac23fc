//! The znet HTTP client: one GET per call, credentials as query parameters, every answer
//! classified by [`crate::znet::protocol`].
//!
//! Request errors are stripped of their URL before anything sees them, because the URL
//! carries `kod` and `sifre` (G5). A request that may have reached znet and got no answer
//! (a timeout after sending, a broken body) is `Unknown` for a placement.

use crate::provider::{
    BalanceOutcome, CheckOutcome, PlaceOutcome, Placement, ProductsOutcome, Provider,
};
use crate::secret::Secret;
use crate::znet::protocol;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::time::Duration;

/// The product parameters znet needs.
pub const PRODUCT_PARAMS: [&str; 2] = ["oyun", "kupur"];

pub struct ZnetClient {
    http: reqwest::Client,
    base_url: String,
    kod: Secret,
    sifre: Secret,
    /// The whole call's limit, named when a call runs out of it.
    timeout: Duration,
    /// What this account's error codes mean.
    codes: protocol::Codes,
}

/// What went wrong with a request, without its URL.
enum Failure {
    /// The request never left: nothing can have been bought.
    NotSent(String),
    /// It may have reached znet.
    NoAnswer(String),
}

impl ZnetClient {
    pub fn new(
        base_url: &str,
        kod: Secret,
        sifre: Secret,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            // A redirect would carry kod and sifre to another URL (and into debug logs).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()?;
        Ok(ZnetClient {
            http,
            timeout,
            base_url: base_url.trim_end_matches('/').to_owned(),
            kod,
            sifre,
            codes: protocol::Codes::default(),
        })
    }

    /// A timeout says so: reqwest's own text for it is "error sending request".
    fn timed_out(&self) -> String {
        format!("timeout: no answer within {} ms", self.timeout.as_millis())
    }

    /// The same client, reading error codes with the account's lists.
    pub fn with_codes(self, codes: protocol::Codes) -> Self {
        ZnetClient { codes, ..self }
    }

    async fn call(&self, name: &str, params: &[(&str, &str)]) -> Result<(u16, String), Failure> {
        let url = format!("{}/servis/{name}.php", self.base_url);
        let auth = [("kod", self.kod.expose()), ("sifre", self.sifre.expose())];
        let response = self
            .http
            .get(url)
            .query(&auth)
            .query(params)
            .send()
            .await
            .map_err(|e| {
                let e = e.without_url();
                if e.is_timeout() && !e.is_connect() {
                    Failure::NoAnswer(self.timed_out())
                } else if e.is_connect() || e.is_builder() {
                    // A connect timeout lands here too: nothing was sent.
                    Failure::NotSent(with_cause(&e))
                } else {
                    Failure::NoAnswer(e.to_string())
                }
            })?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| {
            if e.is_timeout() {
                Failure::NoAnswer(self.timed_out())
            } else {
                Failure::NoAnswer(e.without_url().to_string())
            }
        })?;
        Ok((status, body))
    }
}

/// The error and its innermost cause (`error sending request: Connection refused (os error
/// 111)`): reqwest's own text does not say why. The causes are the connector's and the
/// operating system's, which carry no URL.
fn with_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let (text, why) = (e.to_string(), cause.to_string());
    if why == text || text.contains(&why) {
        text
    } else {
        format!("{text}: {why}")
    }
}

impl Provider for ZnetClient {
    fn validate_product(&self, product: &BTreeMap<String, String>) -> Result<(), String> {
        for name in PRODUCT_PARAMS {
            match product.get(name).map(|v| v.trim()) {
                None | Some("") => return Err(format!("znet needs product.{name}")),
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn place<'a>(&'a self, p: &'a Placement) -> BoxFuture<'a, PlaceOutcome> {
        Box::pin(async move {
            let get = |k: &str| p.product.get(k).map(String::as_str).unwrap_or_default();
            let params = [
                ("oyun", get("oyun")),
                ("kupur", get("kupur")),
                ("referans", p.reference.as_str()),
                ("musteri_tel", p.user_identifier.as_str()),
                ("oyuncu_bilgi", p.user_extra.as_str()),
            ];
            match self.call("pin_ekle", &params).await {
                Ok((status, body)) => protocol::classify_place(status, &body, &self.codes),
                Err(Failure::NotSent(detail)) => PlaceOutcome::Transient { detail },
                Err(Failure::NoAnswer(detail)) => PlaceOutcome::Unknown { detail },
            }
        })
    }

    fn check<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, CheckOutcome> {
        Box::pin(async move {
            match self
                .call("pin_kontrol", &[("tahsilat_api_islem_id", reference)])
                .await
            {
                Ok((status, body)) => protocol::classify_check(status, &body, &self.codes),
                Err(Failure::NotSent(detail) | Failure::NoAnswer(detail)) => {
                    CheckOutcome::Transient { detail }
                }
            }
        })
    }

    fn balance(&self) -> BoxFuture<'_, BalanceOutcome> {
        Box::pin(async move {
            match self.call("bakiye_kontrol", &[]).await {
                Ok((status, body)) => protocol::classify_balance(status, &body),
                Err(Failure::NotSent(detail) | Failure::NoAnswer(detail)) => {
                    BalanceOutcome::Transient { detail }
                }
            }
        })
    }

    fn products(&self) -> BoxFuture<'_, ProductsOutcome> {
        Box::pin(async move {
            match self.call("pin_listesi", &[]).await {
                Ok((status, body)) => protocol::classify_products(status, &body),
                Err(Failure::NotSent(detail) | Failure::NoAnswer(detail)) => {
                    ProductsOutcome::Transient { detail }
                }
            }
        })
    }
}

// The tests run the client against the simulator, which the `testbed` feature brings.
#[cfg(all(test, feature = "testbed"))]
mod tests {
    use super::*;
    use crate::testbed::sim::{Fault, Sim, SimCall, SimConfig};

    /// A call that runs out of time says "timeout", for a placement and for a check; a
    /// refused connection is "not sent", not a timeout.
    #[tokio::test]
    async fn a_timeout_is_named_a_timeout() {
        let sim = Sim::new(SimConfig {
            kod: "k".into(),
            sifre: "s".into(),
            lost_answer_delay: Duration::from_secs(2),
            ..SimConfig::default()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = sim
            .clone()
            .serve("127.0.0.1:0".parse().unwrap(), async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        let client = ZnetClient::new(
            &format!("http://{}", handle.addr),
            Secret::new("k"),
            Secret::new("s"),
            Duration::from_millis(300),
        )
        .unwrap();
        sim.script(SimCall::Place, vec![Fault::Timeout]);
        sim.script(SimCall::Check, vec![Fault::Timeout]);
        let placement = Placement {
            reference: "100".into(),
            product: [("oyun", "1"), ("kupur", "25")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            user_identifier: "5550000000".into(),
            user_extra: "x".into(),
        };
        let expected = "timeout: no answer within 300 ms".to_owned();
        assert_eq!(
            client.place(&placement).await,
            PlaceOutcome::Unknown {
                detail: expected.clone()
            }
        );
        assert_eq!(
            client.check("100").await,
            CheckOutcome::Transient { detail: expected }
        );
        let _ = stop.send(());
        let down = ZnetClient::new(
            "http://127.0.0.1:1",
            Secret::new("k"),
            Secret::new("s"),
            Duration::from_millis(300),
        )
        .unwrap();
        match down.place(&placement).await {
            PlaceOutcome::Transient { detail } => {
                assert!(!detail.contains("timeout"), "{detail}");
                assert!(detail.contains("refused"), "says why: {detail}");
                assert!(!detail.contains("127.0.0.1"), "no URL: {detail}");
            }
            other => panic!("{other:?}"),
        }
    }
}
