//! PIN encryption at rest (G5): the PIN key ring, sealing a PIN for one order and opening it.
//!
//! A sealed PIN is `v1.<key id>.<base64url(nonce || ciphertext+tag)>`, AES-256-GCM with the
//! order id in the associated data, so it opens only with a key of the ring and only for the
//! order it was sealed for. The first key of the ring seals; every key opens, which lets keys
//! rotate. Everything here is pure except [`PinKeys::from_env_or_file`]. The sealed value
//! itself, [`SealedPin`], is a pure type of the core ([`crate::core::sealed_pin`]).

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::fmt;
use std::path::Path;
use uuid::Uuid;

use crate::core::sealed_pin::{valid_key_id, NONCE_LEN};
pub use crate::core::sealed_pin::{PinError, SealedPin};
use crate::secret::Secret;

const AAD_DOMAIN: &[u8] = b"orderflow.pin.v1";

#[derive(Debug, thiserror::Error)]
pub enum PinKeyError {
    #[error("the PIN key ring has no keys")]
    Empty,
    #[error("PIN key entry {0} is not of the form key_id:BASE64")]
    Malformed(usize),
    #[error("PIN key entry {0} has a key id that is not 1 to 32 of A-Z, a-z, 0-9, _ and -")]
    BadKeyId(usize),
    #[error("PIN key {0} is not standard base64 of exactly 32 bytes")]
    BadKey(String),
    #[error("PIN key id {0} appears more than once")]
    Duplicate(String),
    #[error("set only one of ORDERFLOW_PIN_KEYS and ORDERFLOW_PIN_KEYS_FILE")]
    BothSet,
    #[error("cannot read the PIN key file {path} ({source})")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// The PIN key ring: the first key seals, all keys open. Never empty.
#[derive(Clone)]
pub struct PinKeys {
    keys: Vec<(String, Aes256Gcm)>,
}

impl fmt::Debug for PinKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("PinKeys").field("key_ids", &ids).finish()
    }
}

fn aad(order_id: Uuid) -> Vec<u8> {
    [AAD_DOMAIN, order_id.as_bytes()].concat()
}

impl PinKeys {
    /// Parses `key_id:BASE64` entries separated by commas and/or newlines; blank lines and
    /// lines starting with `#` are ignored. Errors never repeat key material.
    pub fn parse(text: &str) -> Result<PinKeys, PinKeyError> {
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty());
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
        for (index, entry) in entries.enumerate() {
            let number = index + 1;
            let (id, b64) = entry
                .split_once(':')
                .ok_or(PinKeyError::Malformed(number))?;
            let (id, b64) = (id.trim(), b64.trim());
            if !valid_key_id(id) {
                return Err(PinKeyError::BadKeyId(number));
            }
            let key: [u8; 32] = STANDARD
                .decode(b64)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| PinKeyError::BadKey(id.to_string()))?;
            if keys.iter().any(|(known, _)| known == id) {
                return Err(PinKeyError::Duplicate(id.to_string()));
            }
            keys.push((id.to_string(), Aes256Gcm::new(&key.into())));
        }
        if keys.is_empty() {
            return Err(PinKeyError::Empty);
        }
        Ok(PinKeys { keys })
    }

    /// The one loader: the ring from `ORDERFLOW_PIN_KEYS` (its value) or from
    /// `ORDERFLOW_PIN_KEYS_FILE` (read here), or `None` when neither is set.
    pub fn from_env_or_file(
        env_value: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<PinKeys>, PinKeyError> {
        match (env_value, file) {
            (Some(_), Some(_)) => Err(PinKeyError::BothSet),
            (Some(text), None) => PinKeys::parse(text).map(Some),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| PinKeyError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                PinKeys::parse(&text).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    /// A fresh `key_id:BASE64` entry with a random key; [`PinKeys::parse`] rejects it if
    /// `key_id` is not a valid key id.
    pub fn generate_key_line(key_id: &str) -> String {
        let key = Aes256Gcm::generate_key(OsRng);
        format!("{key_id}:{}", STANDARD.encode(key))
    }

    /// The id of the key that seals.
    pub fn current_key_id(&self) -> &str {
        &self.keys[0].0
    }

    /// Encrypts `pin` for `order_id` under the current key, with a fresh random nonce.
    pub fn seal(&self, order_id: Uuid, pin: &Secret) -> SealedPin {
        let (key_id, cipher) = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: pin.expose().as_bytes(),
            aad: &aad(order_id),
        };
        // AES-GCM refuses only plaintexts of 64 GiB or more, which no String PIN reaches.
        let ciphertext = cipher
            .encrypt(&nonce, payload)
            .expect("AES-GCM encrypts any PIN below 64 GiB");
        SealedPin::from_parts(key_id, &[nonce.as_slice(), &ciphertext].concat())
    }

    /// Decrypts a PIN sealed for `order_id` by any key of the ring.
    pub fn open(&self, order_id: Uuid, sealed: &SealedPin) -> Result<Secret, PinError> {
        let (key_id, bytes) = sealed.split()?;
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or_else(|| PinError::UnknownKey(key_id.to_string()))?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: &aad(order_id),
        };
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| PinError::Authentication)?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| PinError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(ids: &[&str]) -> PinKeys {
        let lines = ids.iter().map(|id| PinKeys::generate_key_line(id));
        PinKeys::parse(&lines.collect::<Vec<_>>().join(",")).unwrap()
    }

    fn pin(s: &str) -> Secret {
        Secret::new(s)
    }

    proptest! {
        #[test]
        fn any_pin_roundtrips(text in any::<String>()) {
            let keys = ring(&["k1"]);
            let order = Uuid::new_v4();
            let sealed = keys.seal(order, &pin(&text));
            let reparsed = SealedPin::parse(sealed.as_str()).unwrap();
            for s in [&sealed, &reparsed] {
                prop_assert_eq!(keys.open(order, s).unwrap(), pin(&text));
            }
        }

        // At least 6 characters: the PIN alphabet is inside base64url's, so a 4-character
        // PIN would turn up in random ciphertext about once in 20,000 runs.
        #[test]
        fn sealed_text_never_contains_the_pin(text in "[A-Z0-9-]{6,24}") {
            let sealed = ring(&["k1"]).seal(Uuid::new_v4(), &pin(&text));
            prop_assert!(!sealed.as_str().contains(&text));
            let printed = format!("{sealed} {sealed:?}");
            prop_assert!(!printed.contains(&text));
        }
    }

    #[test]
    fn sealing_twice_uses_a_fresh_nonce() {
        let keys = ring(&["k1"]);
        let order = Uuid::new_v4();
        assert_ne!(
            keys.seal(order, &pin("1234-5678")),
            keys.seal(order, &pin("1234-5678"))
        );
    }

    #[test]
    fn another_orders_id_does_not_open() {
        let keys = ring(&["k1"]);
        let sealed = keys.seal(Uuid::new_v4(), &pin("ABCD-1234"));
        assert_eq!(
            keys.open(Uuid::new_v4(), &sealed),
            Err(PinError::Authentication)
        );
    }

    #[test]
    fn tampering_any_payload_byte_fails() {
        let keys = ring(&["k1"]);
        let order = Uuid::new_v4();
        let sealed = keys.seal(order, &pin("ABCD-1234"));
        let (_, bytes) = sealed.split().unwrap();
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 0x01;
            let tampered = SealedPin::from_parts("k1", &altered);
            assert_eq!(
                keys.open(order, &tampered),
                Err(PinError::Authentication),
                "byte {i}"
            );
        }
        // The same key id with another key does not open either.
        assert_eq!(
            ring(&["k1"]).open(order, &sealed),
            Err(PinError::Authentication)
        );
    }

    #[test]
    fn rotation_opens_old_pins_and_seals_with_the_new_key() {
        let old_line = PinKeys::generate_key_line("old");
        let new_line = PinKeys::generate_key_line("new");
        let old = PinKeys::parse(&old_line).unwrap();
        let rotated = PinKeys::parse(&format!("# rotated\n{new_line}\n\n{old_line},")).unwrap();
        let order = Uuid::new_v4();
        let sealed_before = old.seal(order, &pin("OLD-PIN"));
        assert_eq!(
            rotated.open(order, &sealed_before).unwrap().expose(),
            "OLD-PIN"
        );
        assert_eq!(rotated.current_key_id(), "new");
        let sealed_after = rotated.seal(order, &pin("NEW-PIN"));
        assert_eq!(sealed_after.key_id(), "new");
        assert!(sealed_after.as_str().starts_with("v1.new."));
        assert_eq!(
            old.open(order, &sealed_after),
            Err(PinError::UnknownKey("new".into()))
        );
        assert!(format!("{sealed_after:?}").starts_with("SealedPin(v1.new, "));
    }

    #[test]
    fn unknown_key_id_is_named() {
        let sealed = ring(&["k9"]).seal(Uuid::new_v4(), &pin("X"));
        let err = ring(&["k1"]).open(Uuid::new_v4(), &sealed).unwrap_err();
        assert_eq!(err, PinError::UnknownKey("k9".into()));
        assert!(err.to_string().contains("k9"));
    }

    #[test]
    fn sealed_pin_shape_is_checked_and_serialized_as_a_string() {
        let sealed = ring(&["k1"]).seal(Uuid::new_v4(), &pin("ABCD-1234"));
        let json = serde_json::to_string(&sealed).unwrap();
        assert_eq!(json, format!("\"{}\"", sealed.as_str()));
        assert_eq!(serde_json::from_str::<SealedPin>(&json).unwrap(), sealed);
        assert_eq!(format!("{sealed:?}"), "SealedPin(v1.k1, 37 bytes)");
        let short = format!(
            "v1.k1.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0u8; 27])
        );
        for bad in [
            "",
            "v2.k1.AAAA",
            "v1.k1",
            "v1.k!.AAAA",
            "v1.k1.***",
            short.as_str(),
        ] {
            assert!(SealedPin::parse(bad).is_err(), "{bad:?}");
            assert!(serde_json::from_str::<SealedPin>(&format!("\"{bad}\"")).is_err());
        }
    }

    #[test]
    fn parse_errors_name_the_entry_or_id_but_never_the_key() {
        let key = STANDARD.encode([7u8; 32]);
        let short = STANDARD.encode([7u8; 31]);
        let cases = [
            (String::new(), "no keys"),
            ("# only a comment\n\n".to_string(), "no keys"),
            (format!("k1:{key},{key}"), "entry 2 is not"),
            (format!("k1:{key}\nbad id!:{key}"), "entry 2 has a key id"),
            (format!(":{key}"), "entry 1 has a key id"),
            (format!("{}:{key}", "k".repeat(33)), "entry 1 has a key id"),
            (format!("k1:{short}"), "PIN key k1 is not"),
            (format!("k1:{key}x"), "PIN key k1 is not"),
            (format!("k1:{key}\nk1:{key}"), "k1 appears more than once"),
        ];
        for (text, expected) in cases {
            let message = PinKeys::parse(&text).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
            assert!(
                !message.contains(&key) && !message.contains(&short),
                "{message}"
            );
        }
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let key = STANDARD.encode([42u8; 32]);
        let keys =
            PinKeys::parse(&format!(" a : {key} , b:{}", STANDARD.encode([9u8; 32]))).unwrap();
        let printed = format!("{keys:?} {keys:#?}");
        assert!(printed.contains("\"a\"") && printed.contains("\"b\""));
        assert!(!printed.contains(&key));
    }

    #[test]
    fn loader_takes_env_or_file_but_not_both() {
        let line = PinKeys::generate_key_line("k1");
        let path = Path::new("/nonexistent/orderflow-pin-keys");
        let both = PinKeys::from_env_or_file(Some(&line), Some(path)).unwrap_err();
        assert_eq!(
            both.to_string(),
            "set only one of ORDERFLOW_PIN_KEYS and ORDERFLOW_PIN_KEYS_FILE"
        );
        assert!(PinKeys::from_env_or_file(None, None).unwrap().is_none());
        let from_env = PinKeys::from_env_or_file(Some(&line), None)
            .unwrap()
            .unwrap();
        assert_eq!(from_env.current_key_id(), "k1");
        let missing = PinKeys::from_env_or_file(None, Some(path)).unwrap_err();
        assert!(missing
            .to_string()
            .contains("/nonexistent/orderflow-pin-keys"));
        let file = std::env::temp_dir().join(format!("orderflow-pin-keys-{}", Uuid::new_v4()));
        std::fs::write(&file, format!("# ring\n{line}\n")).unwrap();
        let from_file = PinKeys::from_env_or_file(None, Some(&file));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(from_file.unwrap().unwrap().current_key_id(), "k1");
    }
}
