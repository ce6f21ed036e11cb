//! The node's Redis pub/sub subscriptions (assignment changes, reconnect orders, price ticks):
//! one subscribe function and one resubscribing listen loop, so every channel handles a lost
//! subscription the same way. Pub/sub is at-most-once: a listener learns of every (re)subscribe
//! and every loss, and must repair what it may have missed in between.
//!
//! A pub/sub connection can also hang without closing (a frozen Redis, a dropped route, a
//! half-open TCP connection): nothing arrives and nothing fails. [`listen`] therefore PINGs the
//! server on the subscription's own connection and treats a missing answer as a lost
//! subscription, so listeners stop trusting what they built from it within seconds.

use std::time::Duration;

use futures_util::StreamExt;
use pricefeed_store::redis_conn::RedisEndpoint;
use redis::aio::{PubSubSink, PubSubStream};
use tokio_util::sync::CancellationToken;

/// A fresh subscription to `channel` on its own connection (RESP2 pub/sub connection).
pub async fn subscribe(
    redis_endpoint: &RedisEndpoint,
    channel: &str,
) -> redis::RedisResult<PubSubStream> {
    Ok(subscribe_split(redis_endpoint, channel).await?.1)
}

async fn subscribe_split(
    redis_endpoint: &RedisEndpoint,
    channel: &str,
) -> redis::RedisResult<(PubSubSink, PubSubStream)> {
    let client = redis_endpoint.client().await?;
    let mut ps = client.get_async_pubsub().await?;
    ps.subscribe(channel).await?;
    Ok(ps.split())
}

/// How [`listen`] checks that a quiet subscription is still alive.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    /// PING the server this often.
    pub every: Duration,
    /// No answer (or no subscription made) within this: the connection is considered hung.
    pub timeout: Duration,
}

impl Default for Keepalive {
    /// A hung connection is noticed within 3 s: well inside the seconds in which the cluster
    /// moves slices, and one PING a second costs nothing.
    fn default() -> Self {
        Self {
            every: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
        }
    }
}

/// What a [`listen`] loop reports.
pub trait Listener {
    /// Subscribed (first time or again); messages from now on are delivered.
    fn subscribed(&mut self) {}
    /// One message payload.
    fn message(&mut self, payload: &[u8]);
    /// The subscription ended; messages may be missed until the next `subscribed`.
    fn lost(&mut self) {}
}

/// Subscribes to `channel` and feeds `listener` until `token` is cancelled, resubscribing after
/// `retry` whenever the subscription cannot be made, ends, or stops answering PINGs
/// ([`Keepalive`]). `what` names the channel in logs; failures are logged once per outage, not
/// once per attempt.
pub async fn listen(
    redis_endpoint: &RedisEndpoint,
    channel: &str,
    what: &'static str,
    retry: Duration,
    keepalive: Keepalive,
    token: &CancellationToken,
    listener: &mut impl Listener,
) {
    let mut failing = false;
    loop {
        let subscribed = tokio::select! {
            () = token.cancelled() => return,
            r = tokio::time::timeout(keepalive.timeout, subscribe_split(redis_endpoint, channel)) => {
                r.unwrap_or_else(|_| Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "subscribe timed out",
                ))))
            }
        };
        match subscribed {
            Ok((mut sink, mut stream)) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(channel = what, "subscription restored");
                }
                listener.subscribed();
                let mut ping = tokio::time::interval(keepalive.every);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ping.reset();
                let why = loop {
                    tokio::select! {
                        () = token.cancelled() => return,
                        msg = stream.next() => match msg {
                            Some(m) => listener.message(m.get_payload_bytes()),
                            None => break "subscription closed",
                        },
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(keepalive.timeout, sink.ping::<redis::Value>());
                            tokio::select! {
                                () = token.cancelled() => return,
                                r = pong => match r {
                                    Ok(Ok(_)) => {}
                                    Ok(Err(_)) => break "PING failed",
                                    Err(_) => break "no answer to PING",
                                },
                            }
                        }
                    }
                };
                listener.lost();
                tracing::warn!(
                    channel = what,
                    reason = why,
                    "subscription lost; resubscribing"
                );
                failing = true;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(channel = what, error = %e, "cannot subscribe; retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(retry) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{mpsc, watch};

    /// A loopback TCP proxy that can freeze: while frozen it forwards nothing in either
    /// direction but keeps every connection open — a hung network path, not a closed one.
    async fn freezable_proxy(target: SocketAddr) -> (SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = watch::channel(false);
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(pump(cr, uw, f.subscribe()));
                tokio::spawn(pump(ur, cw, f.subscribe()));
            }
        });
        (addr, frozen)
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut frozen: watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    #[derive(Debug, PartialEq)]
    enum Ev {
        Subscribed,
        Message(String),
        Lost,
    }

    struct Rec(mpsc::UnboundedSender<Ev>);

    impl Listener for Rec {
        fn subscribed(&mut self) {
            let _ = self.0.send(Ev::Subscribed);
        }
        fn message(&mut self, payload: &[u8]) {
            let _ = self
                .0
                .send(Ev::Message(String::from_utf8_lossy(payload).into_owned()));
        }
        fn lost(&mut self) {
            let _ = self.0.send(Ev::Lost);
        }
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Ev>, within: Duration) -> Ev {
        tokio::time::timeout(within, rx.recv())
            .await
            .expect("listener event before the deadline")
            .expect("listener alive")
    }

    /// Keeps publishing `payload` until the listener reports it (a message published before the
    /// server registered the subscription is not delivered, so one PUBLISH is not enough).
    async fn deliver(
        redis: &mut redis::aio::MultiplexedConnection,
        channel: &str,
        payload: &str,
        rx: &mut mpsc::UnboundedReceiver<Ev>,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async(redis)
                .await
                .unwrap();
            match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Some(Ev::Message(m))) if m == payload => return,
                Ok(Some(other)) => panic!("unexpected {other:?} while waiting for {payload}"),
                Ok(None) => panic!("listener gone"),
                Err(_) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "{payload} never delivered"
                ),
            }
        }
    }

    #[tokio::test]
    async fn a_hung_connection_is_noticed_by_ping_and_the_subscription_comes_back() {
        let Ok(url) = std::env::var("PRICEFEED_TEST_REDIS_URL") else {
            panic!("PRICEFEED_TEST_REDIS_URL is required (./dev test sets it)");
        };
        let target: SocketAddr = {
            let info = redis::Client::open(url.as_str()).unwrap();
            let redis::ConnectionAddr::Tcp(host, port) = info.get_connection_info().addr().clone()
            else {
                panic!("TCP Redis URL expected: {url}")
            };
            tokio::net::lookup_host((host.as_str(), port))
                .await
                .unwrap()
                .next()
                .unwrap()
        };
        let (proxy, frozen) = freezable_proxy(target).await;
        let proxied = RedisEndpoint::from_url(&format!("redis://{proxy}")).unwrap();
        let channel = format!(
            "pubsub-test:{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let keepalive = Keepalive {
            every: Duration::from_millis(200),
            timeout: Duration::from_millis(300),
        };
        let token = CancellationToken::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = {
            let (token, channel) = (token.clone(), channel.clone());
            tokio::spawn(async move {
                listen(
                    &proxied,
                    &channel,
                    "test",
                    Duration::from_millis(100),
                    keepalive,
                    &token,
                    &mut Rec(tx),
                )
                .await;
            })
        };
        let mut publisher = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        assert_eq!(next(&mut rx, Duration::from_secs(5)).await, Ev::Subscribed);
        deliver(&mut publisher, &channel, "before", &mut rx).await;

        // Hung, not closed: only the PING can tell.
        frozen.send_replace(true);
        let t0 = std::time::Instant::now();
        assert_eq!(next(&mut rx, Duration::from_secs(5)).await, Ev::Lost);
        let noticed = t0.elapsed();
        println!("hung subscription noticed after {noticed:?}");
        assert!(
            noticed <= keepalive.every + keepalive.timeout + Duration::from_millis(500),
            "{noticed:?}"
        );

        // Back: a fresh subscription, and messages flow again.
        frozen.send_replace(false);
        assert_eq!(next(&mut rx, Duration::from_secs(5)).await, Ev::Subscribed);
        deliver(&mut publisher, &channel, "after", &mut rx).await;

        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("listen returns once cancelled")
            .unwrap();
    }
}
