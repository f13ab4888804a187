//! How much memory the host can give to hugepage pools: `MemAvailable` of `/proc/meminfo`
//! minus a margin the host keeps for itself. Read in one place for the hard cap on a pool
//! request (the tunings) and for the size beyond which a request needs
//! `org.kvmisolate.tune-host` (authorization).

use std::path::Path;

/// The smallest margin kept for the host, in KiB (256 MiB).
pub const MIN_MARGIN_KIB: u64 = 256 * 1024;

/// What `/proc/meminfo` says, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total_kib: u64,
    /// `MemAvailable`: what can be allocated without swapping, as the kernel estimates it.
    pub available_kib: u64,
}

impl MemInfo {
    /// Parses `/proc/meminfo` text (`None` without `MemTotal` and `MemAvailable`).
    pub fn parse(text: &str) -> Option<Self> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        };
        Some(Self {
            total_kib: field("MemTotal:")?,
            available_kib: field("MemAvailable:")?,
        })
    }

    /// Reads `<proc_root>/meminfo`.
    pub fn read(proc_root: &Path) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(proc_root.join("meminfo")).ok()?)
    }

    /// What the host keeps whatever is asked: 1/16 of its memory, at least 256 MiB.
    pub fn margin_kib(&self) -> u64 {
        (self.total_kib / 16).max(MIN_MARGIN_KIB)
    }

    /// The most a pool may grow by now: `MemAvailable` minus the margin.
    pub fn cap_kib(&self) -> u64 {
        self.available_kib.saturating_sub(self.margin_kib())
    }

    /// The most a pool may grow by on `org.kvmisolate.isolate` alone: half of the cap. More
    /// than that is host-wide risk (`org.kvmisolate.tune-host`).
    pub fn spare_kib(&self) -> u64 {
        self.cap_kib() / 2
    }

    /// How the cap was computed, for error messages.
    pub fn explain_cap(&self) -> String {
        format!(
            "{} MiB can be taken now: MemAvailable {} MiB minus a margin of {} MiB the host keeps \
             (1/16 of MemTotal {} MiB, at least {} MiB)",
            self.cap_kib() / 1024,
            self.available_kib / 1024,
            self.margin_kib() / 1024,
            self.total_kib / 1024,
            MIN_MARGIN_KIB / 1024
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_and_spare_follow_mem_available() {
        let m = MemInfo::parse(
            "MemTotal:        2014848 kB\nMemFree:  1000 kB\nMemAvailable:    1500000 kB\n",
        )
        .unwrap();
        assert_eq!(m.total_kib, 2014848);
        assert_eq!(m.margin_kib(), MIN_MARGIN_KIB);
        assert_eq!(m.cap_kib(), 1500000 - MIN_MARGIN_KIB);
        assert_eq!(m.spare_kib(), (1500000 - MIN_MARGIN_KIB) / 2);
        let big = MemInfo {
            total_kib: 64 << 20,
            available_kib: 60 << 20,
        };
        assert_eq!(big.margin_kib(), 4 << 20);
        assert_eq!(big.cap_kib(), 56 << 20);
        let tight = MemInfo {
            total_kib: 1 << 20,
            available_kib: 100 << 10,
        };
        assert_eq!(tight.cap_kib(), 0);
        assert!(tight.explain_cap().contains("MemAvailable 100 MiB"));
        assert_eq!(MemInfo::parse("MemTotal: 5 kB\n"), None);
    }
}
