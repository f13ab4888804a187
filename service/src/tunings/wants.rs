//! What each tuning wants written, for a set of isolations: pure computations over the host's
//! files (read through a closure that returns the journalled original where there is one).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::tunings::{HugepageSpec, Tuning};

use super::files::{Codec, FileError, offered_words};
use super::{Holder, Paths, Settings};

/// One file a tuning wants at a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    /// The tuning.
    pub tuning: Tuning,
    /// The file.
    pub path: PathBuf,
    /// How it reads and writes.
    pub codec: Codec,
    /// The value wanted.
    pub value: String,
    /// A short label for reports (`IRQ 24 virtio0-input.0`, `policy0`...).
    pub label: String,
}

impl Want {
    /// The IRQ an `irq-affinity` or `vfio-irqs` want moves (`/proc/irq/N/smp_affinity_list`).
    pub fn irq(&self) -> Option<u32> {
        if !matches!(self.tuning, Tuning::IrqAffinity | Tuning::VfioIrqs) {
            return None;
        }
        let dir = self.path.parent()?;
        dir.parent()?.file_name().filter(|n| *n == "irq")?;
        dir.file_name()?.to_str()?.parse().ok()
    }
}

/// What a tuning needs on this host.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// These writes (possibly none: nothing to change), plus notes for the report.
    Wants(Vec<Want>, Vec<String>),
    /// Not applicable here; nothing is written.
    Skip(String),
}

/// How irqbalance runs on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Irqbalance {
    /// `irqbalance.service` is active under systemd.
    SystemdUnit,
    /// An irqbalance process runs, not under systemd.
    Process,
    /// Not running.
    NotRunning,
}

/// Reads the original value of a file: the journalled one when it is tuned already.
pub type OriginalOf<'a> = &'a dyn Fn(&Path, Codec) -> Result<Option<String>, FileError>;

/// Everything the computations read.
pub struct Ctx<'a> {
    /// Where the host's files are.
    pub paths: &'a Paths,
    /// The configured values.
    pub settings: &'a Settings,
    /// Online CPUs.
    pub online: CpuSet,
    /// The CPUs of every active isolation.
    pub isolated: CpuSet,
    /// How irqbalance runs.
    pub irqbalance: Irqbalance,
    /// The original value of a file: the journalled one when it is tuned already.
    pub original: OriginalOf<'a>,
    /// The IRQs `vfio-irqs` places ([`super::vfio::owned`]): `irq-affinity` leaves them.
    pub vfio_owned: &'a BTreeSet<u32>,
}

impl Ctx<'_> {
    fn housekeeping(&self) -> CpuSet {
        self.online.difference(&self.isolated)
    }

    /// `original ∖ isolated`, or every housekeeping CPU when nothing would be left.
    pub(super) fn off_isolated(&self, original: &CpuSet, isolated: &CpuSet) -> CpuSet {
        let kept = original.difference(isolated);
        if kept.is_empty() {
            self.housekeeping()
        } else {
            kept
        }
    }

    pub(super) fn orig(&self, path: &Path, codec: Codec) -> Result<Option<String>, FileError> {
        (self.original)(path, codec)
    }
}

fn mask_of(path: &Path, text: &str) -> Result<CpuSet, FileError> {
    CpuSet::from_hex_mask(text).map_err(|_| FileError::Format {
        path: path.to_owned(),
        text: text.to_owned(),
        what: "a CPU mask",
    })
}

pub(super) fn list_of(path: &Path, text: &str) -> Result<CpuSet, FileError> {
    CpuSet::parse(text).map_err(|_| FileError::Format {
        path: path.to_owned(),
        text: text.to_owned(),
        what: "a CPU list",
    })
}

/// The union of the holders' CPUs.
fn cpus_of(holders: &[&Holder]) -> CpuSet {
    holders
        .iter()
        .fold(CpuSet::new(), |acc, h| acc.union(&h.cpus))
}

/// The wants of `tuning` for `holders` (the isolations that selected it).
pub fn wants(tuning: Tuning, holders: &[&Holder], ctx: &Ctx<'_>) -> Result<Outcome, FileError> {
    let cpus = cpus_of(holders);
    match tuning {
        Tuning::IrqAffinity => irq_affinity(&cpus, ctx),
        Tuning::Irqbalance => irqbalance(ctx),
        Tuning::WorkqueueUnbound => mask_file(
            tuning,
            ctx.paths.sys.join("devices/virtual/workqueue/cpumask"),
            Codec::WorkqueueMask,
            "the unbound workqueue mask",
            &cpus,
            ctx,
        ),
        Tuning::WorkqueueWriteback => mask_file(
            tuning,
            ctx.paths
                .sys
                .join("bus/workqueue/devices/writeback/cpumask"),
            Codec::CpuMask,
            "the writeback workqueue mask",
            &cpus,
            ctx,
        ),
        Tuning::VmstatInterval => sysctl(
            tuning,
            ctx,
            "vm/stat_interval",
            ctx.settings.vmstat_interval.to_string(),
        ),
        Tuning::TimerMigration
            if holders.iter().all(|h| h.isolated_partition)
                && kernel_excludes_isolated_from_timer_migration(ctx) =>
        {
            Ok(Outcome::Skip(
                "this kernel (6.19+) already keeps CPUs of isolated partitions out of timer \
                 migration; the global kernel.timer_migration is left as it is"
                    .into(),
            ))
        }
        Tuning::TimerMigration => sysctl(tuning, ctx, "kernel/timer_migration", "0".into()),
        Tuning::RtThrottling => sysctl(tuning, ctx, "kernel/sched_rt_runtime_us", "-1".into()),
        Tuning::WatchdogCpumask => {
            let path = ctx.paths.proc.join("sys/kernel/watchdog_cpumask");
            let Some(orig) = ctx.orig(&path, Codec::CpuList).or_else(absent)? else {
                return Ok(Outcome::Skip(
                    "this kernel has no lockup watchdog (no kernel.watchdog_cpumask)".into(),
                ));
            };
            let orig_set = list_of(&path, &orig)?;
            let value = ctx.off_isolated(&orig_set, &cpus);
            Ok(single(
                tuning,
                path,
                Codec::CpuList,
                value.to_string(),
                "kernel.watchdog_cpumask",
                &orig_set,
                &cpus,
            ))
        }
        Tuning::FairServer => fair_server(&cpus, ctx),
        Tuning::CpuGovernor => governor(&cpus, ctx),
        Tuning::EnergyPerf => energy_perf(&cpus, ctx),
        Tuning::SplitLock => sysctl_or_skip(
            tuning,
            ctx,
            "kernel/split_lock_mitigate",
            "0",
            "this kernel has no kernel.split_lock_mitigate (Linux 6.2+ on x86 with split lock \
             detection): split locks are not slowed down here",
        ),
        Tuning::NumaBalancing => sysctl_or_skip(
            tuning,
            ctx,
            "kernel/numa_balancing",
            "0",
            "this kernel has no kernel.numa_balancing (built without NUMA balancing)",
        ),
        Tuning::CpuIdle => cpu_idle(&cpus, ctx),
        Tuning::Thp => thp(ctx),
        Tuning::Hugepages => hugepages(holders, ctx),
        Tuning::VfioIrqs => super::vfio::wants(holders, ctx),
    }
}

/// Turns "file not found" into `None`.
pub(super) fn absent(e: FileError) -> Result<Option<String>, FileError> {
    if e.is_not_found() { Ok(None) } else { Err(e) }
}

fn single(
    tuning: Tuning,
    path: PathBuf,
    codec: Codec,
    value: String,
    label: &str,
    orig: &CpuSet,
    cpus: &CpuSet,
) -> Outcome {
    if orig.is_disjoint(cpus) {
        return Outcome::Wants(Vec::new(), vec![format!("{label} already excludes {cpus}")]);
    }
    Outcome::Wants(
        vec![Want {
            tuning,
            path,
            codec,
            value,
            label: label.to_owned(),
        }],
        Vec::new(),
    )
}

fn mask_file(
    tuning: Tuning,
    path: PathBuf,
    codec: Codec,
    what: &str,
    cpus: &CpuSet,
    ctx: &Ctx<'_>,
) -> Result<Outcome, FileError> {
    let Some(orig) = ctx.orig(&path, codec).or_else(absent)? else {
        return Ok(Outcome::Skip(format!(
            "this kernel has no {what} ({} is missing)",
            path.display()
        )));
    };
    let orig_set = mask_of(&path, &orig)?;
    let value = ctx.off_isolated(&orig_set, cpus);
    Ok(single(
        tuning,
        path,
        codec,
        value.to_hex_mask(),
        what,
        &orig_set,
        cpus,
    ))
}

/// Linux 6.19+ (7dec062cfcf2) never picks a CPU of an isolated partition as a timer-migration
/// target. Known from the release only (no file shows it).
fn kernel_excludes_isolated_from_timer_migration(ctx: &Ctx<'_>) -> bool {
    fs::read_to_string(ctx.paths.proc.join("sys/kernel/osrelease"))
        .ok()
        .and_then(|r| crate::host::kernel::release_version(&r))
        .is_some_and(|v| v >= (6, 19))
}

fn sysctl(tuning: Tuning, ctx: &Ctx<'_>, name: &str, value: String) -> Result<Outcome, FileError> {
    let path = ctx.paths.proc.join("sys").join(name);
    let dotted = name.replace('/', ".");
    if ctx.orig(&path, Codec::Text).or_else(absent)?.is_none() {
        return Ok(Outcome::Skip(format!("this kernel has no {dotted}")));
    }
    Ok(Outcome::Wants(
        vec![Want {
            tuning,
            path,
            codec: Codec::Text,
            value,
            label: dotted,
        }],
        Vec::new(),
    ))
}

/// A sysctl set to `value`, or skipped with `why` where the kernel lacks it.
fn sysctl_or_skip(
    tuning: Tuning,
    ctx: &Ctx<'_>,
    name: &str,
    value: &str,
    why: &str,
) -> Result<Outcome, FileError> {
    match sysctl(tuning, ctx, name, value.to_owned())? {
        Outcome::Skip(_) => Ok(Outcome::Skip(why.to_owned())),
        wants => Ok(wants),
    }
}

/// Each IRQ's action names from `/proc/interrupts` (`vfio-msix[0](0000:06:00.0)`...).
pub fn irq_names(proc: &Path) -> BTreeMap<u32, String> {
    let mut names = BTreeMap::new();
    if let Ok(text) = fs::read_to_string(proc.join("interrupts")) {
        for line in text.lines() {
            let Some((num, rest)) = line.trim_start().split_once(':') else {
                continue;
            };
            let Ok(n) = num.parse::<u32>() else { continue };
            // Counters, then the chip, the hwirq-edge/level, then the action names.
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let first_text = fields
                .iter()
                .position(|f| !f.chars().all(|c| c.is_ascii_digit()))
                .unwrap_or(fields.len());
            let tail = &fields[first_text..];
            let name = if tail.len() > 2 {
                tail[2..].join(" ")
            } else {
                tail.join(" ")
            };
            names.insert(n, name);
        }
    }
    names
}

/// The IRQ numbers under `/proc/irq` with their action names from `/proc/interrupts`.
pub fn irqs(proc: &Path) -> Vec<(u32, String)> {
    let names = irq_names(proc);
    let mut out = Vec::new();
    if let Ok(dir) = fs::read_dir(proc.join("irq")) {
        for entry in dir.flatten() {
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            {
                out.push((n, names.get(&n).cloned().unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

fn irq_affinity(cpus: &CpuSet, ctx: &Ctx<'_>) -> Result<Outcome, FileError> {
    let proc = &ctx.paths.proc;
    let default = proc.join("irq/default_smp_affinity");
    let Some(orig) = ctx.orig(&default, Codec::CpuMask).or_else(absent)? else {
        return Ok(Outcome::Skip("this kernel has no /proc/irq".into()));
    };
    let mut wants = Vec::new();
    let mut notes = Vec::new();
    let orig_set = mask_of(&default, &orig)?;
    if !orig_set.is_disjoint(cpus) {
        wants.push(Want {
            tuning: Tuning::IrqAffinity,
            path: default.clone(),
            codec: Codec::CpuMask,
            value: ctx.off_isolated(&orig_set, cpus).to_hex_mask(),
            label: "default_smp_affinity".into(),
        });
    }
    let mut excluded = Vec::new();
    let mut to_vfio = Vec::new();
    for (n, name) in irqs(proc) {
        let path = proc.join(format!("irq/{n}/smp_affinity_list"));
        let Some(orig) = ctx.orig(&path, Codec::CpuList).or_else(absent)? else {
            continue;
        };
        let orig_set = list_of(&path, &orig)?;
        if orig_set.is_disjoint(cpus) {
            continue;
        }
        if ctx.vfio_owned.contains(&n) {
            to_vfio.push(n.to_string());
            continue;
        }
        if ctx.settings.irq_exclude.iter().any(|p| p.matches(&name)) {
            excluded.push(format!("{n} ({name})"));
            continue;
        }
        wants.push(Want {
            tuning: Tuning::IrqAffinity,
            path,
            codec: Codec::CpuList,
            value: ctx.off_isolated(&orig_set, cpus).to_string(),
            label: if name.is_empty() {
                format!("IRQ {n}")
            } else {
                format!("IRQ {n} {name}")
            },
        });
    }
    if !excluded.is_empty() {
        notes.push(format!(
            "left alone by the exclusion list: IRQ {}",
            excluded.join(", ")
        ));
    }
    if !to_vfio.is_empty() {
        notes.push(format!(
            "placed by vfio-irqs (a libvirt domain's assigned devices): IRQ {}",
            to_vfio.join(", ")
        ));
    }
    Ok(Outcome::Wants(wants, notes))
}

/// The systemd drop-in that bans the isolated CPUs from irqbalance.
pub fn irqbalance_dropin(paths: &Paths) -> PathBuf {
    paths
        .systemd_runtime
        .join("irqbalance.service.d/50-kvmisolate.conf")
}

fn irqbalance(ctx: &Ctx<'_>) -> Result<Outcome, FileError> {
    match ctx.irqbalance {
        Irqbalance::NotRunning => Ok(Outcome::Skip("irqbalance is not running".into())),
        Irqbalance::Process => Ok(Outcome::Skip(format!(
            "irqbalance runs without systemd: kvmisolated cannot restart it; start it with \
             IRQBALANCE_BANNED_CPULIST={} in its environment, or stop it while the VM runs",
            ctx.isolated
        ))),
        Irqbalance::SystemdUnit => {
            Ok(Outcome::Wants(
                vec![Want {
                    tuning: Tuning::Irqbalance,
                    path: irqbalance_dropin(ctx.paths),
                    codec: Codec::OwnFile,
                    // Every isolated CPU, whichever isolation asked: irqbalance must not put
                    // an IRQ on any of them.
                    value: format!(
                        "# Written by kvmisolated while CPUs are isolated; removed on release.\n\
                         [Service]\nEnvironment=IRQBALANCE_BANNED_CPULIST={}\n",
                        ctx.isolated
                    ),
                    label: "irqbalance.service drop-in".into(),
                }],
                Vec::new(),
            ))
        }
    }
}

fn fair_server(cpus: &CpuSet, ctx: &Ctx<'_>) -> Result<Outcome, FileError> {
    let sched = ctx.paths.debugfs.join("sched");
    if !sched.is_dir() {
        return Ok(Outcome::Skip(format!(
            "debugfs is not mounted at {} (mount -t debugfs none {})",
            ctx.paths.debugfs.display(),
            ctx.paths.debugfs.display()
        )));
    }
    let dir = sched.join("fair_server");
    if !dir.is_dir() {
        return Ok(Outcome::Skip(
            "this kernel has no fair server (6.12+: sched/fair_server in debugfs)".into(),
        ));
    }
    let mut wants = Vec::new();
    for cpu in cpus.iter() {
        let path = dir.join(format!("cpu{cpu}/runtime"));
        if ctx.orig(&path, Codec::Text).or_else(absent)?.is_none() {
            continue;
        }
        wants.push(Want {
            tuning: Tuning::FairServer,
            path,
            codec: Codec::Text,
            value: ctx.settings.fair_server_runtime_ns.to_string(),
            label: format!("cpu{cpu}"),
        });
    }
    Ok(Outcome::Wants(wants, Vec::new()))
}

fn governor(cpus: &CpuSet, ctx: &Ctx<'_>) -> Result<Outcome, FileError> {
    let policies = cpufreq_policies(ctx);
    if policies.is_empty() {
        return Ok(Outcome::Skip(
            "no CPU frequency scaling on this host (no cpufreq policies: a virtual machine, or no driver loaded)"
                .into(),
        ));
    }
    let mut wants = Vec::new();
    let mut notes = Vec::new();
    let governor = &ctx.settings.governor;
    for p in policies {
        let label = label_of(&p);
        let Some(affected) = policy_cpus(&p) else {
            continue;
        };
        if affected.is_disjoint(cpus) {
            continue;
        }
        let available =
            fs::read_to_string(p.join("scaling_available_governors")).unwrap_or_default();
        if !available.split_whitespace().any(|g| g == governor) {
            notes.push(format!(
                "{label}: governor {governor:?} is not available (available: {})",
                available.trim()
            ));
            continue;
        }
        wants.push(Want {
            tuning: Tuning::CpuGovernor,
            path: p.join("scaling_governor"),
            codec: Codec::Text,
            value: governor.clone(),
            label,
        });
    }
    Ok(Outcome::Wants(wants, notes))
}

/// The cpufreq policy directories (`.../cpufreq/policyN`), sorted.
fn cpufreq_policies(ctx: &Ctx<'_>) -> Vec<PathBuf> {
    let dir = ctx.paths.sys.join("devices/system/cpu/cpufreq");
    let mut policies: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("policy"))
                })
                .collect()
        })
        .unwrap_or_default();
    policies.sort();
    policies
}

/// The CPUs of a policy (`affected_cpus` is space-separated), `None` when unreadable.
fn policy_cpus(policy: &Path) -> Option<CpuSet> {
    let text = fs::read_to_string(policy.join("affected_cpus")).ok()?;
    Some(
        text.split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .fold(CpuSet::new(), |mut s, c| {
                s.insert(c);
                s
            }),
    )
}

fn label_of(p: &Path) -> String {
    p.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("policy")
        .to_owned()
}

/// `energy_performance_preference` exists only where the driver runs the hardware's own
/// P-state selection (intel_pstate with HWP, amd-pstate in active mode): there the governor
/// is one of two words and the preference is what steers the frequency.
fn energy_perf(cpus: &CpuSet, ctx: &Ctx<'_>) -> Result<Outcome, FileError> {
    const VALUE: &str = "performance";
    let mut wants = Vec::new();
    let mut notes = Vec::new();
    let mut capable = 0;
    for p in cpufreq_policies(ctx) {
        let path = p.join("energy_performance_preference");
        if ctx.orig(&path, Codec::Text).or_else(absent)?.is_none() {
            continue;
        }
        capable += 1;
        let Some(affected) = policy_cpus(&p) else {
            continue;
        };
        if affected.is_disjoint(cpus) {
            continue;
        }
        let label = label_of(&p);
        let available = fs::read_to_string(p.join("energy_performance_available_preferences"))
            .unwrap_or_default();
        if !available.split_whitespace().any(|w| w == VALUE) {
            notes.push(format!(
                "{label}: preference {VALUE:?} is not offered (available: {})",
                available.trim()
            ));
            continue;
        }
        wants.push(Want {
            tuning: Tuning::EnergyPerf,
            path,
            codec: Codec::Text,
            value: VALUE.into(),
            label,
        });
    }
    if capable == 0 {
        return Ok(Outcome::Skip(
            "no cpufreq policy has an energy/performance preference (energy_performance_preference: \
             intel_pstate or amd-pstate in active mode only; none in a virtual machine)"
                .into(),
        ));
    }
    Ok(Outcome::Wants(wants, notes))
}

/// The per-CPU PM QoS resume latency limit (drivers/base/power/sysfs.c): every cpuidle
/// governor keeps the CPU out of idle states whose exit latency exceeds it. Reads `0` for "no
/// limit" (what writing `0` means too) and `n/a` for "no latency at all".
fn cpu_idle(cpus: &CpuSet, ctx: &Ctx<'_>) -> Result<Outcome, FileError> {
    let mut wants = Vec::new();
    for cpu in cpus.iter() {
        let path = ctx.paths.sys.join(format!(
            "devices/system/cpu/cpu{cpu}/power/pm_qos_resume_latency_us"
        ));
        if ctx.orig(&path, Codec::Text).or_else(absent)?.is_none() {
            continue;
        }
        wants.push(Want {
            tuning: Tuning::CpuIdle,
            path,
            codec: Codec::Text,
            value: ctx.settings.cpu_idle_latency.clone(),
            label: format!("cpu{cpu}"),
        });
    }
    if wants.is_empty() {
        return Ok(Outcome::Skip(format!(
            "this kernel has no per-CPU PM QoS limit for CPUs {cpus} \
             (devices/system/cpu/cpuN/power/pm_qos_resume_latency_us)"
        )));
    }
    Ok(Outcome::Wants(wants, Vec::new()))
}

fn thp(ctx: &Ctx<'_>) -> Result<Outcome, FileError> {
    let dir = ctx.paths.sys.join("kernel/mm/transparent_hugepage");
    if !dir.is_dir() {
        return Ok(Outcome::Skip(
            "this kernel has no transparent hugepages".into(),
        ));
    }
    let mut wants = Vec::new();
    for (file, value) in [
        ("enabled", &ctx.settings.thp_enabled),
        ("defrag", &ctx.settings.thp_defrag),
    ] {
        let path = dir.join(file);
        let text = fs::read_to_string(&path).map_err(|source| FileError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        if !offered_words(&text).iter().any(|w| w == value) {
            return Err(FileError::Format {
                path,
                text: text.trim().to_owned(),
                what: "a list offering the configured THP value",
            });
        }
        wants.push(Want {
            tuning: Tuning::Thp,
            path,
            codec: Codec::Selected,
            value: value.clone(),
            label: format!("transparent_hugepage/{file}"),
        });
    }
    Ok(Outcome::Wants(wants, Vec::new()))
}

/// The `nr_hugepages` file of a request's pool.
pub fn hugepage_pool(paths: &Paths, spec: &HugepageSpec) -> PathBuf {
    let dir = format!(
        "hugepages/hugepages-{}kB/nr_hugepages",
        spec.page_size.kib()
    );
    match spec.node {
        Some(n) => paths
            .sys
            .join(format!("devices/system/node/node{n}"))
            .join(dir),
        None => paths.sys.join("kernel/mm").join(dir),
    }
}

/// The page size of a pool file (`.../hugepages-2048kB/nr_hugepages`), in KiB.
fn page_kib(pool: &Path) -> u64 {
    pool.parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("hugepages-"))
        .and_then(|n| n.strip_suffix("kB"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `MemTotal` of the host (`/proc/meminfo`) or of the pool's NUMA node (`nodeN/meminfo`).
fn mem_total_kib(paths: &Paths, pool: &Path) -> Option<u64> {
    let node_dir = paths.sys.join("devices/system/node");
    let meminfo = match pool.strip_prefix(&node_dir) {
        Ok(rest) => node_dir.join(rest.components().next()?).join("meminfo"),
        Err(_) => paths.proc.join("meminfo"),
    };
    let text = fs::read_to_string(meminfo).ok()?;
    // "MemTotal:  2030000 kB" or, per node, "Node 0 MemTotal:  2030000 kB".
    text.lines()
        .find(|l| l.contains("MemTotal:"))?
        .split_whitespace()
        .rev()
        .nth(1)?
        .parse()
        .ok()
}

fn hugepages(holders: &[&Holder], ctx: &Ctx<'_>) -> Result<Outcome, FileError> {
    // Each pool file: its original count plus every holder's pages.
    let mut pools: BTreeMap<PathBuf, (u64, String)> = BTreeMap::new();
    for h in holders {
        let Some(spec) = &h.hugepages else { continue };
        let path = hugepage_pool(ctx.paths, spec);
        let e = pools.entry(path).or_insert_with(|| {
            (
                0,
                format!(
                    "{}{}",
                    spec.page_size.as_str(),
                    spec.node
                        .map(|n| format!(" pages on node {n}"))
                        .unwrap_or_else(|| " pages".into())
                ),
            )
        });
        e.0 += spec.pages();
    }
    let mut wants = Vec::new();
    for (path, (pages, label)) in pools {
        let orig = match ctx.orig(&path, Codec::Count) {
            Ok(Some(o)) => o,
            Ok(None) => continue,
            Err(e) if e.is_not_found() => {
                return Err(FileError::Impossible(format!(
                    "no hugepage pool for {label} on this host ({} does not exist: the page size \
                     or NUMA node is not available)",
                    path.display()
                )));
            }
            Err(e) => return Err(e),
        };
        let base: u64 = orig.trim().parse().map_err(|_| FileError::Format {
            path: path.clone(),
            text: orig.clone(),
            what: "a page count",
        })?;
        // More than the memory there is can never succeed: say so before touching the pool.
        if let Some(total_kib) = mem_total_kib(ctx.paths, &path) {
            let kib = pages.saturating_mul(page_kib(&path));
            if kib > total_kib {
                return Err(FileError::Impossible(format!(
                    "{pages} {label} ({} MiB) asked for, but {} has only {} MiB of memory in all",
                    kib / 1024,
                    if path.starts_with(ctx.paths.sys.join("devices/system/node")) {
                        "the NUMA node"
                    } else {
                        "this host"
                    },
                    total_kib / 1024
                )));
            }
        }
        // Growing the pool now takes that memory from the host: never more than what it can
        // spare (MemAvailable minus a margin), or the host itself starts to swap and kill.
        let target = base + pages;
        let current = fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(base);
        if let Some(mem) = crate::host::meminfo::MemInfo::read(&ctx.paths.proc) {
            let grow_kib = target
                .saturating_sub(current)
                .saturating_mul(page_kib(&path));
            if grow_kib > mem.cap_kib() {
                return Err(FileError::Impossible(format!(
                    "{pages} {label} asked for would take {} MiB more from the host, but only {}; \
                     ask for less, or free memory first",
                    grow_kib / 1024,
                    mem.explain_cap()
                )));
            }
        }
        wants.push(Want {
            tuning: Tuning::Hugepages,
            path,
            codec: Codec::Count,
            value: target.to_string(),
            label,
        });
    }
    Ok(Outcome::Wants(wants, Vec::new()))
}
