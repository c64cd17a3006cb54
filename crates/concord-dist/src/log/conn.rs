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

use super::driver::Driver;

/// Requests redis-rs queues on a single server's connection, and the most calls the driver
/// keeps unanswered on it (fewer: see `driver.rs`).
const PIPELINE_BUFFER: usize = 8192;
const SINGLE_IN_FLIGHT: usize = 4096;
/// The same on a Redis Cluster connection (redis-rs queues 100 requests, not configurable).
const CLUSTER_IN_FLIGHT: usize = 64;

/// Replacements of a stalled connection are at least this far apart.
const REPLACE_EVERY: Duration = Duration::from_secs(1);

/// Where Redis is: one server's URL, or the seed URLs of a Redis Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
}

/// A multiplexed, reconnecting connection (clones share it); its calls are polled by its
/// driver task (`driver.rs`).
#[derive(Clone)]
pub struct RedisConn {
    link: Link,
    driver: Driver,
}

#[derive(Clone)]
enum Link {
    Single(Arc<Single>),
    Cluster(ClusterConnection),
}

/// A single server's connection: redis-rs's `ConnectionManager` (which reconnects after an
/// error it sees), replaced as a whole when calls time out without an error.
struct Single {
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
                    .set_response_timeout(None)
                    .set_pipeline_buffer_size(PIPELINE_BUFFER);
                let manager = client
                    .get_connection_manager_with_config(config.clone())
                    .await?;
                Ok(RedisConn::over(Link::Single(Arc::new(Single {
                    client,
                    config,
                    current: RwLock::new(manager),
                    replacing: AtomicBool::new(false),
                }))))
            }
            RedisTarget::Cluster(urls) => {
                let client = ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(timeout)
                    .build()?;
                Ok(RedisConn::over(Link::Cluster(
                    client.get_async_connection().await?,
                )))
            }
        }
    }

    fn over(link: Link) -> RedisConn {
        let max_in_flight = match link {
            Link::Single(_) => SINGLE_IN_FLIGHT,
            Link::Cluster(_) => CLUSTER_IN_FLIGHT,
        };
        RedisConn {
            link,
            driver: Driver::start(max_in_flight),
        }
    }

    /// Runs one command (routed by its first key on a cluster), polled by the driver from
    /// this future's first poll on.
    pub async fn query<T: FromRedisValue + Send + 'static>(&self, cmd: &Cmd) -> RedisResult<T> {
        let (link, cmd) = (self.link.clone(), cmd.clone());
        self.driver
            .run(async move {
                match &link {
                    Link::Single(c) => cmd.query_async(&mut c.current()).await,
                    Link::Cluster(c) => cmd.query_async(&mut c.clone()).await,
                }
            })
            .await
    }

    /// Runs one command on every master (the one server when not a cluster): each master's
    /// address (empty for a single server) and its answer, an error answer included.
    pub async fn on_masters(&self, cmd: Cmd) -> RedisResult<Vec<(String, Value)>> {
        let link = self.link.clone();
        self.driver.run(on_masters(link, cmd)).await
    }

    /// A call got no answer in time: the connection may be stalled without an error that
    /// would make it reconnect (requests queued, none written). A single server's connection is
    /// replaced by a fresh one in the background (at most once per [`REPLACE_EVERY`]); calls in
    /// flight on the old one keep their timeouts (their outcome is unknown either way). A call
    /// that was stuck on the old connection and is handed over again lands after calls already
    /// sent on the new one, so one room's commits that met the stall may commit out of their
    /// order (never twice). A Redis Cluster connection keeps its own per-node connections.
    pub fn replace_stalled(&self) {
        let Link::Single(single) = &self.link else {
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
        matches!(self.link, Link::Cluster(_))
    }
}

/// `RedisConn::on_masters`, as the driver runs it.
async fn on_masters(link: Link, cmd: Cmd) -> RedisResult<Vec<(String, Value)>> {
    match &link {
        Link::Single(c) => {
            let value = match cmd.query_async::<Value>(&mut c.current()).await {
                Ok(v) => v,
                Err(e) => match e.try_into() {
                    Ok(server) => Value::ServerError(server),
                    Err(e) => return Err(e),
                },
            };
            Ok(vec![(String::new(), value)])
        }
        Link::Cluster(c) => {
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
