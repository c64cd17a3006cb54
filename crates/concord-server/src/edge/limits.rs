//! Connection limits of the TCP edge: open connections in total and per client IP, counted
//! from the accept until the socket is dropped (after a WebSocket upgrade too). When the total
//! is reached, the HTTP connection idle for longest (no request in progress: a keep-alive
//! connection, or one whose request head has not arrived) is closed to make room, so a flood of
//! idle sockets cannot lock everyone else out; with none idle, the new connection is refused.

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Open TCP connections, in total and per IP.
pub struct ConnLimits {
    max: usize,
    per_ip: usize,
    open: Mutex<Open>,
    gauge: Gauge,
    /// Idle HTTP connections, oldest first: cancelling the token closes the connection.
    idle: Mutex<BTreeMap<u64, CancellationToken>>,
    next_idle: AtomicU64,
    freed: tokio::sync::Notify,
}

#[derive(Default)]
struct Open {
    total: usize,
    ips: HashMap<IpAddr, usize>,
}

/// What the accept loop does with a new connection.
pub enum Admission {
    /// Serve it; the guard holds its slots.
    Serve(ConnGuard),
    /// Over the per-IP limit: answer its request with 429 and close (the guard holds its slot
    /// in the total only).
    TooManyFromIp(ConnGuard),
    /// Over the total limit: close it at once.
    Full,
    /// Over the total limit, and the longest-idle connection is being closed: wait for
    /// [`ConnLimits::freed`], then ask again.
    Evicting,
}

/// A connection's place among the idle ones (`idle` / `busy` as requests come and go).
pub struct IdleMark {
    limits: Arc<ConnLimits>,
    key: Mutex<Option<u64>>,
    /// Cancelled when the connection is closed to make room for a new one.
    pub evicted: CancellationToken,
}

impl IdleMark {
    pub fn new(limits: Arc<ConnLimits>) -> Self {
        IdleMark {
            limits,
            key: Mutex::new(None),
            evicted: CancellationToken::new(),
        }
    }

    /// No request in progress: may be closed to make room.
    pub fn idle(&self) {
        let mut key = self.key.lock();
        if key.is_none() {
            let k = self.limits.next_idle.fetch_add(1, Ordering::Relaxed);
            self.limits.idle.lock().insert(k, self.evicted.clone());
            *key = Some(k);
        }
    }

    /// A request is being served (or the connection is done with HTTP).
    pub fn busy(&self) {
        if let Some(k) = self.key.lock().take() {
            self.limits.idle.lock().remove(&k);
        }
    }
}

impl Drop for IdleMark {
    fn drop(&mut self) {
        self.busy();
    }
}

/// Holds a connection's slots; dropping it (with the socket) releases them.
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: Option<IpAddr>,
}

impl ConnLimits {
    pub fn new(max: usize, per_ip: usize, gauge: Gauge) -> Arc<Self> {
        Arc::new(ConnLimits {
            max: max.max(1),
            per_ip: per_ip.max(1),
            open: Mutex::new(Open::default()),
            gauge,
            idle: Mutex::new(BTreeMap::new()),
            next_idle: AtomicU64::new(0),
            freed: tokio::sync::Notify::new(),
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let mut open = self.open.lock();
        if open.total >= self.max {
            // Make room by closing the longest-idle connection; its slot is freed when its task
            // drops the socket.
            return match self.idle.lock().pop_first() {
                Some((_, evict)) => {
                    evict.cancel();
                    Admission::Evicting
                }
                None => Admission::Full,
            };
        }
        open.total += 1;
        self.gauge.inc();
        let n = open.ips.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return Admission::TooManyFromIp(ConnGuard {
                limits: self.clone(),
                ip: None,
            });
        }
        *n += 1;
        Admission::Serve(ConnGuard {
            limits: self.clone(),
            ip: Some(ip),
        })
    }
}

impl ConnLimits {
    /// Resolves once some connection released its slot (or one was released since the last call).
    pub async fn freed(&self) {
        self.freed.notified().await
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
        self.limits.freed.notify_one();
        open.total -= 1;
        self.limits.gauge.dec();
        if let Some(ip) = self.ip {
            if let Some(n) = open.ips.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.ips.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_full_the_longest_idle_connection_makes_room() {
        let limits = ConnLimits::new(2, 10, Gauge::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (a, b) = (limits.admit(ip), limits.admit(ip));
        let (ma, mb) = (IdleMark::new(limits.clone()), IdleMark::new(limits.clone()));
        // Both busy: nobody can be closed, the new connection is refused.
        assert!(matches!(limits.admit(ip), Admission::Full));
        mb.idle();
        ma.idle();
        assert!(matches!(limits.admit(ip), Admission::Evicting));
        assert!(mb.evicted.is_cancelled() && !ma.evicted.is_cancelled());
        drop(b); // the evicted connection's task drops its socket
        let c = limits.admit(ip);
        assert!(matches!(c, Admission::Serve(_)));
        ma.busy();
        drop((a, c, ma, mb));
        assert!(limits.idle.lock().is_empty());
    }

    #[test]
    fn counts_total_and_per_ip_until_the_guards_drop() {
        let limits = ConnLimits::new(3, 2, Gauge::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = limits.admit(a);
        let g2 = limits.admit(a);
        assert!(matches!(g1, Admission::Serve(_)) && matches!(g2, Admission::Serve(_)));
        let over = limits.admit(a);
        assert!(matches!(over, Admission::TooManyFromIp(_)));
        assert!(matches!(limits.admit(b), Admission::Full));
        drop(over);
        let g3 = limits.admit(b);
        assert!(matches!(g3, Admission::Serve(_)));
        drop((g1, g2, g3));
        assert_eq!(limits.open.lock().total, 0);
        assert!(limits.idle.lock().is_empty());
        assert!(limits.open.lock().ips.is_empty());
        assert_eq!(limits.gauge.get(), 0);
    }
}
