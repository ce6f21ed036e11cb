//! Broker WebSocket connector: per market, a manager task that lays the node's slice out over
//! connections ([`super::plan::Planner`]), and one task per connection that keeps its socket
//! alive and feeds every frame into the ingest state.
//!
//! A connection task, in a loop until shutdown or until its manager closes it:
//! - connects to `<ws_url>/ws` and subscribes its streams in batched SUBSCRIBEs, every outgoing
//!   message paced by a [`RollingLimiter`] (the exchange disconnects above 5 per second);
//! - reads continuously, so tungstenite answers the server's pings (it only does while polled);
//! - watchdog: no frame at all for `stall_timeout`, or a data silence that the connection's own
//!   recent rate makes implausible, ends the session ("stall");
//! - `serverShutdown` ends it and reconnects at once; any other end reconnects after a jittered
//!   exponential backoff, started over after a session that delivered trades or stayed up for
//!   `reconnect_reset_after` ([`super::limits::earns_reset`]); every attempt of the node takes
//!   a slot of its [`super::limits::ConnectBudget`] first;
//! - before `max_lifetime` it opens a replacement, subscribes it, then closes the old socket
//!   (overlap: duplicates are dropped by trade id, nothing is missed);
//! - a reconnect order from the scheduler ([`super::orders`]) ends the session and reconnects
//!   at once;
//! - every session end is logged once with its reason and counted in
//!   `pricefeed_feed_disconnects_total{market,reason}`.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use pricefeed_broker::ws::{
    FrameError, FrameRef, WsMethod, decode_frame, decode_text, render_request,
};
use pricefeed_domain::instrument::Market;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::{Backoff, ConnectBudget, RollingLimiter, earns_reset};
use super::state::{Core, Verdict};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Settings shared by every connection of a market.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    pub market: Market,
    /// Base URL, e.g. `ws://127.0.0.1:9100`; the connector appends `/ws`.
    pub ws_url: String,
    pub streams_per_request: usize,
    pub msgs_per_sec: usize,
    pub stall_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub reset_after: Duration,
    pub max_lifetime: Duration,
    /// Connection attempts of the whole node (shared by every market's settings).
    pub budget: ConnectBudget,
}

/// Health of one connection, read by the cluster API and the metrics upkeep.
#[derive(Debug)]
pub struct ConnHealth {
    pub market: Market,
    pub conn: u64,
    pub connected: AtomicBool,
    /// Wall-clock ms of the last frame of any kind.
    pub last_frame_ms: AtomicI64,
    /// Mean ms between the current session's trade arrivals, up to its last one (-1: too few so
    /// far): lets the scheduler tell a quiet connection from a silent one.
    pub mean_gap_ms: AtomicI64,
    pub streams: AtomicUsize,
    pub sessions: AtomicU64,
    /// Ends the current session and reconnects at once (a scheduler order, see
    /// [`super::orders`]). Woken with `notify_waiters`, so an order that arrives between
    /// sessions leaves no permit behind to cut the next, fresh session short.
    pub reconnect: Notify,
}

/// Every live connection of the node.
pub type HealthRegistry = Arc<Mutex<Vec<Arc<ConnHealth>>>>;

/// Commands from the market manager to a connection.
#[derive(Debug)]
pub enum Cmd {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
}

/// One read from the socket: a message, an error, or the end of the stream.
type Read = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;

/// How long the socket replaced by a lifetime rotation is still read.
const ROTATION_OVERLAP: Duration = Duration::from_secs(1);

/// Frames handled per wake-up of a session before the other select arms get a turn.
const FRAMES_PER_TURN: usize = 256;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Why a session ended; the label of the disconnect metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Shutdown,
    Retired,
    ServerShutdown,
    Stall,
    Order,
    ServerClosed,
    Error,
    ConnectFailed,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Retired => "retired",
            Self::ServerShutdown => "server_shutdown",
            Self::Stall => "stall",
            Self::Order => "order",
            Self::ServerClosed => "server_closed",
            Self::Error => "error",
            Self::ConnectFailed => "connect_failed",
        }
    }
}

/// Spawns a connection task carrying `streams`; returns its command sender.
pub fn spawn_connection(
    tracker: &TaskTracker,
    token: CancellationToken,
    settings: Arc<ConnSettings>,
    core: Arc<Mutex<Core>>,
    health: HealthRegistry,
    conn: u64,
    streams: Vec<String>,
) -> mpsc::UnboundedSender<Cmd> {
    let (tx, rx) = mpsc::unbounded_channel();
    let h = Arc::new(ConnHealth {
        market: settings.market,
        conn,
        connected: AtomicBool::new(false),
        last_frame_ms: AtomicI64::new(0),
        mean_gap_ms: AtomicI64::new(0),
        streams: AtomicUsize::new(streams.len()),
        sessions: AtomicU64::new(0),
        reconnect: Notify::new(),
    });
    health.lock().unwrap().push(h.clone());
    let task = Connection {
        settings,
        core,
        health: h.clone(),
        streams: streams.into_iter().collect(),
        next_id: 1,
        malformed_log: BurstLog::default(),
        trades: 0,
    };
    tracker.spawn(async move {
        task.run(rx, token).await;
        health.lock().unwrap().retain(|x| !Arc::ptr_eq(x, &h));
    });
    tx
}

/// "Logged at most once per burst": the first malformed frame after a quiet period is logged
/// with how many were suppressed since the previous line.
#[derive(Debug, Default)]
struct BurstLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl BurstLog {
    const QUIET: Duration = Duration::from_secs(10);

    fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < Self::QUIET => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

struct Connection {
    settings: Arc<ConnSettings>,
    core: Arc<Mutex<Core>>,
    health: Arc<ConnHealth>,
    streams: BTreeSet<String>,
    next_id: u64,
    malformed_log: BurstLog,
    /// Trades received over all sessions (tells a productive session from an empty one).
    trades: u64,
}

/// An open socket with its pacing and watchdog bookkeeping.
struct Session {
    ws: Ws,
    limiter: RollingLimiter,
    opened: Instant,
    last_frame: Instant,
    last_data: Instant,
    data_frames: u64,
    /// When the session's first trade arrived: with `last_data` and `data_frames`, the mean gap
    /// between trades measured up to the last one (a silence does not inflate its own yardstick).
    first_data: Option<Instant>,
    /// Distinct arrival instants of trades (a burst read at once counts once).
    data_arrivals: u64,
    /// Frames read while waiting for the SUBSCRIBE acknowledgements, handled first.
    backlog: Vec<Message>,
}

type Replacement = Pin<Box<dyn Future<Output = Result<Session, String>> + Send>>;

impl Connection {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>, token: CancellationToken) {
        let s = self.settings.clone();
        let market = s.market.as_str();
        let mut backoff = Backoff::new(s.backoff_min, s.backoff_max);
        loop {
            let waited = s.budget.wait_now().await;
            if !waited.is_zero() {
                metrics::counter!("pricefeed_feed_connect_budget_waits_total").increment(1);
                tracing::warn!(
                    market,
                    conn = self.health.conn,
                    wait_ms = waited.as_millis() as u64,
                    "node connection-attempt budget used up; waiting"
                );
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = s.budget.acquire() => {}
            }
            let trades_before = self.trades;
            let (end, detail, lasted) = match connect(
                &s,
                self.streams.iter().cloned().collect(),
                &mut self.next_id,
            )
            .await
            {
                Ok(session) => {
                    // The subscription acknowledgements were frames too; without this stamp a
                    // fresh session would look as silent as the one it replaced to the
                    // scheduler's feed-health watch until its first trade.
                    self.health.last_frame_ms.store(now_ms(), Ordering::Relaxed);
                    self.health.sessions.fetch_add(1, Ordering::Relaxed);
                    self.health.connected.store(true, Ordering::Relaxed);
                    metrics::gauge!("pricefeed_feed_connections", "market" => market)
                        .increment(1.0);
                    let opened = session.opened;
                    let (end, detail) = self.session(session, &mut rx, &token).await;
                    self.health.connected.store(false, Ordering::Relaxed);
                    metrics::gauge!("pricefeed_feed_connections", "market" => market)
                        .decrement(1.0);
                    (end, detail, opened.elapsed())
                }
                Err(e) => (End::ConnectFailed, e, Duration::ZERO),
            };
            metrics::counter!("pricefeed_feed_disconnects_total", "market" => market, "reason" => end.label())
                .increment(1);
            match end {
                End::Shutdown | End::Retired => {
                    tracing::info!(
                        market,
                        conn = self.health.conn,
                        reason = end.label(),
                        "feed connection closed"
                    );
                    return;
                }
                _ => {}
            }
            let trades = self.trades - trades_before;
            if earns_reset(lasted, trades, s.reset_after) {
                backoff.reset();
            }
            let delay = if matches!(end, End::ServerShutdown | End::Order) {
                // The exchange asks us to come back at once (to another server), or the
                // scheduler saw this connection silent: waiting a backoff only prolongs the gap
                // (the scheduler rate-limits its orders, so this cannot spin).
                Duration::ZERO
            } else {
                backoff.next_delay()
            };
            tracing::warn!(
                market,
                conn = self.health.conn,
                reason = end.label(),
                detail,
                lasted_ms = lasted.as_millis() as u64,
                retry_in_ms = delay.as_millis() as u64,
                "feed connection lost"
            );
            // Wait out the backoff while still taking slice changes, so the reconnect
            // subscribes the current set.
            let until = Instant::now() + delay;
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep_until(until) => break,
                    cmd = rx.recv() => match cmd {
                        Some(c) => self.apply_local(c),
                        None => return,
                    },
                }
            }
        }
    }

    fn apply_local(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Subscribe(v) => self.streams.extend(v),
            Cmd::Unsubscribe(v) => {
                for s in v {
                    self.streams.remove(&s);
                }
            }
        }
        self.health
            .streams
            .store(self.streams.len(), Ordering::Relaxed);
    }

    async fn send_cmd(
        &mut self,
        sess: &mut Session,
        method: WsMethod,
        streams: &[String],
    ) -> Result<(), String> {
        for chunk in streams.chunks(self.settings.streams_per_request.max(1)) {
            let params: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let id = self.next_id;
            self.next_id += 1;
            sess.limiter.acquire().await;
            sess.ws
                .send(Message::text(render_request(method, &params, id)))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn session(
        &mut self,
        mut sess: Session,
        rx: &mut mpsc::UnboundedReceiver<Cmd>,
        token: &CancellationToken,
    ) -> (End, String) {
        let s = self.settings.clone();
        let mut check = tokio::time::interval(Duration::from_millis(100));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut replacement: Option<(Replacement, BTreeSet<String>)> = None;
        if let Some(end) = self.drain_backlog(&mut sess) {
            return end;
        }
        // Registered once for the whole session, so no order is missed between loop turns.
        let health = self.health.clone();
        let ordered = health.reconnect.notified();
        tokio::pin!(ordered);
        // Pinned once too: a fresh `cancelled()` per frame cost ~3 % of the node's CPU at
        // 400 k trades/s (register and deregister a `Notified` each turn).
        let cancelled = token.cancelled();
        tokio::pin!(cancelled);
        // The previous socket after a lifetime rotation, read until its deadline: trades the
        // exchange queued on it before the replacement's subscription took effect are still on
        // their way when the replacement's acknowledgement arrives.
        let mut retiring: Option<(Session, Instant)> = None;
        loop {
            // Biased, data last: a socket that is always readable (the node behind under
            // overload) must not starve subscription commands, the stall check or the rotation.
            tokio::select! {
                biased;
                () = &mut cancelled => {
                    let _ = sess.ws.close(None).await;
                    return (End::Shutdown, String::new());
                }
                () = &mut ordered => {
                    let _ = sess.ws.close(None).await;
                    return (End::Order, "reconnect ordered by the scheduler".into());
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else {
                        let _ = sess.ws.close(None).await;
                        return (End::Retired, String::new());
                    };
                    let (method, list) = match &cmd {
                        Cmd::Subscribe(v) => (WsMethod::Subscribe, v.clone()),
                        Cmd::Unsubscribe(v) => (WsMethod::Unsubscribe, v.clone()),
                    };
                    self.apply_local(cmd);
                    if let Err(e) = self.send_cmd(&mut sess, method, &list).await {
                        return (End::Error, e);
                    }
                    // Keep the retiring socket's streams in step (an instrument that moved away
                    // must not keep arriving); best effort, it closes soon anyway.
                    if let Some((old, _)) = retiring.as_mut() && self.send_cmd(old, method, &list).await.is_err() {
                        retiring = None;
                    }
                }
                res = async { replacement.as_mut().expect("guarded").0.as_mut().await }, if replacement.is_some() => {
                    let (_, snapshot) = replacement.take().expect("guarded");
                    match res {
                        Ok(mut new) => {
                            // Changes that arrived while the replacement subscribed.
                            let add: Vec<String> = self.streams.difference(&snapshot).cloned().collect();
                            let del: Vec<String> = snapshot.difference(&self.streams).cloned().collect();
                            if !add.is_empty() && let Err(e) = self.send_cmd(&mut new, WsMethod::Subscribe, &add).await {
                                tracing::warn!(error = e, "replacement connection failed; keeping the old one");
                                continue;
                            }
                            if !del.is_empty() && let Err(e) = self.send_cmd(&mut new, WsMethod::Unsubscribe, &del).await {
                                tracing::warn!(error = e, "replacement connection failed; keeping the old one");
                                continue;
                            }
                            // The replacement has acknowledged its subscriptions: from here on it
                            // sees every trade. The old socket is still read for ROTATION_OVERLAP
                            // (duplicates from both are dropped by trade id), then closed.
                            let old = std::mem::replace(&mut sess, new);
                            if let Some((mut older, _)) = retiring.replace((old, Instant::now() + ROTATION_OVERLAP)) {
                                let _ = older.ws.close(None).await;
                            }
                            if let Some(end) = self.drain_backlog(&mut sess) {
                                return end;
                            }
                            self.health.sessions.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("pricefeed_feed_disconnects_total", "market" => s.market.as_str(), "reason" => "lifetime")
                                .increment(1);
                            tracing::info!(market = s.market.as_str(), conn = self.health.conn, reason = "lifetime", "feed connection rotated before its lifetime cut");
                        }
                        Err(e) => {
                            tracing::warn!(error = e, "replacement connection failed; retrying later");
                            // Retry after a backoff's worth of the lifetime check.
                            sess.opened = Instant::now() - s.max_lifetime + s.backoff_max;
                        }
                    }
                }
                frame = async { retiring.as_mut().expect("guarded").0.ws.next().await }, if retiring.is_some() => {
                    let (mut old, until) = retiring.take().expect("guarded");
                    // Whatever ends the old socket (close, error, serverShutdown) only ends the
                    // overlap; the session lives on the replacement.
                    if self.on_burst(frame, &mut old).is_none() && Instant::now() < until {
                        retiring = Some((old, until));
                    } else {
                        let _ = old.ws.close(None).await;
                    }
                }
                _ = check.tick() => {
                    let now = Instant::now();
                    self.health.mean_gap_ms.store(mean_gap_ms(&sess), Ordering::Relaxed);
                    if retiring.as_ref().is_some_and(|(_, until)| now >= *until) {
                        let (mut old, _) = retiring.take().expect("checked");
                        let _ = old.ws.close(None).await;
                    }
                    if let Some(reason) = stalled(&sess, now, s.stall_timeout) {
                        // Data is polled last: after a scheduling pause frames may be waiting
                        // behind this arm. Look before calling the connection stalled.
                        match sess.ws.next().now_or_never() {
                            Some(frame) => {
                                if let Some(end) = self.on_burst(frame, &mut sess) {
                                    return end;
                                }
                                continue;
                            }
                            None => return (End::Stall, reason),
                        }
                    }
                    if replacement.is_none() && now.duration_since(sess.opened) >= s.max_lifetime {
                        let snapshot = self.streams.clone();
                        let settings = s.clone();
                        let list: Vec<String> = snapshot.iter().cloned().collect();
                        let mut id = self.next_id + 1_000_000;
                        let fut: Replacement = Box::pin(async move { connect(&settings, list, &mut id).await });
                        replacement = Some((fut, snapshot));
                    }
                }
                frame = sess.ws.next() => {
                    if let Some(end) = self.on_burst(frame, &mut sess) {
                        return end;
                    }
                }
            }
        }
    }

    /// Handles `first` and then every frame already buffered on the socket, up to
    /// [`FRAMES_PER_TURN`], with one clock reading: a busy connection pays the select and the
    /// two clock calls once per burst, not once per trade. `Some` ends the session.
    fn on_burst(&mut self, first: Read, sess: &mut Session) -> Option<(End, String)> {
        let now = Instant::now();
        let wall = now_ms();
        sess.last_frame = now;
        self.health.last_frame_ms.store(wall, Ordering::Relaxed);
        if let Some(end) = self.on_frame(first, now, wall, sess) {
            return Some(end);
        }
        for _ in 1..FRAMES_PER_TURN {
            // A frame taken here is always handled: never poll without using it.
            let frame = sess.ws.next().now_or_never()?;
            if let Some(end) = self.on_frame(frame, now, wall, sess) {
                return Some(end);
            }
        }
        None
    }

    /// Handles the frames read during the subscription handshake.
    fn drain_backlog(&mut self, sess: &mut Session) -> Option<(End, String)> {
        let now = Instant::now();
        let wall = now_ms();
        for m in std::mem::take(&mut sess.backlog) {
            if matches!(m, Message::Text(_) | Message::Binary(_))
                && let Some(end) = self.on_frame(Some(Ok(m)), now, wall, sess)
            {
                return Some(end);
            }
        }
        None
    }

    /// Handles one read result; `Some` ends the session.
    fn on_frame(
        &mut self,
        frame: Read,
        now: Instant,
        wall: i64,
        sess: &mut Session,
    ) -> Option<(End, String)> {
        let shutdown = match frame {
            Some(Ok(Message::Text(t))) => {
                self.on_text(decode_text(t.as_str()), t.as_bytes(), now, wall, sess)
            }
            Some(Ok(Message::Binary(b))) => self.on_text(decode_frame(&b), &b, now, wall, sess),
            Some(Ok(Message::Close(c))) => {
                return Some((
                    End::ServerClosed,
                    c.map(|c| format!("{} {}", c.code, c.reason))
                        .unwrap_or_default(),
                ));
            }
            Some(Ok(_)) => false, // ping/pong: answered by tungstenite while we poll
            Some(Err(e)) => return Some((End::Error, e.to_string())),
            None => return Some((End::ServerClosed, "stream ended".into())),
        };
        shutdown.then(|| (End::ServerShutdown, "serverShutdown event".into()))
    }

    /// Handles one decoded frame (`bytes` for the log line of a bad one); true on
    /// `serverShutdown`.
    fn on_text(
        &mut self,
        decoded: Result<FrameRef<'_>, FrameError>,
        bytes: &[u8],
        now: Instant,
        wall: i64,
        sess: &mut Session,
    ) -> bool {
        let market = self.settings.market;
        match decoded {
            Ok(FrameRef::Trade(t)) => {
                // Trades read in one burst share `now`: they count as one arrival for the rate
                // (the fills of one taker order come together, and would fake a zero gap).
                if sess.first_data.is_none() || now != sess.last_data {
                    sess.data_arrivals += 1;
                }
                sess.last_data = now;
                sess.first_data.get_or_insert(now);
                sess.data_frames += 1;
                self.trades += 1;
                let v = self.core.lock().unwrap().on_ws_trade(market, &t, wall);
                if let Verdict::Rejected(e) = v {
                    metrics::counter!("pricefeed_feed_rejected_total", "market" => market.as_str(), "kind" => e.kind()).increment(1);
                    if let Some(suppressed) = self.malformed_log.hit(now) {
                        tracing::warn!(market = market.as_str(), symbol = t.symbol, trade_id = t.id, error = %e, suppressed, "trade rejected");
                    }
                }
                false
            }
            Ok(FrameRef::ServerShutdown) => true,
            Ok(FrameRef::Reply {
                error: Some((code, msg)),
            }) => {
                tracing::warn!(
                    market = market.as_str(),
                    code,
                    msg,
                    "broker refused a request"
                );
                false
            }
            Ok(FrameRef::Reply { error: None } | FrameRef::Other) => false,
            Err(e) => {
                // Corrupt frames are data too (the exchange sent something in their place).
                sess.last_data = now;
                self.core.lock().unwrap().counters.malformed += 1;
                metrics::counter!("pricefeed_feed_malformed_total", "market" => market.as_str(), "kind" => e.kind()).increment(1);
                if let Some(suppressed) = self.malformed_log.hit(now) {
                    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
                    tracing::warn!(market = market.as_str(), error = %e, frame = head, suppressed, "malformed frame dropped");
                }
                false
            }
        }
    }
}

/// Arrivals a session needs before its mean gap is published: fewer would let two close trades
/// pass for a busy connection.
const GAP_MIN_ARRIVALS: u64 = 10;

/// Mean ms between the session's trade arrivals, measured from its first to its last one; -1
/// while fewer than [`GAP_MIN_ARRIVALS`] arrived (unknown: the scheduler then allows the
/// longest silence).
fn mean_gap_ms(sess: &Session) -> i64 {
    match sess.first_data {
        Some(first) if sess.data_arrivals >= GAP_MIN_ARRIVALS => {
            sess.last_data.duration_since(first).as_millis() as i64
                / (sess.data_arrivals - 1) as i64
        }
        _ => -1,
    }
}

/// Whether the session looks dead: no frame at all (pings included) for `timeout`, or no data
/// for `timeout` although the connection's average data rate promised at least 10 frames in
/// that time (a silent stall with pings still flowing). Quiet connections, whose instruments
/// trade a few times a minute, are not churned by the second rule.
fn stalled(sess: &Session, now: Instant, timeout: Duration) -> Option<String> {
    stall_reason(
        sess.opened,
        sess.last_frame,
        sess.last_data,
        sess.data_frames,
        now,
        timeout,
    )
}

fn stall_reason(
    opened: Instant,
    last_frame: Instant,
    last_data: Instant,
    data_frames: u64,
    now: Instant,
    timeout: Duration,
) -> Option<String> {
    let silent = now.duration_since(last_frame);
    if silent >= timeout {
        return Some(format!("no frame for {} ms", silent.as_millis()));
    }
    let quiet = now.duration_since(last_data);
    if quiet >= timeout {
        let up = last_data.duration_since(opened).as_secs_f64().max(0.001);
        let expected = data_frames as f64 / up * timeout.as_secs_f64();
        if expected >= 10.0 {
            return Some(format!(
                "no data for {} ms (about {expected:.0} frames expected)",
                quiet.as_millis()
            ));
        }
    }
    None
}

async fn connect(
    s: &ConnSettings,
    streams: Vec<String>,
    next_id: &mut u64,
) -> Result<Session, String> {
    let url = format!("{}/ws", s.ws_url.trim_end_matches('/'));
    // Trade frames are ~200 bytes; a 1 MiB cap stops a broken peer from making us buffer 64 MiB.
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(cfg), true),
    )
    .await
    .map_err(|_| format!("connect to {url} timed out"))?
    .map_err(|e| format!("connect to {url}: {e}"))?;
    let now = Instant::now();
    let mut sess = Session {
        ws,
        limiter: RollingLimiter::new(s.msgs_per_sec, Duration::from_secs(1)),
        opened: now,
        last_frame: now,
        last_data: now,
        data_frames: 0,
        first_data: None,
        data_arrivals: 0,
        backlog: Vec::new(),
    };
    let mut requests = 0usize;
    for chunk in streams.chunks(s.streams_per_request.max(1)) {
        let params: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let id = *next_id;
        *next_id += 1;
        sess.limiter.acquire().await;
        sess.ws
            .send(Message::text(render_request(
                WsMethod::Subscribe,
                &params,
                id,
            )))
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        requests += 1;
    }
    // Wait for the acknowledgements, so that "connected" means "receiving every subscribed
    // stream" (a lifetime rotation closes the old socket only then). Frames read meanwhile are
    // kept for the session; a broker that never acknowledges costs at most the timeout.
    let acked = async {
        let mut acks = 0;
        while acks < requests {
            match sess.ws.next().await {
                Some(Ok(m)) => {
                    let is_reply = match &m {
                        Message::Text(t) => {
                            matches!(decode_text(t.as_str()), Ok(FrameRef::Reply { .. }))
                        }
                        _ => false,
                    };
                    if is_reply {
                        acks += 1;
                    } else {
                        sess.backlog.push(m);
                    }
                }
                Some(Err(e)) => return Err(format!("while subscribing: {e}")),
                None => return Err("closed while subscribing".to_string()),
            }
        }
        Ok(())
    };
    if let Ok(r) = tokio::time::timeout(Duration::from_secs(5), acked).await {
        r?;
    }
    // Subscribing can take a while on big slices; the watchdog counts from here.
    let now = Instant::now();
    sess.last_frame = now;
    sess.last_data = now;
    Ok(sess)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_frames_are_logged_once_per_burst() {
        let t0 = Instant::now();
        let mut log = BurstLog::default();
        assert_eq!(log.hit(t0), Some(0));
        for i in 1..100 {
            assert_eq!(log.hit(t0 + Duration::from_millis(i)), None);
        }
        // After a quiet period, one line that says how many were suppressed.
        assert_eq!(
            log.hit(t0 + BurstLog::QUIET + Duration::from_millis(1)),
            Some(99)
        );
    }

    #[test]
    fn stall_rules_spare_quiet_connections() {
        let timeout = Duration::from_secs(2);
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(60);
        let s = Duration::from_secs;
        // Pings flowing, a quiet connection (3 trades in 40 s): not a stall.
        assert_eq!(stall_reason(t0, end, end - s(20), 3, end, timeout), None);
        // Pings flowing, a busy connection gone silent: a stall.
        let r = stall_reason(t0, end, end - s(3), 5_000, end, timeout).unwrap();
        assert!(r.starts_with("no data for 3000 ms"), "{r}");
        // Nothing at all for the timeout: a stall, whatever the rate.
        let r = stall_reason(t0, end - timeout, end - s(30), 0, end, timeout).unwrap();
        assert_eq!(r, "no frame for 2000 ms");
        // Just under the timeout: fine.
        let almost = end - timeout + Duration::from_millis(1);
        assert_eq!(stall_reason(t0, almost, almost, 5_000, end, timeout), None);
    }
}
