//! Secrets in configuration — the JWT key, the SMTP password, database and Redis URLs with
//! credentials — in a type that cannot be printed: `Debug`, `Display` and `Serialize` show
//! `***` (or, for a URL, the URL with its password masked), so no log line, panic message or
//! config dump carries the value. Code that needs it calls [`Secret::expose`], which is easy to
//! find in review.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret string (a key or a password).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
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

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// A connection URL that may carry credentials (`postgres://user:pass@host/db`): printed and
/// serialized with the password masked, so the host stays visible to operators.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The full URL, credentials included, for the client that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password masked.
    pub fn redacted(&self) -> String {
        crate::config::redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

// Configuration reference: both are strings; `format` tells the reader the value is kept secret
// (docs/configuration.md is rendered from these schemas).
impl schemars::JsonSchema for Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "secret"})
    }
}

impl schemars::JsonSchema for SecretUrl {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretUrl".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "secret-url"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_prints_the_value() {
        let s = Secret::new("hunter2-hunter2-hunter2-hunter2!");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose().len(), 32);
        let u = SecretUrl::new("postgres://app:pw@db:5432/pf");
        assert_eq!(u.to_string(), "postgres://app:***@db:5432/pf");
        assert_eq!(format!("{u:?}"), "SecretUrl(postgres://app:***@db:5432/pf)");
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            "\"postgres://app:***@db:5432/pf\""
        );
        assert_eq!(u.expose(), "postgres://app:pw@db:5432/pf");
        let back: SecretUrl = serde_json::from_str("\"redis://r:6379\"").unwrap();
        assert_eq!(back.expose(), "redis://r:6379");
    }
}
