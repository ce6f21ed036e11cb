//! Alert conditions and the per-instrument evaluation index.
//!
//! **Conditions** watch one *metric* of an instrument: the last trade price (`above`, `below`,
//! `crosses_up`, `crosses_down`), a rolling VWAP (`vwap_above`, `vwap_below` with an
//! `interval`), the largest move within a window in percent (`move_pct` with a `window`, seed
//! 003's spikes and dips), or how many standard deviations the price is from its 24 h mean
//! (`zscore`). Each fires when its metric reaches the threshold in its direction.
//!
//! **Arming.** An alert fires only while *armed*. `above`/`below` start armed (a price already
//! past the threshold fires on the next trade); `crosses_*` start armed only when the metric is
//! on the other side, so they fire on an actual crossing. A one-shot alert (the default) is done
//! after firing. A re-arming alert is disarmed after firing and armed again only when the metric
//! has gone back past the threshold by the hysteresis (`threshold × (1 ∓ hysteresis %)`) *and*
//! the cooldown has passed, so a price oscillating around the threshold cannot mail-bomb.
//!
//! **Index.** Per metric, armed alerts sit in ordered sets by threshold: a new value fires
//! exactly the alerts whose threshold it passed (`range(..=value)` for upward ones), and alerts
//! waiting to re-arm sit in ordered sets by re-arm level. So evaluation costs a few ordered-set
//! lookups per value plus the alerts that actually fire or re-arm, however many alerts do not.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::bucket::Span;

/// What an alert compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Above,
    Below,
    CrossesUp,
    CrossesDown,
    VwapAbove,
    VwapBelow,
    MovePct,
    Zscore,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Above => "above",
            Kind::Below => "below",
            Kind::CrossesUp => "crosses_up",
            Kind::CrossesDown => "crosses_down",
            Kind::VwapAbove => "vwap_above",
            Kind::VwapBelow => "vwap_below",
            Kind::MovePct => "move_pct",
            Kind::Zscore => "zscore",
        }
    }
}

/// A condition as the API takes and stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Price or VWAP level; the move in percent for `move_pct`; k for `zscore`.
    pub threshold: Decimal,
    /// VWAP interval (`vwap_*` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Span>,
    /// Window of the move (`move_pct` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Span>,
}

/// Why a condition was refused; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {msg}")]
pub struct InvalidCondition {
    pub field: &'static str,
    pub msg: String,
}

fn bad(field: &'static str, msg: impl Into<String>) -> InvalidCondition {
    InvalidCondition {
        field,
        msg: msg.into(),
    }
}

impl Condition {
    /// Checks the parameters a kind needs; `vwap_intervals` are the configured VWAP intervals.
    pub fn validate(&self, vwap_intervals: &[Span]) -> Result<(), InvalidCondition> {
        if self.threshold <= Decimal::ZERO {
            return Err(bad("threshold", "must be positive"));
        }
        match self.kind {
            Kind::VwapAbove | Kind::VwapBelow => match self.interval {
                Some(i) if vwap_intervals.contains(&i) => {}
                _ => {
                    return Err(bad(
                        "interval",
                        format!(
                            "a VWAP condition needs an interval, one of {}",
                            vwap_intervals
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            },
            _ if self.interval.is_some() => {
                return Err(bad("interval", "only VWAP conditions take an interval"));
            }
            _ => {}
        }
        match self.kind {
            Kind::MovePct => {
                match self.window {
                    Some(w) if w.secs() >= 60 && w.ms() <= Span::DAY.ms() && w.secs() % 60 == 0 => {
                    }
                    _ => {
                        return Err(bad(
                            "window",
                            "move_pct needs a window of whole minutes, 1m to 1d",
                        ));
                    }
                }
                if self.threshold > Decimal::ONE_THOUSAND {
                    return Err(bad("threshold", "a move is at most 1000 %"));
                }
            }
            _ if self.window.is_some() => {
                return Err(bad("window", "only move_pct takes a window"));
            }
            Kind::Zscore if self.threshold > Decimal::ONE_HUNDRED => {
                return Err(bad("threshold", "k is at most 100"));
            }
            _ => {}
        }
        Ok(())
    }

    pub fn metric(&self) -> Metric {
        match self.kind {
            Kind::Above | Kind::Below | Kind::CrossesUp | Kind::CrossesDown => Metric::Price,
            Kind::VwapAbove | Kind::VwapBelow => Metric::Vwap(
                self.interval
                    .unwrap_or(Span::from_secs(300).expect("positive")),
            ),
            Kind::MovePct => Metric::Move(self.window.unwrap_or(Span::HOUR)),
            Kind::Zscore => Metric::Z,
        }
    }

    fn up(&self) -> bool {
        !matches!(self.kind, Kind::Below | Kind::CrossesDown | Kind::VwapBelow)
    }

    /// Whether it fires on a crossing (rather than on a level).
    pub fn edge(&self) -> bool {
        matches!(self.kind, Kind::CrossesUp | Kind::CrossesDown)
    }
}

/// Re-arming after a firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rearm {
    /// At least this long between two firings.
    pub cooldown_ms: u64,
    /// The metric must go back past the threshold by this much (percent of it) first.
    pub hysteresis_pct: Decimal,
}

impl Rearm {
    pub fn validate(&self) -> Result<(), InvalidCondition> {
        if !(1_000..=30 * 86_400_000).contains(&self.cooldown_ms) {
            return Err(bad(
                "rearm.cooldown_ms",
                "must be between 1000 and 2592000000 (30 days)",
            ));
        }
        if self.hysteresis_pct < Decimal::ZERO || self.hysteresis_pct > Decimal::from(50) {
            return Err(bad("rearm.hysteresis_pct", "must be between 0 and 50"));
        }
        Ok(())
    }
}

/// The value a condition watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Price,
    Vwap(Span),
    /// Largest move within the window, percent (up from the low or down from the high).
    Move(Span),
    /// |price − mean| / σ over the 24 h closes.
    Z,
}

/// An alert as the index needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub id: i64,
    pub user_id: i64,
    pub version: i64,
    pub cond: Condition,
    pub rearm: Option<Rearm>,
    /// Persisted arming (false while a re-arming alert waits to re-arm).
    pub armed: bool,
    /// Last firing, ms (for the cooldown after a restart).
    pub last_fired_ms: Option<i64>,
}

/// One firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    pub alert_id: i64,
    pub user_id: i64,
    pub version: i64,
    pub cond: Condition,
    pub observed: Decimal,
    /// Done after this (one-shot), rather than waiting to re-arm.
    pub one_shot: bool,
}

/// Where an alert is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Armed,
    /// Waiting for the metric to go back past the threshold (a crossing's first side).
    WaitThreshold,
    /// Waiting for the metric to go back past the re-arm level (threshold ∓ hysteresis).
    WaitRearm,
    /// Back past the level; armed at `last_fired_ms + cooldown_ms`.
    Cooling,
}

/// One alert as the index keeps it: 80 bytes, since a node may hold millions.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: i64,
    user_id: i64,
    version: i64,
    /// `i64::MIN` when it never fired.
    last_fired_ms: i64,
    threshold: Decimal,
    /// Re-arm level, threshold × (1 ∓ hysteresis %), for re-arming alerts.
    rearm_level: Decimal,
    /// The VWAP interval or the move window, seconds; 0 when the kind takes none.
    span_s: i64,
    /// 0 for a one-shot alert.
    cooldown_ms: u32,
    kind: Kind,
    state: State,
    rearm: bool,
}

impl Entry {
    fn new(r: &Rule) -> Self {
        let span_s = r.cond.interval.or(r.cond.window).map_or(0, |s| s.secs());
        let (rearm_level, cooldown_ms) = match r.rearm {
            Some(re) => (
                rearm_level(&r.cond, &re),
                u32::try_from(re.cooldown_ms).unwrap_or(u32::MAX),
            ),
            None => (r.cond.threshold, 0),
        };
        Self {
            id: r.id,
            user_id: r.user_id,
            version: r.version,
            last_fired_ms: r.last_fired_ms.unwrap_or(i64::MIN),
            threshold: r.cond.threshold,
            rearm_level,
            span_s,
            cooldown_ms,
            kind: r.cond.kind,
            state: State::Armed,
            rearm: r.rearm.is_some(),
        }
    }

    fn cond(&self) -> Condition {
        let span = Span::from_secs(self.span_s);
        Condition {
            kind: self.kind,
            threshold: self.threshold,
            interval: matches!(self.kind, Kind::VwapAbove | Kind::VwapBelow)
                .then_some(span)
                .flatten(),
            window: matches!(self.kind, Kind::MovePct).then_some(span).flatten(),
        }
    }

    fn up(&self) -> bool {
        !matches!(self.kind, Kind::Below | Kind::CrossesDown | Kind::VwapBelow)
    }

    fn edge(&self) -> bool {
        matches!(self.kind, Kind::CrossesUp | Kind::CrossesDown)
    }

    /// The set key while waiting.
    fn level(&self) -> Decimal {
        match self.state {
            State::WaitRearm => self.rearm_level,
            _ => self.threshold,
        }
    }

    fn cooled_at(&self) -> i64 {
        self.last_fired_ms
            .saturating_add(i64::from(self.cooldown_ms))
    }
}

/// Ordered sets of one metric, with their bounds cached so that a value that fires and re-arms
/// nothing (nearly every trade) costs four comparisons and no tree walk.
#[derive(Debug, Default)]
struct Ladder {
    up_armed: BTreeSet<(Decimal, i64)>,
    down_armed: BTreeSet<(Decimal, i64)>,
    /// Disarmed upward alerts, by the level the metric must fall below.
    up_waiting: BTreeSet<(Decimal, i64)>,
    /// Disarmed downward alerts, by the level the metric must rise above.
    down_waiting: BTreeSet<(Decimal, i64)>,
    last: Option<Decimal>,
    lowest_up_armed: Option<Decimal>,
    highest_down_armed: Option<Decimal>,
    highest_up_waiting: Option<Decimal>,
    lowest_down_waiting: Option<Decimal>,
}

impl Ladder {
    fn refresh(&mut self) {
        self.lowest_up_armed = self.up_armed.first().map(|k| k.0);
        self.highest_down_armed = self.down_armed.last().map(|k| k.0);
        self.highest_up_waiting = self.up_waiting.last().map(|k| k.0);
        self.lowest_down_waiting = self.down_waiting.first().map(|k| k.0);
    }

    /// Whether `v` fires or re-arms nothing here.
    fn quiet(&self, v: Decimal) -> bool {
        self.lowest_up_armed.is_none_or(|m| v < m)
            && self.highest_down_armed.is_none_or(|m| v > m)
            && self.highest_up_waiting.is_none_or(|m| v >= m)
            && self.lowest_down_waiting.is_none_or(|m| v <= m)
    }

    fn is_empty(&self) -> bool {
        self.up_armed.is_empty()
            && self.down_armed.is_empty()
            && self.up_waiting.is_empty()
            && self.down_waiting.is_empty()
    }

    fn place(&mut self, e: &Entry) {
        let up = e.up();
        match e.state {
            State::Armed if up => self.up_armed.insert((e.threshold, e.id)),
            State::Armed => self.down_armed.insert((e.threshold, e.id)),
            State::WaitThreshold | State::WaitRearm if up => {
                self.up_waiting.insert((e.level(), e.id))
            }
            State::WaitThreshold | State::WaitRearm => self.down_waiting.insert((e.level(), e.id)),
            State::Cooling => false,
        };
    }

    fn unplace(&mut self, e: &Entry) {
        let up = e.up();
        match e.state {
            State::Armed if up => self.up_armed.remove(&(e.threshold, e.id)),
            State::Armed => self.down_armed.remove(&(e.threshold, e.id)),
            State::WaitThreshold | State::WaitRearm if up => {
                self.up_waiting.remove(&(e.level(), e.id))
            }
            State::WaitThreshold | State::WaitRearm => self.down_waiting.remove(&(e.level(), e.id)),
            State::Cooling => false,
        };
    }
}

/// The alerts of one instrument.
#[derive(Debug, Default)]
pub struct Index {
    /// Per metric (an instrument has one to a few).
    ladders: Vec<(Metric, Ladder)>,
    /// Every alert, dense.
    slab: Vec<Entry>,
    /// (alert id, position in `slab`), sorted by id.
    ids: Vec<(i64, u32)>,
    /// (armed at, alert id) of cooling alerts.
    cooling: BinaryHeap<Reverse<(i64, i64)>>,
}

fn rearm_level(c: &Condition, r: &Rearm) -> Decimal {
    let f = r.hysteresis_pct / Decimal::ONE_HUNDRED;
    if c.up() {
        c.threshold * (Decimal::ONE - f)
    } else {
        c.threshold * (Decimal::ONE + f)
    }
}

fn entry_metric(e: &Entry) -> Metric {
    e.cond().metric()
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Room for `n` more alerts without growing (a whole instrument's alerts are loaded at once).
    pub fn reserve(&mut self, n: usize) {
        self.slab.reserve_exact(n);
        self.ids.reserve_exact(n);
    }

    /// The metrics any alert here watches (the caller computes the non-price ones per tick).
    pub fn metrics(&self) -> impl Iterator<Item = Metric> + '_ {
        self.ladders.iter().map(|(m, _)| *m)
    }

    /// Every indexed alert with its version.
    pub fn versions(&self) -> Vec<(i64, i64)> {
        self.slab.iter().map(|e| (e.id, e.version)).collect()
    }

    /// Whether `id` is indexed, and at which version.
    pub fn version(&self, id: i64) -> Option<i64> {
        self.pos(id).map(|p| self.slab[p].version)
    }

    fn pos(&self, id: i64) -> Option<usize> {
        self.ids
            .binary_search_by_key(&id, |x| x.0)
            .ok()
            .map(|i| self.ids[i].1 as usize)
    }

    fn ladder(&mut self, m: Metric) -> &mut Ladder {
        match self.ladders.iter().position(|(x, _)| *x == m) {
            Some(i) => &mut self.ladders[i].1,
            None => {
                self.ladders.push((m, Ladder::default()));
                &mut self.ladders.last_mut().expect("just pushed").1
            }
        }
    }

    fn ladder_if(&mut self, m: Metric) -> Option<&mut Ladder> {
        self.ladders
            .iter_mut()
            .find(|(x, _)| *x == m)
            .map(|(_, l)| l)
    }

    /// The current value of `metric` when none was observed yet (e.g. the price before the
    /// first trade this node sees), so crossing alerts added next know which side it is on.
    pub fn seed(&mut self, metric: Metric, value: Decimal) {
        let l = self.ladder(metric);
        if l.last.is_none() {
            l.last = Some(value);
        }
    }

    /// Adds or replaces an alert (an update arrives with a higher version; older ones are
    /// ignored). Returns false when ignored.
    pub fn upsert(&mut self, rule: Rule, now_ms: i64) -> bool {
        if self.version(rule.id).is_some_and(|v| v > rule.version) {
            return false;
        }
        self.remove(rule.id);
        let _ = now_ms;
        let mut e = Entry::new(&rule);
        let metric = rule.cond.metric();
        let l = self.ladder(metric);
        e.state = if !rule.armed {
            if rule.rearm.is_some() {
                State::WaitRearm
            } else {
                State::WaitThreshold
            }
        } else if e.edge()
            && l.last.is_none_or(|v| {
                if e.up() {
                    v >= e.threshold
                } else {
                    v <= e.threshold
                }
            })
        {
            // A crossing needs the metric on the other side first.
            State::WaitThreshold
        } else {
            State::Armed
        };
        l.place(&e);
        l.refresh();
        let at = self.ids.partition_point(|x| x.0 < rule.id);
        self.ids.insert(at, (rule.id, self.slab.len() as u32));
        self.slab.push(e);
        true
    }

    /// Removes an alert.
    pub fn remove(&mut self, id: i64) -> bool {
        let Ok(i) = self.ids.binary_search_by_key(&id, |x| x.0) else {
            return false;
        };
        let p = self.ids.remove(i).1 as usize;
        let e = self.slab.swap_remove(p);
        if p < self.slab.len() {
            // The last entry moved into `p`.
            let moved = self.slab[p].id;
            if let Ok(j) = self.ids.binary_search_by_key(&moved, |x| x.0) {
                self.ids[j].1 = p as u32;
            }
        }
        let metric = entry_metric(&e);
        if let Some(k) = self.ladders.iter().position(|(m, _)| *m == metric) {
            let l = &mut self.ladders[k].1;
            l.unplace(&e);
            l.refresh();
            if l.is_empty() && !self.slab.iter().any(|x| entry_metric(x) == metric) {
                self.ladders.swap_remove(k);
            }
        }
        true
    }

    /// A new value of `metric` at `now_ms`: alerts it re-arms are appended to `rearmed`, those
    /// it fires to `fired` (one-shot ones leave the index).
    pub fn observe(
        &mut self,
        metric: Metric,
        value: Decimal,
        now_ms: i64,
        fired: &mut Vec<Fired>,
        rearmed: &mut Vec<i64>,
    ) {
        self.release_cooled(now_ms, rearmed);
        let Some(l) = self.ladder_if(metric) else {
            return;
        };
        l.last = Some(value);
        if l.quiet(value) {
            return;
        }
        // Re-arm: upward alerts whose level the value fell below, downward ones it rose above
        // (strictly: a value sitting on a zero-hysteresis level re-arms nothing).
        use std::ops::Bound::{Excluded, Unbounded};
        let mut back: Vec<i64> = l
            .up_waiting
            .range((Excluded((value, i64::MAX)), Unbounded))
            .map(|k| k.1)
            .collect();
        back.extend(l.down_waiting.range(..(value, i64::MIN)).map(|k| k.1));
        // Fire: upward alerts at or below the value, downward ones at or above it.
        let mut hit: Vec<i64> = l
            .up_armed
            .range(..=(value, i64::MAX))
            .map(|k| k.1)
            .collect();
        hit.extend(l.down_armed.range((value, i64::MIN)..).map(|k| k.1));
        for id in back {
            let Some(p) = self.pos(id) else { continue };
            let e = &mut self.slab[p];
            let l = self
                .ladders
                .iter_mut()
                .find(|(m, _)| *m == metric)
                .map(|(_, l)| l)
                .expect("present");
            l.unplace(e);
            let until = if e.rearm && e.last_fired_ms != i64::MIN {
                e.cooled_at()
            } else {
                now_ms
            };
            if until <= now_ms {
                e.state = State::Armed;
                l.place(e);
                rearmed.push(id);
            } else {
                e.state = State::Cooling;
                self.cooling.push(Reverse((until, id)));
            }
        }
        let mut gone = Vec::new();
        for id in hit {
            let Some(p) = self.pos(id) else { continue };
            let e = &mut self.slab[p];
            let l = self
                .ladders
                .iter_mut()
                .find(|(m, _)| *m == metric)
                .map(|(_, l)| l)
                .expect("present");
            l.unplace(e);
            fired.push(Fired {
                alert_id: id,
                user_id: e.user_id,
                version: e.version,
                cond: e.cond(),
                observed: value,
                one_shot: !e.rearm,
            });
            if e.rearm {
                e.last_fired_ms = now_ms;
                e.state = State::WaitRearm;
                l.place(e);
            } else {
                gone.push(id);
            }
        }
        if let Some(l) = self.ladder_if(metric) {
            l.refresh();
        }
        for id in gone {
            self.remove(id);
        }
    }

    /// Arms alerts whose cooldown ended (call it on a timer too).
    pub fn release_cooled(&mut self, now_ms: i64, rearmed: &mut Vec<i64>) {
        while let Some(&Reverse((until, id))) = self.cooling.peek() {
            if until > now_ms {
                break;
            }
            self.cooling.pop();
            let Some(p) = self.pos(id) else {
                continue;
            };
            let e = self.slab[p];
            if e.state != State::Cooling || e.cooled_at() != until {
                continue;
            }
            let metric = entry_metric(&e);
            let l = self.ladder(metric);
            // A crossing suppressed by the cooldown is not fired late: if the metric is already
            // past the threshold, the alert waits for it to come back first.
            let past = e.edge()
                && l.last.is_some_and(|v| {
                    if e.up() {
                        v >= e.threshold
                    } else {
                        v <= e.threshold
                    }
                });
            let mut e2 = e;
            if past {
                e2.state = State::WaitThreshold;
            } else {
                e2.state = State::Armed;
                rearmed.push(id);
            }
            l.place(&e2);
            l.refresh();
            self.slab[p] = e2;
        }
    }

    /// Approximate heap bytes (for the memory figure).
    pub fn heap_bytes(&self) -> usize {
        let set =
            |s: &BTreeSet<(Decimal, i64)>| s.len() * (std::mem::size_of::<(Decimal, i64)>() + 8);
        self.slab.capacity() * std::mem::size_of::<Entry>()
            + self.ids.capacity() * std::mem::size_of::<(i64, u32)>()
            + self
                .ladders
                .iter()
                .map(|(_, l)| {
                    set(&l.up_armed)
                        + set(&l.down_armed)
                        + set(&l.up_waiting)
                        + set(&l.down_waiting)
                })
                .sum::<usize>()
            + self.cooling.capacity() * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(v: i64) -> Decimal {
        Decimal::from(v)
    }

    fn rule(id: i64, kind: Kind, t: i64, rearm: Option<Rearm>) -> Rule {
        Rule {
            id,
            user_id: 7,
            version: 1,
            cond: Condition {
                kind,
                threshold: d(t),
                interval: None,
                window: None,
            },
            rearm,
            armed: true,
            last_fired_ms: None,
        }
    }

    fn feed(ix: &mut Index, v: i64, now: i64) -> (Vec<i64>, Vec<i64>) {
        let (mut f, mut r) = (Vec::new(), Vec::new());
        ix.observe(Metric::Price, d(v), now, &mut f, &mut r);
        let mut ids: Vec<i64> = f.iter().map(|x| x.alert_id).collect();
        ids.sort();
        r.sort();
        (ids, r)
    }

    #[test]
    fn one_shot_levels_and_crossings() {
        let mut ix = Index::new();
        ix.upsert(rule(1, Kind::Above, 100, None), 0);
        ix.upsert(rule(2, Kind::Below, 90, None), 0);
        assert_eq!(feed(&mut ix, 95, 0).0, Vec::<i64>::new());
        // Crossing alerts created while the price is 95: 3 is below its threshold (armed), 4 is
        // above its threshold already (must see it drop below first... it is a crosses_down of
        // 99: armed only when the price is above 99, it is not).
        ix.upsert(rule(3, Kind::CrossesUp, 98, None), 0);
        ix.upsert(rule(4, Kind::CrossesDown, 99, None), 0);
        assert_eq!(feed(&mut ix, 98, 1).0, vec![3]);
        assert_eq!(feed(&mut ix, 101, 2).0, vec![1]);
        // 4 was waiting for the price to rise past 99: it did (101), now it can cross down.
        assert_eq!(feed(&mut ix, 99, 3).0, vec![4]);
        assert_eq!(feed(&mut ix, 50, 4).0, vec![2]);
        assert!(ix.is_empty(), "one-shot alerts are done");
    }

    #[test]
    fn rearm_needs_hysteresis_and_cooldown() {
        let mut ix = Index::new();
        let r = Rearm {
            cooldown_ms: 1_000,
            hysteresis_pct: Decimal::ONE, // re-arm below 99
        };
        ix.upsert(rule(1, Kind::Above, 100, Some(r)), 0);
        assert_eq!(feed(&mut ix, 100, 0).0, vec![1]);
        // Oscillating around 100 does not fire again.
        for (i, v) in [99, 100, 101, 100, 98, 100].iter().enumerate() {
            assert!(feed(&mut ix, *v, 10 + i as i64).0.is_empty());
        }
        // 98 went below the level (99) but the cooldown runs until 1 000: armed then.
        let mut re = Vec::new();
        ix.release_cooled(999, &mut re);
        assert!(re.is_empty());
        ix.release_cooled(1_000, &mut re);
        assert_eq!(re, vec![1]);
        assert_eq!(feed(&mut ix, 102, 1_001).0, vec![1]);
        // After the cooldown, going back to the level re-arms at once.
        assert_eq!(feed(&mut ix, 98, 5_000), (vec![], vec![1]));
        assert_eq!(feed(&mut ix, 100, 5_001).0, vec![1]);
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn updates_apply_in_version_order_and_remove_cleans_up() {
        let mut ix = Index::new();
        let mut a = rule(1, Kind::Above, 100, None);
        a.version = 2;
        ix.upsert(a, 0);
        let mut old = rule(1, Kind::Above, 50, None);
        old.version = 1;
        assert!(!ix.upsert(old, 0), "older version ignored");
        assert!(feed(&mut ix, 60, 0).0.is_empty());
        assert!(ix.remove(1));
        assert!(feed(&mut ix, 1_000, 0).0.is_empty());
        assert_eq!(ix.metrics().count(), 0);
    }

    #[test]
    fn conditions_validate_naming_the_field() {
        let iv = [Span::MINUTE];
        let c = |kind, t: i64, interval, window| Condition {
            kind,
            threshold: d(t),
            interval,
            window,
        };
        assert!(c(Kind::Above, 1, None, None).validate(&iv).is_ok());
        assert_eq!(
            c(Kind::Above, 0, None, None)
                .validate(&iv)
                .unwrap_err()
                .field,
            "threshold"
        );
        assert_eq!(
            c(Kind::VwapAbove, 1, None, None)
                .validate(&iv)
                .unwrap_err()
                .field,
            "interval"
        );
        assert!(
            c(Kind::VwapAbove, 1, Some(Span::MINUTE), None)
                .validate(&iv)
                .is_ok()
        );
        assert_eq!(
            c(Kind::Above, 1, Some(Span::MINUTE), None)
                .validate(&iv)
                .unwrap_err()
                .field,
            "interval"
        );
        assert_eq!(
            c(Kind::MovePct, 5, None, None)
                .validate(&iv)
                .unwrap_err()
                .field,
            "window"
        );
        assert!(
            c(Kind::MovePct, 5, None, Some(Span::HOUR))
                .validate(&iv)
                .is_ok()
        );
        assert_eq!(
            c(Kind::Zscore, 101, None, None)
                .validate(&iv)
                .unwrap_err()
                .field,
            "threshold"
        );
        let json = serde_json::to_string(&c(Kind::VwapBelow, 3, Some(Span::MINUTE), None)).unwrap();
        assert_eq!(
            json,
            r#"{"type":"vwap_below","threshold":"3","interval":"1m"}"#
        );
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Naive {
        Armed,
        Waiting,
        Cooling(i64),
        Done,
    }

    proptest! {
        /// The index fires exactly what a naive scan of every alert fires, value after value.
        #[test]
        fn matches_a_naive_scan(
            alerts in proptest::collection::vec((0u8..4, 1i64..50, any::<bool>()), 1..40),
            values in proptest::collection::vec((1i64..50, 1i64..900), 1..80),
        ) {
            let kinds = [Kind::Above, Kind::Below, Kind::CrossesUp, Kind::CrossesDown];
            let r = Rearm { cooldown_ms: 1_000, hysteresis_pct: Decimal::ZERO };
            let mut ix = Index::new();
            let mut naive: Vec<(Rule, Naive, i64)> = Vec::new();
            for (i, (k, t, re)) in alerts.iter().enumerate() {
                let ru = rule(i as i64, kinds[*k as usize], *t, re.then_some(r));
                ix.upsert(ru, 0);
                // Crossing alerts wait for the near side first (no value seen yet).
                let st = if ru.cond.edge() { Naive::Waiting } else { Naive::Armed };
                naive.push((ru, st, i64::MIN));
            }
            let mut prev: Option<Decimal> = None;
            let mut now = 0i64;
            for (step, (v, dt)) in values.iter().enumerate() {
                // Uneven steps: a cooldown (1 s) spans one to many values.
                now += dt;
                let (got, _) = feed(&mut ix, *v, now);
                let mut want = Vec::new();
                let val = d(*v);
                for (ru, st, last) in naive.iter_mut() {
                    let t = ru.cond.threshold;
                    let up = ru.cond.up();
                    if let Naive::Cooling(u) = *st && u <= now {
                        // A crossing alert fires only on an actual crossing: if the value before
                        // this one was already past the threshold, it waits for the near side.
                        let past = prev.is_some_and(|p| if up { p >= t } else { p <= t });
                        *st = if ru.cond.edge() && past { Naive::Waiting } else { Naive::Armed };
                    }
                    if *st == Naive::Waiting && (if up { val < t } else { val > t }) {
                        *st = if *last == i64::MIN || *last + 1_000 <= now {
                            Naive::Armed
                        } else {
                            Naive::Cooling(*last + 1_000)
                        };
                    }
                    if *st == Naive::Armed && (if up { val >= t } else { val <= t }) {
                        want.push(ru.id);
                        if ru.rearm.is_none() {
                            *st = Naive::Done;
                        } else {
                            *st = Naive::Waiting;
                            *last = now;
                        }
                    }
                }
                want.sort();
                prev = Some(val);
                prop_assert_eq!(&got, &want, "value {} at step {}", v, step);
            }
        }
    }
}
