//! One Redis connection, to a single server or to a Redis Cluster: the same calls on both.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, FromRedisValue, RedisResult, Value};
use std::time::Duration;

/// Where Redis is: one server's URL, or the seed URLs of a Redis Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
}

/// A multiplexed, reconnecting connection (clones share it).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
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
                Ok(RedisConn::Single(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
            RedisTarget::Cluster(urls) => {
                let client = ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(timeout)
                    .build()?;
                Ok(RedisConn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// Runs one command (routed by its first key on a cluster).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            RedisConn::Single(c) => cmd.query_async(&mut c.clone()).await,
            RedisConn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    /// Runs one command on every master (the one server when not a cluster): each master's
    /// address (empty for a single server) and its answer, an error answer included.
    pub async fn on_masters(&self, cmd: Cmd) -> RedisResult<Vec<(String, Value)>> {
        match self {
            RedisConn::Single(c) => {
                let value = match cmd.query_async::<Value>(&mut c.clone()).await {
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

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}
