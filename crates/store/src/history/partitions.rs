//! Daily partitions of the history tables: created ahead of time (and on demand by the writer
//! when a trade falls on a day nobody prepared), dropped after their retention.
//!
//! The SQL side is two functions from the history migration, `pf_ensure_partitions(parent,
//! from_ms, to_ms)` and `pf_drop_partitions_before(parent, before_ms)`, which serialise
//! concurrent callers with an advisory lock per table.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sqlx::PgPool;

/// One UTC day in ms.
pub const DAY_MS: i64 = 86_400_000;

/// The partitioned history tables and what their partition key counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Trades,
    Buckets1s,
    Buckets1m,
    VwapHistory,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::Trades,
        Table::Buckets1s,
        Table::Buckets1m,
        Table::VwapHistory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Trades => "trades",
            Table::Buckets1s => "trade_buckets_1s",
            Table::Buckets1m => "trade_buckets_1m",
            Table::VwapHistory => "vwap_history",
        }
    }
}

/// Creates the partitions of `table` covering `[from_ms, to_ms]`; returns how many were new.
pub async fn ensure(
    pool: &PgPool,
    table: Table,
    from_ms: i64,
    to_ms: i64,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pf_ensure_partitions($1, $2, $3)")
        .bind(table.name())
        .bind(from_ms)
        .bind(to_ms)
        .fetch_one(pool)
        .await
}

/// Drops the partitions of `table` that end at or before `before_ms`; returns how many.
pub async fn drop_before(pool: &PgPool, table: Table, before_ms: i64) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pf_drop_partitions_before($1, $2)")
        .bind(table.name())
        .bind(before_ms)
        .fetch_one(pool)
        .await
}

/// Days this process has already made sure exist, so the write path asks Postgres once per day
/// and table, not once per batch.
#[derive(Debug, Clone, Default)]
pub struct KnownDays {
    seen: Arc<Mutex<HashSet<(Table, i64)>>>,
}

impl KnownDays {
    /// Forgets everything (a partition this process created was dropped since).
    pub fn forget(&self) {
        self.seen.lock().unwrap().clear();
    }

    /// Ensures the days of `[from_ms, to_ms]` exist for `table`, asking Postgres only about days
    /// not seen before.
    pub async fn ensure(
        &self,
        pool: &PgPool,
        table: Table,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let first = from_ms.div_euclid(DAY_MS);
        let last = to_ms.div_euclid(DAY_MS);
        let unknown = {
            let seen = self.seen.lock().unwrap();
            (first..=last).any(|d| !seen.contains(&(table, d)))
        };
        if !unknown {
            return Ok(());
        }
        ensure(pool, table, from_ms, to_ms).await?;
        let mut seen = self.seen.lock().unwrap();
        for d in first..=last {
            seen.insert((table, d));
        }
        Ok(())
    }
}
