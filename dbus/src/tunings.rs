//! Host tunings: their names, the profiles that bundle them, and the hugepage request format.
//!
//! A tuning is a host setting changed while an isolation is held and restored exactly when it
//! ends (IRQ affinities, workqueue masks, sysctls, THP, hugepages...). Clients pick them with
//! the `profile` and `tunings` options of `Isolate`; the service reports each one in the
//! isolation's `Tunings` property.

use std::fmt;
use std::str::FromStr;

/// One host tuning, by its stable name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Tuning {
    /// IRQ affinities (and `/proc/irq/default_smp_affinity`) moved off the isolated CPUs.
    IrqAffinity,
    /// irqbalance told to leave the isolated CPUs alone (`IRQBALANCE_BANNED_CPULIST`).
    Irqbalance,
    /// The global unbound workqueue mask excludes the isolated CPUs.
    WorkqueueUnbound,
    /// The writeback workqueue mask excludes the isolated CPUs.
    WorkqueueWriteback,
    /// `vm.stat_interval` raised (120 s by default): fewer vmstat updates on isolated CPUs.
    VmstatInterval,
    /// `kernel.timer_migration=0`: timers stay where they were armed.
    TimerMigration,
    /// `kernel.watchdog_cpumask` = the housekeeping CPUs: no soft-lockup watchdog on isolated
    /// CPUs.
    WatchdogCpumask,
    /// `kernel.sched_rt_runtime_us=-1`: no RT throttling of a spinning SCHED_FIFO vCPU. A
    /// runaway RT task can then starve its CPU: only in the `realtime` profile or by name.
    RtThrottling,
    /// The 6.12+ fair-server runtime (debugfs) set to 0 on the isolated CPUs.
    FairServer,
    /// The `performance` CPU frequency governor on the policies covering isolated CPUs.
    CpuGovernor,
    /// `energy_performance_preference` = `performance` on the EPP-capable cpufreq policies
    /// (`intel_pstate`/`amd-pstate` active mode) covering isolated CPUs.
    EnergyPerf,
    /// `kernel.split_lock_mitigate=0`: a guest's split lock is no longer punished by slowing
    /// its vCPU thread down for milliseconds. Re-opens a denial-of-service vector from
    /// untrusted guests: only in the `realtime` profile or by name.
    SplitLock,
    /// `kernel.numa_balancing=0`: no NUMA hinting faults stalling guest memory accesses.
    NumaBalancing,
    /// Per-CPU PM QoS resume latency limit on the isolated CPUs: no deep idle states there.
    CpuIdle,
    /// Transparent hugepages `enabled`/`defrag` set to the configured values.
    Thp,
    /// A hugepage pool for the guest's memory (from the `hugepages` option).
    Hugepages,
    /// The host IRQs of a libvirt domain's assigned PCI devices (`<hostdev>`, VFIO) placed
    /// where the `vfio-irqs` option says: off the isolated CPUs (`housekeeping`, what
    /// `irq-affinity` does with every IRQ) or on the domain's vCPU CPUs (`vcpu`).
    VfioIrqs,
}

impl Tuning {
    /// Every tuning, in the order they are applied.
    pub const ALL: &'static [Tuning] = &[
        Tuning::Hugepages,
        Tuning::IrqAffinity,
        Tuning::VfioIrqs,
        Tuning::Irqbalance,
        Tuning::WorkqueueUnbound,
        Tuning::WorkqueueWriteback,
        Tuning::VmstatInterval,
        Tuning::TimerMigration,
        Tuning::WatchdogCpumask,
        Tuning::RtThrottling,
        Tuning::FairServer,
        // Before the governor: with `performance` as governor, intel_pstate and amd-pstate
        // force the preference to `performance` and refuse other writes, so its original is
        // read (and journalled) first; restoring goes the other way round.
        Tuning::EnergyPerf,
        Tuning::CpuGovernor,
        Tuning::SplitLock,
        Tuning::NumaBalancing,
        Tuning::CpuIdle,
        Tuning::Thp,
    ];

    /// The stable name used on the bus, in the config file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IrqAffinity => "irq-affinity",
            Self::Irqbalance => "irqbalance",
            Self::WorkqueueUnbound => "workqueue-unbound",
            Self::WorkqueueWriteback => "workqueue-writeback",
            Self::VmstatInterval => "vmstat-interval",
            Self::TimerMigration => "timer-migration",
            Self::WatchdogCpumask => "watchdog-cpumask",
            Self::RtThrottling => "rt-throttling",
            Self::FairServer => "fair-server",
            Self::CpuGovernor => "cpu-governor",
            Self::EnergyPerf => "energy-perf",
            Self::SplitLock => "split-lock",
            Self::NumaBalancing => "numa-balancing",
            Self::CpuIdle => "cpu-idle",
            Self::Thp => "thp",
            Self::Hugepages => "hugepages",
            Self::VfioIrqs => "vfio-irqs",
        }
    }
}

impl fmt::Display for Tuning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tuning {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Tuning::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let shown: String = s.chars().take(64).collect();
                format!(
                    "unknown tuning {shown:?}; known tunings: {}",
                    Tuning::ALL
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

/// A named bundle of tunings.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// No tuning: only the partition.
    None,
    /// The safe, fully reversible set: IRQs, irqbalance, workqueues, vmstat interval, timer
    /// migration, watchdog mask, CPU governor and energy/performance preference (and
    /// hugepages when asked for).
    #[default]
    Default,
    /// Everything: `default` plus RT throttling off, the fair server off on isolated CPUs,
    /// split-lock mitigation off, NUMA balancing off, no deep idle states on isolated CPUs and
    /// THP.
    Realtime,
}

impl Profile {
    /// Every profile.
    pub const ALL: &'static [Profile] = &[Profile::None, Profile::Default, Profile::Realtime];

    /// The name used on the bus and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Default => "default",
            Self::Realtime => "realtime",
        }
    }

    /// The tunings it bundles (hugepages come with a `hugepages` request in any profile).
    pub fn tunings(self) -> Vec<Tuning> {
        use Tuning::*;
        let default = [
            IrqAffinity,
            Irqbalance,
            WorkqueueUnbound,
            WorkqueueWriteback,
            VmstatInterval,
            TimerMigration,
            WatchdogCpumask,
            CpuGovernor,
            EnergyPerf,
        ];
        match self {
            Self::None => Vec::new(),
            Self::Default => default.to_vec(),
            Self::Realtime => {
                let mut all = default.to_vec();
                all.extend([
                    RtThrottling,
                    FairServer,
                    SplitLock,
                    NumaBalancing,
                    CpuIdle,
                    Thp,
                ]);
                all
            }
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Profile::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let shown: String = s.chars().take(64).collect();
                format!("unknown profile {shown:?}; profiles: none, default, realtime")
            })
    }
}

/// Where the `vfio-irqs` tuning puts a libvirt domain's VFIO device IRQs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum VfioIrqPlacement {
    /// Off the isolated CPUs, like every other IRQ under `irq-affinity` (the default).
    #[default]
    Housekeeping,
    /// On the CPUs of the domain's vCPUs, so a device's interrupts land where the guest runs.
    Vcpu,
}

impl VfioIrqPlacement {
    /// The word used on the bus, on the command line and in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Housekeeping => "housekeeping",
            Self::Vcpu => "vcpu",
        }
    }
}

impl fmt::Display for VfioIrqPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VfioIrqPlacement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "housekeeping" => Ok(Self::Housekeeping),
            "vcpu" => Ok(Self::Vcpu),
            other => {
                let shown: String = other.chars().take(64).collect();
                Err(format!(
                    "vfio-irqs must be 'housekeeping' (off the isolated CPUs) or 'vcpu' (on the \
                     domain's vCPU CPUs), not {shown:?}"
                ))
            }
        }
    }
}

/// The state of one tuning of an isolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TuningState {
    /// In force.
    Applied,
    /// Not applicable on this host (the reason says why); nothing was changed.
    Skipped,
    /// Could not be applied (the reason says why); nothing of it is left changed.
    Failed,
}

impl TuningState {
    /// The word used on the bus.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for TuningState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hugepage page sizes the request format accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PageSize {
    /// 2 MiB pages.
    #[serde(rename = "2M")]
    M2,
    /// 1 GiB pages.
    #[serde(rename = "1G")]
    G1,
}

impl PageSize {
    /// The size in KiB, as in sysfs directory names (`hugepages-2048kB`).
    pub fn kib(self) -> u64 {
        match self {
            Self::M2 => 2048,
            Self::G1 => 1024 * 1024,
        }
    }

    /// `2M` or `1G`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::M2 => "2M",
            Self::G1 => "1G",
        }
    }
}

/// A hugepage request: `SIZE[:PAGESIZE][@NODE]`, e.g. `16G`, `16G:1G`, `8G:2M@0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct HugepageSpec {
    /// Total memory wanted, in KiB (a whole number of pages).
    pub total_kib: u64,
    /// The page size (2M unless given).
    pub page_size: PageSize,
    /// The NUMA node to allocate on (any node when absent).
    pub node: Option<u32>,
}

/// The largest hugepage request accepted (64 TiB): larger is a typo.
const MAX_HUGEPAGES_KIB: u64 = 64 << 30;

fn parse_size_kib(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, ""));
    if digits.is_empty() || digits.len() > 12 {
        return Err(format!(
            "{text:?} is not a size; write a number and a unit, e.g. 16G or 512M"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let mult = match unit {
        "K" | "k" | "KiB" => 1,
        "M" | "m" | "MiB" => 1024,
        "G" | "g" | "GiB" => 1024 * 1024,
        "T" | "t" | "TiB" => 1024 * 1024 * 1024,
        "" => return Err(format!("{text:?} has no unit; write e.g. 16G or 512M")),
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use K, M, G or T"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|&k| k <= MAX_HUGEPAGES_KIB)
        .ok_or_else(|| format!("{text:?} is too large (at most 64T)"))
}

impl HugepageSpec {
    /// How many pages the request needs.
    pub fn pages(&self) -> u64 {
        self.total_kib / self.page_size.kib()
    }
}

impl FromStr for HugepageSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() > 64 {
            return Err("the hugepage request is too long; write e.g. 16G:1G@0".into());
        }
        let (rest, node) = match s.split_once('@') {
            Some((rest, node)) => {
                let n: u32 = node.parse().map_err(|_| {
                    format!("NUMA node {node:?} is not a number in hugepage request {s:?}")
                })?;
                if n > 1023 {
                    return Err(format!("NUMA node {n} does not exist (at most 1023)"));
                }
                (rest, Some(n))
            }
            None => (s, None),
        };
        let (size, page) = match rest.split_once(':') {
            Some((size, page)) => (size, Some(page)),
            None => (rest, None),
        };
        let total_kib = parse_size_kib(size)?;
        let page_size = match page {
            None | Some("2M") | Some("2m") | Some("2048k") | Some("2048K") => PageSize::M2,
            Some("1G") | Some("1g") => PageSize::G1,
            Some(other) => {
                return Err(format!(
                    "hugepage size {other:?} is not supported; use 2M or 1G"
                ));
            }
        };
        if total_kib == 0 {
            return Err("a hugepage request of 0 bytes asks for nothing; leave it out".into());
        }
        if !total_kib.is_multiple_of(page_size.kib()) {
            return Err(format!(
                "{size} is not a whole number of {} pages",
                page_size.as_str()
            ));
        }
        Ok(Self {
            total_kib,
            page_size,
            node,
        })
    }
}

impl fmt::Display for HugepageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.total_kib;
        if k.is_multiple_of(1024 * 1024) {
            write!(f, "{}G", k / (1024 * 1024))?;
        } else if k.is_multiple_of(1024) {
            write!(f, "{}M", k / 1024)?;
        } else {
            write!(f, "{k}K")?;
        }
        write!(f, ":{}", self.page_size.as_str())?;
        if let Some(n) = self.node {
            write!(f, "@{n}")?;
        }
        Ok(())
    }
}

/// The default resume latency limit of the `cpu-idle` tuning, in µs: shallow idle states (C1,
/// C1E: a few µs to exit) stay allowed, deep ones (C6 and below: 100 µs and more) do not.
pub const DEFAULT_CPU_IDLE_LATENCY_US: u32 = 20;

/// In a tuning's reason (`Tunings`, `Status()`), the words before the files the kernel refused
/// to change and that were left as they are; for `irq-affinity`, the IRQs it would not move
/// (`left as they are: IRQ 0 timer (...), IRQ 24 nvme0q1 (...)`); their numbers are in
/// [`crate::status::I_IRQS_LEFT`].
pub const LEFT_AS_THEY_ARE: &str = "left as they are: ";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Tuning::ALL {
            assert_eq!(t.as_str().parse::<Tuning>().unwrap(), *t);
        }
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>().unwrap(), *p);
        }
        let e = "irq".parse::<Tuning>().unwrap_err();
        assert!(
            e.contains("unknown tuning \"irq\"") && e.contains("irq-affinity"),
            "{e}"
        );
    }

    #[test]
    fn profiles_nest() {
        let d = Profile::Default.tunings();
        let r = Profile::Realtime.tunings();
        assert!(d.iter().all(|t| r.contains(t)));
        assert!(!d.contains(&Tuning::RtThrottling));
        assert!(r.contains(&Tuning::RtThrottling));
        assert!(d.contains(&Tuning::EnergyPerf));
        for t in [Tuning::SplitLock, Tuning::NumaBalancing, Tuning::CpuIdle] {
            assert!(!d.contains(&t) && r.contains(&t), "{t}");
        }
        assert!(Profile::None.tunings().is_empty());
    }

    #[test]
    fn hugepage_specs() {
        let s: HugepageSpec = "16G".parse().unwrap();
        assert_eq!(
            (s.total_kib, s.page_size, s.node),
            (16 << 20, PageSize::M2, None)
        );
        assert_eq!(s.pages(), 8192);
        let s: HugepageSpec = "16G:1G@1".parse().unwrap();
        assert_eq!(
            (s.pages(), s.page_size, s.node),
            (16, PageSize::G1, Some(1))
        );
        assert_eq!(s.to_string(), "16G:1G@1");
        let s: HugepageSpec = "512M".parse().unwrap();
        assert_eq!((s.pages(), s.to_string().as_str()), (256, "512M:2M"));
        for bad in [
            "",
            "16",
            "G",
            "16X",
            "1G:4M",
            "3M",
            "0G",
            "1G@",
            "1G@x",
            "99999999999999G",
            "1G:1G:1G",
            "-1G",
            " 1G@0 0",
        ] {
            assert!(bad.parse::<HugepageSpec>().is_err(), "{bad:?} accepted");
        }
        assert!(
            "1500M:1G"
                .parse::<HugepageSpec>()
                .unwrap_err()
                .contains("whole number")
        );
    }
}
