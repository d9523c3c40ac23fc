//! What the pipeline asks of a provider, and the answers it can get.
//!
//! Every answer is classified into what to do next. For a placement that is the heart of
//! G1: `Accepted` and `Rejected` are settled; `Transient`, `Refused`, and an
//! `AccountProblem` marked `not_placed`, prove this call bought nothing; `Duplicate` says
//! the reference already has an order; everything else (`Unknown`, other account problems)
//! may have bought it and must be settled by checking the same reference, never by a
//! placement under a new one. Only an account's permanent codes make a `Rejected` and only
//! its not-found codes a `NotFound` (G9); other codes are `Refused`: not an answer about
//! the order. Details and messages never carry a PIN or a credential (G5).

pub mod accounts;
pub mod codes;

use crate::secret::Secret;
use futures::future::BoxFuture;
use std::collections::BTreeMap;

/// One order as a provider needs it.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Fixed per order before the first attempt; digits only.
    pub reference: String,
    pub product: BTreeMap<String, String>,
    pub user_identifier: String,
    pub user_extra: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlaceOutcome {
    /// The provider took the order. Amounts are the provider's decimal text, when given.
    Accepted {
        cost: Option<String>,
        balance: Option<String>,
    },
    /// The provider refused the order with one of the account's permanent codes; final for
    /// the order, unless an earlier call under the reference may have landed.
    Rejected { code: String, message: String },
    /// The provider refused the call with a code that is not permanent (maintenance, a rate
    /// limit, a code never seen): this call bought nothing; try again later.
    Refused { code: String, message: String },
    /// The provider already has an order under this reference: an earlier call landed.
    /// Settle by checking; never a rejection.
    Duplicate { code: String, message: String },
    /// Credentials, IP whitelist, API permission or base URL are wrong: not the order's
    /// fault. `not_placed` says whether the answer also proves that nothing was bought.
    AccountProblem { detail: String, not_placed: bool },
    /// The request never reached the provider: nothing was bought.
    Transient { detail: String },
    /// The order may or may not have been placed.
    Unknown { detail: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Known to the provider, not final yet.
    Pending,
    /// Final: the PIN.
    Completed {
        pin: Secret,
    },
    /// Final: the provider cancelled the order.
    Cancelled {
        message: String,
    },
    /// The provider knows the order, but this answer cannot be used (a completed order
    /// without a PIN, an unknown status): ask again later.
    Unclear {
        detail: String,
    },
    /// The provider answered one of the account's not-found codes: it shows no order under
    /// this reference (yet: a new order may show with a lag).
    NotFound {
        code: String,
        message: String,
    },
    /// The provider answered another error code: nothing is known about the order; ask
    /// again later.
    Refused {
        code: String,
        message: String,
    },
    AccountProblem {
        detail: String,
    },
    /// No usable answer this time.
    Transient {
        detail: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BalanceOutcome {
    Balance {
        balance: String,
        debt: Option<String>,
    },
    AccountProblem {
        detail: String,
    },
    Transient {
        detail: String,
    },
}

/// One product a provider sells, as its catalog lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    /// The catalog entry's id at the provider.
    pub id: String,
    pub name: String,
    /// The game or brand it belongs to.
    pub group: String,
    /// The dealer's price, as the provider's decimal text.
    pub price: Option<String>,
    /// What an order's `product` holds to buy it (znet: `oyun` and `kupur`).
    pub product: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProductsOutcome {
    /// The catalog; `skipped` entries lacked what an order needs to name them.
    Products {
        products: Vec<Product>,
        skipped: usize,
    },
    AccountProblem {
        detail: String,
    },
    Transient {
        detail: String,
    },
}

/// A provider, as seen by the stages. Implementations classify every answer; they never
/// return raw bodies.
pub trait Provider: Send + Sync + 'static {
    /// Checks that the product parameters are the ones this provider needs, so that a bad
    /// event is dead-lettered instead of sent.
    fn validate_product(&self, product: &BTreeMap<String, String>) -> Result<(), String>;

    fn place<'a>(&'a self, placement: &'a Placement) -> BoxFuture<'a, PlaceOutcome>;

    fn check<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, CheckOutcome>;

    fn balance(&self) -> BoxFuture<'_, BalanceOutcome>;

    /// The products the account may buy (an operator's look-up, never on an order's path).
    fn products(&self) -> BoxFuture<'_, ProductsOutcome>;
}
