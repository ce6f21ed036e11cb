//! The instrument catalogue, generated from the seed, and its listing changes over time.
//!
//! Per underlying `<BASE>USDT`: a spot pair, a USD-M perpetual (`symbol == pair`), up to two
//! quarterly delivery contracts `<pair>_<yymmdd>` (last Friday of Mar/Jun/Sep/Dec, 08:00 UTC) and
//! an option chain `<BASE>-<yymmdd>-<strike>-<C|P>` over weekly Friday expiries. Tick and step
//! sizes are powers of ten chosen from the price magnitude, so the grids look like the
//! exchange's (BTC spot tick 0.01, step 0.00001). Every instrument carries its underlying's
//! annualised volatility (a table for the real tickers, drawn from the seed for the synthetic
//! ones: [`crate::market::asset_vol`]). Instruments are never removed from the vector
//! (their index is their id everywhere: rings, subscriptions), only flagged.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde::Serialize;

/// Which listener an instrument belongs to; each market has its own symbol namespace
/// (`BTCUSDT` is both a spot pair and a perpetual).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Market {
    Spot,
    Futures,
    Options,
}

impl Market {
    pub const ALL: [Market; 3] = [Market::Spot, Market::Futures, Market::Options];

    pub fn idx(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Market::Spot => "spot",
            Market::Futures => "futures",
            Market::Options => "options",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "spot" => Some(Market::Spot),
            "futures" | "usdm" => Some(Market::Futures),
            "options" => Some(Market::Options),
            _ => None,
        }
    }
}

/// What an instrument is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Kind {
    Spot,
    Perpetual,
    Delivery { contract_type: String },
    Option { call: bool, strike: Decimal },
}

/// One tradable instrument.
#[derive(Debug, Clone, Serialize)]
pub struct Instrument {
    pub id: u32,
    pub market: Market,
    pub symbol: String,
    /// Symbol as it appears in stream names: lower case for spot/futures, as listed for options.
    pub stream_key: String,
    pub base: String,
    pub quote: String,
    /// The underlying spot pair (`BTCUSDT`), i.e. futures `pair` and options `underlying`.
    pub pair: String,
    #[serde(flatten)]
    pub kind: Kind,
    /// TRADING, HALT, BREAK (spot); TRADING, CLOSE (futures); TRADING (options).
    pub status: String,
    /// Hidden from exchangeInfo (delisted options disappear on the real exchange).
    pub removed: bool,
    pub tick: Decimal,
    pub step: Decimal,
    /// Decimals shown in prices and quantities (spot always shows 8, like the exchange).
    pub price_scale: u32,
    pub qty_scale: u32,
    /// Mantissa of one tick / one step at the display scale.
    #[serde(skip)]
    pub tick_units: i64,
    #[serde(skip)]
    pub step_units: i64,
    /// Price at listing, in ticks (the ticker before the first trade; for a spot pair also
    /// where its underlying's latent price path starts).
    pub start_ticks: i64,
    /// Typical quantity of a trade, in steps.
    pub typical_steps: i64,
    pub listed_at: i64,
    /// Delivery/expiry in ms; perpetuals use 2100-12-25 like the exchange.
    pub expiry: i64,
    pub rate_per_sec: f64,
    pub hot: bool,
    /// Annualised volatility of the underlying (times `sim.vol_scale`): the latent path's, and
    /// the at-the-money implied vol of its options.
    pub vol: f64,
    /// Order in which the underlying was listed (0 = BTC); hot symbols are the first ones.
    pub underlying_no: u32,
}

impl Instrument {
    pub fn price(&self, ticks: i64) -> Decimal {
        Decimal::new(ticks * self.tick_units, self.price_scale)
    }

    pub fn qty(&self, steps: i64) -> Decimal {
        Decimal::new(steps * self.step_units, self.qty_scale)
    }

    pub fn is_trading(&self) -> bool {
        !self.removed && self.status == "TRADING"
    }
}

/// A listing change, as reported by `/control/listings`.
#[derive(Debug, Clone, Serialize)]
pub struct ListingChange {
    pub time: i64,
    /// `listed`, `halted`, `resumed`, `delisted`.
    pub change: &'static str,
    pub market: Market,
    pub symbol: String,
    pub status: String,
}

const KNOWN: [(&str, f64); 30] = [
    ("BTC", 90_000.0),
    ("ETH", 3_200.0),
    ("BNB", 600.0),
    ("SOL", 150.0),
    ("XRP", 0.6),
    ("DOGE", 0.15),
    ("ADA", 0.45),
    ("TRX", 0.12),
    ("AVAX", 35.0),
    ("LINK", 15.0),
    ("DOT", 7.0),
    ("MATIC", 0.7),
    ("LTC", 80.0),
    ("BCH", 450.0),
    ("NEAR", 5.5),
    ("UNI", 9.0),
    ("ATOM", 8.5),
    ("XLM", 0.11),
    ("ETC", 26.0),
    ("FIL", 5.0),
    ("APT", 9.0),
    ("ARB", 1.1),
    ("OP", 2.3),
    ("INJ", 25.0),
    ("SUI", 1.2),
    ("PEPE", 0.000012),
    ("SHIB", 0.000024),
    ("AAVE", 95.0),
    ("MKR", 2_500.0),
    ("WLD", 2.4),
];

/// Milliseconds per day.
const DAY_MS: i64 = 86_400_000;
/// 2100-12-25, the exchange's "no delivery" date for perpetuals.
pub const PERPETUAL_DELIVERY: i64 = 4_133_404_800_000;

/// Parameters of catalogue generation (a subset of the config).
#[derive(Debug, Clone)]
pub struct CatalogueParams {
    pub seed: u64,
    pub underlyings: u32,
    pub quarterlies: u32,
    pub option_expiries: u32,
    pub option_strikes: u32,
    pub initial_halted_ratio: f64,
    /// Multiplies every asset's volatility.
    pub vol_scale: f64,
}

/// Instruments plus name indexes per market.
#[derive(Debug)]
pub struct Catalogue {
    pub instruments: Vec<Instrument>,
    by_name: [HashMap<String, u32>; 3],
    pub underlyings: u32,
    rng: ChaCha8Rng,
    params: CatalogueParams,
}

impl Catalogue {
    /// Builds the initial catalogue as of `now_ms`.
    pub fn generate(params: CatalogueParams, now_ms: i64) -> Self {
        let mut cat = Self {
            instruments: Vec::new(),
            by_name: Default::default(),
            underlyings: 0,
            rng: ChaCha8Rng::seed_from_u64(params.seed ^ 0xCA7A_1065),
            params,
        };
        for i in 0..cat.params.underlyings {
            cat.add_underlying(i, now_ms, true);
        }
        cat
    }

    pub fn lookup(&self, market: Market, symbol_upper: &str) -> Option<&Instrument> {
        self.by_name[market.idx()]
            .get(symbol_upper)
            .map(|&i| &self.instruments[i as usize])
    }

    /// Case-insensitive lookup used for stream names.
    pub fn lookup_any_case(&self, market: Market, symbol: &str) -> Option<&Instrument> {
        self.lookup(market, &symbol.to_ascii_uppercase())
    }

    pub fn listed(&self, market: Market) -> impl Iterator<Item = &Instrument> {
        self.instruments
            .iter()
            .filter(move |i| i.market == market && !i.removed)
    }

    fn push(&mut self, mut inst: Instrument) -> u32 {
        let id = self.instruments.len() as u32;
        inst.id = id;
        self.by_name[inst.market.idx()].insert(inst.symbol.clone(), id);
        self.instruments.push(inst);
        id
    }

    /// Adds underlying number `n` with all its derivatives; returns the new ids.
    fn add_underlying(&mut self, n: u32, now_ms: i64, initial: bool) -> Vec<u32> {
        let (base, price) = underlying_name_and_price(n, &mut self.rng);
        let pair = format!("{base}USDT");
        let mut ids = Vec::new();

        let halted =
            initial && n >= 10 && self.rng.random::<f64>() < self.params.initial_halted_ratio;
        let status = if halted {
            if self.rng.random::<bool>() {
                "HALT"
            } else {
                "BREAK"
            }
        } else {
            "TRADING"
        };
        let (tick_e, step_e) = (mag(price) - 6, mag(100.0 / price) - 2);
        ids.push(self.push(make(
            Market::Spot,
            &pair,
            &base,
            &pair,
            Kind::Spot,
            status,
            price,
            tick_e.clamp(-8, 0),
            step_e.clamp(-8, 0),
            Some(8),
            now_ms,
            PERPETUAL_DELIVERY,
        )));

        let (ftick, fstep) = (
            (mag(price) - 5).clamp(-7, 0),
            (mag(100.0 / price) - 1).clamp(-6, 0),
        );
        ids.push(self.push(make(
            Market::Futures,
            &pair,
            &base,
            &pair,
            Kind::Perpetual,
            "TRADING",
            price * 1.0005,
            ftick,
            fstep,
            None,
            now_ms,
            PERPETUAL_DELIVERY,
        )));
        for (q, expiry) in quarterly_expiries(now_ms, self.params.quarterlies)
            .into_iter()
            .enumerate()
        {
            let ct = if q == 0 {
                "CURRENT_QUARTER"
            } else {
                "NEXT_QUARTER"
            };
            let sym = format!("{pair}_{}", yymmdd(expiry));
            ids.push(self.push(make(
                Market::Futures,
                &sym,
                &base,
                &pair,
                Kind::Delivery {
                    contract_type: ct.into(),
                },
                "TRADING",
                price * (1.01 + 0.01 * q as f64),
                ftick,
                fstep,
                None,
                now_ms,
                expiry,
            )));
        }
        for expiry in weekly_expiries(now_ms, self.params.option_expiries) {
            for k in strikes(price, self.params.option_strikes) {
                ids.extend(self.add_option_pair(&base, &pair, price, expiry, k, now_ms));
            }
        }
        let vol = crate::market::asset_vol(self.params.seed, &base) * self.params.vol_scale;
        for id in &ids {
            let inst = &mut self.instruments[*id as usize];
            inst.underlying_no = n;
            inst.vol = vol;
        }
        self.underlyings = self.underlyings.max(n + 1);
        ids
    }

    fn add_option_pair(
        &mut self,
        base: &str,
        pair: &str,
        spot: f64,
        expiry: i64,
        strike: Decimal,
        now_ms: i64,
    ) -> Vec<u32> {
        let mut ids = Vec::new();
        for call in [true, false] {
            let sym = format!(
                "{base}-{}-{}-{}",
                yymmdd(expiry),
                strike.normalize(),
                if call { 'C' } else { 'P' }
            );
            if self.lookup(Market::Options, &sym).is_some() {
                continue;
            }
            let premium = spot * 0.03;
            let qty_e = if spot > 100.0 { -2 } else { 0 };
            ids.push(self.push(make(
                Market::Options,
                &sym,
                base,
                pair,
                Kind::Option { call, strike },
                "TRADING",
                premium,
                (mag(premium) - 3).clamp(-8, 0),
                qty_e,
                None,
                now_ms,
                expiry,
            )));
        }
        ids
    }

    /// Applies one deterministic listing change. Symbols in `protected` (hot and load-mode
    /// pairs) are never halted or delisted so benchmarks and tests keep a steady stream.
    pub fn step_listing(&mut self, now_ms: i64, protected: &[u32]) -> Vec<ListingChange> {
        let roll: f64 = self.rng.random();
        let mut out = Vec::new();
        let pick_underlying = |rng: &mut ChaCha8Rng, n: u32| rng.random_range(0..n.max(1));
        if roll < 0.10 {
            let n = self.underlyings;
            for id in self.add_underlying(n, now_ms, false) {
                out.push(self.change(id, "listed", now_ms));
            }
        } else if roll < 0.40 {
            let u = pick_underlying(&mut self.rng, self.underlyings);
            let spot = self
                .instruments
                .iter()
                .find(|i| {
                    i.market == Market::Spot && i.pair == format!("{}USDT", underlying_base(u))
                })
                .cloned();
            if let Some(s) = spot {
                let spot_price = s
                    .price(s.start_ticks)
                    .to_string()
                    .parse::<f64>()
                    .unwrap_or(1.0);
                let expiry = weekly_expiries(now_ms, 1)[0];
                let ss = strike_step(spot_price);
                let k = Decimal::from(self.rng.random_range(1..=60)) * ss;
                for id in self.add_option_pair(&s.base, &s.pair, spot_price, expiry, k, now_ms) {
                    self.instruments[id as usize].underlying_no = s.underlying_no;
                    self.instruments[id as usize].vol = s.vol;
                    out.push(self.change(id, "listed", now_ms));
                }
            }
        } else {
            let (from, to, change, market) = if roll < 0.60 {
                ("TRADING", "HALT", "halted", Market::Spot)
            } else if roll < 0.80 {
                ("HALT", "TRADING", "resumed", Market::Spot)
            } else {
                let m =
                    [Market::Spot, Market::Futures, Market::Options][self.rng.random_range(0..3)];
                (
                    "TRADING",
                    if m == Market::Spot { "BREAK" } else { "CLOSE" },
                    "delisted",
                    m,
                )
            };
            let candidates: Vec<u32> = self
                .instruments
                .iter()
                .filter(|i| {
                    i.market == market
                        && !i.removed
                        && !protected.contains(&i.id)
                        && (i.status == from || (change == "resumed" && i.status == "BREAK"))
                        && !(change == "delisted" && i.kind == Kind::Perpetual)
                })
                .map(|i| i.id)
                .collect();
            if !candidates.is_empty() {
                let id = candidates[self.rng.random_range(0..candidates.len())];
                let inst = &mut self.instruments[id as usize];
                inst.status = to.into();
                if change == "delisted" && market == Market::Options {
                    inst.removed = true;
                }
                out.push(self.change(id, change, now_ms));
            }
        }
        out
    }

    fn change(&self, id: u32, change: &'static str, now_ms: i64) -> ListingChange {
        let i = &self.instruments[id as usize];
        ListingChange {
            time: now_ms,
            change,
            market: i.market,
            symbol: i.symbol.clone(),
            status: i.status.clone(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn make(
    market: Market,
    symbol: &str,
    base: &str,
    pair: &str,
    kind: Kind,
    status: &str,
    price: f64,
    tick_e: i32,
    step_e: i32,
    fixed_scale: Option<u32>,
    now_ms: i64,
    expiry: i64,
) -> Instrument {
    let tick = pow10(tick_e);
    let step = pow10(step_e);
    // Display scale: spot shows 8 decimals everywhere; derivatives show the grid's own scale.
    let price_scale = fixed_scale.unwrap_or(tick.scale());
    let qty_scale = fixed_scale.unwrap_or(step.scale());
    let tick_units = units_at_scale(tick, price_scale);
    let step_units = units_at_scale(step, qty_scale);
    let tick_f: f64 = tick.to_string().parse().unwrap_or(1.0);
    let step_f: f64 = step.to_string().parse().unwrap_or(1.0);
    let start_ticks = ((price / tick_f).round() as i64).max(10);
    let typical_steps = ((100.0 / price.max(1e-12)) / step_f)
        .round()
        .clamp(1.0, 1e6) as i64;
    let stream_key = match market {
        Market::Options => symbol.to_string(),
        _ => symbol.to_ascii_lowercase(),
    };
    Instrument {
        id: 0,
        market,
        symbol: symbol.into(),
        stream_key,
        base: base.into(),
        quote: "USDT".into(),
        pair: pair.into(),
        kind,
        status: status.into(),
        removed: false,
        tick,
        step,
        price_scale,
        qty_scale,
        tick_units,
        step_units,
        start_ticks,
        typical_steps,
        listed_at: now_ms,
        expiry,
        rate_per_sec: 0.0,
        hot: false,
        vol: 0.0,
        underlying_no: 0,
    }
}

/// 10^e as a Decimal (e may be negative).
pub fn pow10(e: i32) -> Decimal {
    if e >= 0 {
        Decimal::from(10i64.pow(e as u32))
    } else {
        Decimal::new(1, (-e) as u32)
    }
}

fn units_at_scale(d: Decimal, scale: u32) -> i64 {
    let mut r = d;
    r.rescale(scale);
    i64::try_from(r.mantissa()).unwrap_or(1)
}

fn mag(x: f64) -> i32 {
    x.log10().floor() as i32
}

fn underlying_base(n: u32) -> String {
    match KNOWN.get(n as usize) {
        Some((b, _)) => (*b).to_string(),
        None => {
            // Synthetic names `Z` + three letters stay clear of the real tickers above.
            let k = n as usize - KNOWN.len();
            let l = |d: usize| (b'A' + ((k / d) % 26) as u8) as char;
            format!("Z{}{}{}", l(676), l(26), l(1))
        }
    }
}

fn underlying_name_and_price(n: u32, rng: &mut ChaCha8Rng) -> (String, f64) {
    let base = underlying_base(n);
    let price = match KNOWN.get(n as usize) {
        Some((_, p)) => *p,
        // Log-uniform between 0.0001 and 1000, the range of the long tail on the exchange.
        None => 10f64.powf(rng.random_range(-4.0..3.0)),
    };
    (base, price)
}

fn strike_step(spot: f64) -> Decimal {
    let raw = spot * 0.05;
    let e = mag(raw);
    let unit = 10f64.powi(e);
    let m = if raw / unit >= 5.0 {
        5
    } else if raw / unit >= 2.0 {
        2
    } else {
        1
    };
    pow10(e) * Decimal::from(m)
}

fn strikes(spot: f64, n: u32) -> Vec<Decimal> {
    let ss = strike_step(spot);
    let ss_f: f64 = ss.to_string().parse().unwrap_or(1.0);
    let center = (spot / ss_f).round() as i64;
    (0..n as i64)
        .map(|i| center + i - n as i64 / 2)
        .filter(|k| *k > 0)
        .map(|k| Decimal::from(k) * ss)
        .collect()
}

/// Days since 1970-01-01 → (year, month, day) (proleptic Gregorian; H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `yymmdd` of a ms timestamp (UTC).
pub fn yymmdd(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    format!("{:02}{m:02}{d:02}", y.rem_euclid(100))
}

fn weekday(days: i64) -> i64 {
    // 1970-01-01 was a Thursday; 0 = Monday.
    (days + 3).rem_euclid(7)
}

/// The next `n` Fridays 08:00 UTC at least a day after `now_ms`.
fn weekly_expiries(now_ms: i64, n: u32) -> Vec<i64> {
    let mut day = (now_ms + DAY_MS).div_euclid(DAY_MS) + 1;
    while weekday(day) != 4 {
        day += 1;
    }
    (0..n as i64)
        .map(|w| (day + 7 * w) * DAY_MS + 8 * 3_600_000)
        .collect()
}

/// The next `n` quarterly deliveries: last Friday of Mar/Jun/Sep/Dec, 08:00 UTC, after a week.
fn quarterly_expiries(now_ms: i64, n: u32) -> Vec<i64> {
    let (mut y, mut m, _) = civil_from_days(now_ms.div_euclid(DAY_MS));
    let mut out = Vec::new();
    while out.len() < n as usize {
        if m % 3 == 0 {
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let mut last = days_from_civil(ny, nm, 1) - 1;
            while weekday(last) != 4 {
                last -= 1;
            }
            let t = last * DAY_MS + 8 * 3_600_000;
            if t > now_ms + 7 * DAY_MS {
                out.push(t);
            }
        }
        if m == 12 {
            y += 1;
            m = 1;
        } else {
            m += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n: u32) -> CatalogueParams {
        CatalogueParams {
            seed: 1,
            underlyings: n,
            quarterlies: 2,
            option_expiries: 2,
            option_strikes: 4,
            initial_halted_ratio: 0.1,
            vol_scale: 1.0,
        }
    }

    #[test]
    fn dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(
            civil_from_days(days_from_civil(2026, 12, 25)),
            (2026, 12, 25)
        );
        assert_eq!(yymmdd(4_133_404_800_000), "001225");
        // 2026-12-25 is a Friday.
        assert_eq!(weekday(days_from_civil(2026, 12, 25)), 4);
        let now = days_from_civil(2026, 11, 20) * DAY_MS;
        let q = quarterly_expiries(now, 2);
        assert_eq!(yymmdd(q[0]), "261225");
        assert_eq!(yymmdd(q[1]), "270326");
        assert_eq!(yymmdd(weekly_expiries(now, 1)[0]), "261127");
    }

    #[test]
    fn catalogue_is_deterministic_and_linked() {
        let now = days_from_civil(2026, 11, 20) * DAY_MS;
        let a = Catalogue::generate(params(40), now);
        let b = Catalogue::generate(params(40), now);
        let names = |c: &Catalogue| {
            c.instruments
                .iter()
                .map(|i| i.symbol.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&a), names(&b));
        let btc = a.lookup(Market::Spot, "BTCUSDT").unwrap();
        assert_eq!(btc.tick, Decimal::new(1, 2));
        assert_eq!(btc.price(1), Decimal::new(1_000_000, 8));
        assert_eq!(btc.price(1).to_string(), "0.01000000");
        let perp = a.lookup(Market::Futures, "BTCUSDT").unwrap();
        assert_eq!(perp.kind, Kind::Perpetual);
        assert!(a.lookup(Market::Futures, "BTCUSDT_261225").is_some());
        assert!(
            a.lookup(Market::Options, "BTC-261127-90000-C").is_some(),
            "{:?}",
            names(&a)
                .iter()
                .filter(|s| s.starts_with("BTC-"))
                .collect::<Vec<_>>()
        );
        assert!(a.listed(Market::Options).all(|o| o.pair.ends_with("USDT")));
    }

    #[test]
    fn two_thousand_underlyings_have_unique_symbols() {
        let c = Catalogue::generate(params(2000), 1_800_000_000_000);
        let mut seen = std::collections::HashSet::new();
        for i in &c.instruments {
            assert!(seen.insert((i.market, i.symbol.clone())), "{}", i.symbol);
            assert!(i.tick_units > 0 && i.step_units > 0, "{}", i.symbol);
        }
    }

    #[test]
    fn listing_changes_happen() {
        let mut c = Catalogue::generate(params(20), 1_800_000_000_000);
        let before = c.instruments.len();
        let changes: Vec<_> = (0..50)
            .flat_map(|k| c.step_listing(1_800_000_000_000 + k, &[0, 1]))
            .collect();
        assert!(changes.iter().any(|c| c.change == "listed"));
        assert!(changes.iter().any(|c| c.change == "halted"));
        assert!(c.instruments.len() > before);
        assert_eq!(c.instruments[0].status, "TRADING");
    }
}
