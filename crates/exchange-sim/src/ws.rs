//! WebSocket market streams: `/ws`, `/ws/<stream>[/<stream>…]`, `/stream?streams=a/b`.
//!
//! One task per connection selects over: client frames (live requests, pongs), generator
//! batches, a housekeeping tick (pings, pong timeout, stale reorder hold), delayed-delivery
//! deadlines, the forced lifetime cut, the control API's kick and process shutdown.
//!
//! Memory per connection is bounded: the generator's broadcast channel holds at most
//! `ws_queue_batches` batches (a client lagging further is dropped as a slow client), a single
//! write blocking longer than `ws_send_timeout_ms` drops it too, and the delay queue is capped.
//!
//! Choices where the exchange docs are silent (see `docs/simulator.md`): a well-formed stream on
//! an unknown symbol (or an unsupported stream type such as `@depth`) is accepted and listed
//! but carries no data until that symbol is listed; a malformed stream name is error code 2
//! (HTTP 400 in `/stream?streams=`), while a path segment of `/ws/…` that is not a stream name
//! is ignored, as the exchange accepts any path under `/ws/` (ccxt connects to `/ws/0` and then
//! subscribes); exceeding the stream limit is error code 2 and the SUBSCRIBE is not applied at
//! all.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use pricefeed_broker::ws::{WsMethod, codes};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalogue::{Instrument, Market};
use crate::engine::{Batch, Engine, now_ms};
use crate::faults::{Action, FaultSnapshot, Injector, corrupt};
use crate::render::{self, StreamKind};

/// State of one market's WS routes.
#[derive(Debug, Clone)]
pub struct WsState {
    pub engine: Arc<Engine>,
    pub market: Market,
    pub token: CancellationToken,
    pub tracker: TaskTracker,
}

const FLAG_TRADE: u8 = 1;
const FLAG_AGG: u8 = 2;
/// A reorder-held event is released after this long even if no later event comes.
const MAX_HOLD: Duration = Duration::from_secs(1);
/// How long a connection we close waits for the peer's Close frame before dropping TCP.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A parsed stream name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stream {
    /// Canonical name as listed back to the client (`btcusdt@aggTrade`).
    name: String,
    symbol: String,
    kind: Option<StreamKind>,
}

fn parse_stream(market: Market, raw: &str) -> Result<Stream, String> {
    let ok_chars = !raw.is_empty()
        && raw.len() <= 100
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'_' | b'-' | b'.' | b'!'));
    let Some((sym, kind)) = raw.split_once('@').filter(|_| ok_chars) else {
        return Err(format!(
            "Invalid request: invalid stream name '{}'",
            truncate(raw, 100)
        ));
    };
    if sym.is_empty() || kind.is_empty() {
        return Err(format!(
            "Invalid request: invalid stream name '{}'",
            truncate(raw, 100)
        ));
    }
    let sym = match market {
        Market::Options => sym.to_ascii_uppercase(),
        _ => sym.to_ascii_lowercase(),
    };
    let kind_parsed = match (kind, market) {
        ("trade", _) => Some(StreamKind::Trade),
        ("aggTrade", Market::Spot | Market::Futures) => Some(StreamKind::AggTrade),
        _ => None,
    };
    Ok(Stream {
        name: format!("{sym}@{kind}"),
        symbol: sym,
        kind: kind_parsed,
    })
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn handshake_error(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"code": codes::INVALID_REQUEST, "msg": msg})),
    )
        .into_response()
}

/// Streams named in a handshake. `lenient` skips names that are not well-formed (path
/// segments of `/ws/…`); otherwise the first one refuses the handshake.
fn initial_streams(st: &WsState, names: &[&str], lenient: bool) -> Result<Vec<Stream>, String> {
    let mut out: Vec<Stream> = Vec::new();
    for n in names.iter().filter(|n| !n.is_empty()) {
        let s = match parse_stream(st.market, n) {
            Ok(s) => s,
            Err(_) if lenient => continue,
            Err(e) => return Err(e),
        };
        if !out.iter().any(|o| o.name == s.name) {
            out.push(s);
        }
    }
    if out.len() > st.engine.cfg.ws_max_streams {
        return Err(format!(
            "Invalid request: too many streams; at most {} per connection",
            st.engine.cfg.ws_max_streams
        ));
    }
    Ok(out)
}

/// `GET /ws`: no streams yet, raw frames.
pub async fn ws_root(State(st): State<WsState>, up: WebSocketUpgrade) -> Response {
    upgrade(st, up, Vec::new(), false)
}

/// `GET /ws/<s1>/<s2>`: raw frames; segments that are not stream names (`/ws/0`) are ignored.
pub async fn ws_path(
    State(st): State<WsState>,
    Path(path): Path<String>,
    up: WebSocketUpgrade,
) -> Response {
    let names: Vec<&str> = path.split('/').collect();
    match initial_streams(&st, &names, true) {
        Ok(s) => upgrade(st, up, s, false),
        Err(msg) => handshake_error(msg),
    }
}

/// `GET /stream?streams=<s1>/<s2>`: combined frames.
pub async fn stream(
    State(st): State<WsState>,
    Query(q): Query<HashMap<String, String>>,
    up: WebSocketUpgrade,
) -> Response {
    let raw = q.get("streams").map(String::as_str).unwrap_or("");
    let names: Vec<&str> = raw.split('/').collect();
    match initial_streams(&st, &names, false) {
        Ok(s) => upgrade(st, up, s, true),
        Err(msg) => handshake_error(msg),
    }
}

fn upgrade(st: WsState, up: WebSocketUpgrade, streams: Vec<Stream>, combined: bool) -> Response {
    let tracker = st.tracker.clone();
    // Upgraded sockets outlive the HTTP request, so axum's graceful shutdown does not wait for
    // them: hold a tracker token for the connection's whole life instead.
    let guard = tracker.token();
    up.max_message_size(64 * 1024)
        .max_frame_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            let _guard = guard;
            let engine = st.engine.clone();
            engine.open_conns.fetch_add(1, Ordering::Relaxed);
            metrics::gauge!("sim_ws_connections", "market" => st.market.as_str()).increment(1.0);
            let end = Conn::new(st.clone(), streams, combined).run(socket).await;
            engine.open_conns.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("sim_ws_connections", "market" => st.market.as_str()).decrement(1.0);
            tracing::debug!(market = st.market.as_str(), ?end, "ws connection ended");
        })
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    ClientClosed,
    RateLimited,
    PongTimeout,
    Lifetime,
    SlowClient,
    FaultDisconnect,
    Kicked,
    Shutdown,
    WriteFailed,
}

struct Conn {
    st: WsState,
    combined: bool,
    subs: Vec<Stream>,
    flags: Vec<u8>,
    insts: HashMap<u32, Instrument>,
    cat_version: u64,
    fault_version: u64,
    faults: Arc<FaultSnapshot>,
    faults_off: bool,
    injector: Injector,
    stall_until: HashMap<Option<u32>, Instant>,
    held: Option<(Instant, String)>,
    delayed: VecDeque<(Instant, String)>,
    msg_times: VecDeque<Instant>,
    last_alive: Instant,
    pings: VecDeque<Vec<u8>>,
    ping_no: u64,
    next_ping: Instant,
    out: Vec<String>,
}

impl Conn {
    fn new(st: WsState, subs: Vec<Stream>, combined: bool) -> Self {
        let conn_no = st.engine.conn_counter.fetch_add(1, Ordering::Relaxed);
        let seed = st.engine.cfg.seed;
        let now = Instant::now();
        let ping_every = Duration::from_millis(st.engine.cfg.ws_ping_interval_ms);
        Self {
            combined,
            subs,
            flags: Vec::new(),
            insts: HashMap::new(),
            cat_version: 0,
            fault_version: 0,
            faults: Arc::default(),
            faults_off: true,
            injector: Injector::new(seed, conn_no),
            stall_until: HashMap::new(),
            held: None,
            delayed: VecDeque::new(),
            msg_times: VecDeque::new(),
            last_alive: now,
            pings: VecDeque::new(),
            ping_no: 0,
            next_ping: now + ping_every,
            out: Vec::new(),
            st,
        }
    }

    /// Re-resolves subscribed names against the catalogue (names may refer to symbols that are
    /// listed later).
    fn resolve(&mut self) {
        let eng = &self.st.engine;
        self.cat_version = eng.cat_version.load(Ordering::Acquire);
        let w = eng.world.read().expect("world lock");
        self.flags.clear();
        self.flags.resize(w.cat.instruments.len(), 0);
        self.insts.clear();
        for s in &self.subs {
            let Some(kind) = s.kind else { continue };
            if let Some(inst) = w.cat.lookup_any_case(self.st.market, &s.symbol) {
                self.flags[inst.id as usize] |= match kind {
                    StreamKind::Trade => FLAG_TRADE,
                    StreamKind::AggTrade => FLAG_AGG,
                };
                self.insts.entry(inst.id).or_insert_with(|| inst.clone());
            }
        }
    }

    fn refresh_faults(&mut self) {
        let t = &self.st.engine.faults;
        let v = t.version();
        if v != self.fault_version {
            self.fault_version = v;
            self.faults = t.snapshot();
            self.faults_off = self.faults.all_off();
        }
    }

    async fn run(mut self, mut socket: WebSocket) -> End {
        let cfg = self.st.engine.cfg.clone();
        self.resolve();
        self.refresh_faults();
        let mut rx = self.st.engine.subscribe();
        let mut kick = self.st.engine.kick.subscribe();
        let token = self.st.token.clone();
        let house_every = Duration::from_millis(cfg.ws_ping_interval_ms.clamp(1, 250));
        let mut house = tokio::time::interval(house_every);
        house.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lifetime_at = (cfg.ws_max_lifetime_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(cfg.ws_max_lifetime_ms));
        let send_timeout = Duration::from_millis(cfg.ws_send_timeout_ms);

        let end = loop {
            let delay_at = self.delayed.front().map(|d| d.0);
            tokio::select! {
                biased;
                () = token.cancelled() => {
                    let frame = render::server_shutdown(now_ms(), self.combined);
                    if matches!(tokio::time::timeout(send_timeout, socket.send(Message::Text(frame.into()))).await, Ok(Ok(()))) {
                        close_gracefully(&mut socket, close(1001, "Server shutting down"), send_timeout).await;
                    }
                    break End::Shutdown;
                }
                k = kick.recv() => {
                    if let Ok(true) = k {
                        let frame = render::server_shutdown(now_ms(), self.combined);
                        let _ = tokio::time::timeout(send_timeout, socket.send(Message::Text(frame.into()))).await;
                    }
                    close_gracefully(&mut socket, close(1001, "Going away"), send_timeout).await;
                    break End::Kicked;
                }
                msg = socket.recv() => {
                    let Some(Ok(msg)) = msg else { break End::ClientClosed };
                    if self.over_rate_limit(cfg.ws_max_msgs_per_sec) {
                        metrics::counter!("sim_ws_rate_limited_total").increment(1);
                        close_gracefully(&mut socket, close(1008, "Too many requests"), send_timeout).await;
                        break End::RateLimited;
                    }
                    let reply = match msg {
                        Message::Text(t) => Some(self.handle_request(t.as_str())),
                        Message::Binary(b) => Some(self.handle_request(&String::from_utf8_lossy(&b))),
                        Message::Pong(p) => {
                            if self.pings.iter().any(|q| q[..] == p[..]) {
                                self.last_alive = Instant::now();
                            }
                            None
                        }
                        Message::Ping(_) => None,
                        Message::Close(_) => break End::ClientClosed,
                    };
                    if let Some(r) = reply
                        && !matches!(tokio::time::timeout(send_timeout, socket.send(Message::Text(r.into()))).await, Ok(Ok(())))
                    {
                        break End::WriteFailed;
                    }
                }
                b = rx.recv() => {
                    match b {
                        Ok(batch) => {
                            if let Err(end) = self.on_batch(&batch) {
                                break end;
                            }
                        }
                        Err(RecvError::Lagged(n)) => {
                            tracing::info!(lagged_batches = n, "dropping slow ws client");
                            metrics::counter!("sim_ws_slow_clients_total").increment(1);
                            break End::SlowClient;
                        }
                        Err(RecvError::Closed) => break End::Shutdown,
                    }
                    if !self.flush(&mut socket, send_timeout).await {
                        break End::WriteFailed;
                    }
                }
                _ = house.tick() => {
                    let now = Instant::now();
                    if now.duration_since(self.last_alive) > Duration::from_millis(cfg.ws_pong_timeout_ms) {
                        // The exchange just drops such connections; so do we (no close frame).
                        break End::PongTimeout;
                    }
                    if now >= self.next_ping {
                        self.next_ping = now + Duration::from_millis(cfg.ws_ping_interval_ms);
                        self.ping_no += 1;
                        let payload = self.ping_no.to_string().into_bytes();
                        self.pings.push_back(payload.clone());
                        if self.pings.len() > 4 {
                            self.pings.pop_front();
                        }
                        if !matches!(tokio::time::timeout(send_timeout, socket.send(Message::Ping(payload.into()))).await, Ok(Ok(()))) {
                            break End::WriteFailed;
                        }
                    }
                    if let Some((since, _)) = &self.held
                        && now.duration_since(*since) > MAX_HOLD
                        && let Some((_, f)) = self.held.take()
                    {
                        self.out.push(f);
                    }
                    if !self.flush(&mut socket, send_timeout).await {
                        break End::WriteFailed;
                    }
                }
                () = sleep_until_opt(delay_at), if delay_at.is_some() => {
                    let now = Instant::now();
                    while let Some((at, _)) = self.delayed.front() {
                        if *at > now { break; }
                        if let Some((_, f)) = self.delayed.pop_front() { self.out.push(f); }
                    }
                    if !self.flush(&mut socket, send_timeout).await {
                        break End::WriteFailed;
                    }
                }
                () = sleep_until_opt(lifetime_at), if lifetime_at.is_some() => {
                    close_gracefully(&mut socket, close(1000, "Connection lifetime exceeded"), send_timeout).await;
                    break End::Lifetime;
                }
            }
        };
        metrics::counter!("sim_ws_disconnects_total", "reason" => format!("{end:?}")).increment(1);
        end
    }

    fn over_rate_limit(&mut self, max: u32) -> bool {
        let now = Instant::now();
        while let Some(t) = self.msg_times.front() {
            if now.duration_since(*t) >= Duration::from_secs(1) {
                self.msg_times.pop_front();
            } else {
                break;
            }
        }
        self.msg_times.push_back(now);
        self.msg_times.len() > max as usize
    }

    async fn flush(&mut self, socket: &mut WebSocket, send_timeout: Duration) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let n = self.out.len();
        let frames = std::mem::take(&mut self.out);
        let res = tokio::time::timeout(send_timeout, async {
            for f in frames {
                // `feed` queues into the write buffer; one flush per batch keeps syscalls
                // per batch, not per frame, which is what makes load mode fast.
                socket.feed(Message::Text(Utf8Bytes::from(f))).await?;
            }
            socket.flush().await
        })
        .await;
        metrics::counter!("sim_ws_frames_sent_total").increment(n as u64);
        matches!(res, Ok(Ok(())))
    }

    fn on_batch(&mut self, batch: &Batch) -> Result<(), End> {
        if self.subs.is_empty() {
            return Ok(());
        }
        if self.st.engine.cat_version.load(Ordering::Acquire) != self.cat_version {
            self.resolve();
        }
        self.refresh_faults();
        let et = now_ms();
        let evs = &batch.events;
        let mut i = 0;
        while i < evs.len() {
            let ev = &evs[i];
            let f = self.flags.get(ev.sym as usize).copied().unwrap_or(0);
            if f == 0 {
                i += 1;
                continue;
            }
            let Some(inst) = self.insts.get(&ev.sym) else {
                i += 1;
                continue;
            };
            let mut frames: [Option<String>; 2] = [None, None];
            if f & FLAG_TRADE != 0 {
                frames[0] = Some(render::trade(inst, ev, et, self.combined));
            }
            if f & FLAG_AGG != 0 && ev.rec.agg_start {
                let mut j = i + 1;
                let mut qty = ev.rec.qty;
                while j < evs.len() && evs[j].sym == ev.sym && evs[j].rec.agg == ev.rec.agg {
                    qty += evs[j].rec.qty;
                    j += 1;
                }
                frames[1] = Some(render::agg_trade(
                    inst,
                    ev,
                    evs[j - 1].id,
                    qty,
                    et,
                    self.combined,
                ));
            }
            let sym = ev.sym;
            for fr in frames.into_iter().flatten() {
                if self.faults_off {
                    self.out.push(fr);
                } else {
                    self.deliver(sym, fr)?;
                }
            }
            i += 1;
        }
        Ok(())
    }

    fn deliver(&mut self, sym: u32, frame: String) -> Result<(), End> {
        let inst_sym = self
            .insts
            .get(&sym)
            .map(|i| i.symbol.clone())
            .unwrap_or_default();
        let scoped = self.faults.symbols.contains_key(&inst_sym);
        let scope = if scoped { Some(sym) } else { None };
        let now = Instant::now();
        if let Some(until) = self.stall_until.get(&scope) {
            if now < *until {
                return Ok(());
            }
            self.stall_until.remove(&scope);
        }
        let spec = *self.faults.spec_for(&inst_sym);
        match self.injector.decide(&spec, &self.st.engine.faults.stats) {
            Action::Send => self.push_releasing(frame),
            Action::Drop => {}
            Action::Duplicate => {
                self.out.push(frame.clone());
                self.push_releasing(frame);
            }
            Action::Reorder => {
                if let Some((_, h)) = self.held.take() {
                    self.out.push(h);
                }
                self.held = Some((now, frame));
            }
            Action::Corrupt => self.push_releasing(corrupt(&frame)),
            Action::Stall(ms) => {
                self.stall_until
                    .insert(scope, now + Duration::from_millis(ms));
            }
            Action::Disconnect => return Err(End::FaultDisconnect),
            Action::Delay(ms) => {
                if self.delayed.len() >= self.st.engine.cfg.ws_delay_queue_max {
                    self.push_releasing(frame);
                } else {
                    self.delayed
                        .push_back((now + Duration::from_millis(ms), frame));
                }
            }
        }
        Ok(())
    }

    fn push_releasing(&mut self, frame: String) {
        self.out.push(frame);
        if let Some((_, h)) = self.held.take() {
            self.out.push(h);
        }
    }

    /// Handles one live request; returns the reply frame.
    fn handle_request(&mut self, text: &str) -> String {
        match self.request(text) {
            Ok(v) => v.to_string(),
            Err((code, msg, id)) => {
                let mut o = json!({"code": code, "msg": msg});
                if let Some(id) = id {
                    o["id"] = id;
                }
                o.to_string()
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn request(&mut self, text: &str) -> Result<Value, (i64, String, Option<Value>)> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| (codes::INVALID_JSON, format!("Invalid JSON: {e}"), None))?;
        let bad = |msg: &str, id: Option<Value>| {
            (
                codes::INVALID_REQUEST,
                format!("Invalid request: {msg}"),
                id,
            )
        };
        let Some(obj) = v.as_object() else {
            return Err(bad("invalid type: expected a JSON object", None));
        };
        let id = obj.get("id").cloned().unwrap_or(Value::Null);
        let id_ok = match &id {
            Value::Null => true,
            Value::Number(n) => n.is_i64() || n.is_u64(),
            Value::String(s) => s.len() <= 36 && s.bytes().all(|b| b.is_ascii_alphanumeric()),
            _ => false,
        };
        if !id_ok {
            return Err(bad("request ID must be an unsigned integer", None));
        }
        let Some(m) = obj.get("method") else {
            return Err(bad("missing field `method`", Some(id)));
        };
        let Some(m) = m.as_str() else {
            return Err(bad(
                "invalid type: field `method` must be a string",
                Some(id),
            ));
        };
        let Some(method) = WsMethod::parse(m) else {
            return Err(bad(
                &format!(
                    "unknown variant `{}`, expected one of {}",
                    truncate(m, 64),
                    WsMethod::ALL.map(|s| format!("`{s}`")).join(", ")
                ),
                Some(id),
            ));
        };
        let params: &[Value] = match obj.get("params") {
            None | Some(Value::Null) => &[],
            Some(Value::Array(a)) => a,
            Some(_) => {
                return Err(bad(
                    "invalid type: field `params` must be an array",
                    Some(id),
                ));
            }
        };
        let ok = |result: Value, id: Value| Ok(json!({"result": result, "id": id}));
        match method {
            WsMethod::Subscribe | WsMethod::Unsubscribe => {
                let mut parsed = Vec::with_capacity(params.len());
                for p in params {
                    let Some(s) = p.as_str() else {
                        return Err(bad("stream names must be strings", Some(id)));
                    };
                    parsed.push(
                        parse_stream(self.st.market, s)
                            .map_err(|m| (codes::INVALID_REQUEST, m, Some(id.clone())))?,
                    );
                }
                if method == WsMethod::Subscribe {
                    let mut next = self.subs.clone();
                    for s in parsed {
                        if !next.iter().any(|o| o.name == s.name) {
                            next.push(s);
                        }
                    }
                    let max = self.st.engine.cfg.ws_max_streams;
                    if next.len() > max {
                        return Err(bad(
                            &format!("too many streams; at most {max} per connection"),
                            Some(id),
                        ));
                    }
                    self.subs = next;
                } else {
                    self.subs
                        .retain(|s| !parsed.iter().any(|p| p.name == s.name));
                }
                self.resolve();
                ok(Value::Null, id)
            }
            WsMethod::ListSubscriptions => {
                if !params.is_empty() {
                    return Err(bad("too many parameters", Some(id)));
                }
                ok(
                    json!(self.subs.iter().map(|s| s.name.clone()).collect::<Vec<_>>()),
                    id,
                )
            }
            WsMethod::SetProperty | WsMethod::GetProperty => {
                let want = if method == WsMethod::SetProperty {
                    2
                } else {
                    1
                };
                if params.len() > want {
                    return Err(bad("too many parameters", Some(id)));
                }
                let Some(name) = params.first() else {
                    return Err(bad("missing property name", Some(id)));
                };
                let Some(name) = name.as_str() else {
                    return Err(bad("property name must be a string", Some(id)));
                };
                if name != "combined" {
                    return Err((codes::UNKNOWN_PROPERTY, "Unknown property".into(), Some(id)));
                }
                if method == WsMethod::GetProperty {
                    return ok(Value::Bool(self.combined), id);
                }
                match params.get(1) {
                    Some(Value::Bool(b)) => {
                        self.combined = *b;
                        ok(Value::Null, id)
                    }
                    _ => Err((
                        codes::INVALID_VALUE_TYPE,
                        "Invalid value type: expected Boolean".into(),
                        Some(id),
                    )),
                }
            }
        }
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// Sends `close` and completes the closing handshake: reads and discards whatever the peer still
/// sends until its Close frame, EOF or [`CLOSE_WAIT`]. Dropping a socket with unread input makes
/// the kernel answer with a TCP reset, and a client that floods (the 1008 case) then loses our
/// Close frame and reports 1006 (abnormal closure) instead of our code.
async fn close_gracefully(socket: &mut WebSocket, close: Message, send_timeout: Duration) {
    if !matches!(
        tokio::time::timeout(send_timeout, socket.send(close)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        let s = parse_stream(Market::Spot, "BTCUSDT@aggTrade").unwrap();
        assert_eq!(s.name, "btcusdt@aggTrade");
        assert_eq!(s.kind, Some(StreamKind::AggTrade));
        assert_eq!(
            parse_stream(Market::Spot, "btcusdt@depth").unwrap().kind,
            None
        );
        assert_eq!(
            parse_stream(Market::Options, "btc-261225-90000-c@trade")
                .unwrap()
                .name,
            "BTC-261225-90000-C@trade"
        );
        assert_eq!(
            parse_stream(Market::Options, "BTC-261225-90000-C@aggTrade")
                .unwrap()
                .kind,
            None
        );
        for bad in [
            "",
            "btcusdt",
            "@trade",
            "btcusdt@",
            "btc usdt@trade",
            "btcusdt@trade\"x",
        ] {
            assert!(parse_stream(Market::Spot, bad).is_err(), "{bad}");
        }
    }
}
