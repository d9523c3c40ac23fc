//! Finding a customer's orders by phone number without keeping the number: the dispatch
//! stage stores, with each order's claim, a keyed digest of the first user field
//! (`user_identifier`, znet's `musteri_tel`), and `orderflow order show --phone` computes
//! the same digest to look it up.
//!
//! The digest is HMAC-SHA256, truncated to 128 bits, of the number's last ten digits
//! (so `+90 555 123 45 67`, `0555 123 4567` and `5551234567` are one number), under a
//! lookup key, written `<key id>:<32 hex digits>`. A phone number has few possible values,
//! so an unkeyed hash would give every number back to whoever reads the table; without the
//! key the digest says nothing. Keys are `key_id:BASE64-of-32-bytes` lines, as PIN keys
//! (`orderflow pin-key new --id lookup-1` makes one; use a key of its own, not a PIN key):
//! the first key digests new orders, and a lookup tries every key, so a key can be rotated
//! (new key first, the old one kept as long as its orders may be looked up). With no key
//! configured no digest is stored, and `--phone` says so. The number itself is never
//! stored, logged or printed by orderflow.
//!
//! Pure except [`LookupKeysArgs::keys`], which reads the environment or a file.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::core::sealed_pin::valid_key_id;

/// What the MAC covers before the digits, so that a lookup key reused elsewhere by mistake
/// gives other digests there.
const DOMAIN: &[u8] = b"orderflow.lookup.phone.v1\0";
/// The digits of a number that are compared: a national number without its trunk `0` or
/// country code, for the numbers this pipeline's shops take.
const DIGITS: usize = 10;
/// Bytes of the MAC kept: 128 bits, far beyond any chance collision among phone numbers.
const KEPT: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum LookupKeyError {
    #[error("the lookup key ring has no keys")]
    Empty,
    #[error("lookup key entry {0} is not of the form key_id:BASE64")]
    Malformed(usize),
    #[error("lookup key entry {0} has a key id that is not 1 to 32 of A-Z, a-z, 0-9, _ and -")]
    BadKeyId(usize),
    #[error("lookup key {0} is not standard base64 of exactly 32 bytes")]
    BadKey(String),
    #[error("lookup key id {0} appears more than once")]
    Duplicate(String),
    #[error("set only one of ORDERFLOW_LOOKUP_KEYS and ORDERFLOW_LOOKUP_KEYS_FILE")]
    BothSet,
    #[error("cannot read the lookup key file {path} ({source})")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// The lookup key ring: the first key digests, every key looks up. Never empty.
#[derive(Clone)]
pub struct LookupKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for LookupKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("LookupKeys").field("key_ids", &ids).finish()
    }
}

/// The digits of a phone number that are compared: its last ten digits, every other
/// character dropped; `None` when it holds no digit.
pub fn phone_digits(text: &str) -> Option<String> {
    let digits: Vec<char> = text.chars().filter(char::is_ascii_digit).collect();
    let kept = &digits[digits.len().saturating_sub(DIGITS)..];
    (!kept.is_empty()).then(|| kept.iter().collect())
}

impl LookupKeys {
    /// Parses `key_id:BASE64` entries separated by commas and/or newlines; blank lines and
    /// lines starting with `#` are ignored. Errors never repeat key material.
    pub fn parse(text: &str) -> Result<LookupKeys, LookupKeyError> {
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty());
        let mut keys: Vec<(String, [u8; 32])> = Vec::new();
        for (index, entry) in entries.enumerate() {
            let number = index + 1;
            let (id, b64) = entry
                .split_once(':')
                .ok_or(LookupKeyError::Malformed(number))?;
            let (id, b64) = (id.trim(), b64.trim());
            if !valid_key_id(id) {
                return Err(LookupKeyError::BadKeyId(number));
            }
            let key: [u8; 32] = STANDARD
                .decode(b64)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| LookupKeyError::BadKey(id.to_string()))?;
            if keys.iter().any(|(known, _)| known == id) {
                return Err(LookupKeyError::Duplicate(id.to_string()));
            }
            keys.push((id.to_string(), key));
        }
        if keys.is_empty() {
            return Err(LookupKeyError::Empty);
        }
        Ok(LookupKeys { keys })
    }

    /// The ring from `ORDERFLOW_LOOKUP_KEYS` (its value) or `ORDERFLOW_LOOKUP_KEYS_FILE`
    /// (read here), or `None` when neither is set.
    pub fn from_env_or_file(
        env_value: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<LookupKeys>, LookupKeyError> {
        match (env_value, file) {
            (Some(_), Some(_)) => Err(LookupKeyError::BothSet),
            (Some(text), None) => LookupKeys::parse(text).map(Some),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| LookupKeyError::Read {
                        path: path.display().to_string(),
                        source,
                    })?;
                LookupKeys::parse(&text).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    fn digest_under(id: &str, key: &[u8; 32], digits: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(DOMAIN);
        mac.update(digits.as_bytes());
        let bytes = mac.finalize().into_bytes();
        let hex: String = bytes[..KEPT].iter().map(|b| format!("{b:02x}")).collect();
        format!("{id}:{hex}")
    }

    /// The digest stored for a new order: under the first key; `None` when the number
    /// holds no digit.
    pub fn digest(&self, phone: &str) -> Option<String> {
        let digits = phone_digits(phone)?;
        let (id, key) = &self.keys[0];
        Some(Self::digest_under(id, key, &digits))
    }

    /// The digests a lookup looks for: one under each key; empty when the number holds no
    /// digit.
    pub fn digests(&self, phone: &str) -> Vec<String> {
        let Some(digits) = phone_digits(phone) else {
            return Vec::new();
        };
        self.keys
            .iter()
            .map(|(id, key)| Self::digest_under(id, key, &digits))
            .collect()
    }
}

/// Where the lookup keys come from: `--lookup-keys-file` (or ORDERFLOW_LOOKUP_KEYS_FILE),
/// or the keys themselves in ORDERFLOW_LOOKUP_KEYS.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LookupKeysArgs {
    /// A file with the keys that digest customers' phone numbers for `order show --phone`
    /// (`key_id:BASE64` lines, newest first); or set ORDERFLOW_LOOKUP_KEYS. Without keys no
    /// digest is stored.
    #[arg(long = "lookup-keys-file", env = "ORDERFLOW_LOOKUP_KEYS_FILE")]
    pub file: Option<PathBuf>,
}

impl LookupKeysArgs {
    /// The configured ring, or `None` when no key is configured.
    pub fn keys(&self) -> Result<Option<LookupKeys>, LookupKeyError> {
        let env = std::env::var("ORDERFLOW_LOOKUP_KEYS").ok();
        LookupKeys::from_env_or_file(env.as_deref(), self.file.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pin::PinKeys;

    fn ring(ids: &[&str]) -> LookupKeys {
        let lines: Vec<String> = ids
            .iter()
            .map(|id| PinKeys::generate_key_line(id))
            .collect();
        LookupKeys::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn every_spelling_of_a_number_is_one_number() {
        for spelling in [
            "5551234567",
            "+90 555 123 45 67",
            "0555 123 4567",
            "(0555) 123-45-67",
            "905551234567",
        ] {
            assert_eq!(phone_digits(spelling).as_deref(), Some("5551234567"));
        }
        assert_eq!(phone_digits("12-34").as_deref(), Some("1234"));
        assert_eq!(phone_digits("player#"), None);
        assert_eq!(phone_digits(""), None);
    }

    #[test]
    fn a_digest_is_keyed_and_never_holds_the_number() {
        let keys = ring(&["k1"]);
        let digest = keys.digest("+90 555 123 45 67").unwrap();
        assert_eq!(Some(digest.clone()), keys.digest("05551234567"));
        assert!(
            digest.starts_with("k1:") && digest.len() == 3 + 32,
            "{digest}"
        );
        assert!(!digest.contains("5551234567"));
        // Another key with the same id gives another digest: the key is what protects it.
        assert_ne!(Some(digest.clone()), ring(&["k1"]).digest("5551234567"));
        assert_ne!(Some(digest), keys.digest("5551234568"));
        assert_eq!(keys.digest("no digits"), None);
    }

    #[test]
    fn a_lookup_tries_every_key_and_new_orders_use_the_first() {
        let old = ring(&["old"]);
        let old_line = PinKeys::generate_key_line("old");
        let old_only = LookupKeys::parse(&old_line).unwrap();
        let both = LookupKeys::parse(&format!("{},{old_line}", PinKeys::generate_key_line("new")))
            .unwrap();
        let stored_before = old_only.digest("5551234567").unwrap();
        assert!(both.digests("5551234567").contains(&stored_before));
        assert!(both.digest("5551234567").unwrap().starts_with("new:"));
        assert_eq!(old.digests("x"), Vec::<String>::new());
    }

    #[test]
    fn bad_key_lines_are_refused_without_their_material() {
        assert!(matches!(LookupKeys::parse(""), Err(LookupKeyError::Empty)));
        assert!(matches!(
            LookupKeys::parse("nocolon"),
            Err(LookupKeyError::Malformed(1))
        ));
        let short = LookupKeys::parse("k1:c2hvcnQ=").unwrap_err().to_string();
        assert!(!short.contains("c2hvcnQ"), "{short}");
        let line = PinKeys::generate_key_line("k1");
        assert!(matches!(
            LookupKeys::parse(&format!("{line},{line}")),
            Err(LookupKeyError::Duplicate(_))
        ));
    }
}
