//! SMTP with lettre: the pooled transport built from `[email]`, the MIME message with its
//! idempotency headers, and one send reduced to a [`SendOutcome`] the policy understands.

use std::time::{Duration, Instant};

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::config::{EmailConfig, TlsMode};
use super::policy::{Class, classify_reply};
use super::render::Rendered;

/// Header carrying the delivery's idempotency key, so a server or mailbox that saw it can drop
/// a repeat; the same key is in the Message-ID.
pub const IDEMPOTENCY_HEADER: &str = "X-Pricefeed-Idempotency-Key";

#[derive(Debug, Clone)]
struct IdempotencyKey(String);

impl Header for IdempotencyKey {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str(IDEMPOTENCY_HEADER)
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_string()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// RFC 3834: tells vacation responders and list software not to answer an alert.
#[derive(Debug, Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".into())
    }
}

/// The Message-ID of the mail with idempotency key `key`: deterministic, so every attempt of
/// one trigger carries the same one.
pub fn message_id(key: &str, domain: &str) -> String {
    format!("<{key}@{domain}>")
}

/// Builds the MIME message (plain text and HTML alternatives).
pub fn build_message(from: &Mailbox, to: &str, key: &str, r: &Rendered) -> Result<Message, String> {
    let to: Mailbox = to
        .parse()
        .map_err(|e| format!("recipient {to:?} is not a valid address: {e}"))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(r.subject.clone())
        .message_id(Some(message_id(key, from.email.domain())))
        .header(IdempotencyKey(key.to_string()))
        .header(AutoSubmitted)
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(r.text.clone()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(r.html.clone()),
                ),
        )
        .map_err(|e| format!("cannot build the message: {e}"))
}

/// The pooled SMTP transport of `[email]` (no connection is opened here).
pub fn transport(cfg: &EmailConfig) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let b = match cfg.tls {
        TlsMode::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
        TlsMode::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host)?,
        TlsMode::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host)?,
    };
    let mut b = b
        .port(cfg.port)
        .timeout(Some(cfg.connect_timeout()))
        .pool_config(
            PoolConfig::new()
                .max_size(cfg.pool_size)
                .idle_timeout(Duration::from_secs(60)),
        );
    if !cfg.username.is_empty() {
        b = b.credentials(Credentials::new(
            cfg.username.clone(),
            cfg.password.expose().to_string(),
        ));
    }
    Ok(b.build())
}

/// One send, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    pub class: Class,
    pub code: Option<u16>,
    /// The server's reply, or the transport error.
    pub detail: String,
    pub took: Duration,
}

/// Sends `msg`, bounded by `timeout` as a whole.
pub async fn send(
    t: &AsyncSmtpTransport<Tokio1Executor>,
    msg: Message,
    timeout: Duration,
) -> SendOutcome {
    let started = Instant::now();
    let res = tokio::time::timeout(timeout, t.send(msg)).await;
    let took = started.elapsed();
    match res {
        Ok(Ok(resp)) => {
            let code = u16::from(resp.code());
            SendOutcome {
                class: classify_reply(code),
                code: Some(code),
                detail: format!("{code} {}", resp.message().collect::<Vec<_>>().join(" ")),
                took,
            }
        }
        Ok(Err(e)) => {
            let code = e.status().map(u16::from);
            // A reply code decides; without one (connection refused or dropped, TLS, timeout,
            // garbled reply) the mail may still go through another time.
            let class = code.map_or(Class::Transient, classify_reply);
            SendOutcome {
                class,
                code,
                detail: e.to_string(),
                took,
            }
        }
        Err(_) => SendOutcome {
            class: Class::Transient,
            code: None,
            detail: format!(
                "no final reply within {} ms (the server may have accepted it; a retry carries \
                 the same Message-ID)",
                timeout.as_millis()
            ),
            took,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_carries_the_key_twice_and_both_bodies() {
        let from: Mailbox = "pricefeed <alerts@pf.example>".parse().unwrap();
        let r = Rendered {
            subject: "pricefeed alert #1: BTCUSDT (spot) last price above 1".into(),
            text: "plain".into(),
            html: "<p>html</p>".into(),
        };
        let m = build_message(&from, "ann@example.com", "pf-9-email", &r).unwrap();
        let raw = String::from_utf8(m.formatted()).unwrap();
        assert!(
            raw.contains("Message-ID: <pf-9-email@pf.example>\r\n"),
            "{raw}"
        );
        assert!(raw.contains("X-Pricefeed-Idempotency-Key: pf-9-email\r\n"));
        assert!(raw.contains("Auto-Submitted: auto-generated\r\n"));
        assert!(raw.contains("multipart/alternative"));
        assert!(raw.contains("plain") && raw.contains("<p>html</p>"));
        assert!(build_message(&from, "not an address", "k", &r).is_err());
    }
}
