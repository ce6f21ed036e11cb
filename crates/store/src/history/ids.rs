//! Instrument key ↔ the small integer id every history table uses (`instruments.id`).
//!
//! Ids never change once assigned, so a process caches them forever. Unknown keys are looked up
//! in bulk, and registered on the spot when missing (a trade of an instrument that was never
//! synced still gets stored; the sync's trigger uses the same table).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use pricefeed_domain::instrument::{InstrumentKey, Market, Symbol};
use sqlx::PgPool;

type IdMap = HashMap<(Market, Arc<str>), i32>;

/// Shared cache of instrument ids; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct InstrumentIds {
    by_key: Arc<RwLock<IdMap>>,
}

impl InstrumentIds {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached id of `market`/`symbol`, without a query.
    pub fn cached(&self, market: Market, symbol: &str) -> Option<i32> {
        // The map is keyed by Arc<str>; a &str lookup needs the Borrow impl of a tuple, which
        // does not exist, so probe through a temporary Arc only on this slow path.
        let map = self.by_key.read().unwrap();
        map.get(&(market, Arc::<str>::from(symbol))).copied()
    }

    /// Ids of `keys` (market, symbol), registering the missing ones; same order as `keys`.
    pub async fn resolve(
        &self,
        pool: &PgPool,
        keys: &[(Market, Arc<str>)],
    ) -> Result<Vec<i32>, sqlx::Error> {
        let mut missing: Vec<(Market, Arc<str>)> = Vec::new();
        {
            let map = self.by_key.read().unwrap();
            for k in keys {
                if !map.contains_key(k) && !missing.contains(k) {
                    missing.push(k.clone());
                }
            }
        }
        if !missing.is_empty() {
            let markets: Vec<&str> = missing.iter().map(|(m, _)| m.as_str()).collect();
            let symbols: Vec<&str> = missing.iter().map(|(_, s)| &**s).collect();
            sqlx::query(
                "INSERT INTO instruments (market, symbol) \
                 SELECT * FROM UNNEST($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
            )
            .bind(&markets)
            .bind(&symbols)
            .execute(pool)
            .await?;
            let rows: Vec<(i32, String, String)> = sqlx::query_as(
                "SELECT i.id, i.market, i.symbol FROM instruments i \
                 JOIN UNNEST($1::text[], $2::text[]) AS x(m, s) ON i.market = x.m AND i.symbol = x.s",
            )
            .bind(&markets)
            .bind(&symbols)
            .fetch_all(pool)
            .await?;
            let mut map = self.by_key.write().unwrap();
            for (id, m, s) in rows {
                if let Some(m) = Market::parse(&m) {
                    map.insert((m, Arc::from(s.as_str())), id);
                }
            }
        }
        let map = self.by_key.read().unwrap();
        keys.iter()
            .map(|k| {
                map.get(k).copied().ok_or_else(|| {
                    sqlx::Error::Protocol(format!("instrument {}:{} has no id", k.0, k.1))
                })
            })
            .collect()
    }

    /// The id of one instrument key, registering it when missing.
    pub async fn id_of(&self, pool: &PgPool, key: &InstrumentKey) -> Result<i32, sqlx::Error> {
        if let Some(id) = self.cached(key.market(), key.symbol_str()) {
            return Ok(id);
        }
        Ok(self
            .resolve(pool, &[(key.market(), Arc::from(key.symbol_str()))])
            .await?[0])
    }

    /// The id of a *known* instrument (listed in `underlyings`/`derivatives` or already given an
    /// id); `None` for an unknown one, without registering it (API lookups must not create ids
    /// for whatever a client types).
    pub async fn lookup(
        &self,
        pool: &PgPool,
        key: &InstrumentKey,
    ) -> Result<Option<i32>, sqlx::Error> {
        if let Some(id) = self.cached(key.market(), key.symbol_str()) {
            return Ok(Some(id));
        }
        let id: Option<i32> =
            sqlx::query_scalar("SELECT id FROM instruments WHERE market = $1 AND symbol = $2")
                .bind(key.market().as_str())
                .bind(key.symbol_str())
                .fetch_optional(pool)
                .await?;
        if let Some(id) = id {
            self.by_key
                .write()
                .unwrap()
                .insert((key.market(), Arc::from(key.symbol_str())), id);
        }
        Ok(id)
    }
}

/// The key of an instrument id (reverse lookup, uncached: used off the hot path).
pub async fn key_of(pool: &PgPool, id: i32) -> Result<Option<InstrumentKey>, sqlx::Error> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT market, symbol FROM instruments WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.and_then(|(m, s)| {
        Some(InstrumentKey::new(
            Market::parse(&m)?,
            &Symbol::parse(&s).ok()?,
        ))
    }))
}
