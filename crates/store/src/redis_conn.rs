//! Redis connection handling: where the primary is ([`RedisEndpoint`]) and the one multiplexed
//! connection per process that every store function takes ([`RedisConn`]).
//!
//! With a plain `redis.url` the connection is a [`ConnectionManager`], which reconnects on its
//! own. With `[redis.sentinel]` the primary can move: a command that fails because the primary
//! is gone (I/O error, refused connection) or was demoted (`READONLY`, `MASTERDOWN`) makes the
//! connection ask the sentinels again and switch to the primary they name, so nodes, scheduler
//! and workers follow a failover within about one sentinel round trip of noticing it.
//!
//! Everything stored in Redis can be rebuilt from Postgres and the broker, so a lost Redis (or
//! writes lost in an asynchronous failover) costs freshness, never data.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pricefeed_runtime::config::RedisConfig;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value,
};

/// How long one sentinel or primary may take to answer during discovery.
const DISCOVERY_TIMEOUT: Duration = Duration::from_millis(1_000);
/// At most one discovery per this interval, however many commands fail meanwhile.
const REDISCOVER_EVERY: Duration = Duration::from_millis(250);

/// Where the Redis primary is. Cheap to clone.
#[derive(Clone)]
pub struct RedisEndpoint {
    inner: Arc<Target>,
}

enum Target {
    Direct(ConnectionInfo),
    Sentinel {
        master: String,
        sentinels: Vec<(String, u16)>,
        /// Scheme, credentials and database of the primary; its address is discovered.
        template: ConnectionInfo,
    },
}

impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl RedisEndpoint {
    /// From `[redis]`; errors name the config key.
    pub fn from_config(cfg: &RedisConfig) -> anyhow::Result<Self> {
        let info = cfg
            .url
            .expose()
            .into_connection_info()
            .map_err(|e| anyhow::anyhow!("config key `redis.url`: {e}"))?;
        let target = match &cfg.sentinel {
            None => Target::Direct(info),
            Some(s) => {
                let mut sentinels = Vec::with_capacity(s.nodes.len());
                for n in &s.nodes {
                    let (h, p) = n
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "config key `redis.sentinel.nodes`: `{n}` is not host:port"
                            )
                        })?;
                    sentinels.push((h, p));
                }
                Target::Sentinel {
                    master: s.master_name.clone(),
                    sentinels,
                    template: info,
                }
            }
        };
        Ok(Self {
            inner: Arc::new(target),
        })
    }

    /// A plain URL (tests and tools).
    pub fn from_url(url: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            inner: Arc::new(Target::Direct(url.into_connection_info()?)),
        })
    }

    /// For logs: the URL without credentials, or the sentinel set.
    pub fn describe(&self) -> String {
        match &*self.inner {
            Target::Direct(info) => format!("Redis at {}", info.addr()),
            Target::Sentinel {
                master, sentinels, ..
            } => {
                let list: Vec<String> = sentinels.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                format!("Redis primary `{master}` via sentinels {}", list.join(","))
            }
        }
    }

    fn is_sentinel(&self) -> bool {
        matches!(&*self.inner, Target::Sentinel { .. })
    }

    /// A client for the current primary: the configured one, or the one the sentinels name (and
    /// that confirms it is a primary, so a sentinel that has not yet seen a failover is not
    /// believed).
    pub async fn client(&self) -> redis::RedisResult<redis::Client> {
        match &*self.inner {
            Target::Direct(info) => redis::Client::open(info.clone()),
            Target::Sentinel {
                master,
                sentinels,
                template,
            } => {
                let mut last: Option<redis::RedisError> = None;
                for (h, p) in sentinels {
                    match tokio::time::timeout(
                        DISCOVERY_TIMEOUT,
                        ask_sentinel(h, *p, master, template),
                    )
                    .await
                    {
                        Ok(Ok(client)) => return Ok(client),
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => {
                            last =
                                Some(io_error(format!("sentinel {h}:{p} did not answer in time")))
                        }
                    }
                }
                Err(last.unwrap_or_else(|| io_error("no sentinel configured".into())))
            }
        }
    }
}

fn io_error(msg: String) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::other(msg))
}

async fn ask_sentinel(
    host: &str,
    port: u16,
    master: &str,
    template: &ConnectionInfo,
) -> redis::RedisResult<redis::Client> {
    let sentinel = redis::Client::open(ConnectionAddr::Tcp(host.to_string(), port))?;
    let mut conn = sentinel.get_multiplexed_async_connection().await?;
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut conn)
        .await?;
    let (h, p) =
        addr.ok_or_else(|| io_error(format!("sentinel {host}:{port} does not know `{master}`")))?;
    let addr = match template.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: h.clone(),
            port: p,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(h.clone(), p),
    };
    let client = redis::Client::open(template.clone().set_addr(addr))?;
    let mut primary = client.get_multiplexed_async_connection().await?;
    let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut primary).await?;
    match role.first() {
        Some(Value::BulkString(b)) if b == b"master" => Ok(client),
        Some(Value::SimpleString(s)) if s == "master" => Ok(client),
        _ => Err(io_error(format!(
            "{h}:{p}, named by sentinel {host}:{port}, is not a primary (yet)"
        ))),
    }
}

/// The process's Redis connection: multiplexed, reconnecting, and with Sentinel following the
/// primary. Cheap to clone; every clone shares the connection.
#[derive(Clone)]
pub struct RedisConn {
    endpoint: RedisEndpoint,
    shared: Arc<Shared>,
    /// This clone's copy of the manager and the generation it belongs to.
    local: ConnectionManager,
    local_gen: u64,
}

struct Shared {
    current: RwLock<ConnectionManager>,
    generation: AtomicU64,
    rediscovering: AtomicBool,
    db: i64,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn manager_config(endpoint: &RedisEndpoint) -> ConnectionManagerConfig {
    let cfg = ConnectionManagerConfig::new().set_connection_timeout(Some(DISCOVERY_TIMEOUT));
    if endpoint.is_sentinel() {
        // Commands wait for the manager's reconnect attempts (six by default, about 3.5 s of
        // backoff against a dead primary). Failing after one lets the first error start the
        // discovery of the promoted replica instead.
        cfg.set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200))
    } else {
        cfg.set_max_delay(Duration::from_secs(1))
    }
}

impl RedisConn {
    /// Connects to the endpoint's current primary.
    pub async fn connect(endpoint: RedisEndpoint) -> redis::RedisResult<Self> {
        let client = endpoint.client().await?;
        let db = client.get_connection_info().redis_settings().db();
        let cm = ConnectionManager::new_with_config(client, manager_config(&endpoint)).await?;
        Ok(Self {
            endpoint,
            shared: Arc::new(Shared {
                current: RwLock::new(cm.clone()),
                generation: AtomicU64::new(0),
                rediscovering: AtomicBool::new(false),
                db,
            }),
            local: cm,
            local_gen: 0,
        })
    }

    pub fn endpoint(&self) -> &RedisEndpoint {
        &self.endpoint
    }

    /// Picks up a connection another clone switched to.
    fn refresh(&mut self) {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.local_gen {
            self.local = self
                .shared
                .current
                .read()
                .expect("redis connection lock")
                .clone();
            self.local_gen = g;
        }
    }

    /// After a failure that may mean the primary moved: ask the sentinels again, in the
    /// background (the failing command has already failed; its caller retries on its own
    /// schedule) and at most once per [`REDISCOVER_EVERY`].
    fn on_error(&self, e: &redis::RedisError) {
        if !self.endpoint.is_sentinel() || !primary_may_have_moved(e) {
            return;
        }
        if self.shared.rediscovering.swap(true, Ordering::AcqRel) {
            return;
        }
        let endpoint = self.endpoint.clone();
        let shared = self.shared.clone();
        // Detached but bounded: discovery gives up after the sentinels' timeouts, and the
        // flag makes this the only one in flight.
        tokio::spawn(async move {
            let switched = async {
                let client = endpoint.client().await?;
                let cm =
                    ConnectionManager::new_with_config(client.clone(), manager_config(&endpoint))
                        .await?;
                *shared.current.write().expect("redis connection lock") = cm;
                shared.generation.fetch_add(1, Ordering::AcqRel);
                Ok::<_, redis::RedisError>(client.get_connection_info().addr().to_string())
            }
            .await;
            match switched {
                Ok(addr) => {
                    tracing::info!(primary = %addr, "redis: connected to the primary the sentinels name")
                }
                Err(e) => {
                    tracing::debug!(error = %e, "redis: primary discovery failed; will retry on the next failure")
                }
            }
            tokio::time::sleep(REDISCOVER_EVERY).await;
            shared.rediscovering.store(false, Ordering::Release);
        });
    }
}

/// Errors after which the primary may be elsewhere.
fn primary_may_have_moved(e: &redis::RedisError) -> bool {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        return true;
    }
    matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.refresh();
        Box::pin(async move {
            let r = self.local.req_packed_command(cmd).await;
            if let Err(e) = &r {
                self.on_error(e);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.refresh();
        Box::pin(async move {
            let r = self
                .local
                .req_packed_commands(pipeline, offset, count)
                .await;
            if let Err(e) = &r {
                self.on_error(e);
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.db
    }
}

/// Connects and checks the server answers.
pub async fn connect(cfg: &RedisConfig) -> anyhow::Result<RedisConn> {
    let endpoint = RedisEndpoint::from_config(cfg)?;
    let mut conn = RedisConn::connect(endpoint.clone()).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to {} (config keys `redis.url`, `redis.sentinel`): {e}",
            endpoint.describe()
        )
    })?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(conn)
}

/// Readiness probe.
pub async fn ping(mut conn: RedisConn) -> Result<(), String> {
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| format!("redis: {e}"))
}
