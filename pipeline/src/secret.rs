//! Values that must never be printed (G5): provider credentials and PIN codes.
//!
//! Their `Debug` and `Display` show a fixed placeholder, whatever they hold, so a struct
//! that derives `Debug` can be logged without leaking them. Reading the value takes an
//! explicit [`Secret::expose`].

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printing_never_shows_the_value() {
        let s = Secret::new("hunter2-9f8e");
        assert!(!format!("{s} {s:?} {s:#?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-9f8e");
    }
}
