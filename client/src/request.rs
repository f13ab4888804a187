//! Building an `Isolate` request: local validation, the default name, the options dictionary.

use kvmisolate_dbus::options::{self, IsolateOptions, PartitionType, ReleaseWhen};
use kvmisolate_dbus::target::TargetText;
use kvmisolate_dbus::tunings::{HugepageSpec, Profile, Tuning, VfioIrqPlacement};
use kvmisolate_dbus::{CpuSet, IsolationName};

use crate::failure::{ExitCode, Failure};

/// What to isolate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A running systemd unit, partitioned in place.
    Unit(String),
    /// Processes moved into a new cgroup.
    Pids(Vec<u32>),
    /// A running libvirt domain, isolated in place.
    Libvirt(String),
    /// Hugepages reserved for a libvirt domain about to start (the hook's `prepare`).
    Reservation(String),
}

/// A validated `Isolate` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolateRequest {
    /// The isolation's name.
    pub name: IsolationName,
    /// The cpulist as given (validated).
    pub cpus: String,
    /// What to isolate.
    pub target: Target,
    /// The partition type, when chosen.
    pub partition: Option<PartitionType>,
    /// When it ends, when chosen.
    pub release_when: Option<ReleaseWhen>,
    /// The tunings asked for (absent: the service's configuration decides).
    pub tunings: Option<TuningsArg>,
    /// A hugepage pool.
    pub hugepages: Option<HugepageSpec>,
    /// Keep the isolation when fewer hugepages than asked can be allocated.
    pub hugepages_best_effort: bool,
    /// Where a libvirt domain's VFIO device IRQs go (`--vfio-irqs`).
    pub vfio_irqs: Option<VfioIrqPlacement>,
}

/// `--tunings`: a profile name or a comma-separated list of tunings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TuningsArg {
    /// `none`, `default` or `realtime`.
    Profile(Profile),
    /// Tuning names.
    List(Vec<Tuning>),
}

impl TuningsArg {
    /// Parses `--tunings`.
    pub fn parse(text: &str) -> Result<Self, Failure> {
        if let Ok(p) = text.parse::<Profile>() {
            return Ok(Self::Profile(p));
        }
        let list = text
            .split(',')
            .map(|t| t.trim().parse::<Tuning>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Failure::new(
                    ExitCode::BadRequest,
                    format!("--tunings: {e}; or a profile: none, default, realtime"),
                )
            })?;
        if list.contains(&Tuning::Hugepages) {
            return Err(Failure::new(
                ExitCode::BadRequest,
                "--tunings: hugepages are asked for with --hugepages SIZE (e.g. 16G or 16G:1G)",
            ));
        }
        Ok(Self::List(list))
    }
}

/// The default name for a cpulist: `cpus-` and the list with `,` written as `_`.
pub fn default_name(cpus: &str) -> String {
    format!("cpus-{}", cpus.replace(',', "_"))
}

impl IsolateRequest {
    /// Validates the cpulist and the name (or makes the default name) as the service would,
    /// with the same messages; failures are bad requests (exit code 3).
    pub fn new(
        cpus: &str,
        name: Option<&str>,
        target: Target,
        partition: Option<PartitionType>,
        release_when: Option<ReleaseWhen>,
    ) -> Result<Self, Failure> {
        let cpus = cpus.strip_suffix('\n').unwrap_or(cpus);
        let set =
            CpuSet::parse(cpus).map_err(|e| Failure::new(ExitCode::BadRequest, e.to_string()))?;
        let derived = matches!(target, Target::Libvirt(_) | Target::Reservation(_));
        if set.is_empty() && name.is_none() && !derived {
            return Err(Failure::new(
                ExitCode::BadRequest,
                "the CPU list is empty; pass the CPUs to isolate, e.g. --cpus 2-3 (or --name NAME \
                 for an isolation whose CPUs the service's configuration gives)",
            ));
        }
        let name = match (name, &target) {
            (Some(n), _) => IsolationName::new(n)
                .map_err(|e| Failure::new(ExitCode::BadRequest, e.to_string()))?,
            // The hook's `libvirt-` names are root's: another user gets `vm-`.
            (None, Target::Libvirt(domain)) if nix::unistd::geteuid().is_root() => vm_name(domain),
            (None, Target::Libvirt(domain)) => user_vm_name(domain),
            (None, Target::Reservation(domain)) => reservation_name(domain),
            (None, _) => IsolationName::new(&default_name(cpus)).map_err(|e| {
                Failure::new(
                    ExitCode::BadRequest,
                    format!("cannot make a name from the CPU list ({e}); pass --name NAME"),
                )
            })?,
        };
        if let Target::Pids(p) = &target
            && p.len() > options::MAX_PIDS
        {
            return Err(Failure::new(
                ExitCode::BadRequest,
                format!(
                    "{} PIDs given; at most {} are allowed",
                    p.len(),
                    options::MAX_PIDS
                ),
            ));
        }
        Ok(Self {
            name,
            cpus: cpus.to_owned(),
            target,
            partition,
            release_when,
            tunings: None,
            hugepages: None,
            hugepages_best_effort: false,
            vfio_irqs: None,
        })
    }

    /// Adds the tuning options (`--tunings`, `--hugepages`, `--hugepages-best-effort`).
    pub fn with_tunings(
        mut self,
        tunings: Option<&str>,
        hugepages: Option<&str>,
        best_effort: bool,
    ) -> Result<Self, Failure> {
        self.tunings = tunings.map(TuningsArg::parse).transpose()?;
        self.hugepages = hugepages
            .map(|h| {
                h.parse::<HugepageSpec>()
                    .map_err(|e| Failure::new(ExitCode::BadRequest, format!("--hugepages: {e}")))
            })
            .transpose()?;
        if best_effort && self.hugepages.is_none() {
            return Err(Failure::new(
                ExitCode::BadRequest,
                "--hugepages-best-effort needs --hugepages SIZE",
            ));
        }
        self.hugepages_best_effort = best_effort;
        Ok(self)
    }

    /// Adds `--vfio-irqs` (already validated).
    pub fn with_vfio_irqs(mut self, placement: Option<VfioIrqPlacement>) -> Self {
        self.vfio_irqs = placement;
        self
    }

    /// Adds `--vfio-irqs`, which only a `--vm` target takes.
    pub fn with_vfio_irqs_arg(self, placement: Option<VfioIrqPlacement>) -> Result<Self, Failure> {
        let Some(placement) = placement else {
            return Ok(self);
        };
        if !matches!(self.target, Target::Libvirt(_)) {
            return Err(Failure::new(
                ExitCode::BadRequest,
                "--vfio-irqs places a libvirt domain's assigned PCI device IRQs: give it with \
                 --vm DOMAIN (for other targets, the irq-affinity tuning moves every IRQ)",
            ));
        }
        Ok(self.with_vfio_irqs(Some(placement)))
    }

    /// The `options` argument of `Isolate`.
    pub fn options(&self) -> IsolateOptions {
        let mut o = IsolateOptions::default();
        match &self.target {
            Target::Unit(u) => o.unit = Some(u.clone()),
            Target::Pids(p) => o.pids = Some(p.clone()),
            Target::Libvirt(d) => o.libvirt_domain = Some(d.clone()),
            Target::Reservation(d) => o.reserve_for_domain = Some(d.clone()),
        }
        o.partition = self.partition.map(|p| p.as_str().to_owned());
        o.release_when = self.release_when.map(|r| r.as_str().to_owned());
        match &self.tunings {
            Some(TuningsArg::Profile(p)) => o.profile = Some(p.as_str().to_owned()),
            Some(TuningsArg::List(l)) => {
                o.tunings = Some(l.iter().map(|t| t.as_str().to_owned()).collect());
            }
            None => {}
        }
        if let Some(h) = &self.hugepages {
            o.hugepages = Some(h.to_string());
            o.hugepages_best_effort = self.hugepages_best_effort.then_some(true);
        }
        o.vfio_irqs = self.vfio_irqs.map(|v| v.as_str().to_owned());
        o
    }
}

/// `unit:NAME` → `unit NAME`, `pids:1,2` → `pids 1,2`, for the one-line result.
pub fn describe_target(target: &str) -> String {
    match target.split_once(':') {
        Some((kind, what)) if !kind.is_empty() => format!("{kind} {what}"),
        _ => target.to_owned(),
    }
}

/// The one-line result of a successful `Isolate`.
pub fn result_line(cpus: &str, name: &str, partition: &str, target: &str) -> String {
    let mut details = Vec::new();
    if !partition.is_empty() {
        details.push(format!("partition {partition}"));
    }
    if !target.is_empty() {
        details.push(describe_target(target));
    }
    if details.is_empty() {
        format!("Isolated CPUs {cpus} as \"{name}\"")
    } else {
        format!(
            "Isolated CPUs {cpus} as \"{name}\" ({})",
            details.join(", ")
        )
    }
}

/// The target text the service would report, for when its properties cannot be read.
pub fn target_text(target: &Target) -> String {
    match target {
        Target::Unit(u) => TargetText::Unit(u),
        Target::Pids(p) => TargetText::Pids(p),
        Target::Libvirt(d) => TargetText::Libvirt(d),
        Target::Reservation(d) => TargetText::Reservation(d),
    }
    .to_string()
}

/// The isolation name of a libvirt domain as the libvirt hook makes it (and `isolate --vm`
/// run as root): `libvirt-` and the domain name. See [`domain_name`] for how the domain's name
/// is written so that two domains never share one.
pub fn vm_name(domain: &str) -> IsolationName {
    domain_name("libvirt-", domain)
}

/// The name of the hugepage reservation the libvirt hook makes for a domain at `prepare`:
/// `hugepages-` and the domain name, written as in [`vm_name`].
pub fn reservation_name(domain: &str) -> IsolationName {
    domain_name("hugepages-", domain)
}

/// The default name of `isolate --vm DOMAIN` for a user other than root, who may not use the
/// hook's `libvirt-` names: `vm-` and the domain name, written as in [`vm_name`].
pub fn user_vm_name(domain: &str) -> IsolationName {
    domain_name("vm-", domain)
}

/// How many hex digits of the domain name's hash a rewritten name ends with.
const HASH_DIGITS: usize = 8;

/// 32-bit FNV-1a of `text`: small, stable across versions and platforms (names are kept in
/// the journal across upgrades), and enough to tell domain names apart.
fn fnv1a32(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Whether `text` ends the way a rewritten name does: `-` and [`HASH_DIGITS`] lower-case hex
/// digits.
fn looks_hashed(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() > HASH_DIGITS
        && bytes[bytes.len() - HASH_DIGITS - 1] == b'-'
        && bytes[bytes.len() - HASH_DIGITS..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// `prefix` and `domain`, one-to-one: a domain name that fits as it is (only
/// `[A-Za-z0-9_.-]`, short enough, not itself ending like a rewritten name) is kept; any other
/// is written with `_` for each character a name cannot hold, cut to fit, and ends with `-`
/// and 8 hex digits of a hash of the whole original name. So `win 11` and `win_11` (or two
/// long names sharing their first 50 characters) get different names, and a kept name can
/// never equal a rewritten one.
fn domain_name(prefix: &str, domain: &str) -> IsolationName {
    let plain = domain
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    let kept = format!("{prefix}{domain}");
    if plain
        && kept.len() <= kvmisolate_dbus::isolation_name::MAX_LEN
        && !looks_hashed(&kept)
        && let Ok(n) = IsolationName::new(&kept)
    {
        return n;
    }
    let room = kvmisolate_dbus::isolation_name::MAX_LEN - prefix.len() - 1 - HASH_DIGITS;
    let written: String = domain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(room)
        .collect();
    let text = format!(
        "{prefix}{written}-{:0width$x}",
        fnv1a32(domain),
        width = HASH_DIGITS
    );
    // Always valid: a fixed prefix, then the characters above.
    IsolationName::new(&text).unwrap_or_else(|_| {
        IsolationName::new(prefix.trim_end_matches('-')).unwrap_or_else(|_| unreachable_name())
    })
}

fn unreachable_name() -> IsolationName {
    // "libvirt" is a valid name; this is never reached with the fixed prefixes above.
    IsolationName::new("libvirt").unwrap_or_else(|_| unreachable!("a constant valid name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use zbus::Variant;
    use zbus::wire::serialized::Context;
    use zbus::wire::{LE, to_bytes};

    /// The options of `r` as the service reads them off the wire.
    fn wire(r: &IsolateRequest) -> HashMap<String, Variant<'static>> {
        let bytes = to_bytes(Context::new(LE, 0), &r.options()).unwrap();
        let generic: HashMap<String, zbus::OwnedVariant> = bytes.deserialize().unwrap().0;
        generic.into_iter().map(|(k, v)| (k, v.into())).collect()
    }

    #[test]
    fn default_names_follow_the_contract() {
        assert_eq!(default_name("2-3"), "cpus-2-3");
        assert_eq!(default_name("3,5,7-9"), "cpus-3_5_7-9");
        let r = IsolateRequest::new("3,5,7-9", None, Target::Pids(vec![1]), None, None).unwrap();
        assert_eq!(r.name.as_str(), "cpus-3_5_7-9");
        assert_eq!(r.cpus, "3,5,7-9");
    }

    #[test]
    fn local_validation_uses_the_contract_messages() {
        let e = IsolateRequest::new("5-2", None, Target::Pids(vec![1]), None, None).unwrap_err();
        assert_eq!(e.code, ExitCode::BadRequest);
        assert_eq!(
            e.message,
            kvmisolate_dbus::CpuSet::parse("5-2")
                .unwrap_err()
                .to_string()
        );
        let e =
            IsolateRequest::new("2", Some("a/b"), Target::Pids(vec![1]), None, None).unwrap_err();
        assert_eq!(e.code, ExitCode::BadRequest);
        assert_eq!(
            e.message,
            IsolationName::new("a/b").unwrap_err().to_string()
        );
        let e = IsolateRequest::new("", None, Target::Pids(vec![1]), None, None).unwrap_err();
        assert_eq!(e.code, ExitCode::BadRequest);
        let long = (0..40)
            .map(|i| (i * 2).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let e = IsolateRequest::new(&long, None, Target::Pids(vec![1]), None, None).unwrap_err();
        assert!(e.message.contains("--name"), "{}", e.message);
        let many = Target::Pids((1..=5000).collect());
        assert!(IsolateRequest::new("2", None, many, None, None).is_err());
    }

    #[test]
    fn domain_names_map_one_to_one() {
        // Kept as they are when they fit.
        assert_eq!(vm_name("win11").as_str(), "libvirt-win11");
        assert_eq!(vm_name("db-1.prod_x").as_str(), "libvirt-db-1.prod_x");
        assert_eq!(reservation_name("win11").as_str(), "hugepages-win11");
        assert_eq!(user_vm_name("win11").as_str(), "vm-win11");
        // Names that collided before: a character replaced, or a cut.
        let long_a = format!("{}a", "x".repeat(70));
        let long_b = format!("{}b", "x".repeat(70));
        let fits = "y".repeat(64 - "libvirt-".len());
        let too_long = "y".repeat(64 - "libvirt-".len() + 1);
        let tricky = format!("win_11-{:08x}", fnv1a32("win 11"));
        let domains = [
            "win 11",
            "win_11",
            "win/11",
            "win\u{e9}11",
            long_a.as_str(),
            long_b.as_str(),
            fits.as_str(),
            too_long.as_str(),
            tricky.as_str(),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for d in domains {
            for n in [vm_name(d), reservation_name(d), user_vm_name(d)] {
                assert!(n.as_str().len() <= 64, "{n:?}");
                assert!(
                    seen.insert(n.as_str().to_owned()),
                    "{d:?} collides as {n:?}"
                );
            }
        }
        assert_eq!(vm_name(&fits).as_str(), format!("libvirt-{fits}"));
        let cut = vm_name(&too_long);
        assert_eq!(cut.as_str().len(), 64);
        assert!(
            cut.as_str()
                .ends_with(&format!("-{:08x}", fnv1a32(&too_long)))
        );
        // A domain literally named like a rewritten name is rewritten itself.
        assert_ne!(vm_name(&tricky), vm_name("win 11"));
        assert!(vm_name("win 11").as_str().starts_with("libvirt-win_11-"));
        // Stable: the same domain always gets the same name (it is in the journal).
        assert_eq!(vm_name("win 11").as_str(), "libvirt-win_11-6c1a7f5d");
    }

    #[test]
    fn vm_targets() {
        let r =
            IsolateRequest::new("", None, Target::Libvirt("win 10/ü".into()), None, None).unwrap();
        assert_eq!(
            r.name.as_str(),
            format!("libvirt-win_10__-{:08x}", fnv1a32("win 10/ü"))
        );
        assert_eq!(wire(&r)[options::LIBVIRT_DOMAIN], Variant::from("win 10/ü"));
        assert_eq!(wire(&r).len(), 1);
        assert_eq!(target_text(&r.target), "libvirt:win 10/ü");
        assert_eq!(vm_name(&"x".repeat(100)).as_str().len(), 64);
        let r = IsolateRequest::new("", None, Target::Reservation("w 1".into()), None, None)
            .unwrap()
            .with_tunings(None, Some("64M"), false)
            .unwrap();
        assert_eq!(
            r.name.as_str(),
            format!("hugepages-w_1-{:08x}", fnv1a32("w 1"))
        );
        assert_eq!(wire(&r)[options::RESERVE_FOR_DOMAIN], Variant::from("w 1"));
        assert_eq!(wire(&r)[options::HUGEPAGES], Variant::from("64M:2M"));
        let r = IsolateRequest::new("2-4", Some("gpu"), Target::Libvirt("vm".into()), None, None)
            .unwrap();
        assert_eq!(r.name.as_str(), "gpu");
        assert_eq!(r.cpus, "2-4");
    }

    /// The dictionaries the CLI sent before `IsolateOptions` (recorded in
    /// dbus/tests/fixtures) are what it sends now, key by key and type by type.
    #[test]
    fn options_as_recorded() {
        let recorded = |name: &str| -> HashMap<String, Variant<'static>> {
            let path = format!(
                "{}/../dbus/tests/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            let data = zbus::wire::serialized::Data::new(
                std::fs::read(&path).unwrap(),
                Context::new(LE, 0),
            );
            let generic: HashMap<String, zbus::OwnedVariant> = data.deserialize().unwrap().0;
            generic.into_iter().map(|(k, v)| (k, v.into())).collect()
        };
        let pids = |p: Vec<u32>| Target::Pids(p);
        let cases = [
            (
                "options-pids.bin",
                IsolateRequest::new(
                    "2-3",
                    Some("win10"),
                    pids(vec![1234, 99]),
                    Some(PartitionType::Isolated),
                    Some(ReleaseWhen::CallerDisconnects),
                )
                .unwrap(),
            ),
            (
                "options-profile.bin",
                IsolateRequest::new("2-3", None, pids(vec![1]), None, None)
                    .unwrap()
                    .with_tunings(Some("realtime"), None, false)
                    .unwrap(),
            ),
            (
                "options-libvirt.bin",
                IsolateRequest::new("", None, Target::Libvirt("win 10/ü".into()), None, None)
                    .unwrap(),
            ),
            (
                "options-reservation.bin",
                IsolateRequest::new("", None, Target::Reservation("w 1".into()), None, None)
                    .unwrap()
                    .with_tunings(None, Some("64M"), false)
                    .unwrap(),
            ),
            (
                "options-unit-tunings.bin",
                IsolateRequest::new(
                    "2-3",
                    None,
                    Target::Unit("vm.scope".into()),
                    Some(PartitionType::Root),
                    Some(ReleaseWhen::Released),
                )
                .unwrap()
                .with_tunings(Some("irq-affinity,thp"), Some("16G:1G@0"), true)
                .unwrap(),
            ),
        ];
        for (fixture, req) in cases {
            assert_eq!(wire(&req), recorded(fixture), "{fixture}");
        }
    }

    #[test]
    fn options_dict() {
        let r = IsolateRequest::new(
            "2-3",
            Some("win10"),
            Target::Pids(vec![1234, 99]),
            Some(PartitionType::Isolated),
            Some(ReleaseWhen::CallerDisconnects),
        )
        .unwrap();
        let o = wire(&r);
        assert_eq!(o.len(), 3);
        assert_eq!(o[options::PIDS], Variant::from(vec![1234u32, 99]));
        assert_eq!(o[options::PIDS].value_signature().to_string(), "au");
        assert_eq!(o[options::PARTITION], Variant::from("isolated"));
        assert_eq!(
            o[options::RELEASE_WHEN],
            Variant::from("caller-disconnects")
        );

        let r =
            IsolateRequest::new("2", None, Target::Unit("vm.scope".into()), None, None).unwrap();
        let o = wire(&r);
        assert_eq!(o.len(), 1);
        assert_eq!(o[options::UNIT], Variant::from("vm.scope"));
        for k in o.keys() {
            assert!(options::KNOWN.contains(&k.as_str()));
        }
        for (until, word) in [
            (crate::cli::UntilArg::Exit, "target-exits"),
            (crate::cli::UntilArg::Disconnect, "caller-disconnects"),
            (crate::cli::UntilArg::Release, "released"),
        ] {
            let r = IsolateRequest::new("2", None, Target::Pids(vec![1]), None, Some(until.into()))
                .unwrap();
            assert_eq!(wire(&r)[options::RELEASE_WHEN], Variant::from(word));
        }
    }

    #[test]
    fn tuning_options() {
        let base = || IsolateRequest::new("2-3", None, Target::Pids(vec![1]), None, None).unwrap();
        let r = base()
            .with_tunings(Some("realtime"), Some("16G:1G@0"), true)
            .unwrap();
        let o = wire(&r);
        assert_eq!(o[options::PROFILE], Variant::from("realtime"));
        assert_eq!(o[options::HUGEPAGES], Variant::from("16G:1G@0"));
        assert_eq!(o[options::HUGEPAGES_BEST_EFFORT], Variant::from(true));
        let r = base()
            .with_tunings(Some("irq-affinity,thp"), None, false)
            .unwrap();
        assert_eq!(
            wire(&r)[options::TUNINGS],
            Variant::from(vec!["irq-affinity".to_owned(), "thp".to_owned()])
        );
        assert!(
            wire(&r)
                .keys()
                .all(|k| options::KNOWN.contains(&k.as_str()))
        );
        for (t, h, b, want) in [
            (Some("fast"), None, false, "unknown tuning \"fast\""),
            (Some("hugepages"), None, false, "--hugepages SIZE"),
            (None, Some("16Q"), false, "--hugepages: unknown size unit"),
            (None, None, true, "needs --hugepages"),
        ] {
            let e = base().with_tunings(t, h, b).unwrap_err();
            assert!(e.to_string().contains(want), "{t:?} {h:?}: {e}");
        }
        // An empty list is fine when a name is given (the configuration has the CPUs).
        assert!(IsolateRequest::new("", Some("win11"), Target::Pids(vec![1]), None, None).is_ok());
        assert!(IsolateRequest::new("", None, Target::Pids(vec![1]), None, None).is_err());
    }

    #[test]
    fn result_lines() {
        assert_eq!(
            result_line("2-3", "win10", "isolated", "pids:1234"),
            "Isolated CPUs 2-3 as \"win10\" (partition isolated, pids 1234)"
        );
        assert_eq!(
            result_line("2", "x", "root", "unit:vm.scope"),
            "Isolated CPUs 2 as \"x\" (partition root, unit vm.scope)"
        );
        assert_eq!(result_line("2", "x", "", ""), "Isolated CPUs 2 as \"x\"");
        assert_eq!(target_text(&Target::Pids(vec![1, 2])), "pids:1,2");
    }
}
