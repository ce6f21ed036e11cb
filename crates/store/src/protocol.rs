//! The Redis protocol of the cluster: every key, every channel and every payload that crosses a
//! process boundary through Redis, in one place. Nodes, the scheduler, workers and the tests all
//! name keys through [`Keys`] and decode payloads with the types here, so a rename or a format
//! change is one edit that every side sees.
//!
//! Everything lives under `redis.key_prefix` (`{p}` below). Redis holds only rebuildable state:
//! losing any key here loses no trade and no alert (see `docs/architecture.md`).
//!
//! | key / channel | type | written by | content |
//! |---|---|---|---|
//! | `{p}:node:{id}` | string, TTL | node | [`NodeRecord`] JSON |
//! | `{p}:nodes` | zset | node | node id → last heartbeat (Redis clock, ms) |
//! | `{p}:scheduler:leader` | string, TTL | scheduler | [`LeaderInfo`] JSON (the lease) |
//! | `{p}:scheduler:term` | string | scheduler | fencing term counter |
//! | `{p}:assignment` | string | scheduler | [`Published`] JSON |
//! | `{p}:assignment:term` | string | scheduler | highest term that published |
//! | `{p}:assignment:changed` | channel | scheduler | new epoch |
//! | `{p}:instruments:changed` | channel | scheduler | [`InstrumentsChanged`] JSON |
//! | `{p}:prices` | hash | owning node | `market:SYMBOL` → [`PriceDoc`] JSON |
//! | `{p}:ticks` | channel | owning node | JSON array of [`PriceDoc`] per flush |
//! | `{p}:rest_hold:{market}` | string, TTL | any process | ms until which broker REST calls wait (after a 429/418) |
//! | `{p}:vwap` | hash | owning node | `market:SYMBOL:5m` → [`VwapDoc`] JSON |
//! | `{p}:vwap:ticks` | channel | owning node | JSON array of [`VwapDoc`] per publication |
//! | `{p}:stats` | hash | owning node | `market:SYMBOL` → [`StatsDoc`] JSON |
//! | `{p}:rank:{group}` | zset | owning node | `market:SYMBOL` → σ (24 h), per rank group |
//! | `{p}:rank:seen` | zset | owning node | `market:SYMBOL` → last rank write (ms), for pruning |
//! | `{p}:ingest:accepted` | hash | owning node | `market:SYMBOL` → trades accepted cluster-wide |
//! | `{p}:ingest:first` | hash | owning node | `market:SYMBOL` → lowest accepted trade id |
//! | `{p}:ingest:missing` | hash | owning node (deleted by the next claim) | `market:SYMBOL` → [`MissingIds`] below the stored price |
//! | `{p}:live` | hash | owning node | `market:SYMBOL` → id of the node that went live on it last (the fencing claim) |
//! | `{p}:handover:market:SYMBOL` | string, TTL | releasing node | epoch of the release |
//! | `{p}:feed:{node}` | hash, TTL | node | `market:conn` → `last_frame_ms,mean_gap_ms` or `0` |
//! | `{p}:orders:{node}` | channel | scheduler | [`ReconnectOrder`] JSON |
//! | `{p}:reconciled` | channel | worker | [`Reconciled`] JSON after each committed step |
//! | `{p}:alerts:changed` | channel | any node (API) | [`AlertChanged`] JSON after a create, update or delete |
//! | `{p}:alerts:events` | channel | owning node | [`AlertEvent`] JSON after a trigger is committed |
//! | `{p}:ratelimit:{name}:{id}:{window}` | string, TTL | any node | requests counted in a fixed window |
//! | `{p}:sync:requested` | string, TTL | any node (admin API) | the requesting admin's id; the leader syncs within a second |

use std::collections::BTreeMap;

use pricefeed_domain::assignment::{Assignment, NodeId};
use pricefeed_domain::instrument::{InstrumentKey, Market, Symbol};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Key and channel names under one prefix. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn k(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    // --- membership and leadership ---
    pub fn node_record(&self, node_id: &str) -> String {
        self.k(&format!("node:{node_id}"))
    }
    pub fn heartbeats(&self) -> String {
        self.k("nodes")
    }
    pub fn lease(&self) -> String {
        self.k("scheduler:leader")
    }
    pub fn lease_term(&self) -> String {
        self.k("scheduler:term")
    }
    pub fn assignment(&self) -> String {
        self.k("assignment")
    }
    pub fn assignment_term(&self) -> String {
        self.k("assignment:term")
    }
    pub fn assignment_changed(&self) -> String {
        self.k("assignment:changed")
    }
    pub fn instruments_changed(&self) -> String {
        self.k("instruments:changed")
    }

    // --- live values ---
    pub fn prices(&self) -> String {
        self.k("prices")
    }
    pub fn price_ticks(&self) -> String {
        self.k("ticks")
    }
    pub fn vwap(&self) -> String {
        self.k("vwap")
    }
    pub fn vwap_ticks(&self) -> String {
        self.k("vwap:ticks")
    }
    pub fn stats(&self) -> String {
        self.k("stats")
    }
    /// Sorted set of σ per rank group (e.g. `spot:USDT`).
    pub fn rank(&self, group: &str) -> String {
        self.k(&format!("rank:{group}"))
    }
    /// When each instrument last wrote its rank entry; lets the leader prune entries nobody
    /// refreshes any more (delisted instruments).
    pub fn rank_seen(&self) -> String {
        self.k("rank:seen")
    }

    // --- ingest bookkeeping ---
    pub fn accepted(&self) -> String {
        self.k("ingest:accepted")
    }
    pub fn first_accepted(&self) -> String {
        self.k("ingest:first")
    }
    /// The token of the last flush each node applied (field = node id): a flush retried after an
    /// answer that never arrived is recognised and not counted twice.
    pub fn flush_tokens(&self) -> String {
        self.k("ingest:flushed")
    }
    /// Per instrument, the ids its live node was still missing below the stored price
    /// ([`MissingIds`]); taken over by the next node to go live on it.
    pub fn ingest_missing(&self) -> String {
        self.k("ingest:missing")
    }
    /// Which node holds each instrument's live claim: flushes from any other node are refused.
    pub fn live_claims(&self) -> String {
        self.k("live")
    }
    pub fn handover(&self, key: &InstrumentKey) -> String {
        self.k(&format!("handover:{key}"))
    }

    // --- feed health and orders ---
    pub fn feed(&self, node_id: &str) -> String {
        self.k(&format!("feed:{node_id}"))
    }
    pub fn orders(&self, node_id: &str) -> String {
        self.k(&format!("orders:{node_id}"))
    }

    // --- reconciliation ---
    pub fn reconciled(&self) -> String {
        self.k("reconciled")
    }

    // --- alerts ---
    pub fn alerts_changed(&self) -> String {
        self.k("alerts:changed")
    }
    pub fn alert_events(&self) -> String {
        self.k("alerts:events")
    }
    /// Set by an admin to make the scheduler leader sync instruments now (it deletes it).
    pub fn sync_requested(&self) -> String {
        self.k("sync:requested")
    }
    /// Until when (ms since the epoch) every process holds its REST calls to `market` after a
    /// 429/418 (`rest_hold`).
    pub fn rest_hold(&self, market: &str) -> String {
        self.k(&format!("rest_hold:{market}"))
    }
    /// Counter of a fixed-window rate limit (`name` = what is limited, `id` = who).
    pub fn rate_limit(&self, name: &str, id: &str, window: i64) -> String {
        self.k(&format!("ratelimit:{name}:{id}:{window}"))
    }
}

/// Hash field of a VWAP value: `market:SYMBOL:interval`.
pub fn vwap_field(key: &InstrumentKey, interval: &str) -> String {
    format!("{key}:{interval}")
}

/// Parses `market` + `symbol` fields of a document back into its key.
pub fn doc_key(market: &str, symbol: &str) -> Option<InstrumentKey> {
    Some(InstrumentKey::new(
        Market::parse(market)?,
        &Symbol::parse(symbol).ok()?,
    ))
}

// --- payloads ---------------------------------------------------------------------------------

/// What a node says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    pub addr: String,
    pub started_at_ms: i64,
    pub version: String,
}

/// Who holds the scheduler lease right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub term: u64,
    pub holder: String,
}

/// The slice assignment the leader publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub epoch: u64,
    /// Fencing term of the leader that wrote it.
    pub term: u64,
    /// Redis-clock time of the publish, ms.
    #[serde(default)]
    pub published_at_ms: i64,
    /// The leader's dead-node threshold, so the cluster API calls nodes alive or dead with the
    /// same rule that decided the assignment.
    #[serde(default)]
    pub node_dead_after_ms: u64,
    pub owners: BTreeMap<InstrumentKey, NodeId>,
}

impl Published {
    pub fn assignment(&self) -> Assignment {
        Assignment {
            epoch: self.epoch,
            owners: self.owners.clone(),
        }
    }
}

/// `{p}:instruments:changed` message: what one instrument sync changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstrumentsChanged {
    /// `underlyings` or `derivatives`.
    pub kind: String,
    pub term: u64,
    pub changed: u64,
    pub delisted: u64,
}

/// The `order` value of a reconnect order.
pub const RECONNECT: &str = "reconnect";

/// A reconnect order: `{order:"reconnect", node_id, conn_id, term, issued_at_ms, reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconnectOrder {
    /// Always [`RECONNECT`].
    pub order: String,
    pub node_id: String,
    /// The feed hash field naming the connection: `market:conn`.
    pub conn_id: String,
    /// The issuing leader's fencing term.
    pub term: u64,
    /// Redis clock, ms.
    pub issued_at_ms: i64,
    pub reason: String,
}

/// One field of `{p}:feed:{node}` (field name `market:conn`): `last_frame_ms,mean_gap_ms` while
/// the connection is up, `0` while it is not (connecting, or waiting out a backoff).
/// `last_frame_ms` is the node's wall clock at the connection's last frame of any kind;
/// `mean_gap_ms` the mean time between its trade arrivals this session, `-1` while too few
/// arrived to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedField {
    pub connected: bool,
    pub last_frame_ms: i64,
    pub mean_gap_ms: i64,
}

impl FeedField {
    pub fn encode(&self) -> String {
        if self.connected {
            format!("{},{}", self.last_frame_ms, self.mean_gap_ms)
        } else {
            "0".to_string()
        }
    }

    /// Decodes a field; a bare `last_frame_ms` (from an older node) has gap `-1`. `None` for
    /// anything else. A connection that is up but has not had a frame yet has `last_frame_ms` 0.
    pub fn decode(s: &str) -> Option<Self> {
        let (connected, last, gap) = match s.split_once(',') {
            Some((l, g)) => (true, l.parse().ok()?, g.parse().ok()?),
            None => {
                let last: i64 = s.parse().ok()?;
                (last > 0, last, -1)
            }
        };
        Some(Self {
            connected,
            last_frame_ms: last,
            mean_gap_ms: gap,
        })
    }
}

/// A latest price as stored in `{p}:prices` and published on `{p}:ticks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PriceDoc {
    #[schema(example = "spot")]
    pub market: String,
    #[schema(example = "BTCUSDT")]
    pub symbol: String,
    #[schema(value_type = String, example = "90000.01000000")]
    pub price: Decimal,
    #[schema(value_type = String, example = "0.00123000")]
    pub qty: Decimal,
    pub trade_id: u64,
    /// Trade time, ms since the epoch.
    pub ts: i64,
}

/// A rolling VWAP as stored in `{p}:vwap` and published on `{p}:vwap:ticks`: the shape of
/// `GET /api/v1/vwap/{symbol}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VwapDoc {
    #[schema(example = "spot")]
    pub market: String,
    #[schema(example = "BTCUSDT")]
    pub symbol: String,
    /// `1m`, `5m`, `15m`, `1h` (the configured list).
    #[schema(example = "5m")]
    pub interval: String,
    /// Σ price × qty / Σ qty over the window; null when the window holds no trade.
    #[schema(value_type = Option<String>, example = "90012.345678")]
    pub vwap: Option<Decimal>,
    /// Σ qty (base asset).
    #[schema(value_type = String, example = "12.34500000")]
    pub volume: Decimal,
    /// Σ price × qty (quote asset).
    #[schema(value_type = String, example = "1111111.11")]
    pub quote_volume: Decimal,
    pub trade_count: u64,
    /// Window start, inclusive, ms since the epoch.
    pub window_start: i64,
    /// Window end, inclusive, ms since the epoch.
    pub window_end: i64,
    /// Every trade in the window has been confirmed by the broker's REST API.
    pub validated: bool,
}

/// 24 h statistics of one instrument as stored in `{p}:stats` (the body of
/// `GET /api/v1/stats/{symbol}` without its rank).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsDoc {
    pub market: String,
    pub symbol: String,
    /// Rank group: `market:QUOTE` (e.g. `spot:USDT`).
    pub group: String,
    /// Mean of the 1-minute closes of the last 24 h.
    pub mean: Option<Decimal>,
    /// Population standard deviation of those closes.
    pub stddev: Option<Decimal>,
    /// Lowest and highest trade price in the last 24 h (whole minutes).
    pub min: Option<Decimal>,
    pub max: Option<Decimal>,
    /// Latest price against the first close of the window, in percent.
    pub change_pct: Option<Decimal>,
    /// Number of 1-minute closes (minutes with at least one trade).
    pub samples: u32,
    /// Start of the first and end of the last minute the statistics cover, ms.
    pub from_ms: i64,
    pub to_ms: i64,
}

/// `{p}:reconciled` message: reconciliation committed a step for one instrument; every trade
/// with `ts_ms <= through_ms` is confirmed and the buckets up to there are final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciled {
    pub market: String,
    pub symbol: String,
    pub through_ms: i64,
    /// The step changed stored data (inserted, corrected or removed trades).
    pub changed: bool,
}

/// `{p}:alerts:changed` message: an alert was created, changed or deleted; the node owning
/// its instrument reloads it (and every node periodically reloads all, for lost messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertChanged {
    pub alert_id: i64,
    pub market: String,
    pub symbol: String,
    pub version: i64,
}

/// `{p}:alerts:events` message: a committed alert trigger, for the user's WebSocket
/// connections on every node (the `alerts` channel of `/api/v1/stream`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertEvent {
    pub user_id: i64,
    pub alert_id: i64,
    pub trigger_id: i64,
    pub market: String,
    pub symbol: String,
    /// `above`, `crosses_down`, `vwap_above`, `move_pct`, `zscore`, …
    pub condition: String,
    #[schema(value_type = String)]
    pub threshold: Decimal,
    /// The trade that caused it.
    pub trade_id: u64,
    pub trade_ts: i64,
    #[schema(value_type = String)]
    pub price: Decimal,
    /// What the condition compared (the price, a VWAP, a move in %, a z-score).
    #[schema(value_type = String)]
    pub observed: Decimal,
    /// When the trigger was committed, ms.
    pub triggered_at: i64,
}

/// A field of `{p}:ingest:missing` ([`Keys::ingest_missing`]): `s-e,s-e,…`, the trade ids below
/// the stored latest price that the node live on the instrument was still missing when it last
/// flushed. Whoever goes live next takes them over (the claim reads and deletes the field).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MissingIds(pub Vec<std::ops::RangeInclusive<u64>>);

impl MissingIds {
    pub fn encode(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|g| format!("{}-{}", g.start(), g.end()))
            .collect();
        parts.join(",")
    }

    /// Malformed parts are skipped (a field is only ever written by [`Self::encode`]).
    pub fn parse(s: &str) -> Self {
        Self(
            s.split(',')
                .filter_map(|g| {
                    let (s, e) = g.split_once('-')?;
                    let (s, e) = (s.parse::<u64>().ok()?, e.parse::<u64>().ok()?);
                    (s <= e).then_some(s..=e)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn feed_fields_round_trip() {
        let up = FeedField {
            connected: true,
            last_frame_ms: 1_796_000_000_123,
            mean_gap_ms: 40,
        };
        assert_eq!(up.encode(), "1796000000123,40");
        assert_eq!(FeedField::decode(&up.encode()), Some(up));
        let down = FeedField::decode("0").unwrap();
        assert!(!down.connected);
        assert_eq!(down.encode(), "0");
        assert_eq!(FeedField::decode("17").unwrap().mean_gap_ms, -1);
        assert_eq!(FeedField::decode("x,1"), None);
    }

    use super::*;

    #[test]
    fn names_are_stable() {
        let k = Keys::new("pf");
        let key = InstrumentKey::parse("usdm:BTCUSDT").unwrap();
        assert_eq!(k.prices(), "pf:prices");
        assert_eq!(k.price_ticks(), "pf:ticks");
        assert_eq!(k.handover(&key), "pf:handover:usdm:BTCUSDT");
        assert_eq!(k.ingest_missing(), "pf:ingest:missing");
        let m = MissingIds(vec![5..=5, 9..=12]);
        assert_eq!(m.encode(), "5-5,9-12");
        assert_eq!(MissingIds::parse("5-5,9-12"), m);
        assert_eq!(MissingIds::default().encode(), "");
        assert!(MissingIds::parse("").0.is_empty());
        assert_eq!(MissingIds::parse("x,3-1,4-6").0, vec![4..=6]);
        assert_eq!(k.feed("n1"), "pf:feed:n1");
        assert_eq!(k.orders("n1"), "pf:orders:n1");
        assert_eq!(k.rank("spot:USDT"), "pf:rank:spot:USDT");
        assert_eq!(vwap_field(&key, "5m"), "usdm:BTCUSDT:5m");
        assert_eq!(doc_key("usdm", "btcusdt"), Some(key));
        assert_eq!(doc_key("nope", "BTCUSDT"), None);
    }
}
