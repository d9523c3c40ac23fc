//! Why an event cannot be processed: the reason a dead-lettered message carries in the
//! DLQ's headers (G8).

/// Why an event cannot be processed. `kind` is a stable machine-readable word for the DLQ's
/// `orderflow.dlq.reason` header; `detail` is one sentence for a person.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct InvalidEvent {
    pub kind: InvalidKind,
    pub detail: String,
    /// The SQLSTATE of the database's refusal, for `database_refused`.
    pub sqlstate: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidKind {
    Oversized,
    UnreadableJson,
    InvalidField,
    UnsupportedVersion,
    UnknownProviderAccount,
    InvalidProduct,
    /// The order id was first placed with another provider account.
    AccountConflict,
    /// The order id was first claimed with other content (product, user fields, tenant):
    /// the first event wins, this one is not placed.
    ConflictingDuplicate,
    /// The database refused what the event holds (SQLSTATE class 22, 23 or 54): a value
    /// decoding let through that a column, constraint or index does not take. Retrying the
    /// same data cannot help.
    DatabaseRefused,
}

impl InvalidKind {
    /// Every reason, in the order of the enum.
    pub const ALL: [InvalidKind; 9] = [
        InvalidKind::Oversized,
        InvalidKind::UnreadableJson,
        InvalidKind::InvalidField,
        InvalidKind::UnsupportedVersion,
        InvalidKind::UnknownProviderAccount,
        InvalidKind::InvalidProduct,
        InvalidKind::AccountConflict,
        InvalidKind::ConflictingDuplicate,
        InvalidKind::DatabaseRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InvalidKind::Oversized => "oversized",
            InvalidKind::UnreadableJson => "unreadable_json",
            InvalidKind::InvalidField => "invalid_field",
            InvalidKind::UnsupportedVersion => "unsupported_version",
            InvalidKind::UnknownProviderAccount => "unknown_provider_account",
            InvalidKind::InvalidProduct => "invalid_product",
            InvalidKind::AccountConflict => "account_conflict",
            InvalidKind::ConflictingDuplicate => "conflicting_duplicate",
            InvalidKind::DatabaseRefused => "database_refused",
        }
    }
}

impl std::str::FromStr for InvalidKind {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InvalidKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

/// A word that is not one of the DLQ's reasons.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{word:?} is not a DLQ reason (one of: {})", InvalidKind::ALL.map(InvalidKind::as_str).join(", "), word = .0)]
pub struct UnknownReason(pub String);

impl std::fmt::Display for InvalidKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl InvalidEvent {
    pub fn new(kind: InvalidKind, detail: impl Into<String>) -> Self {
        InvalidEvent {
            kind,
            detail: detail.into(),
            sqlstate: None,
        }
    }

    /// A `database_refused` reason with the refusal's SQLSTATE, when the database gave one.
    pub fn database_refused(detail: impl Into<String>, sqlstate: Option<String>) -> Self {
        InvalidEvent {
            sqlstate,
            ..InvalidEvent::new(InvalidKind::DatabaseRefused, detail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_from_its_word() {
        for kind in InvalidKind::ALL {
            assert_eq!(kind.as_str().parse::<InvalidKind>(), Ok(kind));
        }
        let unknown = "no_such".parse::<InvalidKind>().unwrap_err().to_string();
        assert!(unknown.starts_with("\"no_such\" is not a DLQ reason (one of: oversized,"));
    }
}
