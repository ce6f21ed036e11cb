//! Instrument sync writes: the whole catalogue of a kind (underlyings, or derivatives of some
//! markets) applied in **one transaction**, fenced by the scheduler's lease term.
//!
//! One transaction because a sync must be all or nothing: a half-applied catalogue would
//! subscribe to some new instruments, delist others that merely had not been written yet, and
//! the next rebalance would act on it. Rows are never deleted; an instrument missing from the
//! broker's answer gets `delisted_at` set (and keeps its history and foreign keys), and one that
//! comes back has the mark cleared. Broker statuses are stored verbatim, unknown ones included.
//!
//! Fencing: the transaction first reads `cluster_state.term` `FOR SHARE`. A newer leader records
//! its term with an `UPDATE` of that row, which waits for our commit; so either our write commits
//! before the newer term exists, or we see the newer term and refuse to write at all.
//!
//! Batch writes use `UNNEST` arrays (one statement per table and step), which is what sqlx 0.9
//! does well over TCP (see rust-stack.md on `COPY`).

use std::collections::{BTreeSet, HashSet};

use pricefeed_domain::instrument::{Derivative, Symbol, Underlying};
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};

/// What one sync changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Instruments in the broker's answer that were written.
    pub seen: usize,
    /// New rows, or rows whose fields, status or delisting mark changed.
    pub changed: u64,
    /// Rows newly marked delisted because the broker no longer lists them.
    pub delisted: u64,
    /// Derivatives skipped because their underlying is not (yet) stored; the next underlying
    /// sync may bring it (a new listing) or never (a futures pair without a spot pair).
    pub orphans: Vec<Symbol>,
}

impl SyncOutcome {
    pub fn any_change(&self) -> bool {
        self.changed > 0 || self.delisted > 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A newer scheduler term exists: this process is no longer the leader; nothing was written.
    #[error("fenced off: term {ours} is older than the recorded term {recorded}")]
    Fenced { ours: u64, recorded: u64 },
    /// The broker returned no instrument at all while some are stored and listed. Applying it
    /// would delist everything, so it is treated as a bad payload.
    #[error("refusing an empty {what} catalogue while {stored} are listed")]
    EmptyCatalogue { what: &'static str, stored: i64 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

async fn fence(tx: &mut Transaction<'_, Postgres>, term: u64) -> Result<(), SyncError> {
    let (recorded,): (i64,) = sqlx::query_as("SELECT term FROM cluster_state WHERE id FOR SHARE")
        .fetch_one(&mut **tx)
        .await?;
    if recorded as u64 > term {
        return Err(SyncError::Fenced {
            ours: term,
            recorded: recorded as u64,
        });
    }
    Ok(())
}

/// Applies the full list of underlyings (spot pairs) the broker reports.
pub async fn sync_underlyings(
    pool: &PgPool,
    term: u64,
    rows: &[Underlying],
) -> Result<SyncOutcome, SyncError> {
    // A symbol twice in one statement would fail the whole upsert; keep the first.
    let mut seen = HashSet::new();
    let rows: Vec<&Underlying> = rows
        .iter()
        .filter(|u| seen.insert(u.symbol.as_str()))
        .collect();
    let mut tx = pool.begin().await?;
    fence(&mut tx, term).await?;
    if rows.is_empty() {
        let stored =
            sqlx::query_scalar("SELECT count(*) FROM underlyings WHERE delisted_at IS NULL")
                .fetch_one(&mut *tx)
                .await?;
        refuse_empty("underlying", stored)?;
    }
    let symbols: Vec<&str> = rows.iter().map(|u| u.symbol.as_str()).collect();
    let base: Vec<&str> = rows.iter().map(|u| u.base_asset.as_str()).collect();
    let quote: Vec<&str> = rows.iter().map(|u| u.quote_asset.as_str()).collect();
    let status: Vec<&str> = rows.iter().map(|u| u.status.as_str()).collect();
    let tick: Vec<Option<Decimal>> = rows.iter().map(|u| u.tick_size).collect();
    let step: Vec<Option<Decimal>> = rows.iter().map(|u| u.step_size).collect();

    // Only rows that are new or differ are written, so `rows_affected` is the change count.
    let changed = sqlx::query(
        "INSERT INTO underlyings (symbol, base_asset, quote_asset, status, tick_size, step_size) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::numeric[]) \
         ON CONFLICT (symbol) DO UPDATE SET base_asset = EXCLUDED.base_asset, \
           quote_asset = EXCLUDED.quote_asset, status = EXCLUDED.status, \
           tick_size = EXCLUDED.tick_size, step_size = EXCLUDED.step_size, \
           last_seen_at = now(), delisted_at = NULL \
         WHERE (underlyings.base_asset, underlyings.quote_asset, underlyings.status, \
                underlyings.tick_size, underlyings.step_size, underlyings.delisted_at IS NULL) \
           IS DISTINCT FROM \
               (EXCLUDED.base_asset, EXCLUDED.quote_asset, EXCLUDED.status, \
                EXCLUDED.tick_size, EXCLUDED.step_size, true)",
    )
    .bind(&symbols)
    .bind(&base)
    .bind(&quote)
    .bind(&status)
    .bind(&tick)
    .bind(&step)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("UPDATE underlyings SET last_seen_at = now() WHERE symbol = ANY($1)")
        .bind(&symbols)
        .execute(&mut *tx)
        .await?;
    let delisted = sqlx::query(
        "UPDATE underlyings SET delisted_at = now() \
         WHERE delisted_at IS NULL AND symbol <> ALL($1)",
    )
    .bind(&symbols)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(SyncOutcome {
        seen: rows.len(),
        changed,
        delisted,
        orphans: Vec::new(),
    })
}

/// Applies the full list of derivatives of `markets` (e.g. `["usdm", "options"]`); derivatives
/// of other markets are left alone. Derivatives whose underlying is unknown are skipped and
/// reported in [`SyncOutcome::orphans`] rather than failing the whole sync.
pub async fn sync_derivatives(
    pool: &PgPool,
    term: u64,
    markets: &[&str],
    rows: &[Derivative],
) -> Result<SyncOutcome, SyncError> {
    let mut tx = pool.begin().await?;
    fence(&mut tx, term).await?;
    let wanted: Vec<&str> = rows
        .iter()
        .map(|d| d.underlying.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let known: HashSet<String> =
        sqlx::query_as::<_, (String,)>("SELECT symbol FROM underlyings WHERE symbol = ANY($1)")
            .bind(&wanted)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(s,)| s)
            .collect();
    let mut seen = HashSet::new();
    let mut orphans = Vec::new();
    let mut kept: Vec<&Derivative> = Vec::with_capacity(rows.len());
    for d in rows {
        if !seen.insert(d.symbol.as_str()) {
            continue;
        }
        if known.contains(d.underlying.as_str()) {
            kept.push(d);
        } else {
            orphans.push(d.symbol.clone());
        }
    }
    if kept.is_empty() {
        let stored = sqlx::query_scalar(
            "SELECT count(*) FROM derivatives WHERE delisted_at IS NULL AND market = ANY($1)",
        )
        .bind(markets)
        .fetch_one(&mut *tx)
        .await?;
        refuse_empty("derivative", stored)?;
    }
    let symbol: Vec<&str> = kept.iter().map(|d| d.symbol.as_str()).collect();
    let underlying: Vec<&str> = kept.iter().map(|d| d.underlying.as_str()).collect();
    let kind: Vec<&str> = kept.iter().map(|d| d.kind.as_str()).collect();
    let market: Vec<&str> = kept.iter().map(|d| d.market.as_str()).collect();
    let contract: Vec<Option<&str>> = kept.iter().map(|d| d.contract_type.as_deref()).collect();
    let expiry: Vec<Option<i64>> = kept.iter().map(|d| d.expiry_ms).collect();
    let strike: Vec<Option<Decimal>> = kept.iter().map(|d| d.strike).collect();
    let side: Vec<Option<&str>> = kept.iter().map(|d| d.option_side.as_deref()).collect();
    let status: Vec<&str> = kept.iter().map(|d| d.status.as_str()).collect();
    let tick: Vec<Option<Decimal>> = kept.iter().map(|d| d.tick_size).collect();
    let step: Vec<Option<Decimal>> = kept.iter().map(|d| d.step_size).collect();

    let changed = sqlx::query(
        "INSERT INTO derivatives (symbol, underlying_id, kind, market, contract_type, expiry_at, \
                                  strike, option_side, status, tick_size, step_size) \
         SELECT x.s, u.id, x.k::derivative_kind, x.m, x.c, \
                CASE WHEN x.e IS NULL THEN NULL \
                     ELSE 'epoch'::timestamptz + x.e * interval '1 millisecond' END, \
                x.st, x.sd, x.status, x.t, x.p \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], \
                     $7::numeric[], $8::text[], $9::text[], $10::numeric[], $11::numeric[]) \
              AS x(s, u, k, m, c, e, st, sd, status, t, p) \
         JOIN underlyings u ON u.symbol = x.u \
         ON CONFLICT (symbol) DO UPDATE SET underlying_id = EXCLUDED.underlying_id, \
           kind = EXCLUDED.kind, market = EXCLUDED.market, contract_type = EXCLUDED.contract_type, \
           expiry_at = EXCLUDED.expiry_at, strike = EXCLUDED.strike, \
           option_side = EXCLUDED.option_side, status = EXCLUDED.status, \
           tick_size = EXCLUDED.tick_size, step_size = EXCLUDED.step_size, \
           last_seen_at = now(), delisted_at = NULL \
         WHERE (derivatives.underlying_id, derivatives.kind, derivatives.market, \
                derivatives.contract_type, derivatives.expiry_at, derivatives.strike, \
                derivatives.option_side, derivatives.status, derivatives.tick_size, \
                derivatives.step_size, derivatives.delisted_at IS NULL) \
           IS DISTINCT FROM \
               (EXCLUDED.underlying_id, EXCLUDED.kind, EXCLUDED.market, EXCLUDED.contract_type, \
                EXCLUDED.expiry_at, EXCLUDED.strike, EXCLUDED.option_side, EXCLUDED.status, \
                EXCLUDED.tick_size, EXCLUDED.step_size, true)",
    )
    .bind(&symbol)
    .bind(&underlying)
    .bind(&kind)
    .bind(&market)
    .bind(&contract)
    .bind(&expiry)
    .bind(&strike)
    .bind(&side)
    .bind(&status)
    .bind(&tick)
    .bind(&step)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("UPDATE derivatives SET last_seen_at = now() WHERE symbol = ANY($1)")
        .bind(&symbol)
        .execute(&mut *tx)
        .await?;
    let delisted = sqlx::query(
        "UPDATE derivatives SET delisted_at = now() \
         WHERE delisted_at IS NULL AND market = ANY($2) AND symbol <> ALL($1)",
    )
    .bind(&symbol)
    .bind(markets)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(SyncOutcome {
        seen: kept.len(),
        changed,
        delisted,
        orphans,
    })
}

/// An empty catalogue while instruments are stored is a broker glitch, not a mass delisting.
fn refuse_empty(what: &'static str, stored: i64) -> Result<(), SyncError> {
    if stored > 0 {
        return Err(SyncError::EmptyCatalogue { what, stored });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pricefeed_domain::instrument::DerivativeKind;

    fn u(sym: &str, status: &str) -> Underlying {
        Underlying {
            symbol: Symbol::parse(sym).unwrap(),
            base_asset: sym.trim_end_matches("USDT").into(),
            quote_asset: "USDT".into(),
            status: status.into(),
            tick_size: Some(Decimal::new(1, 2)),
            step_size: None,
        }
    }

    fn perp(pair: &str) -> Derivative {
        Derivative {
            symbol: Symbol::parse(pair).unwrap(),
            underlying: Symbol::parse(pair).unwrap(),
            kind: DerivativeKind::Perpetual,
            market: "usdm".into(),
            contract_type: Some("PERPETUAL".into()),
            expiry_ms: None,
            strike: None,
            option_side: None,
            status: "TRADING".into(),
            tick_size: Some(Decimal::new(1, 1)),
            step_size: Some(Decimal::new(1, 3)),
        }
    }

    fn option(sym: &str, under: &str) -> Derivative {
        Derivative {
            symbol: Symbol::parse(sym).unwrap(),
            underlying: Symbol::parse(under).unwrap(),
            kind: DerivativeKind::Option,
            market: "options".into(),
            contract_type: None,
            expiry_ms: Some(1_798_185_600_000),
            strike: Some(Decimal::from(90_000)),
            option_side: Some("CALL".into()),
            status: "TRADING".into(),
            tick_size: None,
            step_size: None,
        }
    }

    async fn listed(pool: &PgPool, table: &str) -> Vec<(String, String, bool)> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT symbol, status, delisted_at IS NOT NULL FROM {table} ORDER BY symbol"
        )))
        .fetch_all(pool)
        .await
        .unwrap()
    }

    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    async fn upsert_marks_missing_and_never_deletes(pool: PgPool) {
        let out = sync_underlyings(
            &pool,
            1,
            &[u("BTCUSDT", "TRADING"), u("ETHUSDT", "TRADING")],
        )
        .await
        .unwrap();
        assert_eq!((out.seen, out.changed, out.delisted), (2, 2, 0));
        // Same input again: nothing changes (no spurious "instruments changed").
        let out = sync_underlyings(
            &pool,
            1,
            &[u("BTCUSDT", "TRADING"), u("ETHUSDT", "TRADING")],
        )
        .await
        .unwrap();
        assert!(!out.any_change(), "{out:?}");

        let d = sync_derivatives(
            &pool,
            1,
            &["usdm", "options"],
            &[
                perp("BTCUSDT"),
                perp("ETHUSDT"),
                option("BTC-261225-90000-C", "BTCUSDT"),
                perp("XRPUSDT"), // no spot pair stored: an orphan, skipped
            ],
        )
        .await
        .unwrap();
        assert_eq!((d.seen, d.changed), (3, 3));
        assert_eq!(d.orphans, [Symbol::parse("XRPUSDT").unwrap()]);

        // ETH disappears, BTC stops trading with a status nobody knows yet.
        let out = sync_underlyings(&pool, 1, &[u("BTCUSDT", "SOMETHING_NEW")])
            .await
            .unwrap();
        assert_eq!((out.changed, out.delisted), (1, 1));
        assert_eq!(
            listed(&pool, "underlyings").await,
            [
                ("BTCUSDT".into(), "SOMETHING_NEW".into(), false),
                ("ETHUSDT".into(), "TRADING".into(), true)
            ]
        );
        // Options vanish from the options market only; usdm rows are not touched by it.
        let d = sync_derivatives(&pool, 1, &["options"], &[])
            .await
            .unwrap_err();
        assert!(matches!(d, SyncError::EmptyCatalogue { .. }), "{d}");
        let d = sync_derivatives(
            &pool,
            1,
            &["usdm", "options"],
            &[perp("BTCUSDT"), perp("ETHUSDT")],
        )
        .await
        .unwrap();
        assert_eq!((d.changed, d.delisted), (0, 1));
        let derivs = listed(&pool, "derivatives").await;
        assert_eq!(derivs.len(), 3, "never deleted: {derivs:?}");
        assert!(derivs.contains(&("BTC-261225-90000-C".into(), "TRADING".into(), true)));
        let tradable = crate::instruments::tradable_symbols(&pool).await.unwrap();
        assert_eq!(
            tradable.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["usdm:BTCUSDT", "usdm:ETHUSDT"],
            "only the perpetuals trade; the spot rows are halted/delisted"
        );

        // Relisting clears the mark.
        let out = sync_underlyings(
            &pool,
            1,
            &[u("BTCUSDT", "TRADING"), u("ETHUSDT", "TRADING")],
        )
        .await
        .unwrap();
        assert_eq!((out.changed, out.delisted), (2, 0));
        assert!(listed(&pool, "underlyings").await.iter().all(|r| !r.2));
    }

    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    async fn a_failing_sync_changes_nothing(pool: PgPool) {
        sync_underlyings(
            &pool,
            1,
            &[u("BTCUSDT", "TRADING"), u("ETHUSDT", "TRADING")],
        )
        .await
        .unwrap();
        let before = listed(&pool, "underlyings").await;
        // An empty answer (bad payload) would delist everything: refused.
        let e = sync_underlyings(&pool, 1, &[]).await.unwrap_err();
        assert!(
            matches!(e, SyncError::EmptyCatalogue { stored: 2, .. }),
            "{e}"
        );
        // A row the database refuses (symbol too long for the underlyings check) fails the
        // statement after the new row would have been inserted: the transaction rolls back,
        // so SOLUSDT is not there and ETHUSDT is not delisted.
        let mut bad = u("SOLUSDT", "TRADING");
        bad.symbol = Symbol::parse(&"X".repeat(50)).unwrap();
        let e = sync_underlyings(&pool, 1, &[u("SOLUSDT", "TRADING"), bad])
            .await
            .unwrap_err();
        assert!(matches!(e, SyncError::Db(_)), "{e}");
        assert_eq!(listed(&pool, "underlyings").await, before);

        // A deposed leader (older term than the recorded one) writes nothing.
        crate::assignment::record_term(&pool, 7).await.unwrap();
        let e = sync_underlyings(&pool, 6, &[u("SOLUSDT", "TRADING")])
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                SyncError::Fenced {
                    ours: 6,
                    recorded: 7
                }
            ),
            "{e}"
        );
        assert_eq!(listed(&pool, "underlyings").await, before);
        sync_underlyings(&pool, 7, &[u("SOLUSDT", "TRADING")])
            .await
            .unwrap();
        assert_eq!(listed(&pool, "underlyings").await.len(), 3);
    }
}
