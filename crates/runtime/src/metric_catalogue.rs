//! Every Prometheus metric the binaries export: name, type, labels with their values, which
//! process exports it, and what it means. Pure data: nothing here registers a metric.
//!
//! `tests/metrics_reference.rs` renders `docs/metrics.md` from this table, checks that every
//! `counter!`/`gauge!`/`histogram!` in the sources is listed here with its type and labels (and
//! nothing else is), and the names against the Prometheus conventions below;
//! `tests/docs_live.rs` checks it against what a live node, scheduler and worker export.
//!
//! Conventions: base units in the name (`_seconds`, `_bytes`), `_total` on counters and only on
//! them, labels with a bounded set of values (markets, reasons, outcomes, route templates; never
//! a symbol, user, alert or request id), and a `pricefeed_` prefix — except the shared HTTP
//! stack's `http_*` RED metrics and the simulator's `sim_*` (test tooling).

/// The processes that export metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    Node,
    Scheduler,
    Worker,
    /// `pricefeed-sim`, the exchange simulator (development and tests only).
    Sim,
}

impl Process {
    pub fn as_str(self) -> &'static str {
        match self {
            Process::Node => "node",
            Process::Scheduler => "scheduler",
            Process::Worker => "worker",
            Process::Sim => "sim",
        }
    }
}

/// What the code creates. The Prometheus exporter renders a histogram as a summary
/// (`quantile` label plus `_sum` and `_count`), computed per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The macro that creates it (`counter!`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    /// The `# TYPE` the exporter gives it in `/metrics`.
    pub fn exposition(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "summary",
        }
    }
}

/// One metric. A label with no listed values takes values known only at run time (still
/// bounded: route templates, status codes, connection numbers, node ids).
#[derive(Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [(&'static str, &'static [&'static str])],
    pub by: &'static [Process],
    pub help: &'static str,
}

const N: &[Process] = &[Process::Node];
const S: &[Process] = &[Process::Scheduler];
const W: &[Process] = &[Process::Worker];
const NS: &[Process] = &[Process::Node, Process::Scheduler];
const ALL: &[Process] = &[Process::Node, Process::Scheduler, Process::Worker];
/// The HTTP stack runs in the simulator too (its control and ops routes).
const ALL_SIM: &[Process] = &[
    Process::Node,
    Process::Scheduler,
    Process::Worker,
    Process::Sim,
];
const SIM: &[Process] = &[Process::Sim];

const MARKET: (&str, &[&str]) = ("market", &["spot", "usdm", "options"]);

use Kind::{Counter, Gauge, Histogram};

/// The catalogue, grouped by subsystem.
pub const METRICS: &[Metric] = &[
    // --- HTTP (every listener: API on nodes, ops routes on scheduler and worker) ---
    Metric {
        name: "http_requests_total",
        kind: Counter,
        labels: &[("method", &[]), ("route", &[]), ("status", &[])],
        by: ALL_SIM,
        help: "HTTP requests answered, by method, route template and status code (RED: rate and errors).",
    },
    Metric {
        name: "http_request_duration_seconds",
        kind: Histogram,
        labels: &[("method", &[]), ("route", &[])],
        by: ALL_SIM,
        help: "Time from request to response head, by method and route template (RED: duration).",
    },
    // --- ingest (nodes) ---
    Metric {
        name: "pricefeed_trades_accepted_total",
        kind: Counter,
        labels: &[MARKET],
        by: N,
        help: "Trades accepted (WebSocket and backfill), each trade id once: the ingest rate.",
    },
    Metric {
        name: "pricefeed_feed_rejected_total",
        kind: Counter,
        labels: &[
            MARKET,
            (
                "kind",
                &[
                    "non_positive_price",
                    "non_positive_qty",
                    "from_the_future",
                    "before_earliest",
                ],
            ),
        ],
        by: N,
        help: "Trades that failed validation, by reason.",
    },
    Metric {
        name: "pricefeed_feed_malformed_total",
        kind: Counter,
        labels: &[MARKET, ("kind", &["json", "missing_field"])],
        by: N,
        help: "Broker frames that could not be decoded.",
    },
    Metric {
        name: "pricefeed_backfill_pages_total",
        kind: Counter,
        labels: &[MARKET],
        by: N,
        help: "REST backfill pages requested: one per instrument and pass, from its first missing id to its last (at most 1 000).",
    },
    Metric {
        name: "pricefeed_backfill_scheduled_instruments",
        kind: Gauge,
        labels: &[],
        by: N,
        help: "Instruments with open gaps waiting for (or being paged by) backfill.",
    },
    Metric {
        name: "pricefeed_gap_ids_abandoned_total",
        kind: Counter,
        labels: &[MARKET],
        by: N,
        help: "Missing trade ids the live path stopped waiting for: too many gaps open at once, or the broker no longer has them. Reconciliation still stores them; alerts and live windows never see them.",
    },
    Metric {
        name: "pricefeed_backfilled_trades_total",
        kind: Counter,
        labels: &[MARKET],
        by: N,
        help: "Trades accepted from REST backfill.",
    },
    // --- broker connections (nodes) ---
    Metric {
        name: "pricefeed_feed_connections",
        kind: Gauge,
        labels: &[MARKET],
        by: N,
        help: "Open broker WebSocket connections.",
    },
    Metric {
        name: "pricefeed_feed_streams",
        kind: Gauge,
        labels: &[MARKET],
        by: N,
        help: "Trade streams subscribed on the broker.",
    },
    Metric {
        name: "pricefeed_feed_disconnects_total",
        kind: Counter,
        labels: &[
            MARKET,
            (
                "reason",
                &[
                    "shutdown",
                    "retired",
                    "server_shutdown",
                    "stall",
                    "order",
                    "server_closed",
                    "error",
                    "connect_failed",
                    "lifetime",
                ],
            ),
        ],
        by: N,
        help: "Broker connections ended (each is replaced: the reconnect count), by reason.",
    },
    Metric {
        name: "pricefeed_feed_connect_budget_waits_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Connection attempts that waited for the connect budget (`node.feed.connect_budget`).",
    },
    Metric {
        name: "pricefeed_feed_last_message_age_seconds",
        kind: Gauge,
        labels: &[MARKET, ("conn", &[])],
        by: N,
        help: "Time since a broker connection's last frame, per connection number.",
    },
    Metric {
        name: "pricefeed_feed_orders_total",
        kind: Counter,
        labels: &[(
            "result",
            &[
                "applied",
                "malformed",
                "other_node",
                "unknown_conn",
                "not_connected",
                "stale_term",
            ],
        )],
        by: N,
        help: "Reconnect orders from the scheduler's feed-health check, by what the node did.",
    },
    Metric {
        name: "pricefeed_rest_used_weight",
        kind: Gauge,
        labels: &[MARKET],
        by: ALL,
        help: "REST request weight used in the exchange's current window, as it reports it (nodes: backfill; scheduler: instrument sync; workers: reconciliation).",
    },
    Metric {
        name: "pricefeed_rest_rate_limited_total",
        kind: Counter,
        labels: &[MARKET, ("status", &["429", "418"])],
        by: ALL,
        help: "REST calls the exchange refused for rate (429) or with a ban (418).",
    },
    Metric {
        name: "pricefeed_backfill_held_total",
        kind: Counter,
        labels: &[MARKET],
        by: N,
        help: "Gap backfill calls that waited out a 429/418 hold (this process's or one shared through Redis) instead of failing.",
    },
    Metric {
        name: "pricefeed_ingest_fenced_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Instruments whose flush Redis refused because another node holds the live claim (this node was cut off while its slice moved; decision 0013).",
    },
    Metric {
        name: "pricefeed_ingest_flush_retries_applied_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Flush retries Redis recognised as already applied (the first answer was lost, e.g. a response timeout): counted once, not twice.",
    },
    // --- HTTP server and limits ---
    Metric {
        name: "pricefeed_server_connections",
        kind: Gauge,
        labels: &[],
        by: ALL_SIM,
        help: "Open HTTP connections of the process's listener.",
    },
    Metric {
        name: "pricefeed_server_header_timeouts_total",
        kind: Counter,
        labels: &[],
        by: ALL_SIM,
        help: "Connections closed because no request head arrived within http.header_read_timeout_ms (slowloris or idle keep-alive).",
    },
    Metric {
        name: "pricefeed_rate_limited_total",
        kind: Counter,
        labels: &[("scope", &["address", "user", "user_writes"])],
        by: N,
        help: "Requests refused with 429 by node.limits, by which limit.",
    },
    Metric {
        name: "pricefeed_rate_limit_untracked_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Requests let through unlimited because a limiter already tracked node.limits.max_tracked keys.",
    },
    // --- process (every binary, read from /proc/self at scrape time) ---
    Metric {
        name: "process_resident_memory_bytes",
        kind: Gauge,
        labels: &[],
        by: ALL_SIM,
        help: "Resident memory of the process.",
    },
    Metric {
        name: "process_virtual_memory_bytes",
        kind: Gauge,
        labels: &[],
        by: ALL_SIM,
        help: "Virtual memory size of the process.",
    },
    Metric {
        name: "process_threads",
        kind: Gauge,
        labels: &[],
        by: ALL_SIM,
        help: "OS threads of the process.",
    },
    Metric {
        name: "process_open_fds",
        kind: Gauge,
        labels: &[],
        by: ALL_SIM,
        help: "Open file descriptors (sockets included): a connection leak shows here.",
    },
    Metric {
        name: "process_max_fds",
        kind: Gauge,
        labels: &[],
        by: ALL_SIM,
        help: "Soft limit of open file descriptors.",
    },
    Metric {
        name: "process_cpu_seconds_total",
        kind: Counter,
        labels: &[],
        by: ALL_SIM,
        help: "User + system CPU time of the process, in whole seconds.",
    },
    Metric {
        name: "pricefeed_runtime_alive_tasks",
        kind: Gauge,
        labels: &[],
        by: ALL_SIM,
        help: "Tokio tasks alive in the process: a task leak shows here.",
    },
    // --- cluster membership ---
    Metric {
        name: "pricefeed_node_slice_size",
        kind: Gauge,
        labels: &[],
        by: N,
        help: "Instruments in this node's slice of the assignment.",
    },
    Metric {
        name: "pricefeed_assignment_epoch",
        kind: Gauge,
        labels: &[],
        by: NS,
        help: "Epoch of the slice assignment (published by the leader, followed by the nodes).",
    },
    Metric {
        name: "pricefeed_scheduler_is_leader",
        kind: Gauge,
        labels: &[],
        by: S,
        help: "1 while this scheduler holds the leader lease, 0 on a standby.",
    },
    Metric {
        name: "pricefeed_reconnect_orders_total",
        kind: Counter,
        labels: &[("node", &[])],
        by: S,
        help: "Reconnect orders sent for silent feed connections, by node id (bounded by the cluster's nodes; set `node.id` so it stays so across restarts).",
    },
    Metric {
        name: "pricefeed_sync_runs_total",
        kind: Counter,
        labels: &[
            ("kind", &["underlyings", "derivatives"]),
            ("result", &["ok", "error", "fenced"]),
        ],
        by: S,
        help: "Instrument sync runs against the broker's exchangeInfo.",
    },
    Metric {
        name: "pricefeed_sync_instruments",
        kind: Gauge,
        labels: &[("kind", &["underlyings", "derivatives"])],
        by: S,
        help: "Instruments the last sync saw.",
    },
    Metric {
        name: "pricefeed_partitions_dropped_total",
        kind: Counter,
        labels: &[(
            "table",
            &[
                "trades",
                "trade_buckets_1s",
                "trade_buckets_1m",
                "vwap_history",
            ],
        )],
        by: S,
        help: "Day partitions dropped by retention.",
    },
    // --- history writer (nodes) ---
    Metric {
        name: "pricefeed_trades_written_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Trade rows written to Postgres by the history writer.",
    },
    Metric {
        name: "pricefeed_trade_writer_queue_rows",
        kind: Gauge,
        labels: &[],
        by: N,
        help: "Rows waiting in the history writer's queue.",
    },
    Metric {
        name: "pricefeed_trade_writer_refused_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Rows the history writer refused (queue full and spill budget spent); reconciliation refills them.",
    },
    Metric {
        name: "pricefeed_trade_writer_spilled_rows_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Rows spilled to disk because the queue was full (replayed later).",
    },
    Metric {
        name: "pricefeed_trade_writer_spill_bytes",
        kind: Gauge,
        labels: &[],
        by: N,
        help: "Bytes in the spill directory.",
    },
    Metric {
        name: "pricefeed_trade_writer_duplicates_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Rows already in Postgres (another node or reconciliation wrote them first).",
    },
    Metric {
        name: "pricefeed_trade_writer_confirmed_skipped_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Rows skipped because reconciliation had already confirmed their range.",
    },
    Metric {
        name: "pricefeed_trade_writer_batch_failures_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Batch writes that failed (retried).",
    },
    Metric {
        name: "pricefeed_trade_writer_batch_seconds",
        kind: Histogram,
        labels: &[],
        by: N,
        help: "Time to write one batch.",
    },
    // --- live windows, caches (nodes) ---
    Metric {
        name: "pricefeed_live_windows_bytes",
        kind: Gauge,
        labels: &[],
        by: N,
        help: "Heap held by the live VWAP/statistics windows.",
    },
    Metric {
        name: "pricefeed_live_rebuilds_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Live windows rebuilt from Postgres (a gained instrument).",
    },
    Metric {
        name: "pricefeed_live_refreshes_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Live windows refreshed with REST-validated buckets from Postgres.",
    },
    Metric {
        name: "pricefeed_live_cache_total",
        kind: Counter,
        labels: &[("cache", &["price", "vwap"]), ("result", &["hit", "miss"])],
        by: N,
        help: "Lookups in the node's cache of latest prices and VWAPs (a miss reads Redis).",
    },
    // --- alerts (nodes) ---
    Metric {
        name: "pricefeed_alerts_indexed",
        kind: Gauge,
        labels: &[],
        by: N,
        help: "Active alerts indexed for the instruments this node owns.",
    },
    Metric {
        name: "pricefeed_alerts_index_bytes",
        kind: Gauge,
        labels: &[],
        by: N,
        help: "Heap held by the alert index.",
    },
    Metric {
        name: "pricefeed_alert_triggers_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Alert triggers recorded.",
    },
    Metric {
        name: "pricefeed_alert_backlog_dropped_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Trades dropped unevaluated from an alert slot's bounded backlog (held while its rules load).",
    },
    // --- client WebSocket (nodes) ---
    Metric {
        name: "pricefeed_stream_connections",
        kind: Gauge,
        labels: &[],
        by: N,
        help: "Open client WebSocket connections.",
    },
    Metric {
        name: "pricefeed_stream_connections_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Client WebSocket connections accepted.",
    },
    Metric {
        name: "pricefeed_stream_closed_total",
        kind: Counter,
        labels: &[(
            "reason",
            &["client", "shutdown", "slow", "rate", "too_big", "idle"],
        )],
        by: N,
        help: "Client WebSocket connections closed, by reason.",
    },
    Metric {
        name: "pricefeed_stream_frames_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Frames sent to client WebSocket connections.",
    },
    Metric {
        name: "pricefeed_stream_conflated_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Updates replaced by a newer one before a slow client took them.",
    },
    Metric {
        name: "pricefeed_stream_hub_dropped_total",
        kind: Counter,
        labels: &[],
        by: N,
        help: "Update batches the stream hub's queue could not take (clients miss intermediate values only).",
    },
    // --- reconciliation (leader: lag; workers: jobs) ---
    Metric {
        name: "pricefeed_reconcile_lag_seconds",
        kind: Gauge,
        labels: &[MARKET, ("stat", &["max", "p50"])],
        by: S,
        help: "How far the REST-validated cursor is behind now, over the market's instruments.",
    },
    Metric {
        name: "pricefeed_reconcile_behind_instruments",
        kind: Gauge,
        labels: &[MARKET],
        by: S,
        help: "Instruments whose validated cursor is more than 2 minutes behind.",
    },
    Metric {
        name: "pricefeed_reconcile_trades_confirmed_total",
        kind: Counter,
        labels: &[MARKET],
        by: W,
        help: "Stored trades REST confirmed.",
    },
    Metric {
        name: "pricefeed_reconcile_trades_inserted_total",
        kind: Counter,
        labels: &[MARKET],
        by: W,
        help: "Trades REST had that history lacked (inserted).",
    },
    Metric {
        name: "pricefeed_reconcile_trades_removed_total",
        kind: Counter,
        labels: &[MARKET],
        by: W,
        help: "Stored trades REST did not have (removed).",
    },
    Metric {
        name: "pricefeed_reconcile_steps_total",
        kind: Counter,
        labels: &[("outcome", &["committed", "fills", "stale", "fenced"])],
        by: W,
        help: "Reconciliation steps, by outcome.",
    },
    Metric {
        name: "pricefeed_reconcile_skipped_total",
        kind: Counter,
        labels: &[MARKET],
        by: W,
        help: "Trade ids the broker no longer serves, skipped by reconciliation (they stay unconfirmed).",
    },
    Metric {
        name: "pricefeed_reconcile_rest_weight_total",
        kind: Counter,
        labels: &[MARKET],
        by: W,
        help: "REST request weight spent by reconciliation.",
    },
    Metric {
        name: "pricefeed_job_seconds",
        kind: Histogram,
        labels: &[("kind", &["email", "reconcile"])],
        by: W,
        help: "Run time of worker jobs.",
    },
    // --- alert emails (workers) ---
    Metric {
        name: "pricefeed_email_deliveries_total",
        kind: Counter,
        labels: &[("outcome", &["sent", "dead", "skipped"])],
        by: W,
        help: "Alert email jobs finished: `sent`, `dead` (given up) or `skipped` (deleted with its alert, or already finished).",
    },
    Metric {
        name: "pricefeed_email_attempts_total",
        kind: Counter,
        labels: &[(
            "outcome",
            &["accepted", "transient", "permanent", "unknown"],
        )],
        by: W,
        help: "SMTP send attempts, by how the relay answered.",
    },
    Metric {
        name: "pricefeed_email_send_seconds",
        kind: Histogram,
        labels: &[(
            "outcome",
            &["accepted", "transient", "permanent", "unknown"],
        )],
        by: W,
        help: "Time of one SMTP send attempt.",
    },
    Metric {
        name: "pricefeed_email_trigger_to_accepted_seconds",
        kind: Histogram,
        labels: &[],
        by: W,
        help: "From the alert's trigger to the relay accepting its email.",
    },
    // --- exchange simulator (development and tests) ---
    Metric {
        name: "sim_trades_generated_total",
        kind: Counter,
        labels: &[],
        by: SIM,
        help: "Trades the simulated exchange generated (all markets).",
    },
    Metric {
        name: "sim_ws_connections",
        kind: Gauge,
        labels: &[("market", &["spot", "futures", "options"])],
        by: SIM,
        help: "Open market-data WebSocket connections.",
    },
    Metric {
        name: "sim_ws_frames_sent_total",
        kind: Counter,
        labels: &[],
        by: SIM,
        help: "Market-data frames sent.",
    },
    Metric {
        name: "sim_ws_disconnects_total",
        kind: Counter,
        labels: &[("reason", &[])],
        by: SIM,
        help: "Market-data connections ended, by why (the connection's end state).",
    },
    Metric {
        name: "sim_ws_faults_total",
        kind: Counter,
        labels: &[(
            "kind",
            &[
                "none",
                "drop",
                "duplicate",
                "reorder",
                "corrupt",
                "stall",
                "disconnect",
                "delay",
            ],
        )],
        by: SIM,
        help: "Faults injected (`[sim.faults]`, `/control`), by kind.",
    },
    Metric {
        name: "sim_ws_rate_limited_total",
        kind: Counter,
        labels: &[],
        by: SIM,
        help: "Connections closed with 1008 for sending too many messages.",
    },
    Metric {
        name: "sim_ws_slow_clients_total",
        kind: Counter,
        labels: &[],
        by: SIM,
        help: "Connections closed because the client did not read.",
    },
    Metric {
        name: "sim_rest_limited_total",
        kind: Counter,
        labels: &[("status", &["429", "418"])],
        by: SIM,
        help: "REST requests refused for request weight (429) or a ban (418).",
    },
];
/// `docs/metrics.md`: the catalogue as tables, one per process.
pub fn render() -> String {
    let mut out = String::from(HEADER);
    for p in [
        Process::Node,
        Process::Scheduler,
        Process::Worker,
        Process::Sim,
    ] {
        out.push_str(&format!("## `{}`\n\n", binary_of(p)));
        out.push_str("| metric | type | labels | meaning |\n|---|---|---|---|\n");
        for m in METRICS.iter().filter(|m| m.by.contains(&p)) {
            let labels: Vec<String> = m
                .labels
                .iter()
                .map(|(k, values)| {
                    if values.is_empty() {
                        format!("`{k}`")
                    } else {
                        format!("`{k}` = {}", values.join(" \\| "))
                    }
                })
                .collect();
            let unit = unit_of(m.name)
                .map(|u| format!(" ({u})"))
                .unwrap_or_default();
            out.push_str(&format!(
                "| `{}` | {}{} | {} | {} |\n",
                m.name,
                m.kind.as_str(),
                unit,
                if labels.is_empty() {
                    "none".to_string()
                } else {
                    labels.join("<br>")
                },
                m.help.replace('|', "\\|"),
            ));
        }
        out.push('\n');
    }
    out
}

fn binary_of(p: Process) -> &'static str {
    match p {
        Process::Node => "pricefeed-node",
        Process::Scheduler => "pricefeed-scheduler scheduler",
        Process::Worker => "pricefeed-scheduler worker",
        Process::Sim => "pricefeed-sim",
    }
}

/// The unit a name carries (Prometheus convention: the base unit as the last word before
/// `_total`).
fn unit_of(name: &str) -> Option<&'static str> {
    let stem = name.strip_suffix("_total").unwrap_or(name);
    [("_seconds", "seconds"), ("_bytes", "bytes")]
        .into_iter()
        .find(|(suffix, _)| stem.ends_with(suffix))
        .map(|(_, u)| u)
}

const HEADER: &str = "# Metrics reference

<!-- Generated from crates/runtime/src/metric_catalogue.rs by tests/metrics_reference.rs; do not
     edit by hand. Regenerate: PRICEFEED_REGENERATE=1 cargo test -p pricefeed-tests --test metrics_reference -->

Every metric each binary exports on its ops listener's `GET /metrics` (Prometheus text format).
`tests/metrics_reference.rs` fails when a `counter!`, `gauge!` or `histogram!` in the sources is
missing here, has another type or other labels; `tests/docs_live.rs` checks every family a live
node, scheduler and worker export against this list.

**Types.** A *histogram* is exported as a Prometheus **summary**: `quantile` label (0, 0.5, 0.9,
0.95, 0.99, 0.999, 1) plus `_sum` and `_count`, computed per process over a sliding window.
Quantiles cannot be summed across processes: take `max by (...)` over nodes, or rates of
`_sum`/`_count` for a mean.

**Labels.** Where values are listed, those are all the values; otherwise the set is bounded by
the deployment (route templates, status codes, broker connection numbers, node ids). No label
ever carries a symbol, a user, an alert or a request id. `market` is `spot`, `usdm` or `options`.

**When a series appears.** A series exists from its first event (a counter that never counted
is absent rather than 0): use `or vector(0)` in alerts on rare events.

Dashboards: `docker/grafana/dashboards/pricefeed.json`; operating procedures: `docs/runbook.md`.

";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            let prefix = if m.by == [Process::Sim] {
                "sim_"
            } else if m.name.starts_with("http_") {
                // The shared HTTP stack's RED metrics, on every binary (dashboards query them).
                "http_"
            } else if m.name.starts_with("process_") {
                // Prometheus's standard process-collector names, which dashboards expect.
                "process_"
            } else {
                "pricefeed_"
            };
            assert!(
                m.name.starts_with(prefix),
                "{}: no `{prefix}` prefix",
                m.name
            );
            assert_eq!(
                m.kind == Counter,
                m.name.ends_with("_total"),
                "{}: `_total` is for counters and only them",
                m.name
            );
            if m.kind == Histogram {
                assert!(
                    m.name.ends_with("_seconds"),
                    "{}: histograms are in seconds",
                    m.name
                );
            }
            for bad in ["_ms", "_millis", "_milliseconds", "_kb", "_mb"] {
                assert!(!m.name.contains(bad), "{}: use base units", m.name);
            }
            for (label, _) in m.labels {
                assert!(
                    ![
                        "symbol",
                        "user",
                        "user_id",
                        "alert",
                        "alert_id",
                        "request_id",
                        "email"
                    ]
                    .contains(label),
                    "{}: unbounded label {label}",
                    m.name
                );
            }
            assert!(!m.by.is_empty() && !m.help.is_empty(), "{}", m.name);
        }
    }
}
