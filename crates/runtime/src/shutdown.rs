//! Graceful shutdown: one cancellation token and one task tracker per process.
//!
//! On SIGTERM or SIGINT the process first reports not-ready (so load balancers stop routing),
//! then cancels the token; HTTP servers drain in-flight requests, long-running tasks observe the
//! token and finish, and [`Shutdown::wait`] gives them until the drain deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared shutdown state; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    draining: Arc<AtomicBool>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Every long-running task is spawned here so shutdown can wait for it.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts shutdown: not-ready first, then cancellation.
    pub fn trigger(&self) {
        self.draining.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Triggers shutdown on the first SIGTERM or SIGINT. The listener itself is tracked.
    pub fn listen_for_signals(&self) {
        let this = self.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                sig = wait_for_signal() => {
                    tracing::info!(signal = sig, "shutdown requested");
                    this.trigger();
                }
                () = this.token.cancelled() => {}
            }
        });
    }

    /// Closes the tracker and waits for every task, up to `deadline`. Returns false on timeout.
    pub async fn wait(&self, deadline: Duration) -> bool {
        self.tracker.close();
        match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => {
                tracing::info!("all tasks stopped");
                true
            }
            Err(_) => {
                tracing::warn!(
                    remaining = self.tracker.len(),
                    deadline_ms = deadline.as_millis() as u64,
                    "drain deadline passed; abandoning remaining tasks"
                );
                false
            }
        }
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_stops_tracked_tasks() {
        let s = Shutdown::new();
        let t = s.token();
        s.tracker().spawn(async move { t.cancelled().await });
        assert!(!s.is_draining());
        s.trigger();
        assert!(s.is_draining());
        assert!(s.wait(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn wait_reports_stuck_task() {
        let s = Shutdown::new();
        s.tracker().spawn(std::future::pending::<()>());
        s.trigger();
        assert!(!s.wait(Duration::from_millis(50)).await);
    }
}
