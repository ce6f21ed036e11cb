//! Building blocks of the reliability drills (`tests/drills*.rs`): the simulator's ground truth
//! per instrument, live ownership sampled across a node set that changes while it is watched,
//! and the end-of-drill checks "what the cluster accepted / stored equals the truth".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pricefeed_store::protocol::Keys;
use rust_decimal::Decimal;
use serde_json::Value;

use crate::{get_json, http_client};

/// `name` from the environment in seconds, else `default`.
pub fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

/// The simulator's market, the symbol and the id field the cluster keys trades by, for a
/// `market:SYMBOL` instrument key (USD-M trades are aggregate trades on our side).
pub fn sim_side(key: &str) -> (&'static str, &str, &'static str) {
    let (market, symbol) = key.split_once(':').expect("market:SYMBOL");
    match market {
        "usdm" => ("futures", symbol, "aggId"),
        "options" => ("options", symbol, "id"),
        _ => ("spot", symbol, "id"),
    }
}

/// Every id the simulator still retains for `key` (sorted, each once).
pub async fn truth_ids(http: &reqwest::Client, control: &str, key: &str) -> Vec<u64> {
    let (market, symbol, field) = sim_side(key);
    let v = get_json(
        http,
        &format!(
            "http://{control}/control/truth/trades?market={market}&symbol={symbol}&fromId=0&limit=1000000"
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("truth of {key}: {e}"));
    let mut ids: Vec<u64> = v["trades"]
        .as_array()
        .unwrap_or_else(|| panic!("truth of {key}: {v}"))
        .iter()
        .filter_map(|t| t[field].as_u64())
        .collect();
    ids.dedup();
    ids
}

/// A trade of the simulator's ground truth.
#[derive(Debug, Clone)]
pub struct TruthTrade {
    pub id: u64,
    pub price: Decimal,
    pub time: i64,
}

/// Every retained spot trade of `symbol`, oldest first.
pub async fn spot_truth(http: &reqwest::Client, control: &str, symbol: &str) -> Vec<TruthTrade> {
    let v = get_json(
        http,
        &format!(
            "http://{control}/control/truth/trades?market=spot&symbol={symbol}&fromId=0&limit=1000000"
        ),
    )
    .await
    .unwrap();
    v["trades"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| TruthTrade {
            id: t["id"].as_u64().unwrap(),
            price: Decimal::from_str(t["price"].as_str().unwrap()).unwrap(),
            time: t["time"].as_i64().unwrap(),
        })
        .collect()
}

/// The first trade of `truth` at or after `from_ms` whose move from the previous trade crosses
/// `thr` in the alert's direction (`up` = crosses upwards).
pub fn first_crossing(
    truth: &[TruthTrade],
    up: bool,
    thr: Decimal,
    from_ms: i64,
) -> Option<&TruthTrade> {
    truth.windows(2).find_map(|w| {
        let (prev, cur) = (&w[0], &w[1]);
        let crosses = if up {
            prev.price < thr && cur.price >= thr
        } else {
            prev.price > thr && cur.price <= thr
        };
        (prev.time >= from_ms && crosses).then_some(cur)
    })
}

/// Whether trade `id` (stored with `price`) is, in the truth, a crossing of `thr` in the
/// alert's direction.
pub fn is_crossing(
    truth: &[TruthTrade],
    by_id: &HashMap<u64, usize>,
    up: bool,
    thr: Decimal,
    id: u64,
    price: Decimal,
) -> Result<(), String> {
    let i = *by_id
        .get(&id)
        .ok_or(format!("trade {id} is not in the truth"))?;
    if i == 0 {
        return Err(format!("trade {id} has no predecessor in the truth"));
    }
    let (prev, cur) = (&truth[i - 1], &truth[i]);
    if cur.price != price {
        return Err(format!(
            "trade {id}: stored price {price}, truth {}",
            cur.price
        ));
    }
    let ok = if up {
        prev.price <= thr && cur.price >= thr
    } else {
        prev.price >= thr && cur.price <= thr
    };
    ok.then_some(()).ok_or(format!(
        "trade {id} ({} → {}) does not cross {thr} {}",
        prev.price,
        cur.price,
        if up { "upwards" } else { "downwards" }
    ))
}

/// Per instrument: what the cluster accepted against the truth, from the cluster-wide counters
/// the owners keep in Redis atomically with the latest price.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accounted {
    pub first: u64,
    pub last: u64,
    pub accepted: u64,
    pub truth: u64,
}

/// For every key: the cluster's accepted count equals the number of truth ids between its
/// first accepted id and its latest price's id, and the first accepted id is a truth id (none
/// lost, none counted twice). `Err` lists the instruments that do not add up (yet).
pub async fn accepted_vs_truth(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    http: &reqwest::Client,
    control: &str,
    keys: &BTreeSet<String>,
) -> Result<BTreeMap<String, Accounted>, Vec<String>> {
    let k = Keys::new(prefix);
    let (accepted, first, prices): (
        BTreeMap<String, u64>,
        BTreeMap<String, u64>,
        BTreeMap<String, String>,
    ) = redis::pipe()
        .atomic()
        .cmd("HGETALL")
        .arg(k.accepted())
        .cmd("HGETALL")
        .arg(k.first_accepted())
        .cmd("HGETALL")
        .arg(k.prices())
        .query_async(redis)
        .await
        .map_err(|e| vec![e.to_string()])?;
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for key in keys {
        let (Some(acc), Some(f), Some(p)) = (accepted.get(key), first.get(key), prices.get(key))
        else {
            problems.push(format!("{key}: nothing accepted yet"));
            continue;
        };
        let last = serde_json::from_str::<Value>(p).unwrap()["trade_id"]
            .as_u64()
            .unwrap();
        let ids = truth_ids(http, control, key).await;
        if ids.first().is_some_and(|o| *o > *f) {
            problems.push(format!(
                "{key}: the simulator no longer retains id {f} (oldest {}); raise its history depth",
                ids[0]
            ));
            continue;
        }
        let truth = ids.iter().filter(|i| (*f..=last).contains(*i)).count() as u64;
        if *acc != truth || !ids.contains(f) {
            problems.push(format!(
                "{key}: accepted {acc} vs truth {truth} in {f}..={last}"
            ));
        }
        out.insert(
            key.clone(),
            Accounted {
                first: *f,
                last,
                accepted: *acc,
                truth,
            },
        );
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// For every instrument in `ranges` (key → first..=last id, from [`accepted_vs_truth`]): the
/// trade ids Postgres stores in that range are exactly the truth's. `Err` lists differences.
pub async fn stored_vs_truth(
    pool: &sqlx::PgPool,
    http: &reqwest::Client,
    control: &str,
    ranges: &BTreeMap<String, Accounted>,
) -> Result<u64, Vec<String>> {
    let mut problems = Vec::new();
    let mut total = 0u64;
    for (key, a) in ranges {
        let (market, symbol) = key.split_once(':').unwrap();
        let stored: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT t.trade_id FROM trades t JOIN instruments i ON i.id = t.instrument_id \
             WHERE i.market = $1 AND i.symbol = $2 AND t.trade_id BETWEEN $3 AND $4 ORDER BY 1",
        )
        .bind(market)
        .bind(symbol)
        .bind(a.first as i64)
        .bind(a.last as i64)
        .fetch_all(pool)
        .await
        .map_err(|e| vec![e.to_string()])?;
        let stored: Vec<u64> = stored.into_iter().map(|i| i as u64).collect();
        let truth: Vec<u64> = truth_ids(http, control, key)
            .await
            .into_iter()
            .filter(|i| (a.first..=a.last).contains(i))
            .collect();
        if stored != truth {
            let s: BTreeSet<&u64> = stored.iter().collect();
            let t: BTreeSet<&u64> = truth.iter().collect();
            let missing: Vec<&&u64> = t.difference(&s).take(5).collect();
            let extra: Vec<&&u64> = s.difference(&t).take(5).collect();
            problems.push(format!(
                "{key}: stored {} vs truth {} in {}..={}; missing e.g. {missing:?}, not in the truth e.g. {extra:?}",
                stored.len(),
                truth.len(),
                a.first,
                a.last
            ));
        }
        total += stored.len() as u64;
    }
    if problems.is_empty() {
        Ok(total)
    } else {
        Err(problems)
    }
}

/// Waits until [`stored_vs_truth`] holds and returns the stored count; after `until` fails
/// with the differences, saying `when` they were expected.
pub async fn stored_is_truth_by(
    pool: &sqlx::PgPool,
    http: &reqwest::Client,
    control: &str,
    ranges: &BTreeMap<String, Accounted>,
    until: Instant,
    when: &str,
) -> u64 {
    loop {
        match stored_vs_truth(pool, http, control, ranges).await {
            Ok(n) => return n,
            Err(p) => assert!(Instant::now() < until, "stored ≠ truth {when}: {p:#?}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What an [`OwnershipWatch`] saw.
#[derive(Debug, Clone, Default)]
pub struct OwnershipReport {
    /// Sampling rounds.
    pub rounds: u64,
    /// The longest time any instrument had no live owner, and which one, after it first had one.
    pub max_gap: Duration,
    pub worst: String,
    /// Every gap longer than 500 ms: (key, length).
    pub gaps: Vec<(String, Duration)>,
    /// Instruments without a live owner when the report was taken, with how long so far.
    pub open: Vec<(String, Duration)>,
}

/// Samples `GET /api/v1/cluster/ingest` of every node in a shared, changing list of base URLs
/// (`http://host:port`) every 100 ms and measures, per instrument, how long it went without
/// any node ingesting it live. A node that does not answer counts as owning nothing, so the
/// figure is an upper bound (it includes the sampling period and slow answers).
#[derive(Debug)]
pub struct OwnershipWatch {
    pub nodes: Arc<Mutex<Vec<String>>>,
    state: Arc<Mutex<WatchState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct WatchState {
    report: OwnershipReport,
    /// Per key: when it was last seen live (None before it ever was).
    last_live: HashMap<String, Instant>,
}

impl OwnershipWatch {
    /// Starts watching `keys` on the nodes at `urls`.
    pub fn start(keys: BTreeSet<String>, urls: Vec<String>) -> Self {
        let nodes = Arc::new(Mutex::new(urls));
        let state = Arc::new(Mutex::new(WatchState::default()));
        let (n, s) = (nodes.clone(), state.clone());
        let task = tokio::spawn(async move {
            // Longer than the sampling period on purpose: a slow answer must not be mistaken
            // for a node without instruments more often than the machine makes it so.
            let http = http_client(Duration::from_secs(1));
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let urls = n.lock().unwrap().clone();
                let polls = urls.iter().map(|u| {
                    let http = http.clone();
                    let url = format!("{u}/api/v1/cluster/ingest");
                    async move { get_json(&http, &url).await.ok() }
                });
                let views = futures_util::future::join_all(polls).await;
                let live: BTreeSet<String> = views
                    .iter()
                    .flatten()
                    .flat_map(|v| v["instruments"].as_array().cloned().unwrap_or_default())
                    .filter(|i| i["live"] == true)
                    .filter_map(|i| i["key"].as_str().map(str::to_string))
                    .collect();
                let now = Instant::now();
                let mut st = s.lock().unwrap();
                st.report.rounds += 1;
                for k in &keys {
                    if live.contains(k)
                        && let Some(prev) = st.last_live.insert(k.clone(), now)
                    {
                        let gap = now - prev;
                        if gap > Duration::from_millis(500) {
                            st.report.gaps.push((k.clone(), gap));
                        }
                        if gap > st.report.max_gap {
                            st.report.max_gap = gap;
                            st.report.worst = k.clone();
                        }
                    }
                }
            }
        });
        Self { nodes, state, task }
    }

    /// Replaces the base URL of node `i` (after a restart it listens on a new port).
    pub fn set_node(&self, i: usize, url: String) {
        self.nodes.lock().unwrap()[i] = url;
    }

    /// What has been seen so far.
    pub fn report(&self) -> OwnershipReport {
        let st = self.state.lock().unwrap();
        let mut r = st.report.clone();
        let now = Instant::now();
        r.open = st
            .last_live
            .iter()
            .map(|(k, t)| (k.clone(), now - *t))
            .filter(|(_, d)| *d > Duration::from_millis(500))
            .collect();
        r
    }
}

impl Drop for OwnershipWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every alert event published on the cluster's channel, as it arrives (subscribed before this
/// returns).
pub async fn listen_alert_events(prefix: &str) -> Arc<Mutex<Vec<Value>>> {
    use futures_util::StreamExt;
    let got = Arc::new(Mutex::new(Vec::new()));
    let client = redis::Client::open(crate::redis_url()).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.subscribe(Keys::new(prefix).alert_events())
        .await
        .unwrap();
    let sink = got.clone();
    tokio::spawn(async move {
        let mut s = ps.into_on_message();
        while let Some(m) = s.next().await {
            let p: String = m.get_payload().unwrap();
            sink.lock().unwrap().push(serde_json::from_str(&p).unwrap());
        }
    });
    got
}

/// `Ok(live instruments per node URL)` when every key of `keys` is ingested live by exactly one
/// of the nodes at `urls` and the slices differ by at most one; else what is not so yet.
pub async fn single_owner(
    http: &reqwest::Client,
    urls: &[String],
    keys: &BTreeSet<String>,
) -> Result<BTreeMap<String, usize>, String> {
    let mut owner: BTreeMap<String, &str> = BTreeMap::new();
    let mut sizes = BTreeMap::new();
    for u in urls {
        let v = get_json(http, &format!("{u}/api/v1/cluster/ingest")).await?;
        let list = v["instruments"].as_array().ok_or("no instruments")?;
        for i in list {
            let key = i["key"].as_str().unwrap_or_default().to_string();
            if i["live"] != true {
                return Err(format!("{key} not live yet on {u}"));
            }
            if let Some(other) = owner.insert(key.clone(), u) {
                return Err(format!("{key} ingested by {other} and {u}"));
            }
        }
        sizes.insert(u.clone(), list.len());
    }
    let got: BTreeSet<String> = owner.keys().cloned().collect();
    if &got != keys {
        return Err(format!("ingested {got:?}, expected {keys:?}"));
    }
    let (min, max) = (sizes.values().min(), sizes.values().max());
    if max.unwrap_or(&0) - min.unwrap_or(&0) > 1 {
        return Err(format!("unbalanced {sizes:?}"));
    }
    Ok(sizes)
}
