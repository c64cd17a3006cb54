//! Latency histograms (HDR, microseconds) and the one-line summaries the scenarios print.
//!
//! Readers record into per-thread histograms (one set per runtime worker) rather than one per
//! connection: with a thousand connections, per-connection histograms miss the cache on every
//! sample. `take` merges and resets every thread's set at the end of a run.

use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};

/// Highest recordable latency: one hour in µs (larger values saturate).
const MAX_US: u64 = 3_600_000_000;

/// A new latency histogram in µs with 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Records a latency in µs (clamped to the histogram's range).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_US));
}

/// The latency series a run records.
#[derive(Clone, Copy, Debug)]
pub enum Series {
    /// Publish → ack, from the scheduled send time.
    Ack = 0,
    /// Deliveries to subscriber connections, from the scheduled send time.
    SubDelivery = 1,
    /// Deliveries back to publishing connections, from the scheduled send time.
    PubDelivery = 2,
}

const SERIES: usize = 3;
type Set = Arc<Mutex<[Histogram<u64>; SERIES]>>;

static SETS: Mutex<Vec<Set>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: Set = {
        let set: Set = Arc::new(Mutex::new([histogram(), histogram(), histogram()]));
        SETS.lock().unwrap_or_else(|e| e.into_inner()).push(set.clone());
        set
    };
}

/// Records a latency (µs) of `series` in this thread's histograms.
pub fn sample(series: Series, us: u64) {
    LOCAL.with(|set| {
        record(
            &mut set.lock().unwrap_or_else(|e| e.into_inner())[series as usize],
            us,
        )
    });
}

/// Merges every thread's histograms and resets them.
pub fn take() -> [Histogram<u64>; SERIES] {
    let mut out = [histogram(), histogram(), histogram()];
    for set in SETS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
        for (o, h) in out.iter_mut().zip(set.iter_mut()) {
            let _ = o.add(&*h);
            h.reset();
        }
    }
    out
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `p50 0.412 ms  p99 1.203 ms  p999 3.401 ms  max 8.100 ms  (n=50000)`.
pub fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {:.3} ms  p99 {:.3} ms  p999 {:.3} ms  max {:.3} ms  mean {:.3} ms  (n={})",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        h.mean() / 1000.0,
        h.len()
    )
}

/// The same figures as JSON (milliseconds).
pub fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::json!({
        "n": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": h.mean() / 1000.0,
    })
}

/// A rate with a thousands suffix: `1.23M/s`, `45.6k/s`, `812/s`.
pub fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2}M/s", per_sec / 1e6)
    } else if per_sec >= 1e4 {
        format!("{:.1}k/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let mut h = histogram();
        assert_eq!(latency_line(&h), "no samples");
        for us in 1..=1000 {
            record(&mut h, us);
        }
        record(&mut h, u64::MAX);
        let line = latency_line(&h);
        assert!(line.contains("p50 0.50"), "{line}");
        assert!(line.contains("n=1001"), "{line}");
        assert_eq!(rate(1_234_567.0), "1.23M/s");
        assert_eq!(rate(45_600.0), "45.6k/s");
        assert_eq!(rate(812.2), "812/s");
    }

    #[test]
    fn per_thread_samples_merge() {
        let _ = take();
        sample(Series::Ack, 1000);
        std::thread::spawn(|| sample(Series::Ack, 3000))
            .join()
            .unwrap();
        sample(Series::SubDelivery, 5);
        let [ack, sub, publ] = take();
        assert_eq!(ack.len(), 2);
        assert_eq!(sub.len(), 1);
        assert!(publ.is_empty());
        assert!(take()[0].is_empty());
    }
}
