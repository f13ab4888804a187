//! What kvmisolated says, when it is on the bus: its `Status()` (the reply
//! `kvmisolate status` shows). Degraded or failed isolations are errors, tunings that failed are warnings; an
//! unreachable daemon is only worth an info (the audit of cgroupfs stands on its own).

use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::status::Status;

use super::{Finding, Severity};

/// The daemon as `check` saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Daemon {
    /// Not asked (tests, or a caller without a bus).
    NotAsked,
    /// Not reachable, and why.
    Unreachable(String),
    /// Its `Status()`.
    Status(Box<Status>),
}

impl Daemon {
    /// Its `Status()`, when it answered.
    fn status(&self) -> Option<&Status> {
        match self {
            Self::Status(st) => Some(st),
            _ => None,
        }
    }
}

/// The CPUs of the daemon's isolations (empty when not reachable).
pub fn isolated_cpus(d: &Daemon) -> CpuSet {
    d.status()
        .map(|st| st.isolations.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|i| CpuSet::parse(&i.cpus).ok())
        .fold(CpuSet::new(), |acc, c| acc.union(&c))
}

/// The daemon's isolations that hold CPUs, as (name, CPUs) (empty when not reachable).
pub fn isolations_held(d: &Daemon) -> Vec<(String, CpuSet)> {
    d.status().map(held_in).unwrap_or_default()
}

/// The isolations of a `Status()` that hold CPUs, as (name, CPUs); hugepage reservations hold
/// none.
pub fn held_in(status: &Status) -> Vec<(String, CpuSet)> {
    status
        .isolations
        .iter()
        .filter_map(|i| {
            let cpus = CpuSet::parse(&i.cpus).ok()?;
            (!cpus.is_empty()).then(|| (i.name.clone(), cpus))
        })
        .collect()
}

/// The IRQs kvmisolated's `irq-affinity` tunings left as they are because the kernel refused
/// to move them (`irqs-left` of each isolation; empty when not reachable).
pub fn irqs_left(d: &Daemon) -> std::collections::BTreeSet<u32> {
    d.status()
        .map(|st| st.isolations.as_slice())
        .unwrap_or_default()
        .iter()
        .flat_map(|iso| iso.irqs_left().iter().copied())
        .collect()
}

/// The findings about the daemon's view.
pub fn findings(d: &Daemon) -> Vec<Finding> {
    let st = match d {
        Daemon::NotAsked => return Vec::new(),
        Daemon::Unreachable(why) => {
            return vec![
                Finding::new(
                    "daemon",
                    Severity::Info,
                    format!("kvmisolated is not reachable ({why}): only cgroupfs was audited"),
                )
                .why("the daemon knows its isolations' states and tunings; without it check sees only what the kernel shows")
                .fix("nothing to do if you do not use kvmisolated; otherwise: systemctl status kvmisolated"),
            ];
        }
        Daemon::Status(st) => st,
    };
    let list = &st.isolations;
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let mut failed = Vec::new();
    for iso in list {
        let (name, state, reason) = (&iso.name, &iso.state, &iso.state_reason);
        if state != "active" {
            bad.push(format!(
                "{name} (CPUs {}): {state}{}",
                iso.cpus,
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {reason}")
                }
            ));
        }
        for t in iso.tunings.iter().filter(|t| t.state == "failed") {
            failed.push(format!("{name}: {} failed: {}", t.name, t.reason));
        }
    }
    out.push(if bad.is_empty() {
        Finding::ok(
            "daemon-isolations",
            format!(
                "kvmisolated {}: {} isolation(s), all active",
                st.version,
                list.len()
            ),
        )
    } else {
        Finding::new(
            "daemon-isolations",
            Severity::Error,
            format!(
                "{} isolation(s) of kvmisolated are not active: {}",
                bad.len(),
                super::shorten(&bad, 2)
            ),
        )
        .why("a degraded isolation's partition was invalidated by the kernel (or a failed one never took): its CPUs are not exclusive any more")
        .fix("kvmisolate status shows the reason; bring the CPUs back online or release and isolate again")
        .details(bad)
    });
    if !failed.is_empty() {
        out.push(
            Finding::new(
                "daemon-tunings",
                Severity::Warning,
                format!("{} host tuning(s) of kvmisolated's isolations failed", failed.len()),
            )
            .why("a tuning that failed leaves that source of latency in place (nothing of it is changed)")
            .fix("kvmisolate status --json lists each tuning's reason; fix it (or drop the tuning) and isolate again")
            .details(failed),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::status::tests::{entry, row, status_of};

    fn st(state: &str, tuning: &str) -> Daemon {
        let mut a = entry("a", "2-3");
        a.tunings = vec![row("irq-affinity", "applied", "", "", "")];
        let mut b = entry("b", "5");
        b.state = state.to_owned();
        b.state_reason = "cpus offline".to_owned();
        b.tunings = vec![row("thp", tuning, "cannot write", "", "")];
        Daemon::Status(Box::new(status_of(vec![a, b])))
    }

    fn sev(f: &[Finding], id: &str) -> Option<Severity> {
        f.iter().find(|x| x.id == id).map(|x| x.severity)
    }

    #[test]
    fn states_and_tunings() {
        let f = findings(&st("active", "applied"));
        assert_eq!(sev(&f, "daemon-isolations"), Some(Severity::Ok));
        assert_eq!(sev(&f, "daemon-tunings"), None);
        let f = findings(&st("degraded", "failed"));
        assert_eq!(sev(&f, "daemon-isolations"), Some(Severity::Error));
        assert_eq!(
            f[0].details,
            ["b (CPUs 5): degraded: cpus offline".to_owned()]
        );
        assert_eq!(sev(&f, "daemon-tunings"), Some(Severity::Warning));
        assert_eq!(f[1].details, ["b: thp failed: cannot write".to_owned()]);
        assert_eq!(isolated_cpus(&st("active", "applied")).to_string(), "2-3,5");
        assert!(irqs_left(&st("active", "applied")).is_empty());
    }

    #[test]
    fn irqs_the_kernel_kept() {
        let mut a = entry("a", "2-3");
        a.irqs_left = Some(vec![24, 0]);
        a.tunings = vec![row(
            "irq-affinity",
            "applied",
            "left as they are: IRQ 0 timer (the kernel does not move it: EIO), IRQ 24 nvme0q1 (managed by the kernel)",
            "",
            "",
        )];
        let mut b = entry("b", "4");
        b.irqs_left = Some(vec![24, 7]);
        let d = Daemon::Status(Box::new(status_of(vec![a, b])));
        assert_eq!(irqs_left(&d).into_iter().collect::<Vec<_>>(), [0, 7, 24]);
        assert!(irqs_left(&Daemon::NotAsked).is_empty());
    }

    #[test]
    fn unreachable_is_info() {
        let f = findings(&Daemon::Unreachable("no bus".into()));
        assert_eq!(sev(&f, "daemon"), Some(Severity::Info));
        assert!(f[0].found.contains("only cgroupfs was audited"));
        assert!(findings(&Daemon::NotAsked).is_empty());
        assert!(isolated_cpus(&Daemon::NotAsked).is_empty());
    }
}
