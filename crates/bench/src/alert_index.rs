//! `alert-index`: evaluation cost per trade and memory per alert of the node's alert index
//! ([`pricefeed_domain::alert::Index`]) with 1 M active alerts on 1 000 instruments, next to a
//! naive scan of the same alerts over the same trades, in one run. In process, no I/O: this is
//! what the alert consumer does under the ingest lock for every accepted trade.
//!
//! Alerts: per instrument 1 000 price alerts (`above`, `below`, `crosses_up`, `crosses_down` in
//! turn) with thresholds spread uniformly up to 20 % above (upward kinds) or below (downward
//! kinds) the starting price, one in five re-arming (60 s cooldown, 0.5 % hysteresis). Trades: a random walk per instrument (0.05 % per
//! trade), round-robin over the instruments, so a realistic few alerts fire and most do not.
//! Both evaluators must fire the same alerts; the bench fails otherwise.

use std::time::Instant;

use pricefeed_domain::alert::{Condition, Fired, Index, Kind, Metric, Rearm, Rule};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;

use crate::report::{Table, percentile};

/// Resident memory of this process (`VmRSS`), bytes: the index's cost including allocator
/// overhead, which is what a node pays.
fn live_bytes() -> isize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<isize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Instruments.
    #[arg(long, default_value_t = 1_000)]
    pub instruments: usize,
    /// Alerts per instrument.
    #[arg(long, default_value_t = 1_000)]
    pub per_instrument: usize,
    /// Trades evaluated (round-robin over the instruments).
    #[arg(long, default_value_t = 2_000_000)]
    pub trades: usize,
    /// Largest price move per trade, percent (uniform ±).
    #[arg(long, default_value_t = 0.05)]
    pub step_pct: f64,
}

const KINDS: [Kind; 4] = [Kind::Above, Kind::Below, Kind::CrossesUp, Kind::CrossesDown];
const COOLDOWN_MS: u64 = 60_000;

fn rules(a: &Args, rng: &mut ChaCha8Rng, base: &[Decimal]) -> Vec<Vec<Rule>> {
    let rearm = Rearm {
        cooldown_ms: COOLDOWN_MS,
        hysteresis_pct: Decimal::new(5, 1),
    };
    let mut id = 0i64;
    base.iter()
        .map(|p| {
            (0..a.per_instrument)
                .map(|k| {
                    id += 1;
                    // Upward alerts above the price, downward ones below it, as people set them
                    // (one already past its threshold would fire once and be gone).
                    let kind = KINDS[k % 4];
                    let up = matches!(kind, Kind::Above | Kind::CrossesUp);
                    let away = Decimal::new(rng.random_range(1..=2_000), 4);
                    let spread = if up { away } else { -away };
                    Rule {
                        id,
                        user_id: id % 10_000,
                        version: 1,
                        cond: Condition {
                            kind,
                            threshold: (p * (Decimal::ONE + spread)).round_dp(2),
                            interval: None,
                            window: None,
                        },
                        rearm: (k % 5 == 0).then_some(rearm),
                        armed: true,
                        last_fired_ms: None,
                    }
                })
                .collect()
        })
        .collect()
}

/// The naive evaluator: every alert of the instrument checked on every trade (same rules as
/// the index: crossings need the near side first, re-arming after hysteresis and cooldown).
#[derive(Debug, Clone, Copy, PartialEq)]
enum St {
    Armed,
    Waiting,
    Cooling(i64),
    Done,
}

struct Naive {
    rule: Rule,
    st: St,
    fired_at: i64,
}

fn naive_observe(alerts: &mut [Naive], prev: Option<Decimal>, v: Decimal, now: i64) -> usize {
    let mut n = 0;
    for a in alerts.iter_mut() {
        let c = a.rule.cond;
        let up = !matches!(c.kind, Kind::Below | Kind::CrossesDown);
        let edge = matches!(c.kind, Kind::CrossesUp | Kind::CrossesDown);
        let t = c.threshold;
        if let St::Cooling(u) = a.st
            && u <= now
        {
            let past = prev.is_some_and(|p| if up { p >= t } else { p <= t });
            a.st = if edge && past { St::Waiting } else { St::Armed };
        }
        if a.st == St::Waiting {
            let level = match a.rule.rearm {
                Some(r) if a.fired_at != i64::MIN => {
                    let f = r.hysteresis_pct / Decimal::ONE_HUNDRED;
                    if up {
                        t * (Decimal::ONE - f)
                    } else {
                        t * (Decimal::ONE + f)
                    }
                }
                _ => t,
            };
            if if up { v < level } else { v > level } {
                a.st = if a.fired_at == i64::MIN || a.fired_at + COOLDOWN_MS as i64 <= now {
                    St::Armed
                } else {
                    St::Cooling(a.fired_at + COOLDOWN_MS as i64)
                };
                continue;
            }
        }
        if a.st == St::Armed && (if up { v >= t } else { v <= t }) {
            n += 1;
            if a.rule.rearm.is_some() {
                a.st = St::Waiting;
                a.fired_at = now;
            } else {
                a.st = St::Done;
            }
        }
    }
    n
}

pub fn run(a: &Args) -> anyhow::Result<Table> {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let base: Vec<Decimal> = (0..a.instruments)
        .map(|i| Decimal::from(100 + (i as i64 % 50) * 37))
        .collect();
    let all = rules(a, &mut rng, &base);
    let n_alerts = a.instruments * a.per_instrument;

    // Trades, generated up front.
    let mut price: Vec<f64> = base
        .iter()
        .map(|p| p.to_string().parse().unwrap())
        .collect();
    let mut trades: Vec<(u32, Decimal, i64)> = Vec::with_capacity(a.trades);
    for k in 0..a.trades {
        let i = k % a.instruments;
        // f64 only shapes the walk; each price is an exact two-decimal Decimal.
        price[i] *= 1.0 + (rng.random::<f64>() - 0.5) * 2.0 * a.step_pct / 100.0;
        let p = Decimal::from_f64_retain(price[i])
            .unwrap_or(Decimal::ONE)
            .round_dp(2);
        trades.push((i as u32, p, 1_767_225_600_000 + k as i64));
    }

    // The index: memory measured by the counting allocator around its construction.
    let before = live_bytes();
    let mut idx: Vec<Index> = Vec::with_capacity(a.instruments);
    for (i, rs) in all.iter().enumerate() {
        let mut ix = Index::new();
        ix.reserve(rs.len());
        ix.seed(Metric::Price, base[i]);
        for r in rs {
            ix.upsert(*r, 0);
        }
        idx.push(ix);
    }
    let index_bytes = live_bytes() - before;
    let before = live_bytes();
    let mut naive: Vec<Vec<Naive>> = all
        .iter()
        .zip(&base)
        .map(|(rs, b)| {
            rs.iter()
                .map(|r| {
                    // A crossing needs the price on the near side first (as the index does
                    // with the seeded price).
                    let t = r.cond.threshold;
                    let past = match r.cond.kind {
                        Kind::CrossesUp => *b >= t,
                        Kind::CrossesDown => *b <= t,
                        _ => false,
                    };
                    Naive {
                        rule: *r,
                        st: if past { St::Waiting } else { St::Armed },
                        fired_at: i64::MIN,
                    }
                })
                .collect()
        })
        .collect();
    let naive_bytes = live_bytes() - before;
    let mut prev: Vec<Option<Decimal>> = base.iter().map(|p| Some(*p)).collect();

    const BATCH: usize = 1_000;
    let (mut fired, mut rearmed): (Vec<Fired>, Vec<i64>) = (Vec::new(), Vec::new());
    let mut idx_batches = Vec::new();
    let mut naive_batches = Vec::new();
    let (mut idx_fired, mut naive_fired) = (0usize, 0usize);
    for chunk in trades.chunks(BATCH) {
        let t0 = Instant::now();
        for &(i, p, ts) in chunk {
            idx[i as usize].observe(Metric::Price, p, ts, &mut fired, &mut rearmed);
            idx_fired += fired.len();
            fired.clear();
            rearmed.clear();
        }
        idx_batches.push(t0.elapsed().as_nanos() as f64 / chunk.len() as f64);
        let t0 = Instant::now();
        for &(i, p, ts) in chunk {
            let i = i as usize;
            naive_fired += naive_observe(&mut naive[i], prev[i], p, ts);
            prev[i] = Some(p);
        }
        naive_batches.push(t0.elapsed().as_nanos() as f64 / chunk.len() as f64);
    }
    anyhow::ensure!(
        idx_fired == naive_fired,
        "the index fired {idx_fired} alerts, the naive scan {naive_fired}"
    );
    let heap_estimate: usize = idx.iter().map(Index::heap_bytes).sum();

    idx_batches.sort_by(f64::total_cmp);
    naive_batches.sort_by(f64::total_cmp);
    let (i50, i99) = (
        percentile(&idx_batches, 50.0),
        percentile(&idx_batches, 99.0),
    );
    let (n50, n99) = (
        percentile(&naive_batches, 50.0),
        percentile(&naive_batches, 99.0),
    );
    let per_alert = index_bytes as f64 / n_alerts as f64;
    let mut t = Table::new(
        "alert-index",
        &format!(
            "{} alerts on {} instruments ({} each, 1 in 5 re-arming), {} trades round-robin in batches of {BATCH}; one thread, release build",
            n_alerts, a.instruments, a.per_instrument, a.trades
        ),
    );
    t.row(
        "alerts fired (index = naive)",
        format!(
            "{idx_fired} ({:.2} per 1 000 trades)",
            idx_fired as f64 * 1000.0 / a.trades as f64
        ),
    );
    t.row(
        "**index: ns per trade** (median / p99 of batches)",
        format!("**{i50:.0}** / {i99:.0}"),
    );
    t.row(
        "naive scan: ns per trade (median / p99 of batches)",
        format!("{n50:.0} / {n99:.0}"),
    );
    t.row(
        "index / naive (median)",
        format!("{:.4} ({:.0}× faster)", i50 / n50, n50 / i50),
    );
    t.row(
        "**index memory per alert** (resident memory grown while building it)",
        format!(
            "**{per_alert:.0} B** ({:.1} MB in all; the index's own estimate {:.0} B/alert)",
            index_bytes as f64 / 1e6,
            heap_estimate as f64 / n_alerts as f64
        ),
    );
    t.row(
        "naive memory per alert (a Vec of rules and states)",
        format!("{:.0} B", naive_bytes as f64 / n_alerts as f64),
    );
    t.verdict(format!(
        "Targets: ≤ 1 µs per trade (median) — {}; ≤ 200 B per alert — {}.",
        if i50 <= 1_000.0 {
            "**met**"
        } else {
            "**missed**"
        },
        if per_alert <= 200.0 {
            "**met**"
        } else {
            "**missed**"
        }
    ));
    Ok(t)
}
