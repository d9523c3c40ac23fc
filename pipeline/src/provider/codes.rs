//! What a provider's `<code>|<message>` answers mean for one account (G9): the account's
//! code lists, checked at load and read by the provider's classification. The defaults are
//! znet's codes, the first provider's (`docs/design/znet-protocol.md`).

/// Placement codes that fail an order: `3|Kupur Bilgisi Bulunamadı` (unknown denomination)
/// is the only one the protocol notes call permanent.
pub const DEFAULT_PERMANENT_CODES: &[&str] = &["3"];

/// Error codes that mean the dealer account (credentials, IP whitelist, API permission) is
/// at fault rather than the order: `8|Bağlantı Hatası,Kullanıcı Api Yetki, ...`.
pub const DEFAULT_ACCOUNT_PROBLEM_CODES: &[&str] = &["8"];

/// Placement codes that mean "this referans already has an order". The protocol notes do
/// not document znet's code for it; `5` is the simulator's. Whatever the code, a refusal
/// that follows an unclear attempt never fails an order (see `dispatch::placement`), so an
/// unlisted duplicate code cannot fail a bought order.
pub const DEFAULT_DUPLICATE_CODES: &[&str] = &["5"];

/// Check codes that mean "no order under this referans". The protocol notes only say an
/// unknown referans gets `<code>|<message>`; `4|Sipariş bulunamadı` is the simulator's.
/// A code missing from this list is never taken for "not found": at worst an order whose
/// first call was unclear waits for its deadline instead of being placed again.
pub const DEFAULT_NOT_FOUND_CODES: &[&str] = &["4"];

/// What an account's `<code>|<message>` answers mean (its `[[account]]` code lists).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Codes {
    /// Placement codes that fail the order (a customer rejection).
    pub permanent: Vec<String>,
    /// Placement codes that say the referans already has an order.
    pub duplicate: Vec<String>,
    /// Codes of any call that say the dealer account is at fault.
    pub account_problem: Vec<String>,
    /// Check codes that say the provider has no order under the referans.
    pub not_found: Vec<String>,
}

fn owned(codes: &[&str]) -> Vec<String> {
    codes.iter().map(|c| (*c).to_owned()).collect()
}

impl Default for Codes {
    fn default() -> Self {
        Codes {
            permanent: owned(DEFAULT_PERMANENT_CODES),
            duplicate: owned(DEFAULT_DUPLICATE_CODES),
            account_problem: owned(DEFAULT_ACCOUNT_PROBLEM_CODES),
            not_found: owned(DEFAULT_NOT_FOUND_CODES),
        }
    }
}
