//! Instrument repository: underlyings and derivatives in Postgres.
//!
//! Reads serve the API; writes (upserts, delisting marks) are the scheduler's instrument sync.
//! Queries are runtime-checked (`sqlx::query`), so building needs no live database.

use pricefeed_domain::instrument::{
    Derivative, DerivativeKind, InstrumentKey, Market, Symbol, Underlying,
};
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};
use time::OffsetDateTime;

/// A stored underlying with bookkeeping columns.
#[derive(Debug, Clone)]
pub struct UnderlyingRow {
    pub inner: Underlying,
    pub delisted_at: Option<OffsetDateTime>,
}

/// A stored derivative with bookkeeping columns.
#[derive(Debug, Clone)]
pub struct DerivativeRow {
    pub inner: Derivative,
    pub delisted_at: Option<OffsetDateTime>,
}

/// Filters of `GET /api/v1/derivatives`.
#[derive(Debug, Clone, Default)]
pub struct DerivativeFilter {
    pub underlying: Option<Symbol>,
    pub kind: Option<DerivativeKind>,
    pub expiry_before_ms: Option<i64>,
    /// Keyset cursor: symbols strictly greater than this.
    pub after: Option<String>,
    pub limit: i64,
}

fn sym(s: String) -> Result<Symbol, sqlx::Error> {
    Symbol::parse(&s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn underlying_from_row(r: &sqlx::postgres::PgRow) -> Result<UnderlyingRow, sqlx::Error> {
    Ok(UnderlyingRow {
        inner: Underlying {
            symbol: sym(r.try_get("symbol")?)?,
            base_asset: r.try_get("base_asset")?,
            quote_asset: r.try_get("quote_asset")?,
            status: r.try_get("status")?,
            tick_size: r
                .try_get::<Option<Decimal>, _>("tick_size")?
                .map(|d| d.normalize()),
            step_size: r
                .try_get::<Option<Decimal>, _>("step_size")?
                .map(|d| d.normalize()),
        },
        delisted_at: r.try_get("delisted_at")?,
    })
}

fn derivative_from_row(r: &sqlx::postgres::PgRow) -> Result<DerivativeRow, sqlx::Error> {
    let kind: String = r.try_get("kind")?;
    let expiry: Option<OffsetDateTime> = r.try_get("expiry_at")?;
    Ok(DerivativeRow {
        inner: Derivative {
            symbol: sym(r.try_get("symbol")?)?,
            underlying: sym(r.try_get("underlying")?)?,
            kind: DerivativeKind::parse(&kind)
                .ok_or_else(|| sqlx::Error::Decode(format!("bad kind {kind}").into()))?,
            market: r.try_get("market")?,
            contract_type: r.try_get("contract_type")?,
            expiry_ms: expiry.map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
            strike: r
                .try_get::<Option<Decimal>, _>("strike")?
                .map(|d| d.normalize()),
            option_side: r.try_get("option_side")?,
            status: r.try_get("status")?,
            tick_size: r
                .try_get::<Option<Decimal>, _>("tick_size")?
                .map(|d| d.normalize()),
            step_size: r
                .try_get::<Option<Decimal>, _>("step_size")?
                .map(|d| d.normalize()),
        },
        delisted_at: r.try_get("delisted_at")?,
    })
}

/// Underlyings ordered by symbol, after an optional keyset cursor.
pub async fn list_underlyings(
    pool: &PgPool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<UnderlyingRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT symbol, base_asset, quote_asset, status, tick_size, step_size, delisted_at \
         FROM underlyings WHERE ($1::text IS NULL OR symbol > $1) ORDER BY symbol LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(underlying_from_row).collect()
}

pub async fn get_underlying(
    pool: &PgPool,
    symbol: &Symbol,
) -> Result<Option<UnderlyingRow>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT symbol, base_asset, quote_asset, status, tick_size, step_size, delisted_at \
         FROM underlyings WHERE symbol = $1",
    )
    .bind(symbol.as_str())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(underlying_from_row).transpose()
}

pub async fn list_derivatives(
    pool: &PgPool,
    f: &DerivativeFilter,
) -> Result<Vec<DerivativeRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.symbol, u.symbol AS underlying, d.kind::text AS kind, d.market, d.contract_type, \
                d.expiry_at, d.strike, d.option_side, d.status, d.tick_size, d.step_size, d.delisted_at \
         FROM derivatives d JOIN underlyings u ON u.id = d.underlying_id \
         WHERE ($1::text IS NULL OR u.symbol = $1) \
           AND ($2::text IS NULL OR d.kind::text = $2) \
           AND ($3::bigint IS NULL OR d.expiry_at < to_timestamp($3::double precision / 1000)) \
           AND ($4::text IS NULL OR d.symbol > $4) \
         ORDER BY d.symbol LIMIT $5",
    )
    .bind(f.underlying.as_ref().map(Symbol::as_str))
    .bind(f.kind.map(DerivativeKind::as_str))
    .bind(f.expiry_before_ms)
    .bind(f.after.as_deref())
    .bind(f.limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(derivative_from_row).collect()
}

/// Every instrument the cluster must subscribe to: tradable (`TRADING`, see
/// [`pricefeed_domain::instrument::is_tradable_status`]) and not delisted, underlyings and
/// derivatives alike, in key order. Underlyings are `spot:` instruments; derivatives carry their
/// `market` column (`usdm`, `options`), so a perpetual sharing its pair's symbol is a separate
/// key. A derivative whose market this build does not know is skipped with a warning rather than
/// failing the whole assignment. This is the instrument set the scheduler assigns to nodes.
pub async fn tradable_symbols(pool: &PgPool) -> Result<Vec<InstrumentKey>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT 'spot', symbol FROM underlyings WHERE status = 'TRADING' AND delisted_at IS NULL \
         UNION ALL \
         SELECT market, symbol FROM derivatives WHERE status = 'TRADING' AND delisted_at IS NULL",
    )
    .fetch_all(pool)
    .await?;
    let mut keys = Vec::with_capacity(rows.len());
    for (market, symbol) in rows {
        let Some(market) = Market::parse(&market) else {
            tracing::warn!(
                market,
                symbol,
                "derivative of an unknown market; not assigned"
            );
            continue;
        };
        keys.push(InstrumentKey::new(market, &sym(symbol)?));
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// The key of `symbol` on `market` if that instrument is known (listed, even if halted or
/// delisted): the latest-price API uses it to tell "unknown instrument" from "no trade yet".
pub async fn instrument_exists(pool: &PgPool, key: &InstrumentKey) -> Result<bool, sqlx::Error> {
    let sql = match key.market() {
        Market::Spot => "SELECT EXISTS (SELECT 1 FROM underlyings WHERE symbol = $1)",
        m => {
            return sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM derivatives WHERE symbol = $1 AND market = $2)",
            )
            .bind(key.symbol_str())
            .bind(m.as_str())
            .fetch_one(pool)
            .await;
        }
    };
    sqlx::query_scalar(sql)
        .bind(key.symbol_str())
        .fetch_one(pool)
        .await
}

/// Inserts or refreshes an underlying; clears a delisting mark when it trades again.
pub async fn upsert_underlying(pool: &PgPool, u: &Underlying) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO underlyings (symbol, base_asset, quote_asset, status, tick_size, step_size) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (symbol) DO UPDATE SET base_asset = EXCLUDED.base_asset, \
           quote_asset = EXCLUDED.quote_asset, status = EXCLUDED.status, \
           tick_size = EXCLUDED.tick_size, step_size = EXCLUDED.step_size, \
           last_seen_at = now(), delisted_at = NULL",
    )
    .bind(u.symbol.as_str())
    .bind(&u.base_asset)
    .bind(&u.quote_asset)
    .bind(&u.status)
    .bind(u.tick_size)
    .bind(u.step_size)
    .execute(pool)
    .await?;
    Ok(())
}

/// Inserts or refreshes a derivative; fails if its underlying is unknown (foreign key).
pub async fn upsert_derivative(pool: &PgPool, d: &Derivative) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO derivatives (symbol, underlying_id, kind, market, contract_type, expiry_at, \
                                  strike, option_side, status, tick_size, step_size) \
         SELECT $1, u.id, $3::derivative_kind, $4, $5, \
                CASE WHEN $6::bigint IS NULL THEN NULL ELSE to_timestamp($6::double precision / 1000) END, \
                $7, $8, $9, $10, $11 \
         FROM underlyings u WHERE u.symbol = $2 \
         ON CONFLICT (symbol) DO UPDATE SET underlying_id = EXCLUDED.underlying_id, \
           kind = EXCLUDED.kind, market = EXCLUDED.market, contract_type = EXCLUDED.contract_type, \
           expiry_at = EXCLUDED.expiry_at, strike = EXCLUDED.strike, \
           option_side = EXCLUDED.option_side, status = EXCLUDED.status, \
           tick_size = EXCLUDED.tick_size, step_size = EXCLUDED.step_size, \
           last_seen_at = now(), delisted_at = NULL",
    )
    .bind(d.symbol.as_str())
    .bind(d.underlying.as_str())
    .bind(d.kind.as_str())
    .bind(&d.market)
    .bind(&d.contract_type)
    .bind(d.expiry_ms)
    .bind(d.strike)
    .bind(&d.option_side)
    .bind(&d.status)
    .bind(d.tick_size)
    .bind(d.step_size)
    .execute(pool)
    .await
    .and_then(|r| {
        if r.rows_affected() == 0 {
            Err(sqlx::Error::RowNotFound)
        } else {
            Ok(())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn u(sym: &str) -> Underlying {
        Underlying {
            symbol: Symbol::parse(sym).unwrap(),
            base_asset: sym.trim_end_matches("USDT").into(),
            quote_asset: "USDT".into(),
            status: "TRADING".into(),
            tick_size: Some(Decimal::from_str("0.01").unwrap()),
            step_size: Some(Decimal::from_str("0.00100000").unwrap()),
        }
    }

    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    async fn upsert_and_list_round_trip(pool: PgPool) {
        for s in ["ETHUSDT", "BTCUSDT"] {
            upsert_underlying(&pool, &u(s)).await.unwrap();
        }
        let all = list_underlyings(&pool, None, 10).await.unwrap();
        assert_eq!(
            all.iter()
                .map(|r| r.inner.symbol.as_str())
                .collect::<Vec<_>>(),
            ["BTCUSDT", "ETHUSDT"]
        );
        assert_eq!(
            all[0].inner.step_size,
            Some(Decimal::from_str("0.001").unwrap())
        );
        let page2 = list_underlyings(&pool, Some("BTCUSDT"), 10).await.unwrap();
        assert_eq!(page2.len(), 1);

        let opt = Derivative {
            symbol: Symbol::parse("BTC-261225-90000-C").unwrap(),
            underlying: Symbol::parse("BTCUSDT").unwrap(),
            kind: DerivativeKind::Option,
            market: "options".into(),
            contract_type: None,
            expiry_ms: Some(1_798_185_600_000),
            strike: Some(Decimal::from(90_000)),
            option_side: Some("CALL".into()),
            status: "TRADING".into(),
            tick_size: None,
            step_size: None,
        };
        upsert_derivative(&pool, &opt).await.unwrap();
        let got = list_derivatives(
            &pool,
            &DerivativeFilter {
                underlying: Some(Symbol::parse("BTCUSDT").unwrap()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].inner, opt);

        // A derivative of an unknown underlying is refused, not silently orphaned.
        let mut orphan = opt.clone();
        orphan.symbol = Symbol::parse("XRP-261225-1-C").unwrap();
        orphan.underlying = Symbol::parse("XRPUSDT").unwrap();
        assert!(upsert_derivative(&pool, &orphan).await.is_err());
        let key = |s: &str| InstrumentKey::parse(s).unwrap();
        assert!(
            instrument_exists(&pool, &key("options:BTC-261225-90000-C"))
                .await
                .unwrap()
        );
        assert!(
            !instrument_exists(&pool, &key("usdm:BTC-261225-90000-C"))
                .await
                .unwrap()
        );
        assert!(
            instrument_exists(&pool, &key("spot:ETHUSDT"))
                .await
                .unwrap()
        );

        // Only tradable, non-delisted instruments are assigned to nodes.
        let mut halted = u("XRPUSDT");
        halted.status = "BREAK".into();
        upsert_underlying(&pool, &halted).await.unwrap();
        sqlx::query("UPDATE underlyings SET delisted_at = now() WHERE symbol = 'ETHUSDT'")
            .execute(&pool)
            .await
            .unwrap();
        // The perpetual shares its pair's symbol; keys keep them apart.
        let mut perp = opt.clone();
        perp.symbol = Symbol::parse("BTCUSDT").unwrap();
        perp.kind = DerivativeKind::Perpetual;
        perp.market = "usdm".into();
        perp.strike = None;
        perp.option_side = None;
        upsert_derivative(&pool, &perp).await.unwrap();
        let syms = tradable_symbols(&pool).await.unwrap();
        assert_eq!(
            syms.iter().map(InstrumentKey::as_str).collect::<Vec<_>>(),
            ["options:BTC-261225-90000-C", "spot:BTCUSDT", "usdm:BTCUSDT"]
        );
    }
}
