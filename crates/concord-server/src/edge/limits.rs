//! Connection limits of the TCP edge: open connections in total and per client IP, counted
//! from the accept until the socket is dropped (after a WebSocket upgrade too).

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Open TCP connections, in total and per IP.
pub struct ConnLimits {
    max: usize,
    per_ip: usize,
    open: Mutex<Open>,
    gauge: Gauge,
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
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let mut open = self.open.lock();
        if open.total >= self.max {
            return Admission::Full;
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

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
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
        assert!(limits.open.lock().ips.is_empty());
        assert_eq!(limits.gauge.get(), 0);
    }
}
