//! Alerts checked against the simulator's ground truth, shared by the alert test and the drills:
//! a signed-in user, a ladder of one-shot crossing alerts around a price plus re-arming ones, and
//! the end-of-run check that every trigger Postgres committed is a real crossing by the trade it
//! names, no one-shot alert fired twice, no crossing after an alert existed was missed, re-arming
//! alerts kept their cooldown, and every pushed event is a committed trigger pushed once.

use std::collections::{BTreeMap, HashMap, HashSet};

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::Proc;
use crate::drill::{TruthTrade, first_crossing, is_crossing};

/// Simulator overrides for alert runs (with [`crate::Sim::start_small`]): two underlyings, one
/// hot pair, prices 20× as volatile (about 1.4 % a minute on BTC), so thresholds near the price
/// are crossed within the run, and history deep enough that the truth covers the whole run.
pub const VOLATILE_SIM: &[(&str, &str)] = &[
    ("UNDERLYINGS", "2"),
    ("HOT_SYMBOLS", "1"),
    ("VOL_SCALE", "20.0"),
    ("HISTORY_DEPTH_HOT", "400000"),
];

/// A signed-in user of the alerts API.
pub struct User {
    pub http: reqwest::Client,
    pub token: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("token", &"<redacted>")
            .finish()
    }
}

impl User {
    /// Registers and signs in `email` through `node`.
    pub async fn sign_up(http: &reqwest::Client, node: &Proc, email: &str) -> Self {
        Self {
            http: http.clone(),
            token: crate::sign_up(http, node, email, "correct horse battery").await,
        }
    }

    /// `POST /api/v1/alerts` with `body`; asserts 201 and returns the alert.
    pub async fn create(&self, node: &Proc, body: Value) -> Value {
        let r = self
            .http
            .post(node.url("/api/v1/alerts"))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{body}");
        r.json().await.unwrap()
    }

    /// An authenticated `GET path`; asserts 200.
    pub async fn get(&self, node: &Proc, path: &str) -> Value {
        let r = self
            .http
            .get(node.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }
}

/// How to lay the ladder out around the price.
#[derive(Debug, Clone)]
pub struct LadderSpec {
    /// Spot symbol the alerts watch.
    pub symbol: &'static str,
    /// One-shot rungs per side; rung `i` sits `i × step_bp` basis points from the price.
    pub rungs: i64,
    pub step_bp: i64,
    /// Re-arming `crosses_up` alerts at `k × 2` bp for `k` in `-rearm_span..=rearm_span`.
    pub rearm_span: i64,
    pub rearm_cooldown_ms: i64,
    /// Channels of the one-shot alerts (re-arming ones push on the WebSocket only).
    pub channels: &'static [&'static str],
}

/// The alerts created, as `(id, up, threshold, created ms)` and `(id, threshold, created ms)`.
#[derive(Debug, Clone)]
pub struct Ladder {
    pub spec: LadderSpec,
    pub one_shot: Vec<(i64, bool, Decimal, i64)>,
    pub rearms: Vec<(i64, Decimal, i64)>,
}

/// What [`Ladder::check`] counted.
#[derive(Debug, Clone, Default)]
pub struct LadderReport {
    pub fired: usize,
    pub quiet: usize,
    pub refired: usize,
    pub pushed: usize,
    /// Nodes that committed triggers.
    pub by_node: Vec<String>,
}

impl Ladder {
    /// Creates the ladder around `price` through `node`.
    pub async fn create(user: &User, node: &Proc, price: Decimal, spec: LadderSpec) -> Self {
        let mut one_shot = Vec::new();
        for i in 1..=spec.rungs {
            let step = Decimal::new(spec.step_bp * i, 4);
            for (up, thr) in [
                (true, price * (Decimal::ONE + step)),
                (false, price * (Decimal::ONE - step)),
            ] {
                let thr = thr.round_dp(2);
                let a = user
                    .create(
                        node,
                        json!({"symbol": spec.symbol,
                               "condition": if up { "crosses_up" } else { "crosses_down" },
                               "threshold": thr.to_string(), "channels": spec.channels}),
                    )
                    .await;
                one_shot.push((
                    a["id"].as_i64().unwrap(),
                    up,
                    thr,
                    a["created_at"].as_i64().unwrap(),
                ));
            }
        }
        let mut rearms = Vec::new();
        for k in -spec.rearm_span..=spec.rearm_span {
            let thr = (price * (Decimal::ONE + Decimal::new(2 * k, 4))).round_dp(2);
            let a = user
                .create(
                    node,
                    json!({"symbol": spec.symbol, "condition": "crosses_up",
                           "threshold": thr.to_string(), "channels": ["websocket"],
                           "rearm": {"cooldown_ms": spec.rearm_cooldown_ms, "hysteresis_pct": "0.01"}}),
                )
                .await;
            rearms.push((
                a["id"].as_i64().unwrap(),
                thr,
                a["created_at"].as_i64().unwrap(),
            ));
        }
        Self {
            spec,
            one_shot,
            rearms,
        }
    }

    /// Checks the committed triggers against `truth` (crossings that started before `end_ms`
    /// and at least 2 s after an alert was created must have fired) and, when given, the pushed
    /// `events`. Panics with the first violation.
    pub async fn check(
        &self,
        pool: &sqlx::PgPool,
        truth: &[TruthTrade],
        events: Option<&[Value]>,
        end_ms: i64,
    ) -> LadderReport {
        let by_id: HashMap<u64, usize> = truth.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        let rows: Vec<(i64, i64, Decimal, i64, String)> = sqlx::query_as(
            "SELECT alert_id, trade_id, price, trade_ts_ms, node_id FROM alert_triggers \
             ORDER BY trade_id",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let mut triggers: BTreeMap<i64, Vec<(u64, Decimal, i64, String)>> = BTreeMap::new();
        for (a, t, p, ts, n) in rows {
            triggers.entry(a).or_default().push((t as u64, p, ts, n));
        }
        let mut r = LadderReport::default();
        for (id, up, thr, created_ms) in &self.one_shot {
            let got = triggers.get(id).cloned().unwrap_or_default();
            assert!(
                got.len() <= 1,
                "one-shot alert {id} fired {} times: {got:?}",
                got.len()
            );
            // Propagation to the owner takes well under 2 s; crossings after that must fire.
            let must =
                first_crossing(truth, *up, *thr, created_ms + 2_000).filter(|t| t.time < end_ms);
            match (got.first(), must) {
                (Some((tid, price, _, _)), must) => {
                    is_crossing(truth, &by_id, *up, *thr, *tid, *price)
                        .unwrap_or_else(|e| panic!("alert {id}: {e}"));
                    if let Some(m) = must {
                        assert!(
                            *tid <= m.id,
                            "alert {id} fired on {tid}, after the crossing {}",
                            m.id
                        );
                    }
                    r.fired += 1;
                }
                (None, Some(m)) => panic!(
                    "alert {id} ({} {thr}) missed the crossing by trade {} at {} (created {created_ms})",
                    if *up { "up" } else { "down" },
                    m.id,
                    m.time
                ),
                (None, None) => r.quiet += 1,
            }
        }
        for (id, thr, created_ms) in &self.rearms {
            let re = triggers.get(id).cloned().unwrap_or_default();
            for (tid, price, _, _) in &re {
                is_crossing(truth, &by_id, true, *thr, *tid, *price)
                    .unwrap_or_else(|e| panic!("re-arming alert {id}: {e}"));
            }
            for w in re.windows(2) {
                assert!(
                    w[0].0 < w[1].0,
                    "alert {id} fired twice on one trade: {re:?}"
                );
                assert!(
                    w[1].2 - w[0].2 >= self.spec.rearm_cooldown_ms,
                    "alert {id} fired within its cooldown: {re:?}"
                );
            }
            if let Some(m) =
                first_crossing(truth, true, *thr, created_ms + 2_000).filter(|t| t.time < end_ms)
            {
                assert!(
                    re.first().is_some_and(|f| f.0 <= m.id),
                    "re-arming alert {id} missed its first crossing (trade {}): {re:?}",
                    m.id
                );
            }
            r.refired += re.len();
        }
        if let Some(events) = events {
            let mut seen = HashSet::new();
            for e in events {
                assert!(
                    seen.insert(e["trigger_id"].as_i64().unwrap()),
                    "pushed twice: {e}"
                );
                let a = e["alert_id"].as_i64().unwrap();
                assert!(
                    triggers
                        .get(&a)
                        .is_some_and(|v| v.iter().any(|t| t.0 == e["trade_id"].as_u64().unwrap())),
                    "event without a committed trigger: {e}"
                );
            }
            r.pushed = events.len();
        }
        let mut nodes: Vec<String> = triggers.values().flatten().map(|t| t.3.clone()).collect();
        nodes.sort();
        nodes.dedup();
        r.by_node = nodes;
        r
    }
}
