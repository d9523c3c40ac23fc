//! The znet provider: its answers parsed (`protocol`) and its HTTP client (`client`). Its
//! simulator, which speaks the same protocol with fault injection, is test bed
//! (`crate::testbed::sim`).
//!
//! The dependency goes one way: znet implements [`crate::provider`]'s trait and reads its
//! types; `provider` knows no provider. [`connect`] is what a command passes to
//! `Accounts::load` so that znet accounts get a [`client::ZnetClient`].

pub mod client;
pub mod protocol;

use crate::provider::accounts::{Endpoint, ProviderKind};
use crate::provider::Provider;

/// Builds the client of one checked znet account. The error is one sentence without the
/// URL (it carries `kod` and `sifre`, G5).
pub fn connect(endpoint: Endpoint) -> Result<Box<dyn Provider>, String> {
    match endpoint.kind {
        ProviderKind::Znet => {
            let client = client::ZnetClient::new(
                &endpoint.base_url,
                endpoint.kod,
                endpoint.sifre,
                endpoint.timeout,
            )
            .map_err(|e| e.without_url().to_string())?;
            Ok(Box::new(client.with_codes(endpoint.codes)))
        }
    }
}
