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
//! - `{prefix}:ingest:flushed` hash, field node id = the token of the last flush it applied. The
//!   counters are increments, so a flush whose answer was lost (a response timeout after the
//!   script ran) must not be applied again: the node retries the same batch with the same token
//!   until it gets an answer, and the script skips a token it has already applied.
//! - `{prefix}:ingest:missing` hash: per instrument, the ids below the stored price that its live
//!   node is still missing ([`MissingIds`]), written by the same flush as the price. The next
//!   node to go live on it (after a release or a death) takes them over in its claim and
//!   backfills them: it resumes after the stored price, so they would be lost otherwise.
//! - `{prefix}:handover:market:SYMBOL`: "released at epoch E", set with the final flush of an
//!   instrument this node lost; the new owner goes live when it sees it.
//! - `{prefix}:live` hash, field `market:SYMBOL` = the node that went live on it last. Going
//!   live claims it and reads the resume point in one script ([`claim`]); a flush writes only
//!   fields this node holds the claim of and reports the others as fenced. A node that was cut
//!   off while its slice moved therefore cannot add its stale counts or prices when it comes
//!   back, whatever its own clock or view says (the claim is the fencing token).
//! - `{prefix}:feed:{node_id}` hash, field `market:conn` = `last_frame_ms,mean_gap_ms` (`0` while
//!   not connected), rewritten every second by the flush loop, expiring 10 s after the node
//!   stops (for the scheduler's feed-health watch).

use std::ops::RangeInclusive;

use pricefeed_domain::instrument::InstrumentKey;
pub use pricefeed_store::protocol::PriceDoc;
use pricefeed_store::protocol::{Keys, MissingIds};
use pricefeed_store::redis_conn::RedisConn;
use redis::Script;

use super::handoff::Resume;
use super::state::{FlushEntry, Latest, Release};

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

// KEYS: 1 prices, 2 accepted, 3 first, 4 live claims, 5 flush tokens, 6 missing, 7.. handover
// markers. ARGV: 1 channel, 2 n entries, 3 node id, 4 flush token, then 6 per entry (field,
// trade_id or '', json, delta, first or '', missing: '' unchanged, '-' none, else the ranges),
// then one epoch per marker key. Returns {published, fenced field,
// ...}, or {-1} when this token was applied already.
const FLUSH: &str = r"
local n = tonumber(ARGV[2])
local me = ARGV[3]
if redis.call('HGET', KEYS[5], me) == ARGV[4] then return {-1} end
local ticks = {}
local fenced = {}
local i = 5
for _ = 1, n do
  local field, id, json, delta, first, missing = ARGV[i], tonumber(ARGV[i+1]), ARGV[i+2], tonumber(ARGV[i+3]), ARGV[i+4], ARGV[i+5]
  i = i + 6
  local holder = redis.call('HGET', KEYS[4], field)
  if holder and holder ~= me then
    fenced[#fenced + 1] = field
  else
    if not holder then redis.call('HSET', KEYS[4], field, me) end
    if missing == '-' then redis.call('HDEL', KEYS[6], field)
    elseif missing ~= '' then redis.call('HSET', KEYS[6], field, missing) end
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
end
for k = 7, #KEYS do
  redis.call('SET', KEYS[k], ARGV[i], 'PX', 600000)
  i = i + 1
end
redis.call('HSET', KEYS[5], me, ARGV[4])
if #ticks > 0 then redis.call('PUBLISH', ARGV[1], '[' .. table.concat(ticks, ',') .. ']') end
local out = {#ticks}
for _, f in ipairs(fenced) do out[#out + 1] = f end
return out
";

/// What one flush did.
#[derive(Debug, Default)]
pub struct Flushed {
    /// The batch had been applied already (this is a retry whose first answer was lost).
    pub duplicate: bool,
    /// Prices newer than Redis' (written and published).
    pub published: i64,
    /// `market:SYMBOL` fields refused because another node holds the live claim.
    pub fenced: Vec<String>,
}

/// One batch of flush work, with the token that makes retrying it safe.
#[derive(Debug, Default)]
pub struct FlushWork {
    pub token: String,
    pub entries: Vec<FlushEntry>,
    pub released: Vec<Release>,
}

/// Writes one flush batch as `node_id`. Call again with the very same `work` after an error:
/// if the first call was applied, the retry is recognised and changes nothing.
pub async fn flush(
    conn: &mut RedisConn,
    script: &Script,
    prefix: &str,
    node_id: &str,
    work: &FlushWork,
) -> redis::RedisResult<Flushed> {
    let (entries, released) = (&work.entries, &work.released);
    let keys = Keys::new(prefix);
    let mut inv = script.prepare_invoke();
    inv.key(keys.prices())
        .key(keys.accepted())
        .key(keys.first_accepted())
        .key(keys.live_claims())
        .key(keys.flush_tokens())
        .key(keys.ingest_missing());
    for r in released {
        inv.key(keys.handover(&r.key));
    }
    inv.arg(keys.price_ticks())
        .arg(entries.len())
        .arg(node_id)
        .arg(&work.token);
    for e in entries.iter() {
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
        match &e.missing {
            None => inv.arg(""),
            Some(m) if m.is_empty() => inv.arg("-"),
            Some(m) => inv.arg(MissingIds(m.clone()).encode()),
        };
    }
    for r in released {
        inv.arg(r.epoch);
    }
    let out: Vec<redis::Value> = inv.invoke_async(conn).await?;
    let mut it = out.into_iter();
    let published = match it.next() {
        Some(redis::Value::Int(n)) => n,
        _ => 0,
    };
    if published < 0 {
        return Ok(Flushed {
            duplicate: true,
            ..Flushed::default()
        });
    }
    let fenced = it
        .filter_map(|v| redis::from_redis_value::<String>(v).ok())
        .collect();
    Ok(Flushed {
        duplicate: false,
        published,
        fenced,
    })
}

// KEYS: 1 prices, 2 live claims, 3 missing, then one handover marker per instrument.
// ARGV: 1 node id, then 3 per instrument (field, epoch, force 0/1).
// Returns per instrument: 0 (not yet: no release marker for this epoch) or {1, price json or '',
// missing ids or ''}; the missing ids are taken over (deleted).
const CLAIM: &str = r"
local out = {}
local a = 2
for k = 4, #KEYS do
  local field, epoch, force = ARGV[a], tonumber(ARGV[a+1]), ARGV[a+2] == '1'
  a = a + 3
  local marker = tonumber(redis.call('GET', KEYS[k]) or '')
  if force or (marker and marker >= epoch) then
    redis.call('HSET', KEYS[2], field, ARGV[1])
    local missing = redis.call('HGET', KEYS[3], field) or ''
    redis.call('HDEL', KEYS[3], field)
    out[#out + 1] = {1, redis.call('HGET', KEYS[1], field) or '', missing}
  else
    out[#out + 1] = 0
  end
end
return out
";

/// For each pending instrument `(key, epoch, force)`: when its previous owner has released it
/// at `epoch` or later (or `force`), takes the live claim for `node_id` and returns where to
/// resume (the stored latest trade) in the same atomic step, so no flush of the previous owner
/// can land between the read and the claim, with the ids the previous owner was still missing
/// when it last flushed (taken over: the field is deleted).
/// `None`: keep waiting.
pub async fn claim(
    conn: &mut RedisConn,
    prefix: &str,
    node_id: &str,
    pending: &[(InstrumentKey, u64, bool)],
) -> redis::RedisResult<Vec<Option<(Resume, Vec<RangeInclusive<u64>>)>>> {
    let names = Keys::new(prefix);
    static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(CLAIM));
    let mut inv = SCRIPT.prepare_invoke();
    inv.key(names.prices())
        .key(names.live_claims())
        .key(names.ingest_missing());
    for (k, _, _) in pending {
        inv.key(names.handover(k));
    }
    inv.arg(node_id);
    for (k, epoch, force) in pending {
        inv.arg(k.as_str())
            .arg(*epoch)
            .arg(if *force { "1" } else { "0" });
    }
    let raw: Vec<redis::Value> = inv.invoke_async(conn).await?;
    Ok(raw
        .into_iter()
        .map(|v| match v {
            redis::Value::Array(parts) => {
                let last = parts
                    .get(1)
                    .and_then(|p| redis::from_redis_value_ref::<String>(p).ok())
                    .and_then(|s| serde_json::from_str::<PriceDoc>(&s).ok());
                let missing = parts
                    .get(2)
                    .and_then(|p| redis::from_redis_value_ref::<String>(p).ok())
                    .map(|s| MissingIds::parse(&s).0)
                    .unwrap_or_default();
                Some((
                    Resume {
                        after_id: last.as_ref().map(|d| d.trade_id),
                        price: last.map(|d| d.price),
                    },
                    missing,
                ))
            }
            _ => None,
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
