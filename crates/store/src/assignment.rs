//! The published slice assignment: Redis copy for nodes, Postgres floor for the epoch.
//!
//! - `{prefix}:assignment`: JSON [`Published`] (epoch, fencing term, owners). Nodes read it.
//! - `{prefix}:assignment:term`: the highest leader term that ever published. The publish script
//!   refuses a write whose term is lower, so a deposed leader that wakes up late cannot overwrite
//!   its successor's assignment (fencing).
//! - channel `{prefix}:assignment:changed`: a message with the new epoch after every publish, so
//!   nodes react at once instead of at their next poll.
//!
//! Redis is rebuildable state. The epoch and the highest term are also kept in the Postgres
//! `cluster_state` row (see `docs/decisions/0003-slice-assignment.md`): after a Redis flush the next
//! leader starts above both instead of going back to epoch 1, which nodes would take for stale.

use crate::redis_conn::RedisConn;
use pricefeed_domain::assignment::{Assignment, NodeId};
use pricefeed_domain::instrument::InstrumentKey;
use redis::Script;
use sqlx::{PgPool, Row};
use std::collections::BTreeMap;

use crate::protocol::Keys;
pub use crate::protocol::Published;

pub fn assignment_key(prefix: &str) -> String {
    Keys::new(prefix).assignment()
}

pub fn assignment_term_key(prefix: &str) -> String {
    Keys::new(prefix).assignment_term()
}

pub fn changed_channel(prefix: &str) -> String {
    Keys::new(prefix).assignment_changed()
}

// KEYS[1] assignment, KEYS[2] stored term; ARGV[1] term, ARGV[2] JSON with a "__NOW__" marker
// for the publish time, ARGV[3] channel, ARGV[4] epoch. 1 = written, 0 = refused (stale term).
const PUBLISH: &str = r"
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local term = tonumber(ARGV[1])
if term < cur then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[2], term)
local doc = string.gsub(ARGV[2], '__NOW__', string.format('%d', now), 1)
redis.call('SET', KEYS[1], doc)
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

/// Writes `doc` if its term is not below the highest term seen; `Ok(false)` when fenced off.
pub async fn publish(
    conn: &mut RedisConn,
    prefix: &str,
    doc: &Published,
) -> redis::RedisResult<bool> {
    // published_at_ms is filled in by the script from the Redis clock: serialize a placeholder
    // number field and substitute it, keeping the rest of the JSON exactly as serde wrote it.
    let mut v = serde_json::to_value(doc).expect("Published serializes");
    v["published_at_ms"] = serde_json::Value::String("__NOW__".into());
    let json = v.to_string().replace("\"__NOW__\"", "__NOW__");
    let n: i64 = Script::new(PUBLISH)
        .key(assignment_key(prefix))
        .key(assignment_term_key(prefix))
        .arg(doc.term)
        .arg(json)
        .arg(changed_channel(prefix))
        .arg(doc.epoch)
        .invoke_async(conn)
        .await?;
    Ok(n == 1)
}

/// The published assignment, if any. A document that does not parse counts as absent (and is
/// overwritten by the next leader tick).
pub async fn read(conn: &mut RedisConn, prefix: &str) -> redis::RedisResult<Option<Published>> {
    let v: Option<String> = redis::cmd("GET")
        .arg(assignment_key(prefix))
        .query_async(conn)
        .await?;
    Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
}

/// The durable copy: last published assignment (epoch and owners) and highest leader term.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub assignment: Assignment,
    pub term: u64,
}

pub async fn load_state(pool: &PgPool) -> Result<ClusterState, sqlx::Error> {
    let row = sqlx::query("SELECT epoch, term, owners FROM cluster_state WHERE id")
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(r) => {
            let owners: sqlx::types::Json<BTreeMap<InstrumentKey, NodeId>> = r.try_get("owners")?;
            ClusterState {
                assignment: Assignment {
                    epoch: r.try_get::<i64, _>("epoch")? as u64,
                    owners: owners.0,
                },
                term: r.try_get::<i64, _>("term")? as u64,
            }
        }
        None => ClusterState::default(),
    })
}

/// Records that the leader of `term` exists (called on every lease acquisition).
pub async fn record_term(pool: &PgPool, term: u64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE cluster_state SET term = GREATEST(term, $1), updated_at = now() WHERE id")
        .bind(term as i64)
        .execute(pool)
        .await?;
    Ok(())
}

/// Persists an assignment before it is published. Fenced too: refused (`Ok(false)`) when a
/// higher term has already written, so Postgres and Redis agree on who may advance the epoch; an
/// older epoch never replaces a newer one.
pub async fn record_assignment(
    pool: &PgPool,
    a: &Assignment,
    term: u64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE cluster_state SET epoch = $1, owners = $3, term = GREATEST(term, $2), \
         updated_at = now() WHERE id AND term <= $2 AND epoch <= $1",
    )
    .bind(a.epoch as i64)
    .bind(term as i64)
    .bind(sqlx::types::Json(&a.owners))
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(epoch: u64, node: &str) -> Assignment {
        Assignment {
            epoch,
            owners: BTreeMap::from([(
                InstrumentKey::parse("spot:BTCUSDT").unwrap(),
                NodeId::from(node),
            )]),
        }
    }

    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    async fn durable_state_is_fenced_and_monotonic(pool: PgPool) {
        assert_eq!(load_state(&pool).await.unwrap(), ClusterState::default());
        record_term(&pool, 3).await.unwrap();
        assert!(record_assignment(&pool, &a(5, "n1"), 3).await.unwrap());
        let s = load_state(&pool).await.unwrap();
        assert_eq!((s.assignment.clone(), s.term), (a(5, "n1"), 3));

        // A deposed leader (lower term) cannot write, nor can anyone move the epoch back.
        assert!(!record_assignment(&pool, &a(6, "n2"), 2).await.unwrap());
        assert!(!record_assignment(&pool, &a(4, "n2"), 3).await.unwrap());
        // Recording a lower term never lowers the stored one.
        record_term(&pool, 1).await.unwrap();
        let s = load_state(&pool).await.unwrap();
        assert_eq!((s.assignment, s.term), (a(5, "n1"), 3));

        // A newer leader writes, and its term fences the old one off from then on.
        assert!(record_assignment(&pool, &a(6, "n2"), 4).await.unwrap());
        assert!(!record_assignment(&pool, &a(7, "n1"), 3).await.unwrap());
        assert_eq!(load_state(&pool).await.unwrap().term, 4);
    }
}
