//! Shared harness: start a simulator, connect clients, wait on conditions with deadlines.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pricefeed_exchange_sim::config::SimConfig;
use pricefeed_exchange_sim::{Addrs, Handles};
use pricefeed_runtime::shutdown::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Sim {
    pub addrs: Addrs,
    pub shutdown: Shutdown,
    #[allow(dead_code)]
    pub handles: Handles,
    pub http: reqwest::Client,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Small catalogue, fast hot symbols, no listing churn, generous WS message rate (tests that
/// check the 5 msg/s limit set it back).
pub fn test_config() -> SimConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    SimConfig {
        spot_bind: any,
        futures_bind: any,
        options_bind: any,
        control_bind: any,
        underlyings: 3,
        hot_symbols: 1,
        hot_rate_per_sec: 500.0,
        tail_rate_per_min: 600.0,
        listing_interval_ms: 0,
        ws_max_msgs_per_sec: 1000,
        initial_halted_ratio: 0.0,
        ..SimConfig::default()
    }
}

pub async fn start_with(f: impl FnOnce(&mut SimConfig)) -> Sim {
    let mut cfg = test_config();
    f(&mut cfg);
    let shutdown = Shutdown::new();
    let handles = pricefeed_exchange_sim::start(cfg, &shutdown).await.unwrap();
    Sim {
        addrs: handles.addrs,
        shutdown,
        handles,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    }
}

pub async fn start() -> Sim {
    start_with(|_| {}).await
}

impl Sim {
    pub fn spot(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.spot)
    }
    pub fn futures(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.futures)
    }
    pub fn options(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.options)
    }
    pub fn control(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.control)
    }
    pub fn ws_url(&self, addr: SocketAddr, path: &str) -> String {
        format!("ws://{addr}{path}")
    }
    pub async fn get_json(&self, url: &str) -> (u16, serde_json::Value) {
        let r = self.http.get(url).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

pub async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Next text frame (pings/pongs skipped); `None` on close, EOF or deadline.
pub async fn next_text(ws: &mut Ws, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Sends a request and returns the first reply frame that is not a stream event.
pub async fn request(ws: &mut Ws, req: &str) -> serde_json::Value {
    ws.send(Message::text(req)).await.unwrap();
    loop {
        let t = next_text(ws, Duration::from_secs(5)).await.expect("reply");
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v.get("e").is_none() && v.get("stream").is_none() {
            return v;
        }
    }
}

/// What ended a connection, as seen by the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Close(u16, String),
    Eof,
    Timeout,
}

/// Reads until the connection ends; returns how, and the text frames seen before.
pub async fn read_until_end(ws: &mut Ws, within: Duration) -> (Ended, Vec<String>) {
    let deadline = Instant::now() + within;
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return (Ended::Timeout, texts),
            Ok(None) | Ok(Some(Err(_))) => return (Ended::Eof, texts),
            Ok(Some(Ok(Message::Close(c)))) => {
                let (code, reason) = c
                    .map(|c| (u16::from(c.code), c.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return (Ended::Close(code, reason), texts);
            }
            Ok(Some(Ok(Message::Text(t)))) => texts.push(t.to_string()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Polls `f` until it returns `Some`, or panics at the deadline.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A deliberately dumb WS client: handshakes, then only reads frames and never answers pings.
pub struct RawWs {
    sock: TcpStream,
    buf: Vec<u8>,
}

/// A server frame as seen by [`RawWs`].
#[derive(Debug)]
pub enum RawFrame {
    Text(#[allow(dead_code)] String),
    Ping,
    Close,
    Other,
}

impl RawWs {
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "handshake EOF");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..p]).to_string();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                buf.drain(..p + 4);
                return Self { sock, buf };
            }
        }
    }

    /// Next frame, or `None` on EOF/deadline.
    pub async fn next(&mut self, within: Duration) -> Option<RawFrame> {
        let deadline = Instant::now() + within;
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 65536];
            match tokio::time::timeout_at(deadline, self.sock.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn parse_frame(b: &[u8]) -> Option<(RawFrame, usize)> {
    if b.len() < 2 {
        return None;
    }
    let op = b[0] & 0x0f;
    let mut len = (b[1] & 0x7f) as usize;
    let mut off = 2;
    if len == 126 {
        if b.len() < 4 {
            return None;
        }
        len = u16::from_be_bytes([b[2], b[3]]) as usize;
        off = 4;
    } else if len == 127 {
        if b.len() < 10 {
            return None;
        }
        len = u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize;
        off = 10;
    }
    if b.len() < off + len {
        return None;
    }
    let payload = &b[off..off + len];
    let f = match op {
        1 => RawFrame::Text(String::from_utf8_lossy(payload).to_string()),
        8 => RawFrame::Close,
        9 => RawFrame::Ping,
        _ => RawFrame::Other,
    };
    Some((f, off + len))
}
