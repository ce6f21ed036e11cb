//! Scheduler leader lease in Redis, with a fencing term.
//!
//! - **Acquire**: one Lua script does `SET key value NX PX ttl` and, only when that succeeds,
//!   `INCR`s the term counter. Doing both in one script means a term is never handed out without
//!   the lease, and a lease never exists without a fresh term.
//! - **Renew**: compare-and-extend (`PEXPIRE` only while the value is still ours), so a leader that
//!   stalled past its TTL cannot extend a lease someone else now holds.
//! - **Release**: compare-and-delete, for a prompt handover on graceful shutdown.
//!
//! The term is the fencing token: every leader write carries it and storage refuses writes with a
//! lower term than one it has already seen (see [`crate::assignment`]). The lease alone cannot
//! prevent a paused ex-leader from writing after expiry; the term check can.
//!
//! The term counter lives in Redis, which may be flushed. The caller passes a `floor` (the highest
//! term it knows from a durable store) and the script lifts the counter above it, so terms keep
//! increasing across a Redis loss.

use crate::redis_conn::RedisConn;
use redis::Script;

use crate::protocol::Keys;
pub use crate::protocol::LeaderInfo;

/// Key of the lease itself.
pub fn lease_key(prefix: &str) -> String {
    Keys::new(prefix).lease()
}

/// Key of the monotonically increasing term counter.
pub fn term_key(prefix: &str) -> String {
    Keys::new(prefix).lease_term()
}

// KEYS[1] lease, KEYS[2] term counter; ARGV[1] holder, ARGV[2] ttl ms, ARGV[3] floor.
// Returns the new term, or 0 when the lease is held by someone (possibly us with an old term).
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if t <= floor then
  t = floor + 1
  redis.call('SET', KEYS[2], t)
end
redis.call('SET', KEYS[1], cjson.encode({term = t, holder = ARGV[1]}), 'PX', ARGV[2])
return t
";

// KEYS[1] lease; ARGV[1] expected value, ARGV[2] ttl ms. 1 when extended, 0 when not ours.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

// KEYS[1] lease; ARGV[1] expected value. 1 when deleted, 0 when not ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// One contender for the lease. Each scheduler process owns one.
#[derive(Clone)]
pub struct Lease {
    conn: RedisConn,
    prefix: String,
    holder: String,
    ttl_ms: u64,
    /// The exact stored value of our current lease: renew/release compare against it.
    held: Option<(u64, String)>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("prefix", &self.prefix)
            .field("holder", &self.holder)
            .field("ttl_ms", &self.ttl_ms)
            .field("term", &self.term())
            .finish()
    }
}

impl Lease {
    pub fn new(conn: RedisConn, prefix: &str, holder: &str, ttl_ms: u64) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            holder: holder.to_string(),
            ttl_ms,
            held: None,
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The term of the lease we believe we hold.
    pub fn term(&self) -> Option<u64> {
        self.held.as_ref().map(|(t, _)| *t)
    }

    /// Tries to become leader. `Some(term)` on success; the term is above `floor` and above every
    /// term handed out before by this Redis.
    pub async fn try_acquire(&mut self, floor: u64) -> redis::RedisResult<Option<u64>> {
        let term: u64 = Script::new(ACQUIRE)
            .key(lease_key(&self.prefix))
            .key(term_key(&self.prefix))
            .arg(&self.holder)
            .arg(self.ttl_ms)
            .arg(floor)
            .invoke_async(&mut self.conn)
            .await?;
        if term == 0 {
            return Ok(None);
        }
        // Read back the exact bytes cjson produced, so compare-and-extend matches them.
        let value: Option<String> = redis::cmd("GET")
            .arg(lease_key(&self.prefix))
            .query_async(&mut self.conn)
            .await?;
        match value {
            Some(v) if parse_value(&v).is_some_and(|i| i.term == term) => {
                self.held = Some((term, v));
                Ok(Some(term))
            }
            // Expired between the two calls (TTL shorter than a round trip): not leader.
            _ => Ok(None),
        }
    }

    /// Extends our lease. `Ok(false)` means it is lost (expired, or taken over); the caller must
    /// stop leader work at once.
    pub async fn renew(&mut self) -> redis::RedisResult<bool> {
        let Some((_, value)) = self.held.clone() else {
            return Ok(false);
        };
        let n: i64 = Script::new(RENEW)
            .key(lease_key(&self.prefix))
            .arg(value)
            .arg(self.ttl_ms)
            .invoke_async(&mut self.conn)
            .await?;
        if n != 1 {
            self.held = None;
        }
        Ok(n == 1)
    }

    /// Forgets the lease locally without touching Redis (after a failed renew).
    pub fn abandon(&mut self) {
        self.held = None;
    }

    /// Gives the lease up so a standby can take over without waiting for the TTL.
    pub async fn release(&mut self) -> redis::RedisResult<bool> {
        let Some((_, value)) = self.held.take() else {
            return Ok(false);
        };
        let n: i64 = Script::new(RELEASE)
            .key(lease_key(&self.prefix))
            .arg(value)
            .invoke_async(&mut self.conn)
            .await?;
        Ok(n == 1)
    }
}

fn parse_value(v: &str) -> Option<LeaderInfo> {
    serde_json::from_str(v).ok()
}

/// The current leader, if any, as seen by anyone (nodes show it in `/api/v1/cluster`).
pub async fn current(conn: &mut RedisConn, prefix: &str) -> redis::RedisResult<Option<LeaderInfo>> {
    let v: Option<String> = redis::cmd("GET")
        .arg(lease_key(prefix))
        .query_async(conn)
        .await?;
    Ok(v.as_deref().and_then(parse_value))
}
