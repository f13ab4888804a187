//! Keys of the dictionary `Status()` returns, and of each isolation entry in it.
//!
//! `Status()` is meant for shell scripts (`kvmisolate status --json` prints it), so the keys are
//! stable, lower-case and kebab-cased.

/// `version` (s): the service's version.
pub const VERSION: &str = "version";
/// `isolated-cpus` (s): CPUs held by active isolations.
pub const ISOLATED_CPUS: &str = "isolated-cpus";
/// `housekeeping-cpus` (s): online CPUs left to the host.
pub const HOUSEKEEPING_CPUS: &str = "housekeeping-cpus";
/// `online-cpus` (s): the host's online CPUs.
pub const ONLINE_CPUS: &str = "online-cpus";
/// `kernel-support` (a{sv}): same as the `KernelSupport` property.
pub const KERNEL_SUPPORT: &str = "kernel-support";
/// `isolations` (aa{sv}): one dictionary per isolation, keys below.
pub const ISOLATIONS: &str = "isolations";
/// `warnings` (as): anything the user should know.
pub const WARNINGS: &str = "warnings";

/// Isolation entry: `name` (s).
pub const I_NAME: &str = "name";
/// Isolation entry: `object-path` (o).
pub const I_OBJECT_PATH: &str = "object-path";
/// Isolation entry: `cpus` (s).
pub const I_CPUS: &str = "cpus";
/// Isolation entry: `target` (s), e.g. `unit:vm.scope` or `pids:1234,1235`.
pub const I_TARGET: &str = "target";
/// Isolation entry: `partition` (s): `isolated` or `root`; `none` for a hugepage reservation
/// (`reservation:DOMAIN` target), which holds no CPUs and no partition.
pub const I_PARTITION: &str = "partition";
/// Isolation entry: `description` (s): what the isolation holds, in one sentence.
pub const I_DESCRIPTION: &str = "description";
/// Isolation entry: `state` (s).
pub const I_STATE: &str = "state";
/// Isolation entry: `state-reason` (s).
pub const I_STATE_REASON: &str = "state-reason";
/// Isolation entry: `owner-uid` (u).
pub const I_OWNER_UID: &str = "owner-uid";
/// Isolation entry: `created` (t): microseconds since the Unix epoch.
pub const I_CREATED: &str = "created";
/// Isolation entry: `release-when` (s).
pub const I_RELEASE_WHEN: &str = "release-when";
/// Isolation entry: `cgroups` (as): the cgroups made partitions, relative to the cgroup root.
pub const I_CGROUPS: &str = "cgroups";
/// Isolation entry: `tunings` (a(sssss)): same as the isolation's `Tunings` property.
pub const I_TUNINGS: &str = "tunings";
/// Isolation entry: `profile` (s): the tuning profile asked for (or `custom`).
pub const I_PROFILE: &str = "profile";
/// Isolation entry: `warnings` (as): what the user should know about this isolation's target
/// (a libvirt domain's pins: vCPUs without pins, shared CPUs, SMT siblings left to the host).
pub const I_WARNINGS: &str = "warnings";

/// KernelSupport: `cgroup-v2` (b): a pure cgroup v2 hierarchy with the cpuset controller.
pub const K_CGROUP_V2: &str = "cgroup-v2";
/// KernelSupport: `partition-types` (as): accepted partition words (`root`, `isolated`).
pub const K_PARTITION_TYPES: &str = "partition-types";
/// KernelSupport: `remote-partitions` (b): `cpuset.cpus.exclusive` exists (6.7+).
pub const K_REMOTE_PARTITIONS: &str = "remote-partitions";
/// KernelSupport: `files` (as): the cpuset files found.
pub const K_FILES: &str = "files";
/// KernelSupport: `kernel-release` (s): `uname -r`, for information only.
pub const K_KERNEL_RELEASE: &str = "kernel-release";
/// KernelSupport: `systemd` (b): systemd manages the cgroup tree.
pub const K_SYSTEMD: &str = "systemd";
/// KernelSupport: `problems` (as): why isolation is impossible here, if it is.
pub const K_PROBLEMS: &str = "problems";

use serde::{Deserialize, Serialize};
use zbus::{DeserializeDict, OwnedObjectPath, SerializeDict, Type};

/// The `Status()` reply, typed. Encodes to and decodes from the `a{sv}` above (keys as the
/// constants of this module name them).
#[derive(Debug, Clone, PartialEq, Default, SerializeDict, DeserializeDict, Type)]
#[zbus(signature = "a{sv}", rename_all = "kebab-case")]
pub struct Status {
    /// [`VERSION`].
    pub version: String,
    /// [`ISOLATED_CPUS`].
    pub isolated_cpus: String,
    /// [`HOUSEKEEPING_CPUS`].
    pub housekeeping_cpus: String,
    /// [`ONLINE_CPUS`].
    pub online_cpus: String,
    /// [`KERNEL_SUPPORT`].
    pub kernel_support: KernelSupport,
    /// [`ISOLATIONS`].
    pub isolations: Vec<IsolationEntry>,
    /// [`WARNINGS`].
    pub warnings: Vec<String>,
}

/// The `KernelSupport` property (and `kernel-support` of `Status()`), typed.
#[derive(Debug, Clone, PartialEq, Default, SerializeDict, DeserializeDict, Type)]
#[zbus(signature = "a{sv}", rename_all = "kebab-case")]
pub struct KernelSupport {
    /// [`K_CGROUP_V2`].
    pub cgroup_v2: bool,
    /// [`K_PARTITION_TYPES`].
    pub partition_types: Vec<String>,
    /// [`K_REMOTE_PARTITIONS`].
    pub remote_partitions: bool,
    /// [`K_FILES`].
    pub files: Vec<String>,
    /// [`K_KERNEL_RELEASE`].
    pub kernel_release: String,
    /// [`K_SYSTEMD`].
    pub systemd: bool,
    /// [`K_PROBLEMS`].
    pub problems: Vec<String>,
}

/// One isolation of `Status()`, typed.
#[derive(Debug, Clone, PartialEq, SerializeDict, DeserializeDict, Type)]
#[zbus(signature = "a{sv}", rename_all = "kebab-case")]
pub struct IsolationEntry {
    /// [`I_NAME`].
    pub name: String,
    /// [`I_OBJECT_PATH`].
    pub object_path: OwnedObjectPath,
    /// [`I_CPUS`].
    pub cpus: String,
    /// [`I_TARGET`].
    pub target: String,
    /// [`I_PARTITION`].
    pub partition: String,
    /// [`I_DESCRIPTION`].
    pub description: String,
    /// [`I_STATE`].
    pub state: String,
    /// [`I_STATE_REASON`].
    pub state_reason: String,
    /// [`I_OWNER_UID`].
    pub owner_uid: u32,
    /// [`I_CREATED`].
    pub created: u64,
    /// [`I_RELEASE_WHEN`].
    pub release_when: String,
    /// [`I_CGROUPS`].
    pub cgroups: Vec<String>,
    /// [`I_PROFILE`].
    pub profile: String,
    /// [`I_TUNINGS`].
    pub tunings: Vec<TuningRow>,
    /// [`I_WARNINGS`].
    pub warnings: Vec<String>,
    /// [`I_IRQS_LEFT`]: absent on the wire when empty (and from services older than the key).
    pub irqs_left: Option<Vec<u32>>,
}

/// Isolation entry: `irqs-left` (au): the IRQs the `irq-affinity` tuning left as they are
/// (the kernel refused to move them). Only present when there are some.
pub const I_IRQS_LEFT: &str = "irqs-left";

impl IsolationEntry {
    /// The IRQs the `irq-affinity` tuning left as they are.
    pub fn irqs_left(&self) -> &[u32] {
        self.irqs_left.as_deref().unwrap_or_default()
    }
}

/// One row of an isolation's `Tunings` (and of [`I_TUNINGS`]): `(sssss)`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Type)]
pub struct TuningRow {
    /// The tuning's name ([`crate::tunings::Tuning`]).
    pub name: String,
    /// `applied`, `skipped` or `failed` ([`crate::tunings::TuningState`]).
    pub state: String,
    /// Why (skipped, failed), or notes (applied).
    pub reason: String,
    /// The original value(s), summarized.
    pub original: String,
    /// The value(s) now, summarized.
    pub current: String,
}
