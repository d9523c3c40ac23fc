//! A sealed PIN as a value (G5): `v1.<key id>.<base64url(nonce || ciphertext+tag)>`, its
//! shape checked whenever one is built, and the errors of sealed PINs. Pure: the events
//! carry this type; sealing and opening under the key ring (and reading key files) stay in
//! the `pin` module, outside the core.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fmt;

const VERSION_PREFIX: &str = "v1.";
/// The nonce's bytes at the start of the payload.
pub(crate) const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Whether `id` is a valid key id: 1 to 32 of A-Z, a-z, 0-9, `_` and `-`.
pub(crate) fn valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("the sealed PIN is malformed: {0}")]
    Malformed(&'static str),
    #[error("the sealed PIN names key {0}, which is not in the PIN key ring")]
    UnknownKey(String),
    #[error(
        "the sealed PIN does not authenticate: wrong key, altered text, or another order's PIN"
    )]
    Authentication,
    #[error("the opened PIN is not UTF-8")]
    NotUtf8,
}

/// A sealed PIN, `v1.<key id>.<base64url(nonce || ciphertext+tag)>`; its shape is checked
/// whenever one is built. Serialized as that plain string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SealedPin(String);

impl SealedPin {
    /// Checks the shape (version, key id, payload length) without any key.
    pub fn parse(s: &str) -> Result<SealedPin, PinError> {
        let sealed = SealedPin(s.to_string());
        sealed.split()?;
        Ok(sealed)
    }

    pub(crate) fn from_parts(key_id: &str, payload: &[u8]) -> SealedPin {
        let encoded = URL_SAFE_NO_PAD.encode(payload);
        SealedPin(format!("{VERSION_PREFIX}{key_id}.{encoded}"))
    }

    /// The key id and the decoded payload (nonce, ciphertext and tag).
    pub(crate) fn split(&self) -> Result<(&str, Vec<u8>), PinError> {
        let rest = self
            .0
            .strip_prefix(VERSION_PREFIX)
            .ok_or(PinError::Malformed("it does not start with v1."))?;
        let (key_id, encoded) = rest
            .split_once('.')
            .ok_or(PinError::Malformed("it has no payload"))?;
        if !valid_key_id(key_id) {
            return Err(PinError::Malformed("its key id is invalid"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| PinError::Malformed("its payload is not base64url"))?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(PinError::Malformed("its payload is too short"));
        }
        Ok((key_id, bytes))
    }

    pub fn key_id(&self) -> &str {
        let rest = self.0.strip_prefix(VERSION_PREFIX).unwrap_or_default();
        rest.split('.').next().unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl TryFrom<String> for SealedPin {
    type Error = PinError;
    fn try_from(s: String) -> Result<Self, PinError> {
        SealedPin::parse(&s)
    }
}

impl From<SealedPin> for String {
    fn from(sealed: SealedPin) -> String {
        sealed.0
    }
}

impl fmt::Debug for SealedPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix_len = VERSION_PREFIX.len() + self.key_id().len() + 1;
        let bytes = self.0.len().saturating_sub(prefix_len) * 3 / 4;
        write!(f, "SealedPin(v1.{}, {bytes} bytes)", self.key_id())
    }
}

impl fmt::Display for SealedPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
