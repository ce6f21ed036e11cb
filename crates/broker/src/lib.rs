//! Binance wire protocol structs shared by the broker connector and the exchange simulator.
//!
//! Field names follow the exchange byte for byte (`e`, `E`, `s`, `t`, …) so the same structs
//! serialize in the simulator and deserialize in the connector. Prices and quantities are
//! [`Decimal`]s carried as JSON strings, as the exchange sends them; a `Decimal` keeps its scale,
//! so `Decimal::new(400000100, 8)` renders as `"4.00000100"` exactly like the exchange.
//!
//! Deserialization tolerates unknown fields on purpose: the exchange adds and removes fields
//! (the trade stream lost `b`/`a` in 2024) and a strict parser would break on the next change.
//!
//! - [`ws`]: stream events, the combined-stream wrapper and live-subscription requests/replies.
//! - [`rest`]: REST responses (trades, aggTrades, exchangeInfo of spot, USD-M futures, options)
//!   and the `{code,msg}` error body.
//! - [`rest_client`]: the REST client (timeouts, typed errors, weight header, 429/418 back-off).

pub mod rest;
pub mod rest_client;
pub mod ws;

pub use rest::ApiError;
