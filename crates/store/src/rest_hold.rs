//! The cluster's board of REST holds (`{p}:rest_hold:{market}`), so a 429/418 that one process
//! receives holds the calls of every node, scheduler and worker: they usually leave through one
//! IP, which is what the exchange limits (`pricefeed_broker::rest_client`, module docs).

use crate::redis_conn::RedisConn;
use pricefeed_broker::rest_client::{BoardFuture, HoldBoard, Market};

use crate::protocol::Keys;

/// Raises the hold to `ARGV[1]` (ms since the epoch) when it is later than the recorded one,
/// expiring with it (`ARGV[2]` ms from now).
const RAISE: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 0
";

/// [`HoldBoard`] in the cluster's Redis.
#[derive(Clone)]
pub struct RedisHoldBoard {
    redis: RedisConn,
    keys: Keys,
    raise: redis::Script,
}

impl std::fmt::Debug for RedisHoldBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHoldBoard")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl RedisHoldBoard {
    pub fn new(redis: RedisConn, keys: Keys) -> Self {
        Self {
            redis,
            keys,
            raise: redis::Script::new(RAISE),
        }
    }
}

impl HoldBoard for RedisHoldBoard {
    fn held_until(&self, market: Market) -> BoardFuture<'_, Option<i64>> {
        Box::pin(async move {
            let mut c = self.redis.clone();
            redis::cmd("GET")
                .arg(self.keys.rest_hold(market.as_str()))
                .query_async::<Option<i64>>(&mut c)
                .await
                .ok()
                .flatten()
        })
    }

    fn hold(&self, market: Market, until_ms: i64) -> BoardFuture<'_, ()> {
        Box::pin(async move {
            let mut c = self.redis.clone();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let ttl = (until_ms - now).max(1);
            if let Err(e) = self
                .raise
                .key(self.keys.rest_hold(market.as_str()))
                .arg(until_ms)
                .arg(ttl)
                .invoke_async::<i64>(&mut c)
                .await
            {
                tracing::warn!(%market, error = %e, "REST hold not shared");
            }
        })
    }
}
