//! Accounts, alerts, triggers and the delivery outbox in Postgres
//! (`migrations/20261201000002_accounts_alerts.sql`, docs/decisions/0010-alerts-and-delivery.md).
//!
//! Every read and write of an alert is scoped by its owner (`WHERE id = $1 AND user_id = $2`):
//! another user's alert does not exist for the caller. Triggers are committed with their
//! deliveries (and the email jobs that send them) in one transaction, idempotent on
//! `(alert, trade)`.

use pricefeed_domain::alert::{Condition, Rearm, Rule};
use pricefeed_domain::instrument::{InstrumentKey, Market, Symbol};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Job kind of an email delivery (key = delivery id).
pub const EMAIL_JOB: &str = "email";

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("an account with this email exists")]
    EmailTaken,
    #[error("refresh token unknown, expired or revoked")]
    BadRefresh,
    #[error("refresh token used twice; every token of its family is revoked")]
    RefreshReused,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub password_hash: String,
    pub role: String,
}

/// Registers a user; `EmailTaken` when the address is in use.
pub async fn create_user(
    pool: &PgPool,
    email: &str,
    password_hash: &str,
    role: &str,
) -> Result<i64, AccountError> {
    let r = sqlx::query_scalar(
        "INSERT INTO users (email, password_hash, role) VALUES ($1, $2, $3::user_role) \
         ON CONFLICT (email) DO NOTHING RETURNING id",
    )
    .bind(email)
    .bind(password_hash)
    .bind(role)
    .fetch_optional(pool)
    .await?;
    r.ok_or(AccountError::EmailTaken)
}

/// The user with `email`.
pub async fn user_by_email(pool: &PgPool, email: &str) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, email, password_hash, role::text AS role FROM users WHERE email = $1",
    )
    .bind(email)
    .fetch_optional(pool)
    .await
}

/// The user with `id`.
pub async fn user_by_id(pool: &PgPool, id: i64) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as("SELECT id, email, password_hash, role::text AS role FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Makes `email` an admin; returns false when no such user exists.
pub async fn promote(pool: &PgPool, email: &str) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE users SET role = 'admin' WHERE email = $1")
            .bind(email)
            .execute(pool)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Stores a new refresh token of a new family; returns its id.
pub async fn new_refresh(pool: &PgPool, user_id: i64, ttl_ms: u64) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO refresh_tokens (id, family, user_id, expires_at) \
         VALUES ($1, $1, $2, now() + $3 * interval '1 millisecond')",
    )
    .bind(id)
    .bind(user_id)
    .bind(ttl_ms as f64)
    .execute(pool)
    .await?;
    Ok(id)
}

/// Rotates a refresh token: marks it used and returns `(user, new token)` of the same family.
/// A token presented a second time revokes its whole family (it was stolen, or the client is
/// confused; either way every session descending from it ends).
pub async fn rotate_refresh(
    pool: &PgPool,
    id: Uuid,
    ttl_ms: u64,
) -> Result<(User, Uuid), AccountError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT family, user_id, used_at IS NOT NULL AS used, revoked_at IS NOT NULL AS revoked, \
                expires_at < now() AS expired \
         FROM refresh_tokens WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(AccountError::BadRefresh);
    };
    let family: Uuid = row.get("family");
    if row.get::<bool, _>("used") {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family = $1 AND revoked_at IS NULL",
        )
        .bind(family)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Err(AccountError::RefreshReused);
    }
    if row.get::<bool, _>("revoked") || row.get::<bool, _>("expired") {
        return Err(AccountError::BadRefresh);
    }
    let user_id: i64 = row.get("user_id");
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let next = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO refresh_tokens (id, family, user_id, expires_at) \
         VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')",
    )
    .bind(next)
    .bind(family)
    .bind(user_id)
    .bind(ttl_ms as f64)
    .execute(&mut *tx)
    .await?;
    let user: User = sqlx::query_as(
        "SELECT id, email, password_hash, role::text AS role FROM users WHERE id = $1",
    )
    .bind(user_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((user, next))
}

/// Revokes the family of a refresh token (logout); false when unknown.
pub async fn revoke_refresh(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() \
         WHERE family = (SELECT family FROM refresh_tokens WHERE id = $1) AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected()
        > 0)
}

/// Delivery channels of an alert.
pub const CHANNELS: [&str; 2] = ["email", "websocket"];

/// An alert as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub id: i64,
    pub user_id: i64,
    pub key: InstrumentKey,
    pub instrument_id: i32,
    pub condition: Condition,
    pub channels: Vec<String>,
    pub rearm: Option<Rearm>,
    pub status: String,
    pub armed: bool,
    pub note: Option<String>,
    pub version: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_triggered_at_ms: Option<i64>,
}

impl Alert {
    /// The evaluation rule of an active alert.
    pub fn rule(&self) -> Rule {
        Rule {
            id: self.id,
            user_id: self.user_id,
            version: self.version,
            cond: self.condition,
            rearm: self.rearm,
            armed: self.armed,
            last_fired_ms: self.last_triggered_at_ms,
        }
    }
}

const ALERT_COLS: &str = "a.id, a.user_id, a.instrument_id, i.market, i.symbol, a.condition, \
    a.channels, a.rearm, a.status, a.armed, a.note, a.version, \
    (extract(epoch FROM a.created_at) * 1000)::int8 AS created_ms, \
    (extract(epoch FROM a.updated_at) * 1000)::int8 AS updated_ms, \
    (extract(epoch FROM a.last_triggered_at) * 1000)::int8 AS triggered_ms";

fn alert_from(r: &sqlx::postgres::PgRow) -> Result<Alert, sqlx::Error> {
    let market: String = r.try_get("market")?;
    let symbol: String = r.try_get("symbol")?;
    let key = Market::parse(&market)
        .zip(Symbol::parse(&symbol).ok())
        .map(|(m, s)| InstrumentKey::new(m, &s))
        .ok_or_else(|| sqlx::Error::Decode(format!("bad instrument {market}:{symbol}").into()))?;
    let condition: sqlx::types::Json<Condition> = r.try_get("condition")?;
    let rearm: Option<sqlx::types::Json<Rearm>> = r.try_get("rearm")?;
    Ok(Alert {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        key,
        instrument_id: r.try_get("instrument_id")?,
        condition: condition.0,
        channels: r.try_get("channels")?,
        rearm: rearm.map(|j| j.0),
        status: r.try_get("status")?,
        armed: r.try_get("armed")?,
        note: r.try_get("note")?,
        version: r.try_get("version")?,
        created_at_ms: r.try_get("created_ms")?,
        updated_at_ms: r.try_get("updated_ms")?,
        last_triggered_at_ms: r.try_get("triggered_ms")?,
    })
}

/// What creating or changing an alert sets.
#[derive(Debug, Clone)]
pub struct AlertInput {
    pub condition: Condition,
    pub channels: Vec<String>,
    pub rearm: Option<Rearm>,
    pub note: Option<String>,
    /// `active` or `paused` (a triggered one-shot alert is re-activated by setting `active`).
    pub status: String,
}

/// The user already has the most alerts allowed.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("at most {0} alerts per user")]
    TooMany(u32),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Creates an alert for `user_id` on instrument `inst`, unless the user already has `max`.
pub async fn create_alert(
    pool: &PgPool,
    user_id: i64,
    inst: i32,
    input: &AlertInput,
    max: u32,
) -> Result<Alert, AlertError> {
    let mut tx = pool.begin().await?;
    // Serialises concurrent creations of one user, so the limit holds.
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
    if n >= i64::from(max) {
        return Err(AlertError::TooMany(max));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO alerts (user_id, instrument_id, condition, channels, rearm, note, status) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(user_id)
    .bind(inst)
    .bind(sqlx::types::Json(input.condition))
    .bind(&input.channels)
    .bind(input.rearm.map(sqlx::types::Json))
    .bind(&input.note)
    .bind(&input.status)
    .fetch_one(&mut *tx)
    .await?;
    let a = alert_in(&mut tx, user_id, id)
        .await?
        .expect("just inserted");
    tx.commit().await?;
    Ok(a)
}

async fn alert_in(
    conn: &mut sqlx::PgConnection,
    user_id: i64,
    id: i64,
) -> Result<Option<Alert>, sqlx::Error> {
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ALERT_COLS} FROM alerts a JOIN instruments i ON i.id = a.instrument_id \
         WHERE a.id = $1 AND a.user_id = $2"
    )))
    .bind(id)
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    r.as_ref().map(alert_from).transpose()
}

/// `user_id`'s alert `id` (`None` for someone else's: it does not exist for them).
pub async fn alert(pool: &PgPool, user_id: i64, id: i64) -> Result<Option<Alert>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    alert_in(&mut conn, user_id, id).await
}

/// Any alert by id (the owning node reloading a changed alert).
pub async fn alert_any(pool: &PgPool, id: i64) -> Result<Option<Alert>, sqlx::Error> {
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ALERT_COLS} FROM alerts a JOIN instruments i ON i.id = a.instrument_id WHERE a.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    r.as_ref().map(alert_from).transpose()
}

/// A page of `user_id`'s alerts, newest first, optionally by status and instrument, after
/// the id `before` (the cursor).
pub async fn list_alerts(
    pool: &PgPool,
    user_id: i64,
    status: Option<&str>,
    inst: Option<i32>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Alert>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ALERT_COLS} FROM alerts a JOIN instruments i ON i.id = a.instrument_id \
         WHERE a.user_id = $1 AND ($2::text IS NULL OR a.status = $2) \
           AND ($3::int4 IS NULL OR a.instrument_id = $3) AND ($4::int8 IS NULL OR a.id < $4) \
         ORDER BY a.id DESC LIMIT $5"
    )))
    .bind(user_id)
    .bind(status)
    .bind(inst)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(alert_from).collect()
}

/// Replaces what `input` sets on `user_id`'s alert `id` (re-armed, version bumped).
pub async fn update_alert(
    pool: &PgPool,
    user_id: i64,
    id: i64,
    input: &AlertInput,
) -> Result<Option<Alert>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query(
        "UPDATE alerts SET condition = $3, channels = $4, rearm = $5, note = $6, status = $7, \
             armed = true, version = version + 1, updated_at = now() \
         WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user_id)
    .bind(sqlx::types::Json(input.condition))
    .bind(&input.channels)
    .bind(input.rearm.map(sqlx::types::Json))
    .bind(&input.note)
    .bind(&input.status)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Ok(None);
    }
    let a = alert_in(&mut tx, user_id, id).await?;
    tx.commit().await?;
    Ok(a)
}

/// Deletes `user_id`'s alert `id`; returns it (for the change notice) or `None`.
pub async fn delete_alert(
    pool: &PgPool,
    user_id: i64,
    id: i64,
) -> Result<Option<Alert>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let a = alert_in(&mut tx, user_id, id).await?;
    if a.is_some() {
        sqlx::query("DELETE FROM alerts WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(a)
}

/// Active alerts of an instrument (a node taking it over loads them).
pub async fn active_for_instrument(pool: &PgPool, inst: i32) -> Result<Vec<Alert>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ALERT_COLS} FROM alerts a JOIN instruments i ON i.id = a.instrument_id \
         WHERE a.instrument_id = $1 AND a.status = 'active'"
    )))
    .bind(inst)
    .fetch_all(pool)
    .await?;
    rows.iter().map(alert_from).collect()
}

/// Active alerts of a set of instruments with their versions (the periodic resync).
pub async fn active_versions(
    pool: &PgPool,
    insts: &[i32],
) -> Result<Vec<(i32, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT instrument_id, id, version FROM alerts WHERE instrument_id = ANY($1) AND status = 'active'",
    )
    .bind(insts)
    .fetch_all(pool)
    .await
}

/// Marks alerts armed again (best effort: a node that loses this re-arms them itself when the
/// metric comes back).
pub async fn mark_armed(pool: &PgPool, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE alerts SET armed = true WHERE id = ANY($1) AND status = 'active'")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// A firing to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTrigger {
    pub alert_id: i64,
    pub user_id: i64,
    /// The alert version that fired (a trigger of an alert changed since is dropped).
    pub version: i64,
    pub trade_id: i64,
    pub trade_ts_ms: i64,
    pub price: Decimal,
    pub observed: Decimal,
    pub one_shot: bool,
}

/// A committed trigger, for the WebSocket push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub trigger_id: i64,
    pub alert: Alert,
    pub new: NewTrigger,
    pub triggered_at_ms: i64,
    /// The alert pushes to WebSocket.
    pub websocket: bool,
}

/// Commits triggers with their deliveries and email jobs, in one transaction. Triggers already
/// stored (same alert and trade: a failover re-evaluated the trade) and triggers of alerts
/// deleted, paused or changed since are skipped. Emails beyond `emails_per_hour` per user are
/// recorded as `suppressed`.
pub async fn commit_triggers(
    pool: &PgPool,
    node_id: &str,
    triggers: &[NewTrigger],
    emails_per_hour: u32,
) -> Result<Vec<Committed>, sqlx::Error> {
    let mut out = Vec::new();
    if triggers.is_empty() {
        return Ok(out);
    }
    let mut tx = pool.begin().await?;
    for t in triggers {
        let Some(a) = alert_in(&mut tx, t.user_id, t.alert_id).await? else {
            continue;
        };
        if a.status != "active" || a.version != t.version {
            continue;
        }
        let row: Option<(i64, i64)> = sqlx::query_as(
            "INSERT INTO alert_triggers (alert_id, user_id, trade_id, trade_ts_ms, price, observed, node_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (alert_id, trade_id) DO NOTHING \
             RETURNING id, (extract(epoch FROM triggered_at) * 1000)::int8",
        )
        .bind(t.alert_id)
        .bind(t.user_id)
        .bind(t.trade_id)
        .bind(t.trade_ts_ms)
        .bind(t.price)
        .bind(t.observed)
        .bind(node_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((trigger_id, at_ms)) = row else {
            continue;
        };
        sqlx::query(
            "UPDATE alerts SET armed = false, last_triggered_at = now(), \
                 status = CASE WHEN $2 THEN 'triggered' ELSE status END, \
                 version = CASE WHEN $2 THEN version + 1 ELSE version END \
             WHERE id = $1",
        )
        .bind(t.alert_id)
        .bind(t.one_shot)
        .execute(&mut *tx)
        .await?;
        for ch in &a.channels {
            let key = format!("pf-{trigger_id}-{ch}");
            let state = if ch == "email" {
                let sent: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM deliveries WHERE user_id = $1 AND channel = 'email' \
                     AND state <> 'suppressed' AND created_at > now() - interval '1 hour'",
                )
                .bind(t.user_id)
                .fetch_one(&mut *tx)
                .await?;
                if sent >= i64::from(emails_per_hour) {
                    "suppressed"
                } else {
                    "pending"
                }
            } else {
                "pending"
            };
            let did: i64 = sqlx::query_scalar(
                "INSERT INTO deliveries (trigger_id, user_id, channel, state, idempotency_key, last_error) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(trigger_id)
            .bind(t.user_id)
            .bind(ch)
            .bind(state)
            .bind(&key)
            .bind((state == "suppressed").then(|| format!("over the limit of {emails_per_hour} emails per hour")))
            .fetch_one(&mut *tx)
            .await?;
            if ch == "email" && state == "pending" {
                sqlx::query("INSERT INTO jobs (kind, key) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(EMAIL_JOB)
                    .bind(did.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        out.push(Committed {
            trigger_id,
            websocket: a.channels.iter().any(|c| c == "websocket"),
            alert: a,
            new: t.clone(),
            triggered_at_ms: at_ms,
        });
    }
    tx.commit().await?;
    Ok(out)
}

/// Marks the WebSocket deliveries of `triggers` sent (they were published).
pub async fn mark_pushed(pool: &PgPool, triggers: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deliveries SET state = 'sent', sent_at = now(), attempts = attempts + 1 \
         WHERE trigger_id = ANY($1) AND channel = 'websocket' AND state = 'pending'",
    )
    .bind(triggers)
    .execute(pool)
    .await?;
    Ok(())
}

/// Everything an email delivery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailDelivery {
    pub delivery_id: i64,
    pub state: String,
    pub idempotency_key: String,
    pub to: String,
    pub alert: Alert,
    pub trigger_id: i64,
    pub trade_id: i64,
    pub trade_ts_ms: i64,
    pub price: Decimal,
    pub observed: Decimal,
    pub triggered_at_ms: i64,
}

/// The email delivery `id` with its trigger, alert and recipient.
pub async fn email_delivery(pool: &PgPool, id: i64) -> Result<Option<EmailDelivery>, sqlx::Error> {
    let r = sqlx::query(
        "SELECT d.id, d.state, d.idempotency_key, u.email, t.id AS trigger_id, t.alert_id, \
                t.user_id, t.trade_id, t.trade_ts_ms, t.price, t.observed, \
                (extract(epoch FROM t.triggered_at) * 1000)::int8 AS at_ms \
         FROM deliveries d JOIN alert_triggers t ON t.id = d.trigger_id \
         JOIN users u ON u.id = d.user_id WHERE d.id = $1 AND d.channel = 'email'",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(r) = r else { return Ok(None) };
    let Some(alert) = alert(pool, r.try_get("user_id")?, r.try_get("alert_id")?).await? else {
        return Ok(None);
    };
    Ok(Some(EmailDelivery {
        delivery_id: r.try_get("id")?,
        state: r.try_get("state")?,
        idempotency_key: r.try_get("idempotency_key")?,
        to: r.try_get("email")?,
        alert,
        trigger_id: r.try_get("trigger_id")?,
        trade_id: r.try_get("trade_id")?,
        trade_ts_ms: r.try_get("trade_ts_ms")?,
        price: r.try_get("price")?,
        observed: r.try_get("observed")?,
        triggered_at_ms: r.try_get("at_ms")?,
    }))
}

/// A delivery as the notifications API shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryRow {
    pub trigger_id: i64,
    pub channel: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub sent_at_ms: Option<i64>,
}

/// A trigger with its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub trigger_id: i64,
    pub trade_id: i64,
    pub trade_ts_ms: i64,
    pub price: Decimal,
    pub observed: Decimal,
    pub triggered_at_ms: i64,
    pub deliveries: Vec<DeliveryRow>,
}

/// The triggers of `user_id`'s alert `alert_id`, newest first, with their deliveries.
pub async fn notifications(
    pool: &PgPool,
    user_id: i64,
    alert_id: i64,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<Notification>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, trade_id, trade_ts_ms, price, observed, \
                (extract(epoch FROM triggered_at) * 1000)::int8 AS at_ms \
         FROM alert_triggers WHERE alert_id = $1 AND user_id = $2 AND ($3::int8 IS NULL OR id < $3) \
         ORDER BY id DESC LIMIT $4",
    )
    .bind(alert_id)
    .bind(user_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get("id")).collect();
    let dels: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT trigger_id, channel, state, attempts, last_error, \
                (extract(epoch FROM sent_at) * 1000)::int8 AS sent_at_ms \
         FROM deliveries WHERE trigger_id = ANY($1) ORDER BY channel",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let id: i64 = r.try_get("id")?;
        out.push(Notification {
            trigger_id: id,
            trade_id: r.try_get("trade_id")?,
            trade_ts_ms: r.try_get("trade_ts_ms")?,
            price: r.try_get("price")?,
            observed: r.try_get("observed")?,
            triggered_at_ms: r.try_get("at_ms")?,
            deliveries: dels
                .iter()
                .filter(|d| d.trigger_id == id)
                .cloned()
                .collect(),
        });
    }
    Ok(out)
}
