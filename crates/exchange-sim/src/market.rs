//! The latent market behind every trade price: one fair price per underlying and the rules
//! that turn it into a spot, perpetual, delivery-future or option price.
//!
//! Each underlying follows a geometric random walk on a fixed one-second grid, driven by its own
//! ChaCha8 stream seeded from (seed, base asset), so its whole path is a function of the seed and
//! the grid index alone: which instrument asks first, and when, cannot change it. Per step:
//!
//! - a **volatility regime** `m = exp(clamp(h))`, where `h` is a log-OU process (half-life
//!   [`REGIME_HALF_LIFE_S`], stationary sd [`REGIME_SD`], clamped to [`REGIME_MIN`]..[`REGIME_MAX`]);
//!   the diffusion is scaled by `m / √E[m²]`, so the long-run variance is the configured one,
//!   and trade arrival rates by `m / E[m]`, so long-run rates are the configured ones;
//! - a **diffusion** step carrying `1 − JUMP_VAR_SHARE` of the asset's variance;
//! - rare **Poisson jumps** ([`JUMPS_PER_DAY`]) carrying the rest, each also kicking the regime
//!   up (a jump is followed by a wild period);
//! - a very weak pull toward the listing price (half-life [`REVERSION_HALF_LIFE_DAYS`]) so a run
//!   of weeks keeps prices within the instrument's tick grid; invisible within hours.
//!
//! Between grid points the log price is interpolated linearly. Only f64 lives here; the engine
//! rounds to the instrument's tick grid (Decimal) right after.

use std::collections::VecDeque;
use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Grid step of the latent path.
pub const STEP_US: i64 = 1_000_000;
pub const SECS_PER_YEAR: f64 = 365.0 * 86_400.0;
const US_PER_YEAR: f64 = SECS_PER_YEAR * 1e6;

pub const REGIME_HALF_LIFE_S: f64 = 1_800.0;
pub const REGIME_SD: f64 = 0.5;
pub const REGIME_MIN: f64 = 0.4;
pub const REGIME_MAX: f64 = 3.0;
/// Mean of `h`: with `E[e^{2h}] = e^{2μ+2s²}`, μ = −s² makes the unclamped `E[m²]` one.
const REGIME_MEAN: f64 = -REGIME_SD * REGIME_SD;
/// Added to `h` on a jump.
const JUMP_REGIME_KICK: f64 = 0.5;
pub const JUMPS_PER_DAY: f64 = 2.0;
/// Share of the asset's variance that comes from jumps (size follows from the rate).
pub const JUMP_VAR_SHARE: f64 = 0.3;
pub const REVERSION_HALF_LIFE_DAYS: f64 = 30.0;
/// Grid points kept behind the newest: the generator may ask for a time a few seconds before
/// the furthest any other instrument of the underlying has asked for (one tick, or a catch-up).
const KEEP_POINTS: usize = 64;

/// Option smile: implied vol = asset vol × (1 + `SMILE_CURVE` · min(z², `SMILE_Z_CAP`²)), where z
/// is log-moneyness in standard deviations to expiry. Flat beyond the cap; mild enough that call
/// prices still fall with the strike (no arbitrage, so calls rise with the underlying).
pub const SMILE_CURVE: f64 = 0.04;
pub const SMILE_Z_CAP: f64 = 3.0;

/// `(E[m], E[m²])` of the clamped lognormal regime, computed once by quadrature.
fn regime_moments() -> (f64, f64) {
    static M: OnceLock<(f64, f64)> = OnceLock::new();
    *M.get_or_init(|| {
        let (lo, hi) = (REGIME_MIN.ln(), REGIME_MAX.ln());
        let n = 20_000;
        let (a, b) = (
            REGIME_MEAN - 10.0 * REGIME_SD,
            REGIME_MEAN + 10.0 * REGIME_SD,
        );
        let dx = (b - a) / f64::from(n);
        let (mut m1, mut m2, mut w) = (0.0, 0.0, 0.0);
        for i in 0..=n {
            let h = a + dx * f64::from(i);
            let z = (h - REGIME_MEAN) / REGIME_SD;
            let simpson = if i == 0 || i == n {
                1.0
            } else if i % 2 == 1 {
                4.0
            } else {
                2.0
            };
            let pdf = (-0.5 * z * z).exp() * simpson;
            let m = h.clamp(lo, hi).exp();
            m1 += m * pdf;
            m2 += m * m * pdf;
            w += pdf;
        }
        (m1 / w, m2 / w)
    })
}

/// One grid point.
#[derive(Debug, Clone, Copy)]
struct Point {
    log_s: f64,
    /// Multiplier of the diffusion (mean square 1 in the long run).
    vol_mult: f64,
    /// Multiplier of trade arrival rates (mean 1 in the long run).
    rate_mult: f64,
}

/// The fair-price path of one underlying.
#[derive(Debug, Clone)]
pub struct Latent {
    rng: ChaCha8Rng,
    anchor_us: i64,
    /// Grid index of `pts[0]`.
    first_k: i64,
    pts: VecDeque<Point>,
    log_s: f64,
    log_s0: f64,
    h: f64,
    /// Diffusion sd per step at `vol_mult = 1`.
    diff_sd: f64,
    jump_p: f64,
    jump_rms: f64,
    spare: Option<f64>,
}

impl Latent {
    /// A path starting at `price` at `anchor_us`, with annualised volatility `vol`.
    pub fn new(seed: u64, base: &str, price: f64, vol: f64, anchor_us: i64) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(crate::engine::fnv1a(&[
            &seed.to_le_bytes(),
            b"latent",
            base.as_bytes(),
        ]));
        let var_step = vol * vol / SECS_PER_YEAR;
        let jump_p = JUMPS_PER_DAY / 86_400.0;
        let mut l = Self {
            anchor_us,
            first_k: 0,
            pts: VecDeque::with_capacity(KEEP_POINTS + 2),
            log_s: price.max(1e-12).ln(),
            log_s0: price.max(1e-12).ln(),
            h: REGIME_MEAN,
            diff_sd: (var_step * (1.0 - JUMP_VAR_SHARE)).sqrt(),
            jump_p,
            jump_rms: (var_step * JUMP_VAR_SHARE / jump_p).sqrt(),
            spare: None,
            rng,
        };
        // Start anywhere in the regime's stationary law: some assets open calm, some wild.
        l.h = REGIME_MEAN + REGIME_SD * l.normal();
        let p = l.point();
        l.pts.push_back(p);
        l
    }

    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // Box–Muller: two uniforms, two normals.
        let u1: f64 = 1.0 - self.rng.random::<f64>();
        let u2: f64 = self.rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }

    fn point(&self) -> Point {
        let (m1, m2) = regime_moments();
        let m = self.h.clamp(REGIME_MIN.ln(), REGIME_MAX.ln()).exp();
        Point {
            log_s: self.log_s,
            vol_mult: m / m2.sqrt(),
            rate_mult: m / m1,
        }
    }

    /// Advances the path by one grid step.
    fn step(&mut self) {
        let a = (-std::f64::consts::LN_2 / REGIME_HALF_LIFE_S).exp();
        let z_h = self.normal();
        self.h = REGIME_MEAN + (self.h - REGIME_MEAN) * a + REGIME_SD * (1.0 - a * a).sqrt() * z_h;
        let vm = self.point().vol_mult;
        let sd = self.diff_sd * vm;
        let theta = std::f64::consts::LN_2 / (REVERSION_HALF_LIFE_DAYS * 86_400.0);
        let z = self.normal();
        // −σ²/2 and the jump compensator keep the price itself (not its log) driftless.
        self.log_s += -theta * (self.log_s - self.log_s0)
            - 0.5 * sd * sd
            - self.jump_p * 0.5 * self.jump_rms * self.jump_rms
            + sd * z;
        if self.rng.random::<f64>() < self.jump_p {
            // |J| uniform in [0.6, 1.4]·rms/√E[(0.6+0.8U)²]: visible, never negligible.
            let size = self.jump_rms * (0.6 + 0.8 * self.rng.random::<f64>()) / 1.0533_f64.sqrt();
            let sign = if self.rng.random::<bool>() { 1.0 } else { -1.0 };
            self.log_s += sign * size;
            self.h += JUMP_REGIME_KICK;
        }
        let p = self.point();
        self.pts.push_back(p);
        if self.pts.len() > KEEP_POINTS {
            self.pts.pop_front();
            self.first_k += 1;
        }
    }

    /// Fair price and rate multiplier at `t_us`, advancing the path as needed.
    pub fn at(&mut self, t_us: i64) -> (f64, f64) {
        let rel = (t_us - self.anchor_us).max(0);
        let k = rel / STEP_US;
        while self.first_k + (self.pts.len() as i64) < k + 2 {
            self.step();
        }
        let (i, frac) = if k < self.first_k {
            (0, 0.0)
        } else {
            (
                (k - self.first_k) as usize,
                (rel % STEP_US) as f64 / STEP_US as f64,
            )
        };
        let (p0, p1) = (self.pts[i], self.pts[i + 1]);
        (
            (p0.log_s + frac * (p1.log_s - p0.log_s)).exp(),
            p0.rate_mult,
        )
    }
}

/// How one instrument's fair price follows its underlying.
#[derive(Debug, Clone, Copy)]
pub enum Pricer {
    /// `S · (1 + basis) · e^{carry·τ}`: spot (0, 0), perpetual (tiny basis), delivery (carry).
    Linear {
        basis: f64,
        carry: f64,
        expiry_us: i64,
    },
    /// Black–Scholes with r = 0 on the spot, implied vol from the smile.
    Option {
        call: bool,
        strike: f64,
        expiry_us: i64,
        vol: f64,
    },
}

impl Pricer {
    /// Fair price at `t_us` given the underlying's fair price `s`.
    pub fn fair(&self, s: f64, t_us: i64) -> f64 {
        match *self {
            Pricer::Linear {
                basis,
                carry,
                expiry_us,
            } => {
                let tau = ((expiry_us - t_us).max(0) as f64) / US_PER_YEAR;
                s * (1.0 + basis) * (carry * tau).exp()
            }
            Pricer::Option {
                call,
                strike,
                expiry_us,
                vol,
            } => {
                let tau = ((expiry_us - t_us).max(0) as f64) / US_PER_YEAR;
                black_scholes(call, s, strike, tau, smile_vol(vol, s, strike, tau))
            }
        }
    }
}

/// Implied vol of a strike: the asset's vol times a symmetric smile in standardised moneyness.
pub fn smile_vol(vol: f64, s: f64, strike: f64, tau: f64) -> f64 {
    let sd = vol * tau.sqrt();
    if sd <= 0.0 {
        return vol;
    }
    let z = (strike / s).ln() / sd;
    vol * (1.0 + SMILE_CURVE * (z * z).min(SMILE_Z_CAP * SMILE_Z_CAP))
}

/// Black–Scholes price with r = 0 (intrinsic value at or after expiry).
pub fn black_scholes(call: bool, s: f64, k: f64, tau: f64, vol: f64) -> f64 {
    let sd = vol * tau.max(0.0).sqrt();
    if sd <= 1e-12 {
        return if call {
            (s - k).max(0.0)
        } else {
            (k - s).max(0.0)
        };
    }
    let d1 = ((s / k).ln() + 0.5 * sd * sd) / sd;
    let d2 = d1 - sd;
    if call {
        s * norm_cdf(d1) - k * norm_cdf(d2)
    } else {
        k * norm_cdf(-d2) - s * norm_cdf(-d1)
    }
}

/// Standard normal CDF via erfc (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7 even
/// deep in the tails, where far out-of-the-money premiums live).
pub fn norm_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Annualised vol of the assets the catalogue knows by name (others are drawn from the seed).
pub fn known_vol(base: &str) -> Option<f64> {
    Some(match base {
        "BTC" => 0.50,
        "ETH" => 0.65,
        "BNB" => 0.55,
        "TRX" => 0.60,
        "LTC" | "BCH" | "XLM" | "ETC" => 0.75,
        "XRP" | "ADA" | "DOT" | "ATOM" | "LINK" | "MKR" | "AAVE" => 0.80,
        "SOL" | "AVAX" | "MATIC" | "UNI" | "FIL" => 0.85,
        "DOGE" | "NEAR" | "SHIB" => 0.95,
        "APT" | "ARB" | "OP" | "SUI" => 1.00,
        "INJ" | "WLD" => 1.10,
        "PEPE" => 1.20,
        _ => return None,
    })
}

/// Vol of a synthetic asset: log-uniform in 40 %..150 %, from (seed, base) only, so it does not
/// disturb the catalogue's own random stream.
pub fn drawn_vol(seed: u64, base: &str) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(crate::engine::fnv1a(&[
        &seed.to_le_bytes(),
        b"vol",
        base.as_bytes(),
    ]));
    let (lo, hi) = (0.4f64.ln(), 1.5f64.ln());
    rng.random_range(lo..hi).exp()
}

/// Annualised vol of `base`.
pub fn asset_vol(seed: u64, base: &str) -> f64 {
    known_vol(base).unwrap_or_else(|| drawn_vol(seed, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_returns(l: &mut Latent, secs: i64) -> Vec<f64> {
        let mut prev = l.at(0).0.ln();
        (1..=secs)
            .map(|k| {
                let x = l.at(k * STEP_US).0.ln();
                let r = x - prev;
                prev = x;
                r
            })
            .collect()
    }

    fn ann_sd(r: &[f64]) -> f64 {
        let n = r.len() as f64;
        let mean = r.iter().sum::<f64>() / n;
        let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (var * SECS_PER_YEAR).sqrt()
    }

    #[test]
    fn regime_moments_normalise() {
        let (m1, m2) = regime_moments();
        assert!((0.7..1.1).contains(&m1), "{m1}");
        assert!((0.8..1.2).contains(&m2), "{m2}");
    }

    #[test]
    fn path_depends_on_seed_and_time_only() {
        let mut a = Latent::new(7, "BTC", 90_000.0, 0.5, 0);
        let pa: Vec<f64> = (0..40).map(|k| a.at(k * STEP_US + 250_000).0).collect();
        // b is first asked for a later time, then back in time (within the kept window).
        let mut b = Latent::new(7, "BTC", 90_000.0, 0.5, 0);
        let _ = b.at(35 * STEP_US);
        let pb: Vec<f64> = (0..40).map(|k| b.at(k * STEP_US + 250_000).0).collect();
        assert_eq!(pa, pb);
        let other = Latent::new(8, "BTC", 90_000.0, 0.5, 0).at(39 * STEP_US).0;
        assert_ne!(other, a.at(39 * STEP_US).0);
        assert_ne!(
            Latent::new(7, "ETH", 90_000.0, 0.5, 0).at(39 * STEP_US).0,
            a.at(39 * STEP_US).0
        );
    }

    #[test]
    fn an_hour_of_btc_moves_like_btc() {
        let mut l = Latent::new(42, "BTC", 90_000.0, 0.5, 0);
        let r = log_returns(&mut l, 3_600);
        let sd = ann_sd(&r);
        // The regime alone spans 0.4×..3×; an hour sits somewhere inside it.
        assert!((0.15..2.0).contains(&sd), "realised vol {sd}");
        let moved = (l.at(3_600 * STEP_US).0 / 90_000.0).ln().abs();
        assert!(moved < 0.15, "{moved}");
    }

    #[test]
    fn long_run_vol_and_rates_average_to_the_configured_ones() {
        // 20 days: regimes (half-life 30 min) and jumps (2 a day) average out.
        let secs = 20 * 86_400;
        let mut l = Latent::new(42, "ETH", 3_200.0, 0.65, 0);
        let mut rate_sum = 0.0;
        let mut prev = l.at(0).0.ln();
        let mut r = Vec::with_capacity(secs as usize);
        let mut big = 0;
        for k in 1..=secs {
            let (p, rate) = l.at(k * STEP_US);
            rate_sum += rate;
            let x = p.ln();
            // Jumps are ~1 % for ETH; the diffusion moves ~0.01 % a second.
            if (x - prev).abs() > 0.004 {
                big += 1;
            }
            r.push(x - prev);
            prev = x;
        }
        let sd = ann_sd(&r);
        assert!((0.65 * 0.8..0.65 * 1.2).contains(&sd), "realised vol {sd}");
        let mean_rate = rate_sum / secs as f64;
        assert!(
            (0.85..1.15).contains(&mean_rate),
            "mean rate factor {mean_rate}"
        );
        assert!((15..=70).contains(&big), "jumps {big}");
    }

    #[test]
    fn black_scholes_is_sane() {
        let (k, tau, vol) = (100.0, 7.0 / 365.0, 0.8);
        let mut prev_c = 0.0;
        let mut prev_p = f64::MAX;
        for i in 1..=400 {
            let s = 20.0 + f64::from(i) * 0.5;
            let iv = smile_vol(vol, s, k, tau);
            let c = black_scholes(true, s, k, tau, iv);
            let p = black_scholes(false, s, k, tau, iv);
            assert!(c >= prev_c, "call fell at s={s}: {c} < {prev_c}");
            assert!(p <= prev_p, "put rose at s={s}: {p} > {prev_p}");
            assert!(c >= (s - k).max(0.0) - 1e-9 && p >= (k - s).max(0.0) - 1e-9);
            assert!((c - p - (s - k)).abs() < 1e-6, "parity at {s}");
            prev_c = c;
            prev_p = p;
        }
        // ATM ≈ 0.4·σ√τ·S
        let atm = black_scholes(true, 100.0, 100.0, tau, vol);
        assert!(
            (atm / (0.4 * vol * tau.sqrt() * 100.0) - 1.0).abs() < 0.02,
            "{atm}"
        );
        assert_eq!(black_scholes(true, 120.0, 100.0, 0.0, vol), 20.0);
        assert!((norm_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((norm_cdf(1.96) - 0.975).abs() < 1e-4);
    }

    #[test]
    fn the_smile_keeps_calls_rising_with_the_underlying_for_every_vol_and_tenor() {
        for vol in [0.4, 0.8, 1.5, 3.0] {
            for days in [0.01, 0.5, 3.0, 14.0, 90.0] {
                let tau = days / 365.0;
                let mut prev = 0.0;
                for i in 0..2_000 {
                    let s = 100.0 * (-3.0 + 6.0 * f64::from(i) / 2_000.0).exp();
                    let c = black_scholes(true, s, 100.0, tau, smile_vol(vol, s, 100.0, tau));
                    assert!(
                        c >= prev - 1e-9 * s,
                        "vol {vol} days {days} s {s}: {c} < {prev}"
                    );
                    prev = c;
                }
            }
        }
    }

    #[test]
    fn vols_by_asset() {
        assert_eq!(asset_vol(1, "BTC"), 0.5);
        let v: Vec<f64> = (0..200).map(|i| asset_vol(1, &format!("Z{i}"))).collect();
        assert!(v.iter().all(|x| (0.4..1.5).contains(x)));
        assert_eq!(asset_vol(1, "ZAAA"), asset_vol(1, "ZAAA"));
        assert_ne!(asset_vol(1, "ZAAA"), asset_vol(2, "ZAAA"));
        let lo = v.iter().filter(|x| **x < 0.7).count();
        assert!(lo > 40 && lo < 140, "{lo}");
    }
}
