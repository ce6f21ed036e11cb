//! Redis side of ingest: the latest-price hash, the tick channel, the cluster-wide accepted
//! counters and the handover markers, all written by one script call per flush tick.
//!
//! Keys (`{prefix}` = `redis.key_prefix`; every name comes from [`pricefeed_store::protocol`]):
//! - `{prefix}:prices` hash, field `market:SYMBOL`, value [`PriceDoc`] JSON. Written only when
//!   the trade id is newer than the stored one (compared inside the script), so a stale owner
//!   flushing late after a handover cannot overwrite a newer price.
//! - `{prefix}:ticks` channel: one JSON array of the [`PriceDoc`]s that changed, per flush.
//! - `{prefix}:ingest:accepted` / `{prefix}:ingest:first` hashes: trades accepted cluster-wide
//!   per instrument and the lowest accepted id. Incremented in the same atomic script as the
//!   price, so a node killed between flushes loses its unflushed count together with the price
//!   advance, and the next owner (starting after the stored id) re-accepts exactly those trades.
//! - `{prefix}:handover:market:SYMBOL`: "released at epoch E", set with the final flush of an
//!   instrument this node lost; the new owner goes live when it sees it.
//! - `{prefix}:feed:{node_id}` hash, field `market:conn` = `last_frame_ms,mean_gap_ms` (`0` while
//!   not connected), rewritten every second by the flush loop, expiring 10 s after the node
//!   stops (for the scheduler's feed-health watch).

use pricefeed_domain::instrument::InstrumentKey;
use pricefeed_store::protocol::Keys;
pub use pricefeed_store::protocol::PriceDoc;
use pricefeed_store::redis_conn::RedisConn;
use redis::Script;

use super::handoff::Resume;
use super::state::{FlushEntry, Latest};

/// A latest price document from the node-local state.
pub fn price_doc(key: &InstrumentKey, l: &Latest) -> PriceDoc {
    PriceDoc {
        market: key.market().as_str().to_string(),
        symbol: key.symbol_str().to_string(),
        price: l.price,
        qty: l.qty,
        trade_id: l.trade_id,
        ts: l.ts_ms,
    }
}

// KEYS: 1 prices, 2 accepted, 3 first, 4.. handover markers.
// ARGV: 1 channel, 2 n entries, then 5 per entry (field, trade_id or '', json, delta, first or
// ''), then one epoch per marker key.
const FLUSH: &str = r"
local n = tonumber(ARGV[2])
local ticks = {}
local i = 3
for _ = 1, n do
  local field, id, json, delta, first = ARGV[i], tonumber(ARGV[i+1]), ARGV[i+2], tonumber(ARGV[i+3]), ARGV[i+4]
  i = i + 5
  if delta > 0 then redis.call('HINCRBY', KEYS[2], field, delta) end
  if first ~= '' then
    local cur = redis.call('HGET', KEYS[3], field)
    if (not cur) or tonumber(first) < tonumber(cur) then redis.call('HSET', KEYS[3], field, first) end
  end
  if id then
    local newer = true
    local cur = redis.call('HGET', KEYS[1], field)
    if cur then
      local ok, d = pcall(cjson.decode, cur)
      if ok and type(d) == 'table' and d.trade_id and tonumber(d.trade_id) >= id then newer = false end
    end
    if newer then
      redis.call('HSET', KEYS[1], field, json)
      ticks[#ticks + 1] = json
    end
  end
end
for k = 4, #KEYS do
  redis.call('SET', KEYS[k], ARGV[i], 'PX', 600000)
  i = i + 1
end
if #ticks > 0 then redis.call('PUBLISH', ARGV[1], '[' .. table.concat(ticks, ',') .. ']') end
return #ticks
";

/// Writes one flush tick; returns how many prices were newer than Redis' (and published).
pub async fn flush(
    conn: &mut RedisConn,
    script: &Script,
    prefix: &str,
    entries: &[FlushEntry],
    released: &[(InstrumentKey, u64)],
) -> redis::RedisResult<i64> {
    let keys = Keys::new(prefix);
    let mut inv = script.prepare_invoke();
    inv.key(keys.prices())
        .key(keys.accepted())
        .key(keys.first_accepted());
    for (k, _) in released {
        inv.key(keys.handover(k));
    }
    inv.arg(keys.price_ticks()).arg(entries.len());
    for e in entries {
        inv.arg(e.key.as_str());
        match &e.latest {
            Some(l) => {
                let json = serde_json::to_string(&price_doc(&e.key, l))
                    .expect("price documents serialize");
                inv.arg(l.trade_id).arg(json);
            }
            None => {
                inv.arg("").arg("");
            }
        }
        inv.arg(e.accepted);
        match e.first_id {
            Some(f) => inv.arg(f),
            None => inv.arg(""),
        };
    }
    for (_, epoch) in released {
        inv.arg(*epoch);
    }
    inv.invoke_async(conn).await
}

/// What Redis knows about a pending instrument: the release marker's epoch and the stored
/// latest trade (id and price).
pub async fn handover_state(
    conn: &mut RedisConn,
    prefix: &str,
    keys: &[InstrumentKey],
) -> redis::RedisResult<Vec<(Option<u64>, Resume)>> {
    let names = Keys::new(prefix);
    let mut pipe = redis::pipe();
    for k in keys {
        // Marker first: the price written with it is then at least as new as the marker.
        pipe.get(names.handover(k));
        pipe.hget(names.prices(), k.as_str());
    }
    let raw: Vec<Option<String>> = pipe.query_async(conn).await?;
    Ok(raw
        .chunks(2)
        .map(|c| {
            let marker = c[0].as_deref().and_then(|s| s.parse().ok());
            let last = c[1]
                .as_deref()
                .and_then(|s| serde_json::from_str::<PriceDoc>(s).ok());
            let resume = Resume {
                after_id: last.as_ref().map(|d| d.trade_id),
                price: last.map(|d| d.price),
            };
            (marker, resume)
        })
        .collect())
}

pub fn flush_script() -> Script {
    Script::new(FLUSH)
}

/// Reads the stored price of `key` (one HGET).
pub async fn read_price(
    conn: &mut RedisConn,
    prefix: &str,
    key: &InstrumentKey,
) -> redis::RedisResult<Option<PriceDoc>> {
    let raw: Option<String> = redis::cmd("HGET")
        .arg(Keys::new(prefix).prices())
        .arg(key.as_str())
        .query_async(conn)
        .await?;
    Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
}

/// Reads stored prices for `keys` (one HMGET).
pub async fn read_prices(
    conn: &mut RedisConn,
    prefix: &str,
    keys: &[InstrumentKey],
) -> redis::RedisResult<Vec<Option<PriceDoc>>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(Keys::new(prefix).prices());
    for k in keys {
        cmd.arg(k.as_str());
    }
    let raw: Vec<Option<String>> = cmd.query_async(conn).await?;
    Ok(raw
        .into_iter()
        .map(|v| v.and_then(|s| serde_json::from_str(&s).ok()))
        .collect())
}
