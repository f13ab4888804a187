//! Which of a domain's leaves become partitions, and what to warn about. Pure. The rule
//! itself is [`kvmisolate_dbus::libvirt::place`] (shared with the hook and `check --vm`);
//! this turns its placements into the service's errors and warnings:
//!
//! - A vCPU leaf is partitioned with its pin. A vCPU without a pin (empty `cpuset.cpus`, or
//!   every online CPU, which is what libvirt writes for an unpinned vCPU) is left alone with a
//!   warning; so is, when CPUs are given, a vCPU pinned outside them (it runs on the host's
//!   CPUs). Two vCPUs pinned to a common CPU cannot both be partitions: refused.
//! - The emulator leaf is partitioned when its pin is its own: it shares no CPU with an
//!   iothread and (when the CPUs are derived) holds no CPU 0 — otherwise it is a housekeeping
//!   pin and stays as it is. An emulator sharing a CPU with a vCPU is left out with a warning
//!   (the kernel then runs it on the host's CPUs, away from the vCPU).
//! - iothreads are never partitioned; one pinned onto an isolated CPU gets a warning.
//! - CPUs given: every partitioned leaf's pin must lie inside them, none may straddle them,
//!   and together the pins must cover them exactly; each difference is named.

use crate::engine::Error;
use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::libvirt::{Placement, partitioned_cpus, place};

use super::layout::{Layout, LeafKind};
use crate::host::cgroupfs::CgroupPath;

/// The leaves to partition and what the user should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The CPUs isolated: the union of the partitioned leaves' pins.
    pub cpus: CpuSet,
    /// Each partitioned leaf, with its CPUs.
    pub partitions: Vec<(LeafKind, CgroupPath, CpuSet)>,
    /// Pins that hurt latency (kept on the lease, shown by `kvmisolate status`).
    pub warnings: Vec<String>,
}

fn bad(msg: String) -> Error {
    Error::InvalidOption(msg)
}

/// Selects the leaves of `layout` to partition for `requested` CPUs (empty: derived from the
/// pins), by the shared rule [`kvmisolate_dbus::libvirt::place`], and turns what it refuses
/// into errors and what hurts latency into warnings. `siblings(cpu)` gives a CPU's SMT siblings
/// (itself included) when sysfs knows them.
pub fn select(
    domain: &str,
    layout: &Layout,
    requested: &CpuSet,
    online: &CpuSet,
    siblings: &dyn Fn(u32) -> Option<CpuSet>,
) -> Result<Selection, Error> {
    let derive = requested.is_empty();
    let groups: Vec<(LeafKind, CpuSet)> = layout
        .leaves
        .iter()
        .map(|l| (l.kind, l.pins.clone()))
        .collect();
    let placed = place(&groups, online, (!derive).then_some(requested));
    let mut warnings = Vec::new();
    let mut partitions: Vec<(LeafKind, CgroupPath, CpuSet)> = Vec::new();
    for p in &placed {
        let kind = p.kind;
        let pins = &p.pins;
        match (&p.placement, kind) {
            (Placement::Partition, _) => {
                if let Some(leaf) = layout.leaves.iter().find(|l| l.kind == kind) {
                    partitions.push((kind, leaf.cgroup.clone(), pins.clone()));
                }
                if matches!(kind, LeafKind::Vcpu(_)) && pins.len() > 1 {
                    warnings.push(format!(
                        "{kind}: pinned to {}, not to one CPU; the scheduler does not balance load \
                         inside an isolated partition, so pin each vCPU to a single CPU",
                        pins.phrase()
                    ));
                }
            }
            (Placement::Unpinned, LeafKind::Vcpu(_)) => warnings.push(format!(
                "{kind}: not pinned (runs on any CPU), so it is not isolated; pin it with <vcpupin vcpu='N' cpuset='...'/>"
            )),
            (Placement::Straddles, LeafKind::Vcpu(_)) => {
                return Err(bad(format!(
                    "{kind} of domain {domain:?} is pinned to {}, partly inside the CPUs asked for \
                     ({requested}); a partition needs all of its pins or none",
                    pins.phrase()
                )));
            }
            (Placement::Straddles, _) => {
                return Err(bad(format!(
                    "the emulator of domain {domain:?} is pinned to {}, partly inside the CPUs asked \
                     for ({requested}); pin it inside or outside them",
                    pins.phrase()
                )));
            }
            (Placement::Outside, _) => warnings.push(format!(
                "{kind}: pinned to {}, outside the isolated CPUs, so it is not isolated",
                pins.phrase()
            )),
            (Placement::SharesVcpu { with, cpus }, _) => {
                return Err(bad(format!(
                    "{with} and {kind} of domain {domain:?} are both pinned to {}; each vCPU needs CPUs of \
                     its own to be isolated (one <vcpupin> per vCPU, each on a different CPU)",
                    cpus.phrase()
                )));
            }
            (Placement::EmulatorOnVcpu(shared), _) => warnings.push(format!(
                "emulator: shares {} with a vCPU; it is left out of the isolation and the \
                 kernel runs it on the host's CPUs (give it a CPU of its own with <emulatorpin>)",
                shared.phrase()
            )),
            _ => {}
        }
    }
    if !partitions
        .iter()
        .any(|(k, _, _)| matches!(k, LeafKind::Vcpu(_)))
    {
        return Err(bad(format!(
            "domain {domain:?} has no vCPU pinned to CPUs that can be isolated{}; add \
             <cputune><vcpupin vcpu='0' cpuset='3'/>...</cputune> to its XML",
            if derive {
                String::new()
            } else {
                format!(" among {requested}")
            }
        )));
    }
    let cpus = partitioned_cpus(&placed);
    if !derive && cpus != *requested {
        let missing = requested.difference(&cpus);
        return Err(Error::InvalidCpuList(format!(
            "{} asked for but no vCPU or emulator of domain {domain:?} is pinned there (the pins \
             give {cpus}); leave the CPUs out to take them from the pins",
            missing.phrase()
        )));
    }
    for p in placed
        .iter()
        .filter(|p| matches!(p.kind, LeafKind::Iothread(_)))
    {
        let on = p.pins.intersection(&cpus);
        if p.placement == Placement::Housekeeping && !on.is_empty() {
            warnings.push(format!(
                "{}: pinned to {}, which {} isolated; the kernel runs it on the host's CPUs",
                p.kind,
                on.phrase(),
                if on.len() == 1 { "is" } else { "are" }
            ));
        }
    }
    let mut left = CpuSet::new();
    for cpu in cpus.iter() {
        if let Some(s) = siblings(cpu) {
            left = left.union(&s.difference(&cpus));
        }
    }
    if !left.is_empty() {
        warnings.push(format!(
            "SMT: {} left to the host {} hyperthread siblings of isolated CPUs; host work there \
             competes with the vCPUs for the same cores (isolate whole cores)",
            left.phrase(),
            if left.len() == 1 { "is a" } else { "are" }
        ));
    }
    Ok(Selection {
        cpus,
        partitions,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::layout::Leaf;
    use crate::testutil::{cg, cpus};

    fn layout(leaves: &[(&str, &str)]) -> Layout {
        let scope = cg(r"machine.slice/machine-qemu\x2d1\x2dvm.scope");
        let mut leaves: Vec<Leaf> = leaves
            .iter()
            .map(|(n, p)| Leaf {
                kind: LeafKind::parse(n).unwrap(),
                cgroup: scope.join("libvirt").unwrap().join(n).unwrap(),
                pins: cpus(p),
            })
            .collect();
        leaves.sort_by_key(|l| l.kind);
        Layout { scope, leaves }
    }

    fn no_smt(_: u32) -> Option<CpuSet> {
        None
    }

    fn run(l: &Layout, want: &str) -> Result<Selection, Error> {
        select("vm", l, &cpus(want), &cpus("0-5"), &no_smt)
    }

    fn kinds(s: &Selection) -> Vec<String> {
        s.partitions
            .iter()
            .map(|(k, _, c)| format!("{k}={c}"))
            .collect()
    }

    const RECIPE: &[(&str, &str)] = &[
        ("vcpu0", "3"),
        ("vcpu1", "4"),
        ("emulator", "2"),
        ("iothread1", "0-1"),
    ];

    #[test]
    fn derives_the_recipe() {
        let s = run(&layout(RECIPE), "").unwrap();
        assert_eq!(s.cpus.to_string(), "2-4");
        assert_eq!(kinds(&s), ["vcpu0=3", "vcpu1=4", "emulator=2"]);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(
            s.partitions[2].1.as_str(),
            r"machine.slice/machine-qemu\x2d1\x2dvm.scope/libvirt/emulator"
        );
    }

    #[test]
    fn given_cpus_must_match_the_pins() {
        assert_eq!(run(&layout(RECIPE), "2-4").unwrap().cpus.to_string(), "2-4");
        // Only the vCPUs: the emulator's pin is outside, so it stays.
        let s = run(&layout(RECIPE), "3-4").unwrap();
        assert_eq!(kinds(&s), ["vcpu0=3", "vcpu1=4"]);
        let e = run(&layout(RECIPE), "2-5").unwrap_err();
        assert!(
            matches!(e, Error::InvalidCpuList(ref m) if m.starts_with("CPU 5 asked for") && m.contains("give 2-4")),
            "{e:?}"
        );
        let e = run(&layout(&[("vcpu0", "3-4")]), "3").unwrap_err();
        assert!(
            matches!(e, Error::InvalidOption(ref m) if m.contains("vcpu0") && m.contains("partly inside")),
            "{e:?}"
        );
        let e = run(&layout(&[("vcpu0", "3"), ("emulator", "2-3")]), "3").unwrap_err();
        assert!(
            matches!(e, Error::InvalidOption(ref m) if m.contains("emulator")),
            "{e:?}"
        );
        // A vCPU pinned elsewhere is left alone, with a warning.
        let s = run(&layout(&[("vcpu0", "3"), ("vcpu1", "1")]), "3").unwrap();
        assert_eq!(kinds(&s), ["vcpu0=3"]);
        assert!(s.warnings[0].starts_with("vcpu1: pinned to CPU 1, outside"));
    }

    #[test]
    fn housekeeping_emulators_stay() {
        // Emulator with the iothreads, or on CPU 0: a housekeeping pin.
        let s = run(
            &layout(&[("vcpu0", "3"), ("emulator", "0-1"), ("iothread1", "0-1")]),
            "",
        )
        .unwrap();
        assert_eq!(kinds(&s), ["vcpu0=3"]);
        let s = run(&layout(&[("vcpu0", "3"), ("emulator", "0")]), "").unwrap();
        assert_eq!(kinds(&s), ["vcpu0=3"]);
        // Unpinned: every online CPU.
        let s = run(&layout(&[("vcpu0", "3"), ("emulator", "0-5")]), "").unwrap();
        assert_eq!(kinds(&s), ["vcpu0=3"]);
    }

    #[test]
    fn warnings_for_bad_pins() {
        let s = run(
            &layout(&[
                ("vcpu0", "3"),
                ("vcpu1", "4-5"),
                ("vcpu2", ""),
                ("vcpu3", "0-5"),
                ("emulator", "3"),
                ("iothread1", "1,4"),
            ]),
            "",
        )
        .unwrap();
        assert_eq!(kinds(&s), ["vcpu0=3", "vcpu1=4-5"]);
        let w = s.warnings.join("\n");
        assert!(
            w.contains("vcpu1: pinned to CPUs 4-5, not to one CPU"),
            "{w}"
        );
        assert!(w.contains("vcpu2: not pinned"), "{w}");
        assert!(w.contains("vcpu3: not pinned"), "{w}");
        assert!(w.contains("emulator: shares CPU 3 with a vCPU"), "{w}");
        assert!(
            w.contains("iothread1: pinned to CPU 4, which is isolated"),
            "{w}"
        );
    }

    #[test]
    fn smt_siblings_left_to_the_host() {
        // Cores {0,3} {1,4} {2,5}.
        let smt = |c: u32| Some(cpus(&format!("{},{}", c % 3, c % 3 + 3)));
        let s = select("vm", &layout(RECIPE), &CpuSet::new(), &cpus("0-5"), &smt).unwrap();
        assert!(
            s.warnings
                .iter()
                .any(|w| w.starts_with("SMT: CPUs 0-1,5 left to the host are hyperthread siblings")),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn refusals() {
        let e = run(&layout(&[("vcpu0", "3"), ("vcpu1", "3")]), "").unwrap_err();
        assert!(
            matches!(e, Error::InvalidOption(ref m) if m.starts_with("vcpu0 and vcpu1 of domain \"vm\" are both pinned to CPU 3")),
            "{e:?}"
        );
        let e = run(&layout(&[("vcpu0", ""), ("vcpu1", "0-5")]), "").unwrap_err();
        assert!(
            matches!(e, Error::InvalidOption(ref m) if m.contains("no vCPU pinned")),
            "{e:?}"
        );
        let e = run(&layout(&[("vcpu0", "1")]), "3").unwrap_err();
        assert!(
            matches!(e, Error::InvalidOption(ref m) if m.contains("among 3")),
            "{e:?}"
        );
    }
}
