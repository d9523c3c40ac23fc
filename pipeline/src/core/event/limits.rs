//! What a field may hold, so that every value decoding accepts also fits where it goes:
//! PostgreSQL's columns and indexes, and the broker. A value outside these limits is an
//! `invalid_field` at decoding, never a statement that fails again on every redelivery.
//!
//! Text lengths are in bytes of UTF-8. The binding one is the btree limit: an index entry
//! holds at most about 2,704 bytes, and `orders` has a unique index on
//! (`provider_account`, `provider_reference`); the other limits are generous for what the
//! fields are (identifiers, short product codes, a phone number and player info) and keep
//! one bad field from filling a row.

use chrono::{DateTime, NaiveDate, Utc};

pub const TENANT_ID: usize = 256;
/// Also the id of a configured account; indexed with the reference.
pub const PROVIDER_ACCOUNT: usize = 128;
/// znet's references are nine digits; indexed with the account.
pub const PROVIDER_REFERENCE: usize = 128;
// The unique index on (provider_account, provider_reference) takes every pair decoding
// accepts, with room for the entry's own header.
const _: () = assert!(PROVIDER_ACCOUNT + PROVIDER_REFERENCE < 2704 - 64);
pub const PRODUCT_ENTRIES: usize = 32;
pub const PRODUCT_KEY: usize = 64;
pub const PRODUCT_VALUE: usize = 256;
pub const USER_IDENTIFIER: usize = 256;
pub const USER_EXTRA: usize = 1024;
pub const FAILURE_CODE: usize = 64;
/// The stages write scrubbed provider text of at most 200 characters and sentences of
/// their own; this leaves room for both.
pub const FAILURE_MESSAGE: usize = 4096;
/// A sealed PIN (key id, nonce, ciphertext in base64).
pub const SEALED_PIN: usize = 4096;

/// The earliest accepted time: the Unix epoch. PostgreSQL's `timestamptz` reaches back
/// to 4713 BC, but no order, deadline or check of this system is older than the epoch;
/// an earlier time is a zeroed or broken clock.
pub fn earliest() -> DateTime<Utc> {
    DateTime::UNIX_EPOCH
}

/// The latest accepted time: the end of year 9999. PostgreSQL's `timestamptz` goes on to
/// 294276 AD, but RFC 3339 (the events' `date-time`) has four-digit years, and a time this
/// far out leaves every sum the stages make (a deadline plus hours) well inside the
/// database's range.
pub fn latest() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
        .expect("a valid date")
        .and_utc()
}
