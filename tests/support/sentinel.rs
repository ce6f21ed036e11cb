//! A highly available Redis of one test's own: a primary, one replica and three sentinels on
//! free loopback ports, all `redis-server` processes (`--sentinel` makes the same binary a
//! sentinel, so no package beyond Debian's `redis-server` is needed). Failure detection is fast
//! (`down-after-milliseconds` 1000, `failover-timeout` 3000) so a drill sees a promotion within
//! seconds. Dropping it kills every process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{scratch_dir, wait_for};

pub const MASTER_NAME: &str = "pricefeed";

#[derive(Debug)]
pub struct RedisHa {
    dir: PathBuf,
    /// Data servers by port (the primary and the replica swap roles in a failover).
    servers: BTreeMap<u16, Child>,
    sentinels: Vec<(u16, Child)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis_bin() -> String {
    std::env::var("PRICEFEED_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

async fn conn(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await
}

async fn accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

impl RedisHa {
    /// Starts primary, replica and sentinels and waits until the replica is in sync and every
    /// sentinel knows the replica and the other sentinels (so a failover can be authorised).
    pub async fn start() -> Self {
        let dir = scratch_dir("redis-ha");
        let (p, r) = (free_port(), free_port());
        let mut me = Self {
            dir,
            servers: BTreeMap::new(),
            sentinels: Vec::new(),
        };
        me.spawn_server(p, None);
        me.spawn_server(r, Some(p));
        for _ in 0..3 {
            let s = free_port();
            let conf = me.dir.join(format!("sentinel-{s}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {s}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {p} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 3000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    me.dir.display()
                ),
            )
            .unwrap();
            let child = Command::new(redis_bin())
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .expect("start a sentinel");
            me.sentinels.push((s, child));
        }
        let ports: Vec<u16> = me.sentinels.iter().map(|(s, _)| *s).collect();
        let ready = wait_for(Duration::from_secs(30), || {
            let ports = ports.clone();
            async move {
                let Ok(mut c) = conn(r).await else {
                    return false;
                };
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                if !info.contains("master_link_status:up") {
                    return false;
                }
                for s in ports {
                    let Ok(mut c) = conn(s).await else {
                        return false;
                    };
                    let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("replicas")
                        .arg(MASTER_NAME)
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    let peers: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("sentinels")
                        .arg(MASTER_NAME)
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    if replicas.len() != 1 || peers.len() != 2 {
                        return false;
                    }
                }
                true
            }
        })
        .await;
        assert!(
            ready.is_ok(),
            "Redis primary, replica and sentinels not ready"
        );
        me
    }

    fn spawn_server(&mut self, port: u16, replica_of: Option<u16>) {
        let mut cmd = Command::new(redis_bin());
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // A replica that is still waiting out the default 5 s diskless-sync delay would be
            // promoted empty (reference/testing.md, "Redis + Sentinel").
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null());
        if let Some(p) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]);
        }
        let child = cmd.spawn().expect("start redis-server");
        self.servers.insert(port, child);
    }

    /// `host:port,…` of the sentinels, for `redis.sentinel.nodes`.
    pub fn sentinel_nodes(&self) -> String {
        self.sentinels
            .iter()
            .map(|(s, _)| format!("127.0.0.1:{s}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The primary's port as the first sentinel that answers names it.
    pub async fn primary(&self) -> Option<u16> {
        for (s, _) in &self.sentinels {
            let Ok(mut c) = conn(*s).await else { continue };
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER_NAME)
                .query_async(&mut c)
                .await
                .ok()
                .flatten();
            if let Some((_, p)) = addr {
                return Some(p);
            }
        }
        None
    }

    /// A URL of the current primary (for the test's own reads).
    pub async fn primary_url(&self) -> String {
        format!(
            "redis://127.0.0.1:{}",
            self.primary().await.expect("a primary")
        )
    }

    /// SIGKILLs the current primary; returns its port.
    pub async fn kill_primary(&mut self) -> u16 {
        let p = self.primary().await.expect("a primary");
        let mut child = self.servers.remove(&p).expect("the primary is ours");
        let _ = child.kill();
        let _ = child.wait();
        p
    }

    /// Waits until every sentinel that answers names a primary other than `old` and that
    /// primary accepts connections; returns how long that took.
    pub async fn wait_promoted(&self, old: u16, within: Duration) -> Duration {
        let t0 = Instant::now();
        let ok = wait_for(within, || async {
            match self.primary().await {
                Some(p) if p != old => accepts(p).await,
                _ => false,
            }
        })
        .await;
        assert!(ok.is_ok(), "no replica promoted within {within:?}");
        t0.elapsed()
    }

    /// Starts the killed server again on its port, as a replica of the current primary (what
    /// an operator's restart does: sentinels would reconfigure it anyway).
    pub async fn restart_as_replica(&mut self, port: u16) {
        let primary = self.primary().await.expect("a primary");
        self.spawn_server(port, Some(primary));
        let ok = wait_for(Duration::from_secs(10), || accepts(port)).await;
        assert!(ok.is_ok(), "restarted Redis on {port} accepts connections");
    }
}

impl Drop for RedisHa {
    fn drop(&mut self) {
        for (_, c) in self.servers.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, c) in self.sentinels.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
