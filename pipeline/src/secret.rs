//! Values that must never be printed (G5): provider credentials and PIN codes.
//!
//! Their `Debug` and `Display` show a fixed placeholder, whatever they hold, so a struct
//! that derives `Debug` can be logged without leaking them. Reading the value takes an
//! explicit [`Secret::expose`]. Free text from a provider (a refusal's or a cancellation's
//! message) may quote a code too, so it passes [`scrub`] before it reaches an event, a log
//! line or the database.

use serde::{Deserialize, Deserializer};
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it (a provider request, the
    /// encryption of a PIN).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Whether a field, header or parameter name says its value is a secret: a password, a
/// PIN, a token, a key, a credential. Broad on purpose: hiding a harmless value costs a
/// less useful message, showing a password costs the password. Used on database URLs'
/// query parameters and on what `orderflow dlq show` prints.
pub fn names_a_secret(name: &str) -> bool {
    let name = name.to_lowercase();
    [
        "pass",
        "pwd",
        "sifre",
        "şifre",
        "secret",
        "token",
        "key",
        "auth",
        "credential",
        "pin",
        "kod",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// Longest provider message kept, in characters: enough for any sentence znet sends.
const MAX_PROVIDER_TEXT: usize = 200;

/// `text` as it may be shown: every word that could be a PIN or a code replaced by `***`,
/// control characters (line breaks that could forge log lines) turned into spaces, and
/// at most [`MAX_PROVIDER_TEXT`] characters. A word is a run of ASCII letters, digits and
/// `-`; it is masked when it holds four digits or more, mixes letters and digits in eight
/// characters or more, or is ten characters or more of capitals, digits and dashes (the
/// shapes of PINs and e-pin codes: `ABCD-1234-EFGH-5678`, `1234567890123456`). Ordinary
/// words, short codes and amounts (`97.50`) stay: a human reads these messages.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_PROVIDER_TEXT * 2));
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if might_be_a_code(word) {
            out.push_str("***");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.trim().chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            word.push(c);
            continue;
        }
        flush(&mut word, &mut out);
        out.push(if c.is_control() { ' ' } else { c });
    }
    flush(&mut word, &mut out);
    let out = out.trim();
    if out.chars().count() > MAX_PROVIDER_TEXT {
        let cut: String = out.chars().take(MAX_PROVIDER_TEXT).collect();
        format!("{cut}…")
    } else {
        out.to_owned()
    }
}

fn might_be_a_code(word: &str) -> bool {
    let digits = word.bytes().filter(u8::is_ascii_digit).count();
    let letters = word.bytes().filter(u8::is_ascii_alphabetic).count();
    let capitals_only = word
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
    digits >= 4
        || (digits > 0 && letters > 0 && digits + letters >= 8)
        || (capitals_only && word.len() >= 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_masks_pin_shapes_and_keeps_the_sentence() {
        assert_eq!(
            scrub(" Kupur Bilgisi Bulunamadı "),
            "Kupur Bilgisi Bulunamadı"
        );
        assert_eq!(
            scrub("8|Bağlantı Hatası, Kısıtlı Ip"),
            "8|Bağlantı Hatası, Kısıtlı Ip"
        );
        assert_eq!(scrub("Tutar 97.50 TL"), "Tutar 97.50 TL");
        for pin in [
            "ABCD-1234-EF56-7890",
            "ABCDEFGHJKLMNPQR",
            "1234567890123456",
            "x7k2m9q4",
            "4821",
        ] {
            let shown = scrub(&format!("Kod: {pin} teslim edildi"));
            assert_eq!(shown, "Kod: *** teslim edildi", "{pin}");
        }
        assert_eq!(scrub("satır\nINFO sahte"), "satır INFO sahte");
        let long = scrub(&"ş".repeat(500));
        assert_eq!(long.chars().count(), MAX_PROVIDER_TEXT + 1);
    }

    #[test]
    fn printing_never_shows_the_value() {
        let s = Secret::new("hunter2-9f8e");
        assert!(!format!("{s} {s:?} {s:#?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-9f8e");
    }
}
