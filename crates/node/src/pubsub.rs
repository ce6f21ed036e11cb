//! The node's Redis pub/sub subscriptions (assignment changes, reconnect orders, price ticks):
//! one subscribe function and one resubscribing listen loop, so every channel handles a lost
//! subscription the same way. Pub/sub is at-most-once: a listener learns of every (re)subscribe
//! and every loss, and must repair what it may have missed in between.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubStream;
use tokio_util::sync::CancellationToken;

/// A fresh subscription to `channel` on its own connection (RESP2 pub/sub connection).
pub async fn subscribe(redis_url: &str, channel: &str) -> redis::RedisResult<PubSubStream> {
    let client = redis::Client::open(redis_url)?;
    let mut ps = client.get_async_pubsub().await?;
    ps.subscribe(channel).await?;
    Ok(ps.into_on_message())
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
/// `retry` whenever the subscription cannot be made or ends. `what` names the channel in logs;
/// failures are logged once per outage, not once per attempt.
pub async fn listen(
    redis_url: &str,
    channel: &str,
    what: &'static str,
    retry: Duration,
    token: &CancellationToken,
    listener: &mut impl Listener,
) {
    let mut failing = false;
    loop {
        let mut stream = tokio::select! {
            () = token.cancelled() => return,
            r = subscribe(redis_url, channel) => match r {
                Ok(s) => {
                    if failing {
                        tracing::info!(channel = what, "subscription restored");
                        failing = false;
                    }
                    listener.subscribed();
                    Some(s)
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(channel = what, error = %e, "cannot subscribe; retrying");
                        failing = true;
                    }
                    None
                }
            },
        };
        while let Some(s) = stream.as_mut() {
            tokio::select! {
                () = token.cancelled() => return,
                msg = s.next() => match msg {
                    Some(m) => listener.message(m.get_payload_bytes()),
                    None => {
                        listener.lost();
                        tracing::warn!(channel = what, "subscription closed; resubscribing");
                        failing = true;
                        stream = None;
                    }
                },
            }
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(retry) => {}
        }
    }
}
