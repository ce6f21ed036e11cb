//! Node registry in Redis: who is in the cluster and when each node last said so.
//!
//! Two structures under the key prefix:
//! - `{prefix}:node:{id}`: the node's JSON record with a TTL, refreshed by every heartbeat, so a
//!   node that vanishes leaves no record behind for long.
//! - `{prefix}:nodes`: a sorted set of node id → last heartbeat (ms). It outlives the records, so
//!   the scheduler and the cluster API can tell "silent for 4 s" (dead, slice must move) from
//!   "never existed", and report heartbeat ages.
//!
//! Heartbeat times come from the Redis server clock (`TIME` inside the script), never from the
//! node's own clock: ages are then comparable across hosts whose clocks disagree.

use crate::redis_conn::RedisConn;
use redis::Script;

use crate::protocol::Keys;
pub use crate::protocol::NodeRecord;

/// A registry entry as read back, with its heartbeat age on the Redis clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: String,
    /// `None` once the record's TTL has run out (the node is long gone).
    pub record: Option<NodeRecord>,
    pub last_heartbeat_ms: i64,
    pub heartbeat_age_ms: i64,
}

impl NodeStatus {
    /// Dead means silent for longer than `dead_after_ms`.
    pub fn is_alive(&self, dead_after_ms: u64) -> bool {
        self.heartbeat_age_ms <= dead_after_ms as i64
    }
}

pub fn record_key(prefix: &str, node_id: &str) -> String {
    Keys::new(prefix).node_record(node_id)
}

pub fn heartbeats_key(prefix: &str) -> String {
    Keys::new(prefix).heartbeats()
}

// KEYS[1] record, KEYS[2] heartbeats zset; ARGV[1] record JSON, ARGV[2] ttl ms, ARGV[3] id.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[3])
return now
";

/// Registry handle; cheap to clone (the connection is multiplexed).
#[derive(Clone)]
pub struct Registry {
    conn: RedisConn,
    prefix: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Registry {
    pub fn new(conn: RedisConn, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
        }
    }

    /// Registers or refreshes `rec`; the record expires `ttl_ms` after the last call. Returns the
    /// heartbeat time on the Redis clock.
    pub async fn heartbeat(&mut self, rec: &NodeRecord, ttl_ms: u64) -> redis::RedisResult<i64> {
        let json = serde_json::to_string(rec).expect("NodeRecord serializes");
        Script::new(HEARTBEAT)
            .key(record_key(&self.prefix, &rec.node_id))
            .key(heartbeats_key(&self.prefix))
            .arg(json)
            .arg(ttl_ms)
            .arg(&rec.node_id)
            .invoke_async(&mut self.conn)
            .await
    }

    /// Removes a node at once (graceful shutdown), so its slice moves without waiting for the
    /// dead-node timeout.
    pub async fn deregister(&mut self, node_id: &str) -> redis::RedisResult<()> {
        redis::pipe()
            .atomic()
            .del(record_key(&self.prefix, node_id))
            .ignore()
            .zrem(heartbeats_key(&self.prefix), node_id)
            .ignore()
            .query_async::<()>(&mut self.conn)
            .await
    }

    /// Every node with a heartbeat entry, in id order, with ages on the Redis clock.
    pub async fn list(&mut self) -> redis::RedisResult<Vec<NodeStatus>> {
        let (time, beats): ((i64, i64), Vec<(String, f64)>) = redis::pipe()
            .cmd("TIME")
            .zrange_withscores(heartbeats_key(&self.prefix), 0, -1)
            .query_async(&mut self.conn)
            .await?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        if beats.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = beats
            .iter()
            .map(|(id, _)| record_key(&self.prefix, id))
            .collect();
        let records: Vec<Option<String>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.conn)
            .await?;
        let mut out: Vec<NodeStatus> = beats
            .into_iter()
            .zip(records)
            .map(|((node_id, score), rec)| {
                let last = score as i64;
                NodeStatus {
                    node_id,
                    record: rec.and_then(|r| serde_json::from_str(&r).ok()),
                    last_heartbeat_ms: last,
                    heartbeat_age_ms: (now_ms - last).max(0),
                }
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(out)
    }

    /// Forgets heartbeat entries silent for longer than `older_than_ms`, so nodes that left long
    /// ago stop showing up as dead forever.
    pub async fn prune(&mut self, older_than_ms: u64) -> redis::RedisResult<u64> {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut self.conn).await?;
        let cutoff = secs * 1000 + micros / 1000 - older_than_ms as i64;
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(heartbeats_key(&self.prefix))
            .arg("-inf")
            .arg(format!("({cutoff}"))
            .query_async(&mut self.conn)
            .await
    }
}
