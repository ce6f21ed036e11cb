//! Fault injection on WebSocket delivery (REST is never faulted, so it stays the ground truth).
//!
//! A [`FaultSpec`] gives, per kind, the probability that one delivered event triggers it. Specs
//! live in a shared [`FaultTable`] (one global spec, optional per-symbol specs that replace the
//! global one for that symbol) which the control API swaps at run time; connections notice the
//! change through a version counter, so the hot path does not take a lock per event.
//! Each connection draws its decisions from its own seeded RNG, so a fixed seed and a fixed
//! event sequence give the same faults.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Rates (0.0–1.0, per delivered event) and parameters of each fault kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSpec {
    /// Event silently not sent.
    pub drop: f64,
    /// Event sent twice in a row.
    pub duplicate: f64,
    /// Event held back and sent after the next event of the connection.
    pub reorder: f64,
    /// A truncated, unparsable text frame is sent instead of the event.
    pub corrupt: f64,
    /// Starts a silent stall: the affected events (the symbol's, or all for a global spec) are
    /// swallowed for `stall_ms` while the socket stays open and pings continue.
    pub stall: f64,
    /// Length of one stall.
    pub stall_ms: u64,
    /// The TCP connection is dropped without a close frame.
    pub disconnect: f64,
    /// Event delivered `delay_ms` late (later events overtake it).
    pub delay: f64,
    /// How late a delayed event is delivered.
    pub delay_ms: u64,
}

impl Default for FaultSpec {
    fn default() -> Self {
        Self {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            stall: 0.0,
            stall_ms: 2_000,
            disconnect: 0.0,
            delay: 0.0,
            delay_ms: 500,
        }
    }
}

impl FaultSpec {
    /// Checks ranges; the error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        for (name, r) in [
            ("drop", self.drop),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
            ("stall", self.stall),
            ("disconnect", self.disconnect),
            ("delay", self.delay),
        ] {
            if !(r.is_finite() && (0.0..=1.0).contains(&r)) {
                return Err((name, "must be a probability between 0.0 and 1.0"));
            }
        }
        if self.stall_ms > 3_600_000 {
            return Err(("stall_ms", "must be at most 3600000"));
        }
        if self.delay_ms > 600_000 {
            return Err(("delay_ms", "must be at most 600000"));
        }
        Ok(())
    }

    pub fn is_off(&self) -> bool {
        self.drop == 0.0
            && self.duplicate == 0.0
            && self.reorder == 0.0
            && self.corrupt == 0.0
            && self.stall == 0.0
            && self.disconnect == 0.0
            && self.delay == 0.0
    }
}

/// The faults in effect: global plus per-symbol replacements (keys in upper case).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultSnapshot {
    pub global: FaultSpec,
    pub symbols: BTreeMap<String, FaultSpec>,
}

impl FaultSnapshot {
    pub fn spec_for(&self, symbol: &str) -> &FaultSpec {
        self.symbols.get(symbol).unwrap_or(&self.global)
    }

    pub fn all_off(&self) -> bool {
        self.global.is_off() && self.symbols.values().all(FaultSpec::is_off)
    }
}

/// Counters of injected faults, for the control API, metrics and tests.
#[derive(Debug, Default)]
pub struct FaultStats {
    pub drop: AtomicU64,
    pub duplicate: AtomicU64,
    pub reorder: AtomicU64,
    pub corrupt: AtomicU64,
    pub stall: AtomicU64,
    pub disconnect: AtomicU64,
    pub delay: AtomicU64,
}

impl FaultStats {
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BTreeMap::from([
            ("drop", l(&self.drop)),
            ("duplicate", l(&self.duplicate)),
            ("reorder", l(&self.reorder)),
            ("corrupt", l(&self.corrupt)),
            ("stall", l(&self.stall)),
            ("disconnect", l(&self.disconnect)),
            ("delay", l(&self.delay)),
        ])
    }
}

/// Shared, run-time editable fault table.
#[derive(Debug)]
pub struct FaultTable {
    current: RwLock<Arc<FaultSnapshot>>,
    version: AtomicU64,
    pub stats: FaultStats,
}

impl FaultTable {
    pub fn new(initial: FaultSnapshot) -> Self {
        Self {
            current: RwLock::new(Arc::new(normalise(initial))),
            version: AtomicU64::new(1),
            stats: FaultStats::default(),
        }
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<FaultSnapshot> {
        self.current.read().expect("fault lock").clone()
    }

    /// Applies `f` to a copy of the table and publishes it.
    pub fn update(&self, f: impl FnOnce(&mut FaultSnapshot)) -> Arc<FaultSnapshot> {
        let mut guard = self.current.write().expect("fault lock");
        let mut next = (**guard).clone();
        f(&mut next);
        let next = Arc::new(normalise(next));
        *guard = next.clone();
        self.version.fetch_add(1, Ordering::AcqRel);
        next
    }
}

fn normalise(mut s: FaultSnapshot) -> FaultSnapshot {
    s.symbols = s
        .symbols
        .into_iter()
        .map(|(k, v)| (k.to_ascii_uppercase(), v))
        .collect();
    s
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Send,
    Drop,
    Duplicate,
    /// Hold until the next event has been sent.
    Reorder,
    Corrupt,
    /// Swallow, and suppress this scope for the given milliseconds.
    Stall(u64),
    Disconnect,
    Delay(u64),
}

/// Per-connection decision maker.
#[derive(Debug)]
pub struct Injector {
    rng: ChaCha8Rng,
}

impl Injector {
    pub fn new(seed: u64, conn_no: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed ^ conn_no.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }

    /// Rolls each enabled kind in a fixed order; the first hit wins. Disabled kinds (rate 0)
    /// draw nothing, so a table with faults off costs no RNG work on the hot path.
    pub fn decide(&mut self, spec: &FaultSpec, stats: &FaultStats) -> Action {
        let hit = |rate: f64, rng: &mut ChaCha8Rng| rate > 0.0 && rng.random::<f64>() < rate;
        let (action, counter) = if hit(spec.disconnect, &mut self.rng) {
            (Action::Disconnect, &stats.disconnect)
        } else if hit(spec.stall, &mut self.rng) {
            (Action::Stall(spec.stall_ms), &stats.stall)
        } else if hit(spec.drop, &mut self.rng) {
            (Action::Drop, &stats.drop)
        } else if hit(spec.corrupt, &mut self.rng) {
            (Action::Corrupt, &stats.corrupt)
        } else if hit(spec.delay, &mut self.rng) {
            (Action::Delay(spec.delay_ms), &stats.delay)
        } else if hit(spec.duplicate, &mut self.rng) {
            (Action::Duplicate, &stats.duplicate)
        } else if hit(spec.reorder, &mut self.rng) {
            (Action::Reorder, &stats.reorder)
        } else {
            return Action::Send;
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sim_ws_faults_total", "kind" => kind_name(action)).increment(1);
        action
    }
}

fn kind_name(a: Action) -> &'static str {
    match a {
        Action::Send => "none",
        Action::Drop => "drop",
        Action::Duplicate => "duplicate",
        Action::Reorder => "reorder",
        Action::Corrupt => "corrupt",
        Action::Stall(_) => "stall",
        Action::Disconnect => "disconnect",
        Action::Delay(_) => "delay",
    }
}

/// Makes a frame that no JSON parser accepts but that is still valid UTF-8 text (a WS text
/// frame must be), by cutting the event in half and appending garbage.
pub fn corrupt(frame: &str) -> String {
    let mut cut = frame.len() / 2;
    while !frame.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\u{fffd}#corrupt", &frame[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_respected_roughly() {
        let stats = FaultStats::default();
        let mut inj = Injector::new(7, 1);
        let spec = FaultSpec {
            drop: 0.1,
            ..FaultSpec::default()
        };
        let n = 100_000;
        let drops = (0..n)
            .filter(|_| inj.decide(&spec, &stats) == Action::Drop)
            .count();
        assert!((9_000..11_000).contains(&drops), "{drops}");
        let off = FaultSpec::default();
        assert!((0..1000).all(|_| inj.decide(&off, &stats) == Action::Send));
    }

    #[test]
    fn corrupt_is_not_json() {
        let f = r#"{"e":"trade","p":"1.00"}"#;
        assert!(serde_json::from_str::<serde_json::Value>(&corrupt(f)).is_err());
    }

    #[test]
    fn table_versions_and_symbol_override() {
        let t = FaultTable::new(FaultSnapshot::default());
        let v = t.version();
        t.update(|s| {
            s.symbols.insert(
                "btcusdt".into(),
                FaultSpec {
                    drop: 0.5,
                    ..FaultSpec::default()
                },
            );
        });
        assert!(t.version() > v);
        let s = t.snapshot();
        assert_eq!(s.spec_for("BTCUSDT").drop, 0.5);
        assert_eq!(s.spec_for("ETHUSDT").drop, 0.0);
    }
}
