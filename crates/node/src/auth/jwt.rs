//! Access tokens: HS256 JWTs with a pinned algorithm, `exp`, `iat`, issuer, audience and a
//! token type, signed with the configured key (`auth.jwt_secret`, at least 32 bytes).
//!
//! Only access tokens are JWTs. Refresh tokens are opaque random ids stored in Postgres (they
//! rotate and can be revoked, which a self-contained token cannot), so a refresh token presented
//! as an access token is simply not a JWT and is refused like any malformed one.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{AuthConfig, Role};

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    /// Always `access`.
    pub typ: String,
}

impl Claims {
    pub fn user_id(&self) -> Option<i64> {
        self.sub.parse().ok()
    }
}

/// Why a token was refused (never shown to the client beyond "invalid token").
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("not an access token")]
    WrongType,
}

/// Issues and verifies access tokens; cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl_s: i64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl_s", &self.ttl_s)
            .finish_non_exhaustive()
    }
}

const ACCESS: &str = "access";

impl Tokens {
    pub fn new(cfg: &AuthConfig) -> Self {
        let key = cfg.jwt_secret.expose().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&[&cfg.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.leeway = 5;
        validation.validate_exp = true;
        Self {
            enc: EncodingKey::from_secret(key),
            dec: DecodingKey::from_secret(key),
            validation,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            ttl_s: (cfg.access_ttl_ms / 1000) as i64,
        }
    }

    /// Seconds an access token lives.
    pub fn ttl_s(&self) -> i64 {
        self.ttl_s
    }

    /// A signed access token for `user_id` with `role`, valid from `now_s` for the TTL.
    pub fn issue(&self, user_id: i64, role: Role, now_s: i64) -> String {
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            iat: now_s,
            exp: now_s + self.ttl_s,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            typ: ACCESS.into(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Verifies signature, algorithm, expiry, issuer, audience and type.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)?;
        if data.claims.typ != ACCESS {
            return Err(TokenError::WrongType);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pricefeed_runtime::secret::Secret;

    fn cfg(secret: &str) -> AuthConfig {
        AuthConfig {
            jwt_secret: Secret::new(secret),
            ..AuthConfig::default()
        }
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef-test-key";

    fn b64(s: &[u8]) -> String {
        use base64_like::encode;
        encode(s)
    }

    /// Minimal base64url without padding (tests only: forging tokens by hand).
    mod base64_like {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        pub fn encode(b: &[u8]) -> String {
            let mut out = String::new();
            for c in b.chunks(3) {
                let n = (u32::from(c[0]) << 16)
                    | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                    | u32::from(*c.get(2).unwrap_or(&0));
                for i in 0..=c.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }

    #[test]
    fn round_trip_and_every_tampering_is_refused() {
        let t = Tokens::new(&cfg(KEY));
        let now = 1_767_225_600;
        let tok = t.issue(42, Role::User, now);
        // `exp` is checked against the real clock: issue one valid now for the positive case.
        let real_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let ok = t.issue(42, Role::Admin, real_now);
        let c = t.verify(&ok).unwrap();
        assert_eq!((c.user_id(), c.role), (Some(42), Role::Admin));
        // Expired.
        assert!(t.verify(&tok).is_err());
        // Another key.
        let other = Tokens::new(&cfg("another-key-another-key-another-key!!"));
        assert!(other.verify(&ok).is_err());
        // Edited payload (role) with the original signature.
        let parts: Vec<&str> = ok.split('.').collect();
        let payload = format!(
            r#"{{"sub":"42","role":"admin","iat":{real_now},"exp":{},"iss":"pricefeed","aud":"pricefeed-api","typ":"access","x":1}}"#,
            real_now + 600
        );
        let forged = format!("{}.{}.{}", parts[0], b64(payload.as_bytes()), parts[2]);
        assert!(t.verify(&forged).is_err());
        // alg: none.
        let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        assert!(t.verify(&none).is_err());
        // An opaque refresh token, or garbage.
        assert!(t.verify("5f0c6a6e-3f7e-4b55-9d1c-1f0e9b6f1c2d").is_err());
        assert!(t.verify("").is_err());
        // Wrong audience or issuer.
        let mut c2 = cfg(KEY);
        c2.audience = "someone-else".into();
        assert!(Tokens::new(&c2).verify(&ok).is_err());
    }
}
