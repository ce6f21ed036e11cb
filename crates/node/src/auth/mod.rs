//! Accounts and authentication: registration, login with Argon2id password hashes, JWT access
//! tokens ([`jwt`]), rotating refresh tokens, login rate limits, roles, and the extractor that
//! every protected route takes ([`extract::AuthUser`]).

pub mod api;
pub mod extract;
pub mod jwt;

use pricefeed_runtime::config::{ConfigError, Validate};
use pricefeed_runtime::secret::Secret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "user_role", rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

/// `[auth]`.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 signing key of access tokens: at least 32 bytes, the same on every node.
    pub jwt_secret: Secret,
    /// `iss` claim of issued tokens; a token with another issuer is refused.
    pub issuer: String,
    /// `aud` claim of issued tokens; a token for another audience is refused.
    pub audience: String,
    /// Lifetime of an access token.
    pub access_ttl_ms: u64,
    /// Lifetime of a refresh token (each use rotates it).
    pub refresh_ttl_ms: u64,
    /// Failed or successful logins allowed per client address per minute (cluster-wide).
    pub login_per_address_per_min: u32,
    /// Logins allowed per account per minute (cluster-wide).
    pub login_per_account_per_min: u32,
    /// Registrations allowed per client address per minute (cluster-wide).
    pub register_per_address_per_min: u32,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &self.jwt_secret)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: Secret::default(),
            issuer: "pricefeed".into(),
            audience: "pricefeed-api".into(),
            access_ttl_ms: 15 * 60_000,
            refresh_ttl_ms: 30 * 86_400_000,
            login_per_address_per_min: 20,
            login_per_account_per_min: 10,
            register_per_address_per_min: 10,
        }
    }
}

/// Shortest signing key accepted.
pub const MIN_SECRET_BYTES: usize = 32;

impl Validate for AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let k = |key: &str, msg: &str| Err(ConfigError::key(format!("auth.{key}"), msg));
        if self.jwt_secret.len() < MIN_SECRET_BYTES {
            return k(
                "jwt_secret",
                "must be at least 32 bytes (generate one with: head -c 48 /dev/urandom | base64)",
            );
        }
        if self.issuer.is_empty() || self.audience.is_empty() {
            return k("issuer", "issuer and audience must not be empty");
        }
        if !(60_000..=86_400_000).contains(&self.access_ttl_ms) {
            return k("access_ttl_ms", "must be between 60000 and 86400000");
        }
        if self.refresh_ttl_ms < self.access_ttl_ms || self.refresh_ttl_ms > 365 * 86_400_000 {
            return k(
                "refresh_ttl_ms",
                "must be at least auth.access_ttl_ms and at most a year",
            );
        }
        if self.login_per_address_per_min == 0 || self.login_per_account_per_min == 0 {
            return k(
                "login_per_address_per_min",
                "login limits must be at least 1",
            );
        }
        if self.register_per_address_per_min == 0 {
            return k("register_per_address_per_min", "must be at least 1");
        }
        Ok(())
    }
}
