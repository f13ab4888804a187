//! What kvmisolated says, when it is on the bus: its `Status()` (as `kvmisolate status --json`
//! prints it). Degraded or failed isolations are errors, tunings that failed are warnings; an
//! unreachable daemon is only worth an info (the audit of cgroupfs stands on its own).

use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::status as key;
use serde_json::Value;

use super::{Finding, Severity};

/// The daemon as `check` saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Daemon {
    /// Not asked (tests, or a caller without a bus).
    NotAsked,
    /// Not reachable, and why.
    Unreachable(String),
    /// Its `Status()` as JSON.
    Status(Value),
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn isolations(status: &Value) -> &[Value] {
    status
        .get(key::ISOLATIONS)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The CPUs of the daemon's isolations (empty when not reachable).
pub fn isolated_cpus(d: &Daemon) -> CpuSet {
    let Daemon::Status(st) = d else {
        return CpuSet::new();
    };
    isolations(st)
        .iter()
        .filter_map(|i| CpuSet::parse(str_of(i, key::I_CPUS)).ok())
        .fold(CpuSet::new(), |acc, c| acc.union(&c))
}

/// The daemon's isolations that hold CPUs, as (name, CPUs) (empty when not reachable).
pub fn isolations_held(d: &Daemon) -> Vec<(String, CpuSet)> {
    match d {
        Daemon::Status(st) => held_in(st),
        _ => Vec::new(),
    }
}

/// The isolations of a `Status()` (as `kvmisolate status --json` prints it) that hold CPUs,
/// as (name, CPUs); hugepage reservations hold none.
pub fn held_in(status: &Value) -> Vec<(String, CpuSet)> {
    isolations(status)
        .iter()
        .filter_map(|i| {
            let cpus = CpuSet::parse(str_of(i, key::I_CPUS)).ok()?;
            (!cpus.is_empty()).then(|| (str_of(i, key::I_NAME).to_owned(), cpus))
        })
        .collect()
}

/// The IRQs kvmisolated's `irq-affinity` tunings left as they are because the kernel refused
/// to move them (`irqs-left` of each isolation; empty when not reachable).
pub fn irqs_left(d: &Daemon) -> std::collections::BTreeSet<u32> {
    let Daemon::Status(st) = d else {
        return Default::default();
    };
    isolations(st)
        .iter()
        .filter_map(|iso| iso.get(key::I_IRQS_LEFT).and_then(Value::as_array))
        .flatten()
        .filter_map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()))
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
    let list = isolations(st);
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let mut failed = Vec::new();
    for iso in list {
        let name = str_of(iso, key::I_NAME);
        let state = str_of(iso, key::I_STATE);
        if state != "active" {
            let reason = str_of(iso, key::I_STATE_REASON);
            bad.push(format!(
                "{name} (CPUs {}): {state}{}",
                str_of(iso, key::I_CPUS),
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {reason}")
                }
            ));
        }
        // Each tuning: (name, state, reason, original, current).
        for t in iso
            .get(key::I_TUNINGS)
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
        {
            let field = |i: usize| t.get(i).and_then(Value::as_str).unwrap_or("");
            if field(1) == "failed" {
                failed.push(format!("{name}: {} failed: {}", field(0), field(2)));
            }
        }
    }
    out.push(if bad.is_empty() {
        Finding::ok(
            "daemon-isolations",
            format!(
                "kvmisolated {}: {} isolation(s), all active",
                str_of(st, key::VERSION),
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
    use serde_json::json;

    fn st(state: &str, tuning: &str) -> Daemon {
        Daemon::Status(json!({
            "version": "0.1.0",
            "isolations": [
                {"name": "a", "cpus": "2-3", "state": "active", "state-reason": "",
                 "tunings": [["irq-affinity", "applied", "", "", ""]]},
                {"name": "b", "cpus": "5", "state": state, "state-reason": "cpus offline",
                 "tunings": [["thp", tuning, "cannot write", "", ""]]},
            ]
        }))
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
        let d = Daemon::Status(json!({"isolations": [
            {"name": "a", "cpus": "2-3", "state": "active", "irqs-left": [24, 0], "tunings": [
                ["irq-affinity", "applied", "left as they are: IRQ 0 timer (the kernel does not move it: EIO), IRQ 24 nvme0q1 (managed by the kernel)", "", ""]]},
            {"name": "b", "cpus": "4", "state": "active", "irqs-left": [24, 7]}]}));
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
