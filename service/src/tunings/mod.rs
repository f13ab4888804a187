//! Host tunings applied with isolations and restored exactly.
//!
//! Every tuning has the same life cycle: detect whether the host has it (skip with a reason
//! if not), journal the original of each file before its first write, write, read back, and
//! restore on release or after a crash. The tunings are *reconciled*, not stacked: given the
//! set of active isolations ([`Holder`]s), [`wants::wants`] computes what every file should
//! hold — host-wide values follow the union of the isolations that selected them — and
//! [`HostTunings::reconcile`] writes what differs and restores the originals of files that no
//! isolation needs any more. Releasing an isolation is reconciling without it; replaying the
//! journal after a crash is reconciling with the isolations that were adopted again.
//!
//! The journal is one file, `<run-dir>/tunings.json`, written atomically before every change.

pub mod files;
pub mod vfio;
pub mod wants;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::engine::Error;
use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::tunings::{HugepageSpec, Tuning, TuningState};
use serde::{Deserialize, Serialize};

use crate::test_hooks::TestHooks;

use crate::host::HostCpus;
use files::{Codec, FileError};
use wants::{Ctx, Irqbalance, Outcome, Want};

/// The journal format version.
const STATE_VERSION: u32 = 1;

/// The sysfs files (relative to the sysfs root) the tunings write; `*` stands for one name.
const SYSFS_FILES: &[&str] = &[
    "devices/virtual/workqueue/cpumask",
    "bus/workqueue/devices/writeback/cpumask",
    "devices/system/cpu/cpufreq/policy*/scaling_governor",
    "devices/system/cpu/cpufreq/policy*/energy_performance_preference",
    "devices/system/cpu/cpu*/power/pm_qos_resume_latency_us",
    "kernel/mm/transparent_hugepage/enabled",
    "kernel/mm/transparent_hugepage/defrag",
    "kernel/mm/hugepages/hugepages-*/nr_hugepages",
    "devices/system/node/node*/hugepages/hugepages-*/nr_hugepages",
];
/// The debugfs files (relative to the debugfs root) the tunings write.
const DEBUGFS_FILES: &[&str] = &["sched/fair_server/cpu*/runtime"];

impl Paths {
    /// Whether a tuning may write or remove `path` (as a file of kind `codec`): a sysctl, an
    /// IRQ file, one of the sysfs/debugfs files the tunings name, or (the only file of ours)
    /// the irqbalance drop-in. A journal that names anything else was not written by this
    /// service, and nothing it says is acted on.
    pub fn may_touch(&self, path: &Path, codec: Codec) -> Result<(), String> {
        use std::path::Component;
        let refuse = |why: &str| {
            Err(format!(
                "{} {why}; the tunings touch only /proc/sys, /proc/irq, the sysfs files they \
                 name and the irqbalance drop-in",
                path.display()
            ))
        };
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return refuse("has . or .. in it");
        }
        let dropin = wants::irqbalance_dropin(self);
        if codec == Codec::OwnFile || path == dropin {
            return if codec == Codec::OwnFile && path == dropin {
                Ok(())
            } else {
                refuse("is not a file of ours")
            };
        }
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let under = |root: &Path, patterns: &[&str]| {
            path.strip_prefix(root).is_ok_and(|rel| {
                patterns
                    .iter()
                    .any(|p| glob::Pattern::new(p).is_ok_and(|p| p.matches_path_with(rel, opts)))
            })
        };
        if path.starts_with(self.proc.join("sys"))
            || path.starts_with(self.proc.join("irq"))
            || under(&self.sys, SYSFS_FILES)
            || under(&self.debugfs, DEBUGFS_FILES)
        {
            Ok(())
        } else {
            refuse("is no file a tuning changes")
        }
    }
}

/// Where the tuned files live (injectable for tests).
#[derive(Debug, Clone)]
pub struct Paths {
    /// procfs (`/proc`).
    pub proc: PathBuf,
    /// sysfs (`/sys`).
    pub sys: PathBuf,
    /// debugfs (`/sys/kernel/debug`).
    pub debugfs: PathBuf,
    /// systemd's runtime unit directory (`/run/systemd/system`), for drop-ins.
    pub systemd_runtime: PathBuf,
    /// libvirt's QEMU run directory (`/run/libvirt/qemu`): the running domains' live XML,
    /// read by `vfio-irqs` (never written).
    pub libvirt_run: PathBuf,
}

/// The configured values of the tunings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `vm.stat_interval` while CPUs are isolated (seconds).
    pub vmstat_interval: u32,
    /// THP `enabled` value.
    pub thp_enabled: String,
    /// THP `defrag` value.
    pub thp_defrag: String,
    /// The governor for policies covering isolated CPUs.
    pub governor: String,
    /// The fair-server runtime on isolated CPUs (ns).
    pub fair_server_runtime_ns: u64,
    /// The PM QoS resume latency limit of isolated CPUs (`cpu-idle`), as the kernel's
    /// `pm_qos_resume_latency_us` takes it: µs (at least 1), or `n/a` (no latency at all:
    /// polling only).
    pub cpu_idle_latency: String,
    /// IRQs whose names match one of these stay untouched.
    pub irq_exclude: Vec<glob::Pattern>,
    /// Drop caches and compact memory before growing a hugepage pool.
    pub hugepages_compact: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            vmstat_interval: 120,
            thp_enabled: "never".into(),
            thp_defrag: "never".into(),
            governor: "performance".into(),
            fair_server_runtime_ns: 0,
            cpu_idle_latency: kvmisolate_dbus::tunings::DEFAULT_CPU_IDLE_LATENCY_US.to_string(),
            irq_exclude: Vec::new(),
            hugepages_compact: false,
        }
    }
}

/// The tunings an isolation selected, as journalled with its record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Selected {
    /// The profile name (`none`, `default`, `realtime`, or `custom` for a list).
    pub profile: String,
    /// The tunings.
    pub tunings: BTreeSet<Tuning>,
    /// The hugepage request.
    pub hugepages: Option<HugepageSpec>,
    /// Keep the isolation when fewer hugepages than asked are allocated.
    pub hugepages_best_effort: bool,
    /// Where `vfio-irqs` puts a libvirt domain's VFIO IRQs (`None`: the default,
    /// housekeeping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio_irqs: Option<kvmisolate_dbus::tunings::VfioIrqPlacement>,
}

/// One active isolation, as far as tunings are concerned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    /// The isolation's name.
    pub name: String,
    /// Its CPUs.
    pub cpus: CpuSet,
    /// The tunings it selected.
    pub tunings: BTreeSet<Tuning>,
    /// Its hugepage request.
    pub hugepages: Option<HugepageSpec>,
    /// Keep the isolation when fewer hugepages than asked are allocated.
    pub hugepages_best_effort: bool,
    /// Its partition is `isolated` (the kernel may do some duties itself there).
    #[serde(default)]
    pub isolated_partition: bool,
    /// A libvirt domain's: what `vfio-irqs` needs (`None` for other targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio: Option<vfio::VfioHolder>,
}

impl Holder {
    /// The holder of isolation `name` on `cpus` with `selected` tunings.
    pub fn new(name: &str, cpus: &CpuSet, selected: &Selected) -> Self {
        Self {
            name: name.to_owned(),
            cpus: cpus.clone(),
            tunings: selected.tunings.clone(),
            hugepages: selected.hugepages,
            hugepages_best_effort: selected.hugepages_best_effort,
            isolated_partition: false,
            vfio: None,
        }
    }

    /// The same holder, of libvirt domain `domain` whose vCPUs run on `vcpu_cpus`, with its
    /// VFIO IRQs placed as `placement` says.
    pub fn with_vfio(
        mut self,
        domain: &str,
        placement: kvmisolate_dbus::tunings::VfioIrqPlacement,
        vcpu_cpus: CpuSet,
    ) -> Self {
        self.vfio = Some(vfio::VfioHolder {
            domain: domain.to_owned(),
            placement,
            vcpu_cpus,
        });
        self
    }

    /// The same holder, marked as holding an `isolated` partition (or not).
    pub fn with_isolated_partition(mut self, isolated: bool) -> Self {
        self.isolated_partition = isolated;
        self
    }

    fn selects(&self, t: Tuning) -> bool {
        match t {
            Tuning::Hugepages => self.hugepages.is_some(),
            other => self.tunings.contains(&other),
        }
    }
}

/// One tuning as reported on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuningReport {
    /// The tuning.
    pub tuning: Tuning,
    /// Applied, skipped or failed.
    pub state: TuningState,
    /// Why (skipped, failed), or notes (applied).
    pub reason: String,
    /// The original value(s), summarized.
    pub original: String,
    /// The value(s) now, summarized.
    pub current: String,
    /// For `irq-affinity`: the IRQs the kernel refused to move, left as they are (the same
    /// ones the reason names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub irqs_left: Vec<u32>,
}

/// A journalled file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    tuning: Tuning,
    codec: Codec,
    label: String,
    /// The value before kvmisolate touched it (`None`: a file of ours that did not exist).
    original: Option<String>,
    /// The last value written (`None`: not written yet, or unknown after a crash).
    written: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    version: u32,
    holders: BTreeMap<String, Holder>,
    files: BTreeMap<PathBuf, Entry>,
    reports: BTreeMap<Tuning, TuningReport>,
}

/// Host services a tuning may have to drive (irqbalance).
pub trait Services: Send + Sync {
    /// How irqbalance runs.
    fn irqbalance(&self) -> Irqbalance;
    /// Makes irqbalance pick up a changed drop-in (daemon-reload and restart).
    fn restart_irqbalance(&self) -> Result<(), String>;
}

/// No service manager: irqbalance is found by process name only.
pub struct NoServices {
    /// procfs.
    pub proc: PathBuf,
}

impl Services for NoServices {
    fn irqbalance(&self) -> Irqbalance {
        if process_running(&self.proc, "irqbalance") {
            Irqbalance::Process
        } else {
            Irqbalance::NotRunning
        }
    }
    fn restart_irqbalance(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Whether a process whose `comm` is `name` runs.
pub fn process_running(proc: &Path, name: &str) -> bool {
    let Ok(dir) = fs::read_dir(proc) else {
        return false;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .any(|e| fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
}

/// What a reconcile did.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Each tuning selected by some isolation.
    pub reports: BTreeMap<Tuning, TuningReport>,
    /// Things the user should know (pages that stayed as surplus, files that vanished).
    pub warnings: Vec<String>,
}

/// The tunings engine: reconciles the host with the active isolations, journal first.
pub struct HostTunings {
    paths: Paths,
    settings: Settings,
    state_path: PathBuf,
    services: Box<dyn Services>,
    fsync: bool,
    hooks: TestHooks,
    writes: std::sync::atomic::AtomicUsize,
    /// `tunings.json` as last read or written: the file is read once, then kept current by
    /// every save, so a report (`Status()`, `Tunings`) reads no journal and never waits for a
    /// reconcile in flight (the lock is held only to copy or swap it).
    mirror: std::sync::Mutex<Option<State>>,
    /// The VFIO MSI vectors the last reconcile saw ([`vfio::msi_signature`]): when the
    /// host's differ, the guest enabled or dropped vectors since and a reconcile is due.
    vfio_seen: std::sync::Mutex<BTreeSet<(String, u32)>>,
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Failed(e.to_string())
}

impl HostTunings {
    /// An engine journalling to `<run_dir>/tunings.json`.
    pub fn new(
        paths: Paths,
        settings: Settings,
        run_dir: &Path,
        services: Box<dyn Services>,
    ) -> Self {
        Self {
            paths,
            settings,
            state_path: run_dir.join("tunings.json"),
            services,
            fsync: true,
            hooks: TestHooks::none(),
            writes: std::sync::atomic::AtomicUsize::new(0),
            mirror: std::sync::Mutex::new(None),
            vfio_seen: std::sync::Mutex::new(BTreeSet::new()),
        }
    }

    /// Whether any of `holders` has `vfio-irqs` place a libvirt domain's IRQs: then the
    /// daemon follows that domain's MSI vectors ([`HostTunings::vfio_irqs_moved`]).
    pub fn follows_vfio(holders: &[Holder]) -> bool {
        holders
            .iter()
            .any(|h| h.selects(Tuning::VfioIrqs) && h.vfio.is_some())
    }

    /// Whether the MSI vectors of `holders`' assigned devices differ from those the last
    /// reconcile placed (a guest enables MSI when its driver loads, after the domain started
    /// and was isolated): then a reconcile places the new ones.
    pub fn vfio_irqs_moved(&self, holders: &[Holder]) -> bool {
        let now = vfio::msi_signature(&self.paths, holders);
        self.vfio_seen
            .lock()
            .map(|seen| *seen != now)
            .unwrap_or(true)
    }

    /// The test hooks (`KVMISOLATED_CRASH_AFTER_TUNING`: SIGKILL right after the N-th file
    /// write, counting from 1).
    pub fn set_test_hooks(&mut self, hooks: TestHooks) {
        self.hooks = hooks;
    }

    #[cfg(test)]
    pub(crate) fn set_fsync(&mut self, on: bool) {
        self.fsync = on;
    }

    /// The configured values.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Reads the journal. One written by another version is taken as far as this version
    /// understands it (serde skips fields it does not know; the originals and the files are
    /// what matter) and saved in this version's format at the next change: never set aside.
    /// Every file it names is checked ([`Paths::may_touch`]) before anything is done with it.
    fn load(&self) -> Result<State, Error> {
        if let Some(state) = self.mirrored().as_ref() {
            return Ok(state.clone());
        }
        let state = self.read_file()?;
        *self.mirrored() = Some(state.clone());
        Ok(state)
    }

    fn mirrored(&self) -> std::sync::MutexGuard<'_, Option<State>> {
        // Only ever swapped whole: a panic elsewhere cannot leave it half-written.
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `load` from the file.
    fn read_file(&self) -> Result<State, Error> {
        let bytes = match fs::read(&self.state_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(State {
                    version: STATE_VERSION,
                    ..State::default()
                });
            }
            Err(e) => {
                return Err(failed(format!(
                    "cannot read {}: {e}",
                    self.state_path.display()
                )));
            }
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|e| {
            failed(format!(
                "the tunings journal {} cannot be read ({e}); nothing was changed: the originals \
                 it holds must be restored by hand{}",
                self.state_path.display(),
                version_hint(&bytes)
            ))
        })?;
        if state.version != STATE_VERSION {
            tracing::warn!(
                version = state.version,
                "{} was written by another kvmisolated version; taken in this version's format",
                self.state_path.display()
            );
        }
        for (path, entry) in &state.files {
            self.paths.may_touch(path, entry.codec).map_err(|why| {
                failed(format!(
                    "the tunings journal {} lists {why}: nothing was written or removed; check \
                     the file and restore what it records by hand",
                    self.state_path.display()
                ))
            })?;
        }
        Ok(state)
    }

    fn save(&self, state: &State) -> Result<(), Error> {
        self.write_file(state)?;
        *self.mirrored() = Some(state.clone());
        Ok(())
    }

    fn write_file(&self, state: &State) -> Result<(), Error> {
        if state.files.is_empty() && state.holders.is_empty() {
            return match fs::remove_file(&self.state_path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(failed(format!(
                    "cannot remove {}: {e}",
                    self.state_path.display()
                ))),
            };
        }
        let bytes = serde_json::to_vec_pretty(state).map_err(failed)?;
        let tmp = self.state_path.with_extension("json.tmp");
        let io = |op: &str, e: io::Error| failed(format!("cannot {op} {}: {e}", tmp.display()));
        {
            let mut f = fs::File::create(&tmp).map_err(|e| io("create", e))?;
            f.write_all(&bytes).map_err(|e| io("write", e))?;
            if self.fsync {
                f.sync_all().map_err(|e| io("fsync", e))?;
            }
        }
        fs::rename(&tmp, &self.state_path).map_err(|e| io("rename", e))?;
        if self.fsync
            && let Some(dir) = self.state_path.parent()
            && let Ok(d) = fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The isolations the journal holds tunings for (tests: what a crash leaves).
    #[cfg(test)]
    pub fn journalled_holders(&self) -> Result<Vec<Holder>, Error> {
        Ok(self.load()?.holders.into_values().collect())
    }

    /// The last reports (for an isolation's `Tunings`), current values read now.
    pub fn reports_for(&self, holder: &Holder) -> Vec<TuningReport> {
        let Ok(state) = self.load() else {
            return Vec::new();
        };
        Tuning::ALL
            .iter()
            .filter(|t| holder.selects(**t))
            .filter_map(|t| state.reports.get(t).cloned())
            .map(|mut r| {
                r.current = summarize(&state, r.tuning, |e, p| {
                    e.codec.read(p).ok().flatten().unwrap_or_default()
                });
                r
            })
            .collect()
    }

    fn bump_writes(&self) -> Result<(), Error> {
        let n = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        self.hooks.tuning_written(n).map_err(failed)
    }

    /// Makes the host match `holders` (every active isolation, in any order): writes what
    /// they need, restores what none needs any more. An `Err` leaves the journal consistent;
    /// the caller reconciles again without the isolation that failed, which undoes its part.
    pub fn reconcile(&self, holders: &[Holder]) -> Result<Reconciled, Error> {
        let mut state = self.load()?;
        state.version = STATE_VERSION;
        state.holders = holders
            .iter()
            .map(|h| (h.name.clone(), h.clone()))
            .collect();
        self.save(&state)?;

        let online = HostCpus::read(&self.paths.sys)
            .map(|h| h.online)
            .map_err(failed)?;
        let isolated = holders.iter().fold(CpuSet::new(), |a, h| a.union(&h.cpus));
        let irqbalance = if holders.iter().any(|h| h.selects(Tuning::Irqbalance)) {
            crate::timing::time("tunings", "irqbalance-probe", || self.services.irqbalance())
        } else {
            Irqbalance::NotRunning
        };
        let vfio_owned = if holders.iter().any(|h| h.selects(Tuning::VfioIrqs)) {
            vfio::owned(&self.paths, holders)
        } else {
            BTreeSet::new()
        };
        // Read before the placement: a vector enabled during it is then seen as new.
        let vfio_seen = vfio::msi_signature(&self.paths, holders);
        if let Ok(mut seen) = self.vfio_seen.lock() {
            *seen = vfio_seen;
        }
        let mut out = Reconciled::default();
        let mut wanted: BTreeSet<PathBuf> = BTreeSet::new();
        let mut own_file_changed = false;
        let mut failure = None;

        for &t in Tuning::ALL {
            let hs: Vec<&Holder> = holders.iter().filter(|h| h.selects(t)).collect();
            if hs.is_empty() {
                continue;
            }
            let _phase = crate::timing::phase("tunings", t.as_str());
            let outcome = {
                let files = &state.files;
                let original = |p: &Path, codec: Codec| match files.get(p) {
                    Some(e) => Ok(e.original.clone()),
                    None => codec.read(p),
                };
                let ctx = Ctx {
                    paths: &self.paths,
                    settings: &self.settings,
                    online: online.clone(),
                    isolated: isolated.clone(),
                    irqbalance: irqbalance.clone(),
                    original: &original,
                    vfio_owned: &vfio_owned,
                };
                wants::wants(t, &hs, &ctx)
            };
            let mut report = TuningReport {
                tuning: t,
                state: TuningState::Applied,
                reason: String::new(),
                original: String::new(),
                current: String::new(),
                irqs_left: Vec::new(),
            };
            match outcome {
                Err(e) => {
                    report.state = TuningState::Failed;
                    report.reason = e.to_string();
                    failure = Some(Error::TuningFailed(format!("{t}: {e}")));
                }
                Ok(Outcome::Skip(reason)) => {
                    report.state = TuningState::Skipped;
                    report.reason = reason;
                }
                Ok(Outcome::Wants(ws, notes)) => {
                    let mut reasons = notes;
                    let mut skipped = Vec::new();
                    for w in &ws {
                        wanted.insert(w.path.clone());
                        match self.apply_want(&mut state, w, &hs) {
                            Ok(changed) => own_file_changed |= changed && w.codec == Codec::OwnFile,
                            Err(WantError::Skipped(why)) => {
                                wanted.remove(&w.path);
                                skipped.push(format!("{} ({why})", w.label));
                                report.irqs_left.extend(w.irq());
                            }
                            Err(WantError::Shortfall(msg)) => reasons.push(msg),
                            Err(WantError::Fatal(e)) => {
                                report.state = TuningState::Failed;
                                reasons.push(e.to_string());
                                failure = Some(Error::TuningFailed(format!("{t}: {e}")));
                                break;
                            }
                        }
                    }
                    if !skipped.is_empty() {
                        reasons.push(format!(
                            "{}{}",
                            kvmisolate_dbus::tunings::LEFT_AS_THEY_ARE,
                            skipped.join(", ")
                        ));
                        if skipped.len() == ws.len() {
                            report.state = TuningState::Skipped;
                        }
                    }
                    if ws.is_empty() && report.state == TuningState::Applied && reasons.is_empty() {
                        reasons.push("nothing to change".into());
                    }
                    report.reason = reasons.join("; ");
                }
            }
            report.original = summarize(&state, t, |e, _| {
                e.original.clone().unwrap_or_else(|| "(none)".into())
            });
            report.current = summarize(&state, t, |e, p| {
                e.codec.read(p).ok().flatten().unwrap_or_default()
            });
            out.reports.insert(t, report);
            if failure.is_some() {
                break;
            }
        }
        state.reports = out.reports.clone();
        self.save(&state)?;
        if let Some(e) = failure {
            return Err(e);
        }

        // Restore what no isolation wants any more, last tuned first.
        let _phase = crate::timing::phase("tunings", "restore");
        let stale: Vec<PathBuf> = state
            .files
            .keys()
            .filter(|p| !wanted.contains(*p))
            .cloned()
            .collect();
        let mut restore_errors = Vec::new();
        for path in stale.iter().rev() {
            let Some(entry) = state.files.get(path).cloned() else {
                continue;
            };
            if entry.written.is_none()
                && entry.codec != Codec::OwnFile
                && entry.codec.read(path).ok().flatten() == entry.original
            {
                // Never written (a crash or a refusal right after journalling): nothing to undo.
                state.files.remove(path);
                self.save(&state)?;
                continue;
            }
            match entry.codec.restore(path, entry.original.as_deref()) {
                Ok(()) => {
                    own_file_changed |= entry.codec == Codec::OwnFile;
                    if entry.codec == Codec::Count
                        && let (Ok(Some(now)), Some(orig)) =
                            (entry.codec.read(path), &entry.original)
                        && let (Ok(now), Ok(orig)) =
                            (now.trim().parse::<u64>(), orig.trim().parse::<u64>())
                        && now > orig
                    {
                        out.warnings.push(format!(
                                        "{}: {} pages are still in use and stay allocated (surplus) until their user frees them; the pool is back to {orig}",
                                        entry.label,
                                        now - orig
                                    ));
                    }
                    state.files.remove(path);
                }
                Err(e) if e.is_not_found() => {
                    out.warnings.push(format!(
                        "{} disappeared before it could be restored",
                        entry.label
                    ));
                    state.files.remove(path);
                }
                Err(e) => restore_errors.push(format!("{}: {e}", entry.label)),
            }
            self.save(&state)?;
        }
        if own_file_changed && let Err(e) = self.services.restart_irqbalance() {
            out.warnings
                .push(format!("irqbalance could not be restarted: {e}"));
        }
        if !restore_errors.is_empty() {
            return Err(failed(format!(
                "could not restore {}; the journal keeps the originals",
                restore_errors.join("; ")
            )));
        }
        Ok(out)
    }

    /// Writes one file, journalling its original first. Returns whether it changed.
    fn apply_want(
        &self,
        state: &mut State,
        w: &Want,
        holders: &[&Holder],
    ) -> Result<bool, WantError> {
        let known = state.files.get(&w.path).cloned();
        if known.is_none() {
            let original = w
                .codec
                .read(&w.path)
                .map_err(|e| WantError::Fatal(e.into()))?;
            state.files.insert(
                w.path.clone(),
                Entry {
                    tuning: w.tuning,
                    codec: w.codec,
                    label: w.label.clone(),
                    original,
                    written: None,
                },
            );
            self.save(state).map_err(WantError::Fatal)?;
        } else if w.codec == Codec::OwnFile
            && known.as_ref().and_then(|e| e.written.as_deref()) == Some(w.value.as_str())
            && w.codec.read(&w.path).ok().flatten().as_deref() == Some(w.value.as_str())
        {
            return Ok(false);
        }
        if w.codec == Codec::Count {
            self.prepare_hugepages(w);
        }
        let result = w.codec.write(&w.path, &w.value);
        self.bump_writes().map_err(WantError::Fatal)?;
        match result {
            Ok(found) => {
                if let Some(e) = state.files.get_mut(&w.path) {
                    e.written = Some(w.value.clone());
                    // An IRQ passes from vfio-irqs to irq-affinity (or back) when one of the
                    // two stops wanting it: the file is the new one's, its original the same.
                    e.tuning = w.tuning;
                    e.label = w.label.clone();
                }
                self.save(state).map_err(WantError::Fatal)?;
                if w.codec == Codec::Count {
                    return self.check_pool(w, &found, holders).map(|()| true);
                }
                Ok(true)
            }
            Err(e)
                if matches!(w.tuning, Tuning::IrqAffinity | Tuning::VfioIrqs)
                    && e.errno().is_some() =>
            {
                // The kernel refused: a managed IRQ (EIO), one it cannot move (EINVAL, EPERM
                // for the timer on x86), no vector left (ENOSPC). Nothing changed.
                state.files.remove(&w.path);
                self.save(state).map_err(WantError::Fatal)?;
                let errno = nix::errno::Errno::from_raw(e.errno().unwrap_or(0));
                Err(WantError::Skipped(match errno {
                    nix::errno::Errno::EIO => "managed by the kernel".into(),
                    nix::errno::Errno::ENOSPC => {
                        "no interrupt vector left on the housekeeping CPUs".into()
                    }
                    other => format!("the kernel does not move it: {}", other.desc()),
                }))
            }
            Err(e @ FileError::Io { .. }) if known.is_none() => {
                // The write itself was refused: nothing changed, nothing to restore.
                state.files.remove(&w.path);
                self.save(state).map_err(WantError::Fatal)?;
                Err(WantError::Fatal(e.into()))
            }
            Err(e) => Err(WantError::Fatal(e.into())),
        }
    }

    fn prepare_hugepages(&self, w: &Want) {
        if !self.settings.hugepages_compact {
            return;
        }
        let current = w
            .codec
            .read(&w.path)
            .ok()
            .flatten()
            .and_then(|c| c.trim().parse::<u64>().ok());
        let wanted = w.value.parse::<u64>().ok();
        if current < wanted {
            let _ = fs::write(self.paths.proc.join("sys/vm/drop_caches"), "3");
            let _ = fs::write(self.paths.proc.join("sys/vm/compact_memory"), "1");
        }
    }

    fn check_pool(&self, w: &Want, found: &str, holders: &[&Holder]) -> Result<(), WantError> {
        let got: u64 = found.trim().parse().unwrap_or(0);
        let wanted: u64 = w.value.parse().unwrap_or(0);
        if got >= wanted {
            return Ok(());
        }
        let msg = format!(
            "{}: the pool needed {wanted} pages, the kernel allocated only {got} (not enough free \
             contiguous memory: free memory, set hugepages-compact in the configuration, or \
             reserve the pages at boot with hugepages= on the kernel command line)",
            w.label
        );
        let pool = w.path.clone();
        let all_best_effort = holders
            .iter()
            .filter(|h| {
                h.hugepages
                    .as_ref()
                    .is_some_and(|s| wants::hugepage_pool(&self.paths, s) == pool)
            })
            .all(|h| h.hugepages_best_effort);
        if all_best_effort {
            Err(WantError::Shortfall(msg))
        } else {
            Err(WantError::Fatal(failed(msg)))
        }
    }
}

enum WantError {
    /// Not changed, and not a failure (a managed IRQ).
    Skipped(String),
    /// Fewer hugepages than asked, accepted (best effort).
    Shortfall(String),
    /// The isolation must fail.
    Fatal(Error),
}

impl From<FileError> for Error {
    fn from(e: FileError) -> Self {
        Error::TuningFailed(e.to_string())
    }
}

/// ` (it says version N, this is version M)` when a journal that could not be read names a
/// version other than this one's.
fn version_hint(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    match serde_json::from_slice::<Version>(bytes) {
        Ok(v) if v.version != STATE_VERSION => format!(
            " (it says version {}, written by another kvmisolated; this one writes version {STATE_VERSION})",
            v.version
        ),
        _ => String::new(),
    }
}

/// A one-line summary of the files of `t`: one value, or `label=value` pairs (at most 8).
fn summarize(state: &State, t: Tuning, value: impl Fn(&Entry, &Path) -> String) -> String {
    let entries: Vec<(&PathBuf, &Entry)> =
        state.files.iter().filter(|(_, e)| e.tuning == t).collect();
    match entries.as_slice() {
        [] => String::new(),
        [(p, e)] if !matches!(t, Tuning::IrqAffinity | Tuning::VfioIrqs) => {
            value(e, p).trim().to_owned()
        }
        many => {
            let mut parts: Vec<String> = many
                .iter()
                .take(8)
                .map(|(p, e)| format!("{}={}", e.label, value(e, p).trim()))
                .collect();
            if many.len() > 8 {
                parts.push(format!("... ({} in all)", many.len()));
            }
            parts.join("; ")
        }
    }
}

#[cfg(test)]
mod tests;
