//! Result tables: printed as Markdown (ready for `docs/benchmarks.md`) with the date and the
//! configuration they were measured with.

use std::fmt;

/// One benchmark's figures as `| what | value |` rows plus a verdict line.
#[derive(Debug)]
pub struct Table {
    pub name: String,
    pub setup: String,
    pub rows: Vec<(String, String)>,
    pub verdicts: Vec<String>,
}

impl Table {
    pub fn new(name: &str, setup: &str) -> Self {
        Self {
            name: name.into(),
            setup: setup.into(),
            rows: Vec::new(),
            verdicts: Vec::new(),
        }
    }

    pub fn row(&mut self, what: &str, value: impl Into<String>) {
        self.rows.push((what.into(), value.into()));
    }

    pub fn verdict(&mut self, v: impl Into<String>) {
        self.verdicts.push(v.into());
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let date = time::OffsetDateTime::now_utc().date();
        writeln!(f, "### `{}` ({date}; {})", self.name, self.setup)?;
        writeln!(f)?;
        writeln!(f, "| | |")?;
        writeln!(f, "|---|---|")?;
        for (w, v) in &self.rows {
            writeln!(f, "| {w} | {v} |")?;
        }
        for v in &self.verdicts {
            writeln!(f)?;
            writeln!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Percentile (0–100) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&s, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
