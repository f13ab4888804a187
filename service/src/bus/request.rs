//! Turning an `Isolate(name, cpus, options)` call into a validated [`IsolateRequest`].
//!
//! Pure: no I/O besides nothing at all. Everything a caller can get wrong is caught here with an
//! error naming the key and the fix, before authorization prompts anyone and before any lock.

use std::collections::{BTreeSet, HashMap};

use kvmisolate_dbus::options::{self, PartitionType, ReleaseWhen};
use kvmisolate_dbus::target::TargetText;
use kvmisolate_dbus::tunings::{HugepageSpec, Profile, Tuning, VfioIrqPlacement};
use kvmisolate_dbus::{CpuSet, Error, IsolationName};
use zbus::OwnedVariant;

/// What to isolate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetRequest {
    /// An existing systemd unit, partitioned in place.
    Unit(String),
    /// Processes moved into a cgroup of kvmisolate's own.
    Pids(Vec<u32>),
    /// A running libvirt domain, by name: its vCPU and emulator leaves partitioned in place.
    Libvirt(String),
    /// Hugepages reserved for a libvirt domain about to start; no CPUs, no partition.
    Reservation(String),
}

impl TargetRequest {
    /// The `Target` property text: `unit:NAME`, `pids:1,2,3` or `libvirt:DOMAIN`.
    pub fn describe(&self) -> String {
        match self {
            Self::Unit(u) => TargetText::Unit(u),
            Self::Pids(p) => TargetText::Pids(p),
            Self::Libvirt(d) => TargetText::Libvirt(d),
            Self::Reservation(d) => TargetText::Reservation(d),
        }
        .to_string()
    }
}

/// A validated `Isolate` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolateRequest {
    /// The isolation's name.
    pub name: IsolationName,
    /// The CPUs to isolate (empty: those of the name's section in the configuration).
    pub cpus: CpuSet,
    /// What to isolate.
    pub target: TargetRequest,
    /// The partition type asked for; `None` lets the service choose.
    pub partition: Option<PartitionType>,
    /// When it ends by itself.
    pub release_when: ReleaseWhen,
    /// The host tunings asked for.
    pub tunings: TuningsRequest,
}

/// The tuning options of a request; what is absent comes from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TuningsRequest {
    /// `profile`.
    pub profile: Option<Profile>,
    /// `tunings`.
    pub list: Option<Vec<Tuning>>,
    /// `hugepages`.
    pub hugepages: Option<HugepageSpec>,
    /// `hugepages-best-effort`.
    pub hugepages_best_effort: Option<bool>,
    /// `vfio-irqs` (selects the `vfio-irqs` tuning).
    pub vfio_irqs: Option<VfioIrqPlacement>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidOption(msg.into())
}

fn string_option(key: &str, value: &OwnedVariant) -> Result<String, Error> {
    String::try_from(value.clone())
        .map_err(|_| invalid(format!("option {key:?} must be a string (type s)")))
}

/// Validates the arguments of `Isolate`.
pub fn parse(
    name: &str,
    cpus: &str,
    options: &HashMap<String, OwnedVariant>,
) -> Result<IsolateRequest, Error> {
    let name = IsolationName::new(name)?;
    // Empty: the configuration's [isolation.NAME] cpus (checked where the config is known).
    let cpus = CpuSet::parse(cpus)?;
    let mut tunings = TuningsRequest::default();
    let mut unit = None;
    let mut pids = None;
    let mut domain = None;
    let mut reserve = None;
    let mut release_given = false;
    let mut partition = None;
    let mut release_when = ReleaseWhen::default();
    for (key, value) in options {
        match key.as_str() {
            options::UNIT => {
                let u = string_option(key, value)?;
                crate::daemon::systemd::validate_unit_name(&u).map_err(invalid)?;
                unit = Some(u);
            }
            options::PIDS => {
                let list = Vec::<u32>::try_from(value.clone()).map_err(|_| {
                    invalid("option \"pids\" must be an array of process IDs (type au)")
                })?;
                pids = Some(validate_pids(list)?);
            }
            options::PARTITION => {
                partition = Some(
                    string_option(key, value)?
                        .parse::<PartitionType>()
                        .map_err(invalid)?,
                );
            }
            options::RESERVE_FOR_DOMAIN => {
                let d = string_option(key, value)?;
                crate::libvirt::validate_domain_name(&d).map_err(|e| {
                    invalid(e.replace("\"libvirt-domain\"", "\"reserve-for-domain\""))
                })?;
                reserve = Some(d);
            }
            options::RELEASE_WHEN => {
                release_given = true;
                release_when = string_option(key, value)?
                    .parse::<ReleaseWhen>()
                    .map_err(invalid)?;
            }
            options::PROFILE => {
                tunings.profile = Some(
                    string_option(key, value)?
                        .parse::<Profile>()
                        .map_err(invalid)?,
                );
            }
            options::TUNINGS => {
                let list = Vec::<String>::try_from(value.clone()).map_err(|_| {
                    invalid("option \"tunings\" must be an array of tuning names (type as)")
                })?;
                if list.len() > Tuning::ALL.len() * 2 {
                    return Err(invalid("option \"tunings\" lists too many names"));
                }
                let parsed = list
                    .iter()
                    .map(|t| t.parse::<Tuning>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(invalid)?;
                if parsed.contains(&Tuning::Hugepages) {
                    return Err(invalid(
                        "the hugepages tuning is asked for with the \"hugepages\" option (a size such as 16G), not in \"tunings\"",
                    ));
                }
                tunings.list = Some(parsed);
            }
            options::HUGEPAGES => {
                tunings.hugepages = Some(
                    string_option(key, value)?
                        .parse::<HugepageSpec>()
                        .map_err(|e| invalid(format!("option \"hugepages\": {e}")))?,
                );
            }
            options::HUGEPAGES_BEST_EFFORT => {
                tunings.hugepages_best_effort =
                    Some(bool::try_from(value.clone()).map_err(|_| {
                        invalid("option \"hugepages-best-effort\" must be a boolean (type b)")
                    })?);
            }
            options::VFIO_IRQS => {
                tunings.vfio_irqs = Some(
                    string_option(key, value)?
                        .parse::<VfioIrqPlacement>()
                        .map_err(|e| invalid(format!("option \"vfio-irqs\": {e}")))?,
                );
            }
            options::LIBVIRT_DOMAIN => {
                let d = string_option(key, value)?;
                crate::libvirt::validate_domain_name(&d).map_err(invalid)?;
                domain = Some(d);
            }
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(invalid(format!(
                    "unknown option {shown:?}; known options: {}",
                    options::KNOWN.join(", ")
                )));
            }
        }
    }
    if tunings.profile.is_some() && tunings.list.is_some() {
        return Err(invalid(
            "give either \"profile\" or \"tunings\", not both (a list replaces the profile)",
        ));
    }
    if let Some(d) = reserve {
        if unit.is_some() || pids.is_some() || domain.is_some() {
            return Err(invalid(
                "\"reserve-for-domain\" is a lease of its own: give no \"unit\", \"pids\" or \"libvirt-domain\" with it",
            ));
        }
        if !cpus.is_empty() {
            return Err(invalid(
                "a \"reserve-for-domain\" lease holds no CPUs: leave the CPU list empty",
            ));
        }
        if tunings.hugepages.is_none() || tunings.profile.is_some() || tunings.list.is_some() {
            return Err(invalid(
                "a \"reserve-for-domain\" lease holds only a \"hugepages\" pool: give \"hugepages\" and no \"profile\" or \"tunings\"",
            ));
        }
        if release_given && release_when != ReleaseWhen::Released {
            return Err(invalid(
                "a \"reserve-for-domain\" lease ends only on Release (release-when \"released\")",
            ));
        }
        tunings.profile = Some(Profile::None);
        return Ok(IsolateRequest {
            name,
            cpus,
            target: TargetRequest::Reservation(d),
            partition: None,
            release_when: ReleaseWhen::Released,
            tunings,
        });
    }
    if tunings.vfio_irqs.is_some() && (reserve.is_some() || domain.is_none()) {
        return Err(invalid(
            "\"vfio-irqs\" places the IRQs of a libvirt domain's assigned PCI devices: give it \
             with \"libvirt-domain\" only (for other targets, irq-affinity moves every IRQ)",
        ));
    }
    let target = match (unit, pids, domain) {
        (Some(u), None, None) => TargetRequest::Unit(u),
        (None, Some(p), None) => TargetRequest::Pids(p),
        (None, None, Some(d)) => TargetRequest::Libvirt(d),
        (None, None, None) => {
            return Err(invalid(
                "no target: give the option \"unit\" (a systemd unit), \"pids\" (processes) \
                 or \"libvirt-domain\" (a running libvirt domain)",
            ));
        }
        _ => {
            return Err(invalid(
                "give only one of \"unit\", \"pids\" and \"libvirt-domain\"",
            ));
        }
    };
    Ok(IsolateRequest {
        name,
        cpus,
        target,
        partition,
        release_when,
        tunings,
    })
}

/// Refuses the names reserved for the libvirt hook (`libvirt-`, `hugepages-`) to callers
/// other than uid 0, so that no user can take, or make the hook release, a domain's name.
pub fn check_reserved_name(name: &IsolationName, uid: u32) -> Result<(), Error> {
    if uid == 0 {
        return Ok(());
    }
    match kvmisolate_dbus::names::RESERVED_NAME_PREFIXES
        .iter()
        .find(|p| name.as_str().starts_with(**p))
    {
        Some(prefix) => Err(Error::InvalidName(format!(
            "names starting with {prefix:?} are reserved for the libvirt hook (uid 0); pick another name"
        ))),
        None => Ok(()),
    }
}

fn validate_pids(list: Vec<u32>) -> Result<Vec<u32>, Error> {
    if list.is_empty() {
        return Err(invalid(
            "option \"pids\" is empty; give at least one process ID",
        ));
    }
    if list.len() > options::MAX_PIDS {
        return Err(invalid(format!(
            "option \"pids\" has {} entries; at most {} are accepted (give the main process; its threads and children follow)",
            list.len(),
            options::MAX_PIDS
        )));
    }
    if list.contains(&0) {
        return Err(invalid(
            "option \"pids\" contains 0, which is not a process ID",
        ));
    }
    let mut seen = BTreeSet::new();
    for &pid in &list {
        if !seen.insert(pid) {
            return Err(invalid(format!(
                "option \"pids\" lists process {pid} twice"
            )));
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::Variant;

    fn opts(items: &[(&str, Variant<'static>)]) -> HashMap<String, OwnedVariant> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OwnedVariant::try_from(v.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn the_hooks_prefixes_are_root_only() {
        let n = |s: &str| IsolationName::new(s).unwrap();
        assert!(check_reserved_name(&n("libvirt-win"), 0).is_ok());
        assert!(check_reserved_name(&n("hugepages-win"), 0).is_ok());
        for bad in ["libvirt-win", "hugepages-win", "libvirt-"] {
            assert!(matches!(
                check_reserved_name(&n(bad), 1000),
                Err(Error::InvalidName(m)) if m.contains("reserved for the libvirt hook")
            ));
        }
        for ok in ["libvirt", "vm-libvirt-x", "hugepages", "win"] {
            assert!(check_reserved_name(&n(ok), 1000).is_ok());
        }
    }

    #[test]
    fn accepts_a_pids_request() {
        let r = parse(
            "vm",
            "2-3",
            &opts(&[("pids", Variant::from(vec![10u32, 11]))]),
        )
        .unwrap();
        assert_eq!(r.target, TargetRequest::Pids(vec![10, 11]));
        assert_eq!(r.cpus.to_string(), "2-3");
        assert_eq!(r.partition, None);
        assert_eq!(r.release_when, ReleaseWhen::TargetExits);
        assert_eq!(r.target.describe(), "pids:10,11");
    }

    #[test]
    fn accepts_a_unit_request_with_all_options() {
        let r = parse(
            "vm",
            "4",
            &opts(&[
                ("unit", Variant::from("vm.service")),
                ("partition", Variant::from("isolated")),
                ("release-when", Variant::from("released")),
            ]),
        )
        .unwrap();
        assert_eq!(r.target, TargetRequest::Unit("vm.service".into()));
        assert_eq!(r.partition, Some(PartitionType::Isolated));
        assert_eq!(r.release_when, ReleaseWhen::Released);
    }

    #[test]
    fn accepts_a_libvirt_domain() {
        let r = parse(
            "vm",
            "",
            &opts(&[("libvirt-domain", Variant::from("win 10"))]),
        )
        .unwrap();
        assert_eq!(r.target, TargetRequest::Libvirt("win 10".into()));
        assert!(r.cpus.is_empty());
        assert_eq!(r.target.describe(), "libvirt:win 10");
    }

    #[test]
    fn accepts_a_reservation() {
        let r = parse(
            "libvirt-vm-hugepages",
            "",
            &opts(&[
                ("reserve-for-domain", Variant::from("vm")),
                ("hugepages", Variant::from("64M")),
            ]),
        )
        .unwrap();
        assert_eq!(r.target, TargetRequest::Reservation("vm".into()));
        assert_eq!(r.release_when, ReleaseWhen::Released);
        assert_eq!(r.tunings.profile, Some(Profile::None));
        let res = || ("reserve-for-domain", Variant::from("vm"));
        let hp = || ("hugepages", Variant::from("64M"));
        for bad in [
            vec![res()],
            vec![res(), hp(), ("pids", Variant::from(vec![1u32]))],
            vec![res(), hp(), ("profile", Variant::from("default"))],
            vec![res(), hp(), ("release-when", Variant::from("target-exits"))],
            vec![("reserve-for-domain", Variant::from("")), hp()],
        ] {
            let r = parse("x", "", &opts(&bad));
            assert!(
                matches!(r, Err(Error::InvalidOption(_))),
                "{bad:?} gave {r:?}"
            );
        }
        let r = parse("x", "2", &opts(&[res(), hp()]));
        assert!(matches!(r, Err(Error::InvalidOption(_))), "{r:?}");
    }

    #[test]
    fn accepts_tuning_options() {
        let r = parse(
            "vm",
            "2",
            &opts(&[
                ("pids", Variant::from(vec![10u32])),
                ("tunings", Variant::from(vec!["thp", "irq-affinity"])),
                ("hugepages", Variant::from("1G:1G@0")),
                ("hugepages-best-effort", Variant::from(true)),
            ]),
        )
        .unwrap();
        assert_eq!(r.tunings.list, Some(vec![Tuning::Thp, Tuning::IrqAffinity]));
        assert_eq!(r.tunings.hugepages.unwrap().pages(), 1);
        assert_eq!(r.tunings.hugepages_best_effort, Some(true));
        let r = parse(
            "vm",
            "2",
            &opts(&[
                ("pids", Variant::from(vec![10u32])),
                ("profile", Variant::from("realtime")),
            ]),
        )
        .unwrap();
        assert_eq!(r.tunings.profile, Some(Profile::Realtime));
    }

    #[test]
    fn vfio_irqs_only_with_a_libvirt_domain() {
        let dom = || ("libvirt-domain", Variant::from("win11"));
        let r = parse(
            "vm",
            "",
            &opts(&[dom(), ("vfio-irqs", Variant::from("vcpu"))]),
        )
        .unwrap();
        assert_eq!(r.tunings.vfio_irqs, Some(VfioIrqPlacement::Vcpu));
        for (bad, says) in [
            (
                vec![
                    ("pids", Variant::from(vec![10u32])),
                    ("vfio-irqs", Variant::from("vcpu")),
                ],
                "with \"libvirt-domain\" only",
            ),
            (
                vec![dom(), ("vfio-irqs", Variant::from("gpu"))],
                "'housekeeping'",
            ),
            (vec![dom(), ("vfio-irqs", Variant::from(1u32))], "type s"),
        ] {
            match parse("vm", "2", &opts(&bad)) {
                Err(Error::InvalidOption(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_bad_input_with_the_right_error() {
        let pids = || ("pids", Variant::from(vec![10u32]));
        assert!(matches!(
            parse("a/b", "2", &opts(&[pids()])),
            Err(Error::InvalidName(_))
        ));
        assert!(matches!(
            parse("vm", "2-", &opts(&[pids()])),
            Err(Error::InvalidCpuList(_))
        ));
        assert!(parse("vm", "", &opts(&[pids()])).unwrap().cpus.is_empty());
        for bad in [
            vec![],
            vec![("bogus", Variant::from(1u32))],
            vec![pids(), ("unit", Variant::from("x.service"))],
            vec![("pids", Variant::from("10"))],
            vec![("pids", Variant::from(Vec::<u32>::new()))],
            vec![("pids", Variant::from(vec![0u32]))],
            vec![("pids", Variant::from(vec![5u32, 5]))],
            vec![("pids", Variant::from((1..=10_000u32).collect::<Vec<_>>()))],
            vec![pids(), ("partition", Variant::from("member"))],
            vec![pids(), ("partition", Variant::from(1u32))],
            vec![pids(), ("release-when", Variant::from("never"))],
            vec![("unit", Variant::from("../../etc.service"))],
            vec![("unit", Variant::from("x.timer"))],
            vec![pids(), ("libvirt-domain", Variant::from("win10"))],
            vec![("libvirt-domain", Variant::from(""))],
            vec![("libvirt-domain", Variant::from("a/b"))],
            vec![("libvirt-domain", Variant::from(1u32))],
            vec![pids(), ("profile", Variant::from("fast"))],
            vec![pids(), ("tunings", Variant::from("thp"))],
            vec![pids(), ("tunings", Variant::from(vec!["irq"]))],
            vec![pids(), ("tunings", Variant::from(vec!["hugepages"]))],
            vec![
                pids(),
                ("profile", Variant::from("none")),
                ("tunings", Variant::from(vec!["thp"])),
            ],
            vec![pids(), ("hugepages", Variant::from("16X"))],
            vec![pids(), ("hugepages", Variant::from(16u32))],
            vec![pids(), ("hugepages-best-effort", Variant::from("yes"))],
        ] {
            let r = parse("vm", "2", &opts(&bad));
            assert!(
                matches!(r, Err(Error::InvalidOption(_))),
                "{bad:?} gave {r:?}"
            );
        }
    }
}
