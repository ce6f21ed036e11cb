//! One client connection: a single task that reads client messages, answers them, writes what
//! the hub put in its outbox, pings, and closes with a code and a reason.
//!
//! Close codes (the reason says which limit):
//! - 1001 the node is shutting down;
//! - 1008 sustained message-rate abuse, or a slow consumer (its outgoing queue overflowed, or
//!   the socket did not take a batch of frames within `send_timeout_ms`);
//! - 1009 a message larger than `max_frame_bytes` (after a `too_big` error frame);
//! - 1000 idle: no frame at all (pongs count) within `idle_timeout_ms`.
//!
//! The task writes only what the outbox holds, so the hub never waits for this socket; and it
//! reads the socket only between writes, so a client flooding messages is slowed to its own
//! pace. Metrics: `pricefeed_stream_closed_total{reason}` (every end of a connection, including
//! `client` when the peer left), `pricefeed_stream_frames_total` (frames written) and
//! `pricefeed_stream_conflated_total` (values replaced before a slow client read them).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::InstrumentKey;
use pricefeed_store::protocol::{PriceDoc, VwapDoc};
use rust_decimal::Decimal;
use tokio::time::Instant;

use super::hub::{ConnGuard, Hub, price_frame, vwap_frame};
use super::limits::{RateLimit, Verdict};
use super::protocol::{self, Channel, Op, ProtoError, Reply, Unwatch, WatchView};

/// What a connection reads from the node: latest values, instrument listing, token checks.
/// [`crate::state::AppState`] implements it; tests can fake it.
pub trait Source: Send + Sync + 'static {
    /// The configured VWAP intervals.
    fn intervals(&self) -> &[Span];
    /// Latest price: own ingest state, the price cache, then Redis.
    fn latest_price(
        &self,
        key: &InstrumentKey,
    ) -> impl Future<Output = anyhow::Result<Option<PriceDoc>>> + Send;
    /// Latest VWAP: the VWAP cache, then Redis.
    fn latest_vwap(
        &self,
        key: &InstrumentKey,
        interval: Span,
    ) -> impl Future<Output = anyhow::Result<Option<VwapDoc>>> + Send;
    /// Whether the instrument is listed (it may not have traded yet).
    fn listed(&self, key: &InstrumentKey) -> impl Future<Output = anyhow::Result<bool>> + Send;
    /// Latest price from memory only (own ingest state, then the cache), without waiting.
    fn price_now(&self, key: &InstrumentKey) -> Option<PriceDoc>;
    /// Latest VWAP from memory only.
    fn vwap_now(&self, key: &InstrumentKey, interval: Span) -> Option<VwapDoc>;
    /// Verifies an access token: (user id, expiry in s since the epoch).
    fn verify(&self, token: &str) -> Option<(i64, i64)>;
}

/// Why a connection ended (the `reason` label of `pricefeed_stream_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed or vanished.
    Client,
    Shutdown,
    Slow,
    Rate,
    TooBig,
    Idle,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Shutdown => "shutdown",
            Self::Slow => "slow",
            Self::Rate => "rate",
            Self::TooBig => "too_big",
            Self::Idle => "idle",
        }
    }
}

/// A close we initiate: code and reason; `stuck` when the socket no longer takes writes (the
/// close frame is still tried, briefly); `error`: an error frame sent before the close frame,
/// for clients that read frames but not close reasons.
struct Closing {
    end: End,
    code: u16,
    reason: String,
    stuck: bool,
    error: Option<String>,
}

impl Closing {
    fn new(end: End, code: u16, reason: impl Into<String>) -> Self {
        Self {
            end,
            code,
            reason: reason.into(),
            stuck: false,
            error: None,
        }
    }

    /// 1009 with a `too_big` error frame first.
    fn too_big(max: usize) -> Self {
        let reason = format!("message larger than {max} bytes");
        let error = Reply::Error {
            code: "too_big",
            message: &format!(
                "{reason} (node.stream.max_frame_bytes); the connection is closed with 1009"
            ),
            op: None,
            channel: None,
        }
        .to_json();
        Self {
            error: Some(error),
            ..Self::new(End::TooBig, 1009, reason)
        }
    }
}

/// How long a closing connection waits for the client's close frame (so the client reads our
/// close code before the TCP connection goes away).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The per-connection state.
struct Conn<'a, S: Source> {
    src: &'a S,
    hub: &'a Hub,
    guard: ConnGuard,
    /// Subscribed channels by canonical name.
    channels: BTreeMap<String, Channel>,
    /// Watches by id.
    watches: BTreeMap<u64, (InstrumentKey, Arc<WatchView>)>,
    next_watch: u64,
    /// (user id, token expiry s) after a successful `auth`.
    user: Option<(i64, i64)>,
    rate: RateLimit,
}

/// Runs one connection to its end; returns why it ended.
pub async fn run<S, W, R, E>(
    src: &S,
    hub: &Hub,
    guard: ConnGuard,
    mut sink: W,
    mut stream: R,
) -> End
where
    S: Source,
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let cfg = &hub.cfg;
    let mut c = Conn {
        src,
        hub,
        guard,
        channels: BTreeMap::new(),
        watches: BTreeMap::new(),
        next_watch: 1,
        user: None,
        rate: RateLimit::new(
            cfg.msgs_per_sec,
            cfg.msgs_burst,
            cfg.rate_strikes,
            std::time::Instant::now(),
        ),
    };
    let token = hub.shutdown.token();
    let outbox = c.guard.outbox.clone();
    let send_timeout = Duration::from_millis(cfg.send_timeout_ms);
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let mut ping = tokio::time::interval(Duration::from_millis(cfg.ping_ms));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    let mut last_heard = Instant::now();
    let frames = metrics::counter!("pricefeed_stream_frames_total");
    let conflated = metrics::counter!("pricefeed_stream_conflated_total");

    // Registered once: 20 000 connections re-registering on the shared token every wake-up
    // would contend on its lock.
    let cancelled = token.cancelled();
    tokio::pin!(cancelled);
    let closing: Option<Closing> = loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break Some(Closing::new(End::Shutdown, 1001, "server shutting down")),
            () = outbox.ready() => {
                let Ok(d) = outbox.drain() else {
                    break Some(Closing::new(End::Slow, 1008, format!(
                        "slow consumer: more than {} frames not read", cfg.max_queued_frames)));
                };
                if d.conflated > 0 {
                    conflated.increment(d.conflated);
                }
                if d.frames.is_empty() {
                    continue;
                }
                let n = d.frames.len() as u64;
                let write = async {
                    for f in d.frames {
                        sink.feed(Message::Text(f)).await?;
                    }
                    sink.flush().await
                };
                tokio::pin!(write);
                // The socket almost always takes the batch at once: arm the send timer only
                // when it does not (a timer per write is measurable at 20 000 connections).
                let done = match futures_util::poll!(&mut write) {
                    std::task::Poll::Ready(r) => Ok(r),
                    std::task::Poll::Pending => tokio::time::timeout(send_timeout, write).await,
                };
                match done {
                    Ok(Ok(())) => frames.increment(n),
                    Ok(Err(_)) => break None,
                    Err(_) => {
                        let mut cl = Closing::new(End::Slow, 1008, format!(
                            "slow consumer: frames not accepted within {} ms", cfg.send_timeout_ms));
                        cl.stuck = true;
                        break Some(cl);
                    }
                }
            }
            msg = stream.next() => {
                last_heard = Instant::now();
                match msg {
                    None | Some(Ok(Message::Close(_))) => break None,
                    Some(Err(e)) => {
                        if too_big(&e) {
                            break Some(Closing::too_big(cfg.max_frame_bytes));
                        }
                        break None;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        let len = match &m { Message::Text(t) => t.len(), Message::Binary(b) => b.len(), _ => 0 };
                        if len > cfg.max_frame_bytes {
                            break Some(Closing::too_big(cfg.max_frame_bytes));
                        }
                        match c.rate.check(std::time::Instant::now()) {
                            Verdict::Allow => {}
                            Verdict::Refuse => {
                                c.error("rate_limited", &format!(
                                    "more than {} messages per second; this one was ignored", cfg.msgs_per_sec), None, None);
                                continue;
                            }
                            Verdict::Close => break Some(Closing::new(End::Rate, 1008, format!(
                                "message rate exceeded: {} messages refused within 10 s", cfg.rate_strikes))),
                        }
                        match m {
                            Message::Text(t) => c.handle(t.as_str()).await,
                            _ => c.error("bad_request", "binary frames are not supported; send JSON text frames", None, None),
                        }
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= idle {
                    break Some(Closing::new(End::Idle, 1000, format!(
                        "idle timeout: nothing received for {} ms", cfg.idle_timeout_ms)));
                }
                c.expire_auth();
                match tokio::time::timeout(send_timeout, sink.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break None,
                    Err(_) => {
                        let mut cl = Closing::new(End::Slow, 1008, format!(
                            "slow consumer: ping not accepted within {} ms", cfg.send_timeout_ms));
                        cl.stuck = true;
                        break Some(cl);
                    }
                }
            }
        }
    };
    let end = closing.as_ref().map_or(End::Client, |c| c.end);
    if let Some(cl) = closing {
        close(&mut sink, &mut stream, cl).await;
    }
    metrics::counter!("pricefeed_stream_closed_total", "reason" => end.label()).increment(1);
    end
}

/// Sends the close frame and waits (bounded) for the client's, discarding anything else it
/// still sends, so the client reads our code instead of a reset.
async fn close<W, R, E>(sink: &mut W, stream: &mut R, cl: Closing)
where
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    let frame = Message::Close(Some(CloseFrame {
        code: cl.code,
        reason: Utf8Bytes::from(cl.reason),
    }));
    let budget = if cl.stuck {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    };
    let send = async {
        if let Some(e) = cl.error {
            sink.feed(Message::Text(e.into())).await?;
        }
        sink.send(frame).await
    };
    if !matches!(tokio::time::timeout(budget, send).await, Ok(Ok(()))) || cl.stuck {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        let mut errors = 0;
        while let Some(m) = stream.next().await {
            match m {
                Ok(Message::Close(_)) => return,
                Ok(_) => {}
                // An oversized message leaves its payload behind: skip a few decode errors.
                Err(_) => {
                    errors += 1;
                    if errors > 16 {
                        return;
                    }
                }
            }
        }
    })
    .await;
}

/// Whether a read error is tungstenite refusing an oversized message or frame.
fn too_big<E: std::error::Error + 'static>(e: &E) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(WsError::Capacity(_)) = err.downcast_ref::<WsError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

impl<S: Source> Conn<'_, S> {
    fn push(&self, json: String) {
        self.guard.outbox.push(json);
    }

    fn error(&self, code: &str, message: &str, op: Option<&str>, channel: Option<&str>) {
        self.push(
            Reply::Error {
                code,
                message,
                op,
                channel,
            }
            .to_json(),
        );
    }

    fn proto_error(&self, e: &ProtoError, op: Option<&str>, channel: Option<&str>) {
        self.error(e.code, &e.message, op, channel);
    }

    fn unavailable(&self, op: &str, channel: Option<&str>) {
        self.error(
            "unavailable",
            "latest values are unavailable right now (Redis or Postgres down); try again",
            Some(op),
            channel,
        );
    }

    async fn handle(&mut self, text: &str) {
        let op = match protocol::parse_op(text) {
            Ok(op) => op,
            Err(e) => return self.proto_error(&e, None, None),
        };
        match op {
            Op::Subscribe(names) => self.subscribe(names).await,
            Op::Unsubscribe(names) => self.unsubscribe(names),
            Op::Auth(token) => self.auth(&token),
            Op::Watch {
                key,
                direction,
                threshold,
            } => self.watch(key, direction, threshold).await,
            Op::Unwatch(u) => self.unwatch(u),
            Op::List => {
                let channels: Vec<String> = self.channels.keys().cloned().collect();
                let watches: Vec<WatchView> =
                    self.watches.values().map(|(_, v)| (**v).clone()).collect();
                self.push(
                    Reply::List {
                        channels: &channels,
                        watches: &watches,
                        user_id: self.user.map(|u| u.0),
                    }
                    .to_json(),
                );
            }
            Op::Ping => self.push(Reply::Pong.to_json()),
        }
    }

    /// Validates every name (each may fail alone), checks the limit and the instruments,
    /// acks the accepted ones, registers them, then offers each one's latest value.
    async fn subscribe(&mut self, names: Vec<String>) {
        const OP: Option<&str> = Some("subscribe");
        // (channel, canonical name, latest value, not subscribed before)
        let mut accepted: Vec<(Channel, String, Snapshot, bool)> = Vec::new();
        for raw in names {
            let ch = match protocol::parse_channel(&raw, self.src.intervals()) {
                Ok(ch) => ch,
                Err(e) => {
                    self.proto_error(&e, OP, Some(&raw));
                    continue;
                }
            };
            let name = ch.name();
            if accepted.iter().any(|a| a.1 == name) {
                continue;
            }
            let new = !self.channels.contains_key(&name);
            if new
                && self.channels.len() + accepted.iter().filter(|a| a.3).count()
                    >= self.hub.cfg.max_channels
            {
                self.error(
                    "too_many_channels",
                    &format!(
                        "at most {} channels per connection",
                        self.hub.cfg.max_channels
                    ),
                    OP,
                    Some(&name),
                );
                continue;
            }
            let snap = match &ch {
                Channel::Alerts => {
                    if self.user.is_none() {
                        self.error(
                            "auth_required",
                            "send {\"op\":\"auth\",\"token\":…} with an access token first",
                            OP,
                            Some(&name),
                        );
                        continue;
                    }
                    Snapshot::None
                }
                Channel::Prices(k) => match self.src.latest_price(k).await {
                    Ok(Some(d)) => Snapshot::Price(d),
                    Ok(None) => match self.src.listed(k).await {
                        Ok(true) => Snapshot::None,
                        Ok(false) => {
                            self.unknown(k, &name);
                            continue;
                        }
                        Err(_) => {
                            self.unavailable("subscribe", Some(&name));
                            continue;
                        }
                    },
                    Err(_) => {
                        self.unavailable("subscribe", Some(&name));
                        continue;
                    }
                },
                Channel::Vwap(k, iv) => match self.src.latest_vwap(k, *iv).await {
                    Ok(Some(d)) => Snapshot::Vwap(d),
                    Ok(None) => match self.src.listed(k).await {
                        Ok(true) => Snapshot::None,
                        Ok(false) => {
                            self.unknown(k, &name);
                            continue;
                        }
                        Err(_) => {
                            self.unavailable("subscribe", Some(&name));
                            continue;
                        }
                    },
                    Err(_) => {
                        self.unavailable("subscribe", Some(&name));
                        continue;
                    }
                },
            };
            accepted.push((ch, name, snap, new));
        }
        if accepted.is_empty() {
            return;
        }
        let names: Vec<String> = accepted.iter().map(|a| a.1.clone()).collect();
        // Ack first: everything the hub delivers after registration comes after it.
        self.push(Reply::Subscribed { channels: &names }.to_json());
        let user = self.user.map(|u| u.0);
        for (ch, name, snap, _) in accepted {
            let channel = self.hub.subscribe(&self.guard, &ch, user);
            let o = &self.guard.outbox;
            // The snapshot read before registering, then memory again: an update that
            // reached the hub between the two is in memory by now. Versions keep the newest.
            match (&ch, snap) {
                (Channel::Prices(k), Snapshot::Price(d)) => {
                    o.put_latest(
                        &channel,
                        d.trade_id as i64,
                        false,
                        price_frame(&channel, &d),
                    );
                    if let Some(d) = self.src.price_now(k) {
                        o.put_latest(
                            &channel,
                            d.trade_id as i64,
                            false,
                            price_frame(&channel, &d),
                        );
                    }
                }
                (Channel::Vwap(k, iv), Snapshot::Vwap(d)) => {
                    o.put_latest(&channel, d.window_end, true, vwap_frame(&channel, &d));
                    if let Some(d) = self.src.vwap_now(k, *iv)
                        && d.window_end > 0
                    {
                        o.put_latest(&channel, d.window_end, true, vwap_frame(&channel, &d));
                    }
                }
                (Channel::Prices(k), _) => {
                    if let Some(d) = self.src.price_now(k) {
                        o.put_latest(
                            &channel,
                            d.trade_id as i64,
                            false,
                            price_frame(&channel, &d),
                        );
                    }
                }
                _ => {}
            }
            self.channels.insert(name, ch);
        }
    }

    fn unknown(&self, k: &InstrumentKey, name: &str) {
        self.error(
            "unknown_instrument",
            &format!("unknown instrument {k}"),
            Some("subscribe"),
            Some(name),
        );
    }

    fn unsubscribe(&mut self, names: Vec<String>) {
        let mut done = Vec::new();
        for raw in names {
            let ch = match protocol::parse_channel(&raw, self.src.intervals()) {
                Ok(ch) => ch,
                Err(e) => {
                    self.proto_error(&e, Some("unsubscribe"), Some(&raw));
                    continue;
                }
            };
            let name = ch.name();
            if self.channels.remove(&name).is_some() {
                self.hub
                    .unsubscribe(self.guard.id, &ch, self.user.map(|u| u.0));
                self.guard.outbox.forget(&name);
            }
            // Unsubscribing a channel that is not subscribed is not an error (idempotent).
            done.push(name);
        }
        if !done.is_empty() {
            self.push(Reply::Unsubscribed { channels: &done }.to_json());
        }
    }

    fn auth(&mut self, token: &str) {
        let Some((user, exp)) = self.src.verify(token) else {
            // Whatever was authenticated before stays as it was.
            return self.error(
                "unauthorized",
                "invalid or expired access token (a refresh token is not an access token)",
                Some("auth"),
                None,
            );
        };
        let before = self.user.map(|u| u.0);
        if before.is_some_and(|b| b != user) && self.channels.contains_key("alerts") {
            // Another user: the alerts channel follows the new identity.
            self.hub
                .unsubscribe(self.guard.id, &Channel::Alerts, before);
            self.hub
                .subscribe(&self.guard, &Channel::Alerts, Some(user));
        }
        self.user = Some((user, exp));
        self.push(
            Reply::Authenticated {
                user_id: user,
                expires_at: exp,
            }
            .to_json(),
        );
    }

    /// An expired token ends the `alerts` channel (the client may `auth` again).
    fn expire_auth(&mut self) {
        let Some((user, exp)) = self.user else { return };
        if exp > now_s() {
            return;
        }
        self.user = None;
        if self.channels.remove("alerts").is_some() {
            self.hub
                .unsubscribe(self.guard.id, &Channel::Alerts, Some(user));
            self.push(
                Reply::Unsubscribed {
                    channels: &["alerts".to_string()],
                }
                .to_json(),
            );
        }
        self.error(
            "token_expired",
            "the access token expired; send auth with a fresh one",
            None,
            None,
        );
    }

    async fn watch(
        &mut self,
        key: InstrumentKey,
        direction: protocol::Direction,
        threshold: Decimal,
    ) {
        const OP: Option<&str> = Some("watch");
        if self.watches.len() >= self.hub.cfg.max_watches {
            return self.error(
                "too_many_watches",
                &format!(
                    "at most {} watches per connection",
                    self.hub.cfg.max_watches
                ),
                OP,
                None,
            );
        }
        let seed = match self.src.latest_price(&key).await {
            Ok(Some(d)) => Some(d),
            Ok(None) => match self.src.listed(&key).await {
                Ok(true) => None,
                Ok(false) => {
                    return self.error(
                        "unknown_instrument",
                        &format!("unknown instrument {key}"),
                        OP,
                        None,
                    );
                }
                Err(_) => return self.unavailable("watch", None),
            },
            Err(_) => return self.unavailable("watch", None),
        };
        let id = self.next_watch;
        self.next_watch += 1;
        let view = Arc::new(WatchView::new(id, &key, direction, threshold));
        let price = seed.as_ref().map(|d| d.price);
        self.push(
            Reply::Watching {
                watch: &view,
                price,
                past: price.is_some_and(|p| direction.is_past(p, threshold)),
            }
            .to_json(),
        );
        let src = self.src;
        let k2 = key.clone();
        self.hub.add_watch(
            &self.guard,
            &key,
            view.clone(),
            seed.map(|d| (d.trade_id, d.price)),
            move || src.price_now(&k2).map(|d| (d.trade_id, d.price, d.ts)),
        );
        self.watches.insert(id, (key, view));
    }

    fn unwatch(&mut self, u: Unwatch) {
        let ids: Vec<u64> = match &u {
            Unwatch::Id(id) => {
                if !self.watches.contains_key(id) {
                    return self.error(
                        "unknown_watch",
                        &format!("no watch with id {id} on this connection"),
                        Some("unwatch"),
                        None,
                    );
                }
                vec![*id]
            }
            Unwatch::Instrument(k) => self
                .watches
                .iter()
                .filter(|(_, (wk, _))| wk == k)
                .map(|(id, _)| *id)
                .collect(),
        };
        for id in &ids {
            if let Some((k, _)) = self.watches.remove(id) {
                self.hub.remove_watches(self.guard.id, &k, Some(&[*id]));
            }
        }
        self.push(Reply::Unwatched { ids: &ids }.to_json());
    }
}

/// A latest value read before registering a channel.
enum Snapshot {
    None,
    Price(PriceDoc),
    Vwap(VwapDoc),
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::super::config::StreamConfig;
    use super::*;
    use pricefeed_runtime::shutdown::Shutdown;
    use tokio::sync::mpsc;
    use tokio_util::sync::PollSender;

    /// Every instrument is listed and priced at 100 with trade id 1.
    struct Fake(Vec<Span>);

    fn doc(id: u64) -> PriceDoc {
        PriceDoc {
            market: "spot".into(),
            symbol: "BTCUSDT".into(),
            price: Decimal::new(100 + id as i64, 0),
            qty: Decimal::ONE,
            trade_id: id,
            ts: id as i64,
        }
    }

    impl Source for Fake {
        fn intervals(&self) -> &[Span] {
            &self.0
        }
        async fn latest_price(&self, _: &InstrumentKey) -> anyhow::Result<Option<PriceDoc>> {
            Ok(Some(doc(1)))
        }
        async fn latest_vwap(&self, _: &InstrumentKey, _: Span) -> anyhow::Result<Option<VwapDoc>> {
            Ok(None)
        }
        async fn listed(&self, _: &InstrumentKey) -> anyhow::Result<bool> {
            Ok(true)
        }
        fn price_now(&self, _: &InstrumentKey) -> Option<PriceDoc> {
            None
        }
        fn vwap_now(&self, _: &InstrumentKey, _: Span) -> Option<VwapDoc> {
            None
        }
        fn verify(&self, _: &str) -> Option<(i64, i64)> {
            None
        }
    }

    /// A client: its input sender, the connection's output receiver, the connection task.
    type Client = (
        mpsc::UnboundedSender<Result<Message, std::io::Error>>,
        mpsc::Receiver<Message>,
        tokio::task::JoinHandle<End>,
    );

    /// Runs a connection whose socket buffers `capacity` outgoing messages.
    fn client(hub: &Arc<Hub>, src: &Arc<Fake>, capacity: usize) -> Client {
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(capacity);
        let stream = Box::pin(futures_util::stream::unfold(in_rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }));
        let (hub2, src2) = (hub.clone(), src.clone());
        let guard = hub.connect().unwrap();
        let task = tokio::spawn(async move {
            run(&*src2, &hub2, guard, PollSender::new(out_tx), stream).await
        });
        (in_tx, out_rx, task)
    }

    fn text(s: &str) -> Result<Message, std::io::Error> {
        Ok(Message::Text(s.into()))
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_off_while_another_keeps_receiving() {
        let shutdown = Shutdown::new();
        let cfg = StreamConfig {
            send_timeout_ms: 200,
            ..StreamConfig::default()
        };
        let hub = Hub::start(cfg, &shutdown);
        let src = Arc::new(Fake(vec![Span::MINUTE]));
        // The slow client's socket takes one frame and is never read.
        let (slow_in, _slow_out, slow) = client(&hub, &src, 1);
        let (fast_in, mut fast_out, fast) = client(&hub, &src, 64);
        let sub = r#"{"op":"subscribe","channels":["prices:BTCUSDT"]}"#;
        slow_in.send(text(sub)).unwrap();
        fast_in.send(text(sub)).unwrap();

        let reader = tokio::spawn(async move {
            let mut last = 0;
            while let Some(m) = fast_out.recv().await {
                if let Message::Text(t) = m {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "price" {
                        let id = v["data"]["trade_id"].as_u64().unwrap();
                        assert!(id > last, "forward only");
                        last = id;
                        if id == 200 {
                            return last;
                        }
                    }
                }
            }
            last
        });
        for id in 2..=200 {
            hub.offer_prices(vec![doc(id)]);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let end = tokio::time::timeout(Duration::from_secs(5), slow)
            .await
            .expect("slow client cut off")
            .unwrap();
        assert_eq!(end, End::Slow);
        let last = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("fast client got the last value")
            .unwrap();
        assert_eq!(last, 200);
        // Shutdown closes the other one with 1001.
        shutdown.trigger();
        let end = tokio::time::timeout(Duration::from_secs(5), fast)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end, End::Shutdown);
        drop((slow_in, fast_in));
    }

    #[tokio::test]
    async fn bad_frames_get_errors_and_oversized_ones_close_with_1009() {
        let shutdown = Shutdown::new();
        let cfg = StreamConfig {
            max_frame_bytes: 256,
            ..StreamConfig::default()
        };
        let hub = Hub::start(cfg, &shutdown);
        let src = Arc::new(Fake(vec![Span::MINUTE]));
        let (tx, mut rx, task) = client(&hub, &src, 64);
        tx.send(text("{")).unwrap();
        tx.send(Ok(Message::Binary(vec![0u8; 3].into()))).unwrap();
        tx.send(text(r#"{"op":"ping"}"#)).unwrap();
        let mut types = Vec::new();
        while types.len() < 3 {
            if let Some(Message::Text(t)) = rx.recv().await {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                types.push(format!("{}:{}", v["type"], v["code"]));
            }
        }
        assert_eq!(
            types,
            [
                r#""error":"bad_request""#,
                r#""error":"bad_request""#,
                r#""pong":null"#
            ]
        );
        tx.send(text(&"x".repeat(300))).unwrap();
        // An error frame saying why, then the close frame.
        match rx.recv().await {
            Some(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(
                    (&v["type"], &v["code"]),
                    (&"error".into(), &"too_big".into())
                );
                assert!(v["message"].as_str().unwrap().contains("256 bytes"), "{v}");
            }
            other => panic!("{other:?}"),
        }
        match rx.recv().await {
            Some(Message::Close(Some(f))) => assert_eq!(f.code, 1009),
            other => panic!("{other:?}"),
        }
        drop(tx);
        assert_eq!(task.await.unwrap(), End::TooBig);
        shutdown.trigger();
    }
}
