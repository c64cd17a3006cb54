//! One Redis connection, to a single server or to a Redis Cluster: the same calls on both.
//! A single server's connection that stops answering (calls time out while it looks healthy)
//! is replaced by a fresh one ([`RedisConn::replace_stalled`]).

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, FromRedisValue, RedisResult, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Replacements of a stalled connection are at least this far apart.
const REPLACE_EVERY: Duration = Duration::from_secs(1);

/// How long a call's own task waits for its answer before giving up (its caller gave up long
/// before: callers bound their calls by the much shorter call timeout).
///
/// Every call runs in a task of its own because redis-rs queues requests to a connection
/// through a bounded, fair channel: a request future that was granted a slot holds it until it
/// is polled again. A room that awaited one call in the body of a `select!` arm while its
/// pipelined commits sat unpolled in another arm could hold every slot of the connection and
/// wait for a slot itself: the connection stopped writing for every room of the gateway (no
/// error, no CPU). A spawned call is polled by the runtime whatever its caller does.
const DRIVEN_FOR: Duration = Duration::from_secs(60);

/// Runs a Redis call to its end in a task of its own, bounded by [`DRIVEN_FOR`].
async fn driven<T: Send + 'static>(
    call: impl std::future::Future<Output = RedisResult<T>> + Send + 'static,
) -> RedisResult<T> {
    let task = tokio::spawn(tokio::time::timeout(DRIVEN_FOR, call));
    match task.await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no answer from Redis",
            format!("within {DRIVEN_FOR:?}"),
        ))),
        Err(e) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "a Redis call's task failed",
            e.to_string(),
        ))),
    }
}

/// Where Redis is: one server's URL, or the seed URLs of a Redis Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
}

/// A multiplexed, reconnecting connection (clones share it).
#[derive(Clone)]
pub enum RedisConn {
    Single(Arc<Single>),
    Cluster(ClusterConnection),
}

/// A single server's connection: redis-rs's `ConnectionManager` (which reconnects after an
/// error it sees), replaced as a whole when calls time out without an error.
pub struct Single {
    client: redis::Client,
    config: ConnectionManagerConfig,
    current: RwLock<ConnectionManager>,
    replacing: AtomicBool,
}

impl Single {
    fn current(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl RedisConn {
    /// Connects; `timeout` bounds connecting (each call is bounded by its caller).
    pub async fn connect(target: &RedisTarget, timeout: Duration) -> RedisResult<Self> {
        match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(None);
                let manager = client
                    .get_connection_manager_with_config(config.clone())
                    .await?;
                Ok(RedisConn::Single(Arc::new(Single {
                    client,
                    config,
                    current: RwLock::new(manager),
                    replacing: AtomicBool::new(false),
                })))
            }
            RedisTarget::Cluster(urls) => {
                let client = ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(timeout)
                    .build()?;
                Ok(RedisConn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// Runs one command (routed by its first key on a cluster), driven by a task of its own
    /// (see [`DRIVEN_FOR`]).
    pub async fn query<T: FromRedisValue + Send + 'static>(&self, cmd: &Cmd) -> RedisResult<T> {
        let (conn, cmd) = (self.clone(), cmd.clone());
        driven(async move {
            match &conn {
                RedisConn::Single(c) => cmd.query_async(&mut c.current()).await,
                RedisConn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
            }
        })
        .await
    }

    /// Runs one command on every master (the one server when not a cluster): each master's
    /// address (empty for a single server) and its answer, an error answer included.
    pub async fn on_masters(&self, cmd: Cmd) -> RedisResult<Vec<(String, Value)>> {
        let conn = self.clone();
        driven(async move { conn.on_masters_here(cmd).await }).await
    }

    async fn on_masters_here(&self, cmd: Cmd) -> RedisResult<Vec<(String, Value)>> {
        match self {
            RedisConn::Single(c) => {
                let value = match cmd.query_async::<Value>(&mut c.current()).await {
                    Ok(v) => v,
                    Err(e) => match e.try_into() {
                        Ok(server) => Value::ServerError(server),
                        Err(e) => return Err(e),
                    },
                };
                Ok(vec![(String::new(), value)])
            }
            RedisConn::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let value = c.clone().route_command(cmd, routing).await?;
                let Value::Map(pairs) = value else {
                    return Ok(vec![(String::new(), value)]);
                };
                Ok(pairs
                    .into_iter()
                    .map(|(addr, v)| {
                        let addr = match addr {
                            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                            other => format!("{other:?}"),
                        };
                        (addr, v)
                    })
                    .collect())
            }
        }
    }

    /// A call got no answer in time: the connection may be stalled without an error that
    /// would make it reconnect (requests queued, none written). A single server's connection is
    /// replaced by a fresh one in the background (at most once per [`REPLACE_EVERY`]); calls in
    /// flight on the old one keep their timeouts (their outcome is unknown either way). A call
    /// that was stuck on the old connection and is handed over again lands after calls already
    /// sent on the new one, so one room's commits that met the stall may commit out of their
    /// order (never twice). A Redis Cluster connection keeps its own per-node connections.
    pub fn replace_stalled(&self) {
        let RedisConn::Single(single) = self else {
            return;
        };
        if single.replacing.swap(true, Ordering::AcqRel) {
            return;
        }
        let single = single.clone();
        tokio::spawn(async move {
            match single
                .client
                .get_connection_manager_with_config(single.config.clone())
                .await
            {
                Ok(fresh) => {
                    *single
                        .current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                    tracing::warn!(
                        "a Redis call got no answer in time: the connection was replaced"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replacing a stalled Redis connection failed");
                }
            }
            tokio::time::sleep(REPLACE_EVERY).await;
            single.replacing.store(false, Ordering::Release);
        });
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}
