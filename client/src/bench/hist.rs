//! The wake-up lateness histogram: 1 µs buckets (like cyclictest's `-h`), exact min/max/sum.

use serde::{Deserialize, Serialize};

/// Latencies at or above this many µs go to the overflow bucket (their max stays exact).
pub const BUCKETS_US: usize = 100_000;

/// A histogram of latencies in nanoseconds, bucketed by whole microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    buckets: Vec<u64>,
    overflow: u64,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// What a histogram says, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Samples.
    pub samples: u64,
    /// Smallest latency.
    #[serde(rename = "min-us")]
    pub min_us: f64,
    /// Mean latency.
    #[serde(rename = "avg-us")]
    pub avg_us: f64,
    /// Median (bucket floor).
    #[serde(rename = "p50-us")]
    pub p50_us: u64,
    /// 99th percentile (bucket floor).
    #[serde(rename = "p99-us")]
    pub p99_us: u64,
    /// 99.9th percentile (bucket floor).
    #[serde(rename = "p99.9-us")]
    pub p999_us: u64,
    /// Largest latency.
    #[serde(rename = "max-us")]
    pub max_us: f64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: vec![0; BUCKETS_US],
            overflow: 0,
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    /// Records one latency.
    pub fn record(&mut self, ns: u64) {
        let us = (ns / 1000) as usize;
        match self.buckets.get_mut(us) {
            Some(b) => *b += 1,
            None => self.overflow += 1,
        }
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// The latency (µs, bucket floor) below or at which a fraction `p` (0..=1) of samples lie:
    /// the smallest bucket whose cumulative count reaches `ceil(p * count)`.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let want = ((p * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (us, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return us as u64;
            }
        }
        self.max_ns / 1000
    }

    /// The summary.
    pub fn stats(&self) -> Stats {
        if self.count == 0 {
            return Stats {
                samples: 0,
                min_us: 0.0,
                avg_us: 0.0,
                p50_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0.0,
            };
        }
        Stats {
            samples: self.count,
            min_us: self.min_ns as f64 / 1000.0,
            avg_us: (self.sum_ns as f64 / self.count as f64) / 1000.0,
            p50_us: self.percentile(0.50),
            p99_us: self.percentile(0.99),
            p999_us: self.percentile(0.999),
            max_us: self.max_ns as f64 / 1000.0,
        }
    }

    /// The non-empty buckets as `(µs, count)`; the overflow bucket as `(BUCKETS_US, count)`.
    pub fn sparse(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(us, n)| (us as u64, *n))
            .collect();
        if self.overflow > 0 {
            v.push((BUCKETS_US as u64, self.overflow));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn empty() {
        let h = Histogram::new();
        assert_eq!(h.stats().samples, 0);
        assert_eq!(h.percentile(0.99), 0);
        assert!(h.sparse().is_empty());
    }

    #[test]
    fn percentiles_of_1_to_1000() {
        let mut h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(us * 1000 + 500);
        }
        let s = h.stats();
        assert_eq!(s.samples, 1000);
        assert_eq!(s.p50_us, 500);
        assert_eq!(s.p99_us, 990);
        assert_eq!(s.p999_us, 999);
        assert!((s.min_us - 1.5).abs() < 1e-9);
        assert!((s.max_us - 1000.5).abs() < 1e-9);
        assert!((s.avg_us - 501.0).abs() < 1e-9);
    }

    #[test]
    fn skewed_and_overflow() {
        let mut h = Histogram::new();
        for _ in 0..999 {
            h.record(3_200);
        }
        h.record(250_000_000); // 250 ms: overflow
        let s = h.stats();
        assert_eq!((s.p50_us, s.p99_us, s.p999_us), (3, 3, 3));
        assert_eq!(h.percentile(1.0), 250_000);
        assert!((s.max_us - 250_000.0).abs() < 1e-9);
        assert_eq!(h.sparse(), vec![(3, 999), (BUCKETS_US as u64, 1)]);
    }

    #[test]
    fn single_sample() {
        let mut h = Histogram::new();
        h.record(7_999);
        let s = h.stats();
        assert_eq!((s.p50_us, s.p999_us), (7, 7));
        assert!((s.min_us - 7.999).abs() < 1e-9);
    }
}
