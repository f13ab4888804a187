//! Keys and values of the `Isolate(name, cpus, options)` options dictionary.
//!
//! Unknown keys are an error (`org.kvmisolate.Error.InvalidOption`), so a typo never silently
//! falls back to a default.

use std::fmt;
use std::str::FromStr;

/// `unit` (s): partition an existing systemd unit's cgroup in place.
pub const UNIT: &str = "unit";
/// `pids` (au): move these processes into a new cgroup of kvmisolate's own.
pub const PIDS: &str = "pids";
/// `partition` (s): `isolated` or `root`.
pub const PARTITION: &str = "partition";
/// `release-when` (s): `target-exits`, `caller-disconnects` or `released`.
pub const RELEASE_WHEN: &str = "release-when";
/// `libvirt-domain` (s): a running libvirt domain, by name: the vCPU and emulator cgroups
/// libvirt made for it become isolated partitions in place, each with the CPUs it is pinned
/// to (`cpus` may be empty: taken from the pins). Needs remote partitions (Linux 6.7+).
pub const LIBVIRT_DOMAIN: &str = "libvirt-domain";
/// `reserve-for-domain` (s): a reservation for a libvirt domain about to start (the hook's
/// `prepare`): a lease that holds only its `hugepages` pool, no CPUs and no partition, so the
/// memory is there before QEMU maps it. `cpus` must be empty; it ends only on `Release`.
pub const RESERVE_FOR_DOMAIN: &str = "reserve-for-domain";
/// `tunings` (as): host tunings by name ([`crate::tunings::Tuning`]); replaces the profile's
/// list.
pub const TUNINGS: &str = "tunings";
/// `profile` (s): a named bundle of tunings: `none`, `default` or `realtime`.
pub const PROFILE: &str = "profile";
/// `hugepages` (s): a hugepage pool for the guest, `SIZE[:PAGESIZE][@NODE]` (e.g. `16G:1G@0`).
pub const HUGEPAGES: &str = "hugepages";
/// `hugepages-best-effort` (b): keep the isolation when the kernel allocates fewer hugepages
/// than asked (default false: a shortfall fails the isolation and rolls everything back).
pub const HUGEPAGES_BEST_EFFORT: &str = "hugepages-best-effort";
/// `vfio-irqs` (s): where the host IRQs of a libvirt domain's assigned PCI devices go,
/// `housekeeping` or `vcpu` ([`crate::tunings::VfioIrqPlacement`]); selects the `vfio-irqs`
/// tuning. Only with `libvirt-domain`.
pub const VFIO_IRQS: &str = "vfio-irqs";

/// Every key the service accepts today.
pub const KNOWN: &[&str] = &[
    UNIT,
    PIDS,
    LIBVIRT_DOMAIN,
    RESERVE_FOR_DOMAIN,
    PARTITION,
    RELEASE_WHEN,
    PROFILE,
    TUNINGS,
    HUGEPAGES,
    HUGEPAGES_BEST_EFFORT,
    VFIO_IRQS,
];

/// The most PIDs one request may carry.
pub const MAX_PIDS: usize = 4096;
/// The longest unit name accepted (systemd's own limit).
pub const MAX_UNIT_LEN: usize = 255;

/// The partition type written to `cpuset.cpus.partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionType {
    /// `root`: the CPUs are exclusive, the scheduler still balances load across them.
    Root,
    /// `isolated`: exclusive and without load balancing; each thread must be pinned.
    Isolated,
}

impl PartitionType {
    /// The word the kernel uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Isolated => "isolated",
        }
    }
}

impl fmt::Display for PartitionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PartitionType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "root" => Ok(Self::Root),
            "isolated" => Ok(Self::Isolated),
            other => Err(format!(
                "partition must be 'isolated' or 'root', not {other:?}"
            )),
        }
    }
}

/// When an isolation ends by itself.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseWhen {
    /// When the target's processes are all gone (the default).
    #[default]
    TargetExits,
    /// When the D-Bus connection that asked for it closes (or the target exits).
    CallerDisconnects,
    /// Only on an explicit `Release`.
    Released,
}

impl ReleaseWhen {
    /// The word used on the bus.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TargetExits => "target-exits",
            Self::CallerDisconnects => "caller-disconnects",
            Self::Released => "released",
        }
    }
}

impl fmt::Display for ReleaseWhen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReleaseWhen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "target-exits" => Ok(Self::TargetExits),
            "caller-disconnects" => Ok(Self::CallerDisconnects),
            "released" => Ok(Self::Released),
            other => Err(format!(
                "release-when must be 'target-exits', 'caller-disconnects' or 'released', not {other:?}"
            )),
        }
    }
}

/// The state of an isolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationState {
    /// Every partition reads back valid.
    Active,
    /// A partition was invalidated (hotplug, a foreign write); `StateReason` says why.
    Degraded,
}

impl IsolationState {
    /// The word used on the bus.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Degraded => "degraded",
        }
    }
}

impl fmt::Display for IsolationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `Isolate` options dictionary, typed: each field is the key of the same name above,
/// absent from the wire when `None`.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, zbus::SerializeDict, zbus::DeserializeDict, zbus::Type,
)]
#[zbus(signature = "a{sv}", rename_all = "kebab-case")]
pub struct IsolateOptions {
    /// [`UNIT`].
    pub unit: Option<String>,
    /// [`PIDS`].
    pub pids: Option<Vec<u32>>,
    /// [`LIBVIRT_DOMAIN`].
    pub libvirt_domain: Option<String>,
    /// [`RESERVE_FOR_DOMAIN`].
    pub reserve_for_domain: Option<String>,
    /// [`PARTITION`].
    pub partition: Option<String>,
    /// [`RELEASE_WHEN`].
    pub release_when: Option<String>,
    /// [`PROFILE`].
    pub profile: Option<String>,
    /// [`TUNINGS`].
    pub tunings: Option<Vec<String>>,
    /// [`HUGEPAGES`].
    pub hugepages: Option<String>,
    /// [`HUGEPAGES_BEST_EFFORT`].
    pub hugepages_best_effort: Option<bool>,
    /// [`VFIO_IRQS`].
    pub vfio_irqs: Option<String>,
}
