//! Whether a domain opts in, and with what: its `<kvmisolate:isolate>` metadata element and
//! its `[vm.NAME]` section of the configuration file. Either opts in; where both give a key,
//! the configuration file (the host administrator's) wins.

use std::collections::BTreeMap;
use std::path::Path;

use kvmisolate_dbus::libvirt::{OnConflict, VmHugepages, VmSection};
use kvmisolate_dbus::tunings::{HugepageSpec, PageSize, Profile, Tuning};

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
    out.on_conflict = match conf.on_conflict {
        Some(c) => c,
        None => match meta.on_conflict {
            Some(c) => c.parse().map_err(|e| bad("on-conflict", e))?,
            None => OnConflict::Fail,
        },
    };
    Ok(Some(out))
}
