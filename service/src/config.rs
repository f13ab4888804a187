//! `/etc/kvmisolate/kvmisolate.toml`: defaults for every isolation, the tunings' values, and
//! per-isolation-name settings.
//!
//! A missing file means built-in defaults. A malformed one is an error at start-up that names
//! the line and the key: the service never falls back to a default silently.
//!
//! ```toml
//! [service]
//! min-housekeeping = 2          # fewest CPUs the host keeps
//! allow-cpu0 = false
//!
//! [defaults]
//! profile = "default"           # none | default | realtime
//! # tunings = ["irq-affinity", "vmstat-interval"]   # instead of a profile
//!
//! [tunings]
//! vmstat-interval = 120
//! thp-enabled = "never"
//! thp-defrag = "never"
//! governor = "performance"
//! fair-server-runtime-ns = 0
//! cpu-idle-latency-us = 20      # cpu-idle: µs of idle exit latency allowed ("n/a": none, poll)
//! irq-exclude = ["*timer*"]     # IRQ names (as in /proc/interrupts) never moved
//! hugepages-compact = false     # drop caches and compact memory before growing a pool
//!
//! [isolation.win11]             # applies to Isolate("win11", ...)
//! cpus = "2-7"                  # used when the request gives no CPUs
//! profile = "realtime"
//! hugepages = "16G:1G"
//! hugepages-best-effort = false
//! unit = "win11-vm.service"     # a preset: startable by name (StartPreset; see presets.rs);
//!                               # or libvirt-domain = "win11"
//!
//! [vm.win11]                    # libvirt domain "win11" opts in (read by the libvirt hook)
//! profile = "realtime"
//! hugepages = "auto"            # auto (the domain's memory if it uses hugepages) | none | 16G:1G
//! on-conflict = "fail"          # fail | warn: what prepare does when its CPUs are taken
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kvmisolate_dbus::tunings::{HugepageSpec, Profile, Tuning};
use kvmisolate_dbus::{CpuSet, IsolationName};
use serde::Deserialize;

use crate::tunings::Settings;

/// The default location.
pub const DEFAULT_PATH: &str = "/etc/kvmisolate/kvmisolate.toml";

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or bad values.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawService {
    min_housekeeping: Option<usize>,
    allow_cpu0: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSelection {
    profile: Option<String>,
    tunings: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTunings {
    vmstat_interval: Option<u32>,
    thp_enabled: Option<String>,
    thp_defrag: Option<String>,
    governor: Option<String>,
    fair_server_runtime_ns: Option<u64>,
    cpu_idle_latency_us: Option<RawLatency>,
    irq_exclude: Option<Vec<String>>,
    hugepages_compact: Option<bool>,
}

/// `cpu-idle-latency-us`: a number of µs, or the kernel's word `n/a`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawLatency {
    Us(i64),
    Word(String),
}

impl RawLatency {
    /// The value `pm_qos_resume_latency_us` takes. `0` is refused: the kernel reads it as "no
    /// limit at all", the opposite of what someone writing 0 here would mean.
    fn to_kernel(&self) -> Result<String, String> {
        match self {
            Self::Us(n) if (1..=1_000_000).contains(n) => Ok(n.to_string()),
            Self::Word(w) if w == "n/a" => Ok(w.clone()),
            Self::Us(0) => Err("[tunings] cpu-idle-latency-us = 0: the kernel reads 0 as \
                 \"no limit\"; give µs between 1 and 1000000, or \"n/a\" to allow no idle \
                 exit latency at all (the CPUs then poll when idle)"
                .into()),
            other => Err(format!(
                "[tunings] cpu-idle-latency-us = {other:?}: give µs between 1 and 1000000, or \
                 \"n/a\""
            )),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawIsolation {
    cpus: Option<String>,
    profile: Option<String>,
    tunings: Option<Vec<String>>,
    hugepages: Option<String>,
    hugepages_best_effort: Option<bool>,
    unit: Option<String>,
    libvirt_domain: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    service: RawService,
    #[serde(default)]
    defaults: RawSelection,
    #[serde(default)]
    tunings: RawTunings,
    #[serde(default)]
    isolation: BTreeMap<String, RawIsolation>,
    #[serde(default)]
    vm: BTreeMap<String, kvmisolate_dbus::libvirt::VmSection>,
}

/// Which tunings an isolation gets, before the request's own options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// A profile.
    Profile(Profile),
    /// An explicit list.
    List(Vec<Tuning>),
}

impl Selection {
    /// The tunings selected.
    pub fn tunings(&self) -> Vec<Tuning> {
        match self {
            Self::Profile(p) => p.tunings(),
            Self::List(l) => l.clone(),
        }
    }

    /// The profile name, or `custom` for a list.
    pub fn name(&self) -> String {
        match self {
            Self::Profile(p) => p.to_string(),
            Self::List(_) => "custom".into(),
        }
    }
}

/// Per-isolation-name settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IsolationConfig {
    /// CPUs used when the request gives none.
    pub cpus: Option<CpuSet>,
    /// Tunings, unless the request picks its own.
    pub selection: Option<Selection>,
    /// A hugepage pool, unless the request asks for its own.
    pub hugepages: Option<HugepageSpec>,
    /// Best effort for the hugepages.
    pub hugepages_best_effort: Option<bool>,
    /// The target that makes the section a preset (`crate::daemon::presets`).
    pub target: Option<crate::daemon::presets::PresetTarget>,
}

/// The parsed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Fewest housekeeping CPUs (when the command line does not say).
    pub min_housekeeping: Option<usize>,
    /// Whether CPU 0 may be isolated (when the command line does not say).
    pub allow_cpu0: Option<bool>,
    /// The tunings of an isolation that neither the request nor its section picks.
    pub default_selection: Selection,
    /// The tunings' values.
    pub settings: Settings,
    /// `[isolation.NAME]` sections.
    pub isolations: BTreeMap<String, IsolationConfig>,
    /// `[vm.NAME]` sections (libvirt domains that opt in; acted on by the libvirt hook).
    pub vms: BTreeMap<String, kvmisolate_dbus::libvirt::VmSection>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            min_housekeeping: None,
            allow_cpu0: None,
            default_selection: Selection::Profile(Profile::Default),
            settings: Settings::default(),
            isolations: BTreeMap::new(),
            vms: BTreeMap::new(),
        }
    }
}

fn selection(
    profile: Option<String>,
    tunings: Option<Vec<String>>,
    section: &str,
) -> Result<Option<Selection>, String> {
    match (profile, tunings) {
        (Some(_), Some(_)) => Err(format!(
            "[{section}]: give either profile or tunings, not both"
        )),
        (Some(p), None) => p
            .parse::<Profile>()
            .map(|p| Some(Selection::Profile(p)))
            .map_err(|e| format!("[{section}] profile: {e}")),
        (None, Some(list)) => list
            .iter()
            .map(|t| t.parse::<Tuning>())
            .collect::<Result<Vec<_>, _>>()
            .map(|l| Some(Selection::List(l)))
            .map_err(|e| format!("[{section}] tunings: {e}")),
        (None, None) => Ok(None),
    }
}

impl Config {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses the text of a configuration file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml's message names the line and column and shows it; keep it on one line
            // for the journal.
            let msg = e.message().to_owned();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {msg}")
                }
                None => msg,
            }
        })?;
        let mut config = Self {
            min_housekeeping: raw.service.min_housekeeping,
            allow_cpu0: raw.service.allow_cpu0,
            ..Self::default()
        };
        if let Some(s) = selection(raw.defaults.profile, raw.defaults.tunings, "defaults")? {
            config.default_selection = s;
        }
        let t = raw.tunings;
        let s = &mut config.settings;
        if let Some(v) = t.vmstat_interval {
            if v == 0 || v > 3600 {
                return Err(format!(
                    "[tunings] vmstat-interval = {v}: give seconds between 1 and 3600"
                ));
            }
            s.vmstat_interval = v;
        }
        for (key, value, slot) in [
            ("thp-enabled", t.thp_enabled, &mut s.thp_enabled),
            ("thp-defrag", t.thp_defrag, &mut s.thp_defrag),
            ("governor", t.governor, &mut s.governor),
        ] {
            if let Some(v) = value {
                if v.is_empty()
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+_-".contains(c))
                {
                    return Err(format!(
                        "[tunings] {key} = {v:?} is not a word the kernel accepts"
                    ));
                }
                *slot = v;
            }
        }
        if let Some(v) = t.fair_server_runtime_ns {
            s.fair_server_runtime_ns = v;
        }
        if let Some(v) = t.cpu_idle_latency_us {
            s.cpu_idle_latency = v.to_kernel()?;
        }
        if let Some(list) = t.irq_exclude {
            s.irq_exclude = list
                .iter()
                .map(|p| {
                    glob::Pattern::new(p)
                        .map_err(|e| format!("[tunings] irq-exclude: {p:?} is not a pattern: {e}"))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = t.hugepages_compact {
            s.hugepages_compact = v;
        }
        for (name, section) in &raw.vm {
            if crate::libvirt::validate_domain_name(name).is_err() {
                return Err(format!(
                    "[vm.{name}]: not a libvirt domain name (empty, '/' or control characters)"
                ));
            }
            section.validate().map_err(|e| format!("[vm.{name}] {e}"))?;
        }
        config.vms = raw.vm;
        for (name, raw) in raw.isolation {
            let section = format!("isolation.{name}");
            IsolationName::new(&name).map_err(|e| format!("[{section}]: {e}"))?;
            let cpus = raw
                .cpus
                .map(|c| CpuSet::parse(&c).map_err(|e| format!("[{section}] cpus: {e}")))
                .transpose()?;
            let hugepages = raw
                .hugepages
                .map(|h| {
                    h.parse::<HugepageSpec>()
                        .map_err(|e| format!("[{section}] hugepages: {e}"))
                })
                .transpose()?;
            let target = crate::daemon::presets::target(
                &name,
                raw.unit,
                raw.libvirt_domain,
                cpus.as_ref(),
                &section,
            )?;
            config.isolations.insert(
                name,
                IsolationConfig {
                    cpus,
                    selection: selection(raw.profile, raw.tunings, &section)?,
                    hugepages,
                    hugepages_best_effort: raw.hugepages_best_effort,
                    target,
                },
            );
        }
        Ok(config)
    }

    /// The section of isolation `name`, if any.
    pub fn isolation(&self, name: &str) -> Option<&IsolationConfig> {
        self.isolations.get(name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&example).unwrap();
        assert_eq!(c.min_housekeeping, Some(2));
        assert_eq!(c.default_selection, Selection::Profile(Profile::Default));
        assert_eq!(c.settings.vmstat_interval, 120);
        assert_eq!(c.settings.cpu_idle_latency, "20");
        assert!(c.settings.irq_exclude[0].matches("local timer"));
        let w = c.isolation("win11").unwrap();
        assert_eq!(w.cpus.as_ref().unwrap().to_string(), "2-7");
        assert_eq!(w.selection, Some(Selection::Profile(Profile::Realtime)));
        assert_eq!(w.hugepages.unwrap().pages(), 16);
        let vm = &c.vms["win11"];
        assert_eq!(vm.profile.as_deref(), Some("realtime"));
        assert_eq!(
            vm.on_conflict,
            Some(kvmisolate_dbus::libvirt::OnConflict::Fail)
        );
    }

    #[test]
    fn cpu_idle_latency_takes_micros_or_na() {
        let c = Config::parse("[tunings]\ncpu-idle-latency-us = 5\n").unwrap();
        assert_eq!(c.settings.cpu_idle_latency, "5");
        let c = Config::parse("[tunings]\ncpu-idle-latency-us = \"n/a\"\n").unwrap();
        assert_eq!(c.settings.cpu_idle_latency, "n/a");
        assert_eq!(Config::parse("").unwrap().settings.cpu_idle_latency, "20");
    }

    #[test]
    fn the_installed_example_parses() {
        let c = Config::parse(include_str!("../kvmisolate.toml.example")).unwrap();
        assert!(c.isolation("win11").is_some());
    }

    #[test]
    fn empty_and_missing_files_give_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.default_selection.tunings(), Profile::Default.tunings());
        let c = Config::load(Path::new("/nonexistent/kvmisolate.toml")).unwrap();
        assert!(c.isolations.is_empty());
    }

    #[test]
    fn mistakes_name_the_line() {
        for (text, want) in [
            ("[service]\nmin-housekeeping = \"two\"\n", "line 2"),
            (
                "[defaults]\nprofile = \"fast\"\n",
                "unknown profile \"fast\"",
            ),
            ("[tunings]\nvmstat-intervall = 5\n", "line 2"),
            ("[tunings]\nvmstat-interval = 0\n", "between 1 and 3600"),
            ("[tunings]\ncpu-idle-latency-us = 0\n", "reads 0 as"),
            (
                "[tunings]\ncpu-idle-latency-us = -5\n",
                "between 1 and 1000000",
            ),
            (
                "[tunings]\ncpu-idle-latency-us = \"off\"\n",
                "between 1 and 1000000",
            ),
            ("[tunings]\nthp-enabled = \"never; rm\"\n", "not a word"),
            ("[tunings]\nirq-exclude = [\"[\"]\n", "not a pattern"),
            ("[isolation.\"a/b\"]\ncpus = \"1\"\n", "[isolation.a/b]"),
            ("[isolation.vm]\ncpus = \"2-\"\n", "[isolation.vm] cpus"),
            ("[isolation.vm]\nhugepages = \"16Q\"\n", "unknown size unit"),
            ("[vm.w]\nprofile = \"fast\"\n", "[vm.w] profile"),
            ("[vm.w]\nhugepages = \"lots\"\n", "[vm.w] hugepages"),
            (
                "[vm.w]\non-conflict = \"maybe\"\n",
                "expected `fail` or `warn`",
            ),
            ("[vm.w]\ncpus = \"2\"\n", "unknown field"),
            (
                "[isolation.vm]\nprofile = \"none\"\ntunings = []\n",
                "either profile or tunings",
            ),
            (
                "[defaults]\ntunings = [\"irq\"]\n",
                "unknown tuning \"irq\"",
            ),
            ("[vms.x]\n", "line 1"),
            ("this is not toml", "line 1"),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
