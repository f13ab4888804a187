//! Whether a domain opts in, and with what: its `<kvmisolate:isolate>` metadata element and
//! its `[vm.NAME]` section of the configuration file. Either opts in; where both give a key,
//! the configuration file (the host administrator's) wins.

use std::collections::BTreeMap;
use std::path::Path;

use kvmisolate_dbus::libvirt::{OnConflict, VmHugepages, VmSection};
use kvmisolate_dbus::tunings::{HugepageSpec, PageSize, Profile, Tuning, VfioIrqPlacement};

use super::domain::Domain;

/// The page size used when `<hugepages/>` names none: the kernel's default on x86.
pub const DEFAULT_PAGE_KIB: u64 = 2048;

/// How a domain that opted in is isolated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// A tuning profile (absent: the service's configuration decides).
    pub profile: Option<Profile>,
    /// A tuning list instead of a profile.
    pub tunings: Option<Vec<Tuning>>,
    /// Hugepages.
    pub hugepages: VmHugepages,
    /// What a conflict at `prepare` does.
    pub on_conflict: OnConflict,
    /// Where the domain's VFIO device IRQs go (absent: the service's default, housekeeping).
    pub vfio_irqs: Option<VfioIrqPlacement>,
}

impl Settings {
    /// Whether the tunings asked for disable RT throttling (the `rt-throttling` tuning).
    pub fn disables_rt_throttling(&self) -> bool {
        match (&self.tunings, self.profile) {
            (Some(list), _) => list.contains(&Tuning::RtThrottling),
            (None, Some(p)) => p.tunings().contains(&Tuning::RtThrottling),
            (None, None) => false,
        }
    }

    /// The hugepage pool to reserve for `domain`, if any: `auto` is exactly the domain's
    /// memory (rounded up to whole pages) in the page size of its `<hugepages>`, when it has
    /// `<memoryBacking><hugepages>`.
    pub fn hugepage_spec(&self, domain: &Domain) -> Result<Option<HugepageSpec>, String> {
        match self.hugepages {
            VmHugepages::None => Ok(None),
            VmHugepages::Spec(s) => Ok(Some(s)),
            VmHugepages::Auto => {
                let Some(backing) = &domain.hugepages else {
                    return Ok(None);
                };
                let page_kib = backing.page_kib.unwrap_or(DEFAULT_PAGE_KIB);
                let page_size = match page_kib {
                    2048 => PageSize::M2,
                    1_048_576 => PageSize::G1,
                    other => {
                        return Err(format!(
                            "hugepages of {other} KiB are not supported; use 2M or 1G pages"
                        ));
                    }
                };
                if domain.memory_kib == 0 {
                    return Err("the domain XML gives no <memory> to reserve hugepages for".into());
                }
                let pages = domain.memory_kib.div_ceil(page_kib);
                // Memory bound to one host node (<numatune>) can only use that node's pool;
                // otherwise the kernel spreads the pages over the nodes.
                let node = domain
                    .numa_nodes
                    .as_ref()
                    .filter(|n| n.len() == 1)
                    .and_then(|n| n.iter().next());
                Ok(Some(HugepageSpec {
                    total_kib: pages * page_kib,
                    page_size,
                    node,
                }))
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct VmTables {
    #[serde(default)]
    vm: BTreeMap<String, VmSection>,
}

/// The `[vm.NAME]` sections of the configuration file (none when the file does not exist).
/// The other tables are the service's business and are not checked here.
pub fn read_vm_sections(path: &Path) -> Result<BTreeMap<String, VmSection>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let tables: VmTables =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    Ok(tables.vm)
}

/// Whether a domain XML may carry the opt-in element: it names kvmisolate's namespace. A text
/// search, so it answers for XML the parser would reject too (libvirt writes the XML itself,
/// without character references in namespace names).
pub fn xml_may_opt_in(xml: &str) -> bool {
    xml.contains(kvmisolate_dbus::libvirt::METADATA_NS)
}

/// Whether the text of a configuration file that does not parse may hold a `[vm.DOMAIN]`
/// section: a table header naming `vm` and the domain, a dotted `vm.` key naming it, or a key
/// starting with its name inside `[vm]`. Errs on the side of "yes" (the domain then fails to
/// start with the file's error, as it must when it did opt in).
pub fn broken_config_may_opt_in(text: &str, domain: &str) -> bool {
    let mut in_vm = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            if t.contains("vm") && t.contains(domain) {
                return true;
            }
            in_vm = t.trim_start_matches('[').trim_end_matches(']').trim() == "vm";
            continue;
        }
        let key = t.trim_start_matches(['"', '\'']);
        if (t.starts_with("vm.") && t.contains(domain)) || (in_vm && key.starts_with(domain)) {
            return true;
        }
    }
    false
}

/// What the hook knows about a domain's opt-in before parsing anything that may fail.
#[derive(Debug)]
pub enum OptIn {
    /// It does not opt in (and whatever is broken is not its business): start it, log
    /// `broken` if something is.
    No {
        /// The configuration file's error, if it does not parse.
        broken: Option<String>,
    },
    /// It may opt in: its `[vm.NAME]` section if the file parses (`Err`: its error).
    Maybe(Result<Option<VmSection>, String>),
}

/// Decides whether `domain` opts in from the raw XML and the configuration file at `path`,
/// before the XML is parsed.
pub fn decide(xml: &str, path: &Path, domain: &str) -> OptIn {
    match read_vm_sections(path) {
        Ok(mut sections) => {
            let section = sections.remove(domain);
            if section.is_none() && !xml_may_opt_in(xml) {
                OptIn::No { broken: None }
            } else {
                OptIn::Maybe(Ok(section))
            }
        }
        Err(e) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if xml_may_opt_in(xml) || broken_config_may_opt_in(&text, domain) {
                OptIn::Maybe(Err(e))
            } else {
                OptIn::No { broken: Some(e) }
            }
        }
    }
}

fn merge(meta: Option<String>, conf: Option<String>) -> Option<String> {
    conf.or(meta)
}

/// The settings of `domain` if it opts in (`None` if it does not). Bad values are errors that
/// name where they were written.
pub fn settings(domain: &Domain, section: Option<&VmSection>) -> Result<Option<Settings>, String> {
    if domain.metadata.is_none() && section.is_none() {
        return Ok(None);
    }
    if let Some(s) = section {
        s.validate()
            .map_err(|e| format!("[vm.{}] of the configuration: {e}", domain.name))?;
    }
    let meta = domain.metadata.clone().unwrap_or_default();
    let conf = section.cloned().unwrap_or_default();
    let where_ = if section.is_some() && domain.metadata.is_some() {
        "the <kvmisolate:isolate> element or [vm] section"
    } else if section.is_some() {
        "the [vm] section"
    } else {
        "the <kvmisolate:isolate> element"
    };
    let bad = |key: &str, e: String| format!("{where_} of domain {:?}: {key}: {e}", domain.name);
    let conf_tunings = conf.tunings.map(|l| l.join(","));
    // A list in one place and a profile in the other: the configuration's choice wins whole.
    let (profile, tunings) = if conf.profile.is_some() || conf_tunings.is_some() {
        (conf.profile, conf_tunings)
    } else {
        (meta.profile, meta.tunings)
    };
    if profile.is_some() && tunings.is_some() {
        return Err(bad(
            "profile",
            "give either profile or tunings, not both".into(),
        ));
    }
    let mut out = Settings::default();
    if let Some(p) = profile {
        out.profile = Some(p.parse().map_err(|e: String| bad("profile", e))?);
    }
    if let Some(t) = tunings {
        let list = t
            .split(',')
            .map(|x| x.trim().parse::<Tuning>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("tunings", e))?;
        out.tunings = Some(list);
    }
    if let Some(h) = merge(meta.hugepages, conf.hugepages) {
        out.hugepages = h.parse().map_err(|e| bad("hugepages", e))?;
    }
    if let Some(v) = merge(meta.vfio_irqs, conf.vfio_irqs) {
        out.vfio_irqs = Some(v.parse().map_err(|e| bad("vfio-irqs", e))?);
    }
    out.on_conflict = match conf.on_conflict {
        Some(c) => c,
        None => match meta.on_conflict {
            Some(c) => c.parse().map_err(|e| bad("on-conflict", e))?,
            None => OnConflict::Fail,
        },
    };
    Ok(Some(out))
}
