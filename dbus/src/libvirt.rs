//! The libvirt integration's shared vocabulary: the domain-XML metadata namespace, the
//! `[vm.NAME]` section of `/etc/kvmisolate/kvmisolate.toml` that both the service (which
//! validates the file) and the libvirt hook (which acts on it) read, and the rule choosing
//! which of a domain's thread groups become isolated partitions ([`place`]), which the service,
//! the hook and `kvmisolate check --vm` all apply.

pub mod machine;

use std::fmt;
use std::str::FromStr;

use crate::CpuSet;
use crate::tunings::HugepageSpec;

/// The namespace of kvmisolate's element in a domain's `<metadata>`:
/// `<kvmisolate:isolate xmlns:kvmisolate="https://kvmisolate.org/xmlns/libvirt/1" .../>`.
pub const METADATA_NS: &str = "https://kvmisolate.org/xmlns/libvirt/1";

/// The local name of that element.
pub const METADATA_ELEMENT: &str = "isolate";

/// What the hook does when a domain's CPUs conflict with an active isolation or the host's
/// limits at `prepare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Refuse to start the domain (the default).
    #[default]
    Fail,
    /// Start it anyway, unisolated, with a warning.
    Warn,
}

impl FromStr for OnConflict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail" => Ok(Self::Fail),
            "warn" => Ok(Self::Warn),
            other => Err(format!(
                "on-conflict must be 'fail' or 'warn', not {other:?}"
            )),
        }
    }
}

/// Hugepages for a domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VmHugepages {
    /// Exactly the domain's memory, in the page size of its `<memoryBacking><hugepages>`, when
    /// it has one (the default); none otherwise.
    #[default]
    Auto,
    /// None reserved.
    None,
    /// This pool.
    Spec(HugepageSpec),
}

impl FromStr for VmHugepages {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            spec => spec.parse().map(Self::Spec).map_err(|e| {
                format!("hugepages must be 'auto', 'none' or a size such as 16G:1G ({e})")
            }),
        }
    }
}

impl fmt::Display for VmHugepages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::None => f.write_str("none"),
            Self::Spec(s) => write!(f, "{s}"),
        }
    }
}

/// A `[vm.NAME]` section as written (values checked by [`VmSection::validate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmSection {
    /// `profile`: none, default or realtime.
    pub profile: Option<String>,
    /// `tunings`: tuning names, instead of a profile.
    pub tunings: Option<Vec<String>>,
    /// `hugepages`: auto, none or a size.
    pub hugepages: Option<String>,
    /// `on-conflict`: fail or warn.
    pub on_conflict: Option<OnConflict>,
    /// `vfio-irqs`: housekeeping or vcpu (where the domain's VFIO device IRQs go).
    pub vfio_irqs: Option<String>,
}

impl VmSection {
    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = &self.profile {
            p.parse::<crate::tunings::Profile>()
                .map_err(|e| format!("profile: {e}"))?;
        }
        if let Some(list) = &self.tunings {
            for t in list {
                t.parse::<crate::tunings::Tuning>()
                    .map_err(|e| format!("tunings: {e}"))?;
            }
        }
        if self.profile.is_some() && self.tunings.is_some() {
            return Err("give either profile or tunings, not both".to_owned());
        }
        if let Some(h) = &self.hugepages {
            h.parse::<VmHugepages>()
                .map_err(|e| format!("hugepages: {e}"))?;
        }
        if let Some(v) = &self.vfio_irqs {
            v.parse::<crate::tunings::VfioIrqPlacement>()
                .map_err(|e| format!("vfio-irqs: {e}"))?;
        }
        Ok(())
    }
}

/// A thread group of a running domain: libvirt gives each its own cgroup leaf below the
/// domain's scope (`libvirt/vcpuN`, `libvirt/emulator`, `libvirt/iothreadN`), and each
/// `<vcpupin>`, `<emulatorpin>` or `<iothreadpin>` of the domain XML pins one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LeafKind {
    /// `vcpuN`.
    Vcpu(u32),
    /// `emulator`: QEMU's main loop and helper threads.
    Emulator,
    /// `iothreadN`.
    Iothread(u32),
}

impl LeafKind {
    /// Parses a leaf directory name; `None` for anything else.
    pub fn parse(dir: &str) -> Option<Self> {
        let number = |rest: &str| {
            (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
                .then(|| rest.parse().ok())
                .flatten()
        };
        if dir == "emulator" {
            Some(Self::Emulator)
        } else if let Some(n) = dir.strip_prefix("vcpu") {
            number(n).map(Self::Vcpu)
        } else {
            dir.strip_prefix("iothread")
                .and_then(number)
                .map(Self::Iothread)
        }
    }
}

impl fmt::Display for LeafKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vcpu(n) => write!(f, "vcpu{n}"),
            Self::Emulator => f.write_str("emulator"),
            Self::Iothread(n) => write!(f, "iothread{n}"),
        }
    }
}

/// What the isolation rule makes of one thread group's pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// It becomes an isolated partition on its pin.
    Partition,
    /// No pin (empty, or every online CPU, which libvirt writes for an unpinned group): it
    /// runs on the host's CPUs and is not isolated.
    Unpinned,
    /// (CPUs asked for) pinned wholly outside them: left as it is.
    Outside,
    /// (CPUs asked for) pinned partly inside them: a partition needs all of its pin or none.
    Straddles,
    /// A vCPU pinned to `cpus`, which vCPU `with` (a partition already) holds too: two
    /// partitions cannot share a CPU.
    SharesVcpu {
        /// The vCPU that got the CPUs first.
        with: LeafKind,
        /// The CPUs both are pinned to.
        cpus: CpuSet,
    },
    /// The emulator pinned onto `0`, CPUs of partitioned vCPUs: left out of the isolation (the
    /// kernel then runs it on the host's CPUs).
    EmulatorOnVcpu(CpuSet),
    /// A housekeeping pin: an iothread, or the emulator sharing CPUs with an iothread or
    /// holding CPU 0 (CPUs derived from the pins). Left as it is.
    Housekeeping,
}

/// One thread group and what the rule made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The group.
    pub kind: LeafKind,
    /// Its pin (empty: none).
    pub pins: CpuSet,
    /// The decision.
    pub placement: Placement,
}

/// The rule choosing which of a domain's thread groups become isolated partitions, from their
/// pins (`groups`, any order), the online CPUs and the CPUs asked for (`None`: derived from
/// the pins). Pure; the callers turn the placements into errors or warnings.
///
/// - A vCPU becomes a partition on its pin, unless unpinned; with CPUs asked for, a vCPU
///   pinned outside them stays as it is and one partly inside them [straddles](Placement::Straddles).
///   A vCPU sharing a CPU with an earlier partitioned vCPU cannot be one.
/// - The emulator becomes a partition when its pin is its own: no CPU of a partitioned vCPU
///   ([`Placement::EmulatorOnVcpu`] otherwise), and — CPUs derived — no CPU of an iothread and
///   not CPU 0; CPUs asked for — inside them. Otherwise its pin is a housekeeping pin.
/// - iothreads never do.
///
/// The result is in [`LeafKind`] order (vCPUs by number, the emulator, iothreads).
pub fn place(
    groups: &[(LeafKind, CpuSet)],
    online: &CpuSet,
    asked: Option<&CpuSet>,
) -> Vec<Placed> {
    let mut groups: Vec<(LeafKind, CpuSet)> = groups.to_vec();
    groups.sort_by_key(|(k, _)| *k);
    let unpinned = |pins: &CpuSet| pins.is_empty() || online.is_subset(pins);
    let iothread_cpus = groups
        .iter()
        .filter(|(k, _)| matches!(k, LeafKind::Iothread(_)))
        .fold(CpuSet::new(), |acc, (_, p)| acc.union(p));
    let mut out: Vec<Placed> = Vec::new();
    let mut vcpu_cpus = CpuSet::new();
    for (kind, pins) in groups {
        let placement = if unpinned(&pins) {
            Placement::Unpinned
        } else if let LeafKind::Iothread(_) = kind {
            Placement::Housekeeping
        } else if asked.is_some_and(|a| !pins.is_subset(a) && !pins.is_disjoint(a)) {
            Placement::Straddles
        } else if let LeafKind::Vcpu(_) = kind {
            if asked.is_some_and(|a| pins.is_disjoint(a)) {
                Placement::Outside
            } else if let Some(other) = out
                .iter()
                .find(|p| p.placement == Placement::Partition && !p.pins.is_disjoint(&pins))
            {
                Placement::SharesVcpu {
                    with: other.kind,
                    cpus: other.pins.intersection(&pins),
                }
            } else {
                vcpu_cpus = vcpu_cpus.union(&pins);
                Placement::Partition
            }
        } else {
            let on_vcpu = pins.intersection(&vcpu_cpus);
            let housekeeping = match asked {
                None => !pins.is_disjoint(&iothread_cpus) || pins.contains(0),
                Some(a) => pins.is_disjoint(a),
            };
            if !on_vcpu.is_empty() {
                Placement::EmulatorOnVcpu(on_vcpu)
            } else if housekeeping {
                Placement::Housekeeping
            } else {
                Placement::Partition
            }
        };
        out.push(Placed {
            kind,
            pins,
            placement,
        });
    }
    out
}

/// The CPUs the partitions of `placed` isolate.
pub fn partitioned_cpus(placed: &[Placed]) -> CpuSet {
    placed
        .iter()
        .filter(|p| p.placement == Placement::Partition)
        .fold(CpuSet::new(), |acc, p| acc.union(&p.pins))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn values() {
        assert_eq!("auto".parse::<VmHugepages>(), Ok(VmHugepages::Auto));
        assert_eq!("none".parse::<VmHugepages>(), Ok(VmHugepages::None));
        assert_eq!(
            "2G".parse::<VmHugepages>().map(|h| h.to_string()),
            Ok("2G:2M".into())
        );
        assert!("lots".parse::<VmHugepages>().is_err());
        assert_eq!("warn".parse::<OnConflict>(), Ok(OnConflict::Warn));
        assert!("maybe".parse::<OnConflict>().is_err());
        let ok = VmSection {
            profile: Some("realtime".into()),
            hugepages: Some("auto".into()),
            ..VmSection::default()
        };
        assert!(ok.validate().is_ok());
        let bad = VmSection {
            profile: Some("fast".into()),
            ..VmSection::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("profile:"));
        let both = VmSection {
            profile: Some("none".into()),
            tunings: Some(vec!["thp".into()]),
            ..VmSection::default()
        };
        assert!(both.validate().is_err());
    }

    fn set(s: &str) -> CpuSet {
        CpuSet::parse(s).unwrap()
    }

    fn run(groups: &[(&str, &str)], asked: Option<&str>) -> Vec<String> {
        let g: Vec<(LeafKind, CpuSet)> = groups
            .iter()
            .map(|(k, p)| (LeafKind::parse(k).unwrap(), set(p)))
            .collect();
        let asked = asked.map(set);
        place(&g, &set("0-5"), asked.as_ref())
            .iter()
            .map(|p| format!("{}={:?}", p.kind, p.placement))
            .collect()
    }

    const RECIPE: &[(&str, &str)] = &[
        ("iothread1", "0-1"),
        ("emulator", "2"),
        ("vcpu1", "4"),
        ("vcpu0", "3"),
    ];

    #[test]
    fn leaf_names() {
        assert_eq!(LeafKind::parse("vcpu12"), Some(LeafKind::Vcpu(12)));
        assert_eq!(LeafKind::parse("emulator"), Some(LeafKind::Emulator));
        assert_eq!(LeafKind::parse("iothread1"), Some(LeafKind::Iothread(1)));
        for bad in ["vcpu", "vcpu-1", "vcpux", "iothread", "emulator0", "x"] {
            assert_eq!(LeafKind::parse(bad), None, "{bad}");
        }
        assert_eq!(LeafKind::Iothread(3).to_string(), "iothread3");
    }

    #[test]
    fn recipe_derived_and_asked() {
        let want = [
            "vcpu0=Partition",
            "vcpu1=Partition",
            "emulator=Partition",
            "iothread1=Housekeeping",
        ];
        assert_eq!(run(RECIPE, None), want);
        assert_eq!(run(RECIPE, Some("2-4")), want);
        // Only the vCPUs asked for: the emulator's pin is outside, a housekeeping pin.
        assert_eq!(run(RECIPE, Some("3-4"))[2], "emulator=Housekeeping");
        let g: Vec<(LeafKind, CpuSet)> = RECIPE
            .iter()
            .map(|(k, p)| (LeafKind::parse(k).unwrap(), set(p)))
            .collect();
        assert_eq!(partitioned_cpus(&place(&g, &set("0-5"), None)), set("2-4"));
    }

    #[test]
    fn housekeeping_emulators() {
        let r = run(
            &[("vcpu0", "3"), ("emulator", "0-1"), ("iothread1", "0-1")],
            None,
        );
        assert_eq!(r[1], "emulator=Housekeeping");
        assert_eq!(
            run(&[("vcpu0", "3"), ("emulator", "0")], None)[1],
            "emulator=Housekeeping"
        );
        assert_eq!(
            run(&[("vcpu0", "3"), ("emulator", "0-5")], None)[1],
            "emulator=Unpinned"
        );
        assert_eq!(
            run(&[("vcpu0", "3"), ("emulator", "5")], None)[1],
            "emulator=Partition"
        );
    }

    #[test]
    fn bad_pins() {
        let r = run(
            &[
                ("vcpu0", "3"),
                ("vcpu1", "3-4"),
                ("vcpu2", ""),
                ("vcpu3", "0-5"),
                ("emulator", "3"),
            ],
            None,
        );
        assert_eq!(
            r,
            [
                "vcpu0=Partition",
                "vcpu1=SharesVcpu { with: Vcpu(0), cpus: CpuSet(3) }",
                "vcpu2=Unpinned",
                "vcpu3=Unpinned",
                "emulator=EmulatorOnVcpu(CpuSet(3))",
            ]
        );
        let r = run(
            &[("vcpu0", "3-4"), ("vcpu1", "1"), ("emulator", "2-3")],
            Some("3"),
        );
        assert_eq!(
            r,
            ["vcpu0=Straddles", "vcpu1=Outside", "emulator=Straddles"]
        );
    }
}
