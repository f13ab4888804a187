//! The engine's data model, which is also the journal's schema: targets, steps, requests
//! (serialized in the journal records: keep their serde form byte-compatible), and the
//! snapshot of the host that planning reads.

use std::collections::BTreeMap;

use kvmisolate_dbus::options::{PartitionType, ReleaseWhen};
use kvmisolate_dbus::target::TargetText;
use kvmisolate_dbus::{CpuSet, IsolationName};
use serde::{Deserialize, Serialize};

use crate::host::cgroupfs::CgroupPath;
use crate::host::kernel::{EXCLUSIVE_FILE, PARTITION_FILE};

/// `cpuset.cpus`.
pub const CPUS_FILE: &str = "cpuset.cpus";
/// `cgroup.subtree_control`.
pub const SUBTREE_CONTROL_FILE: &str = "cgroup.subtree_control";
/// The cgroup kvmisolate creates under the root on hosts without systemd.
pub const OWN_SUBTREE: &str = "kvmisolate";

/// What gets partitioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Target {
    /// An existing systemd unit's cgroup, partitioned in place (needs remote partitions).
    Unit {
        /// The unit name (`vm.scope`), for display.
        unit: String,
        /// Its cgroup (systemd's `ControlGroup`, via [`CgroupPath::from_absolute`]).
        cgroup: CgroupPath,
    },
    /// A cgroup of kvmisolate's own that holds `pids`.
    Own {
        /// The cgroup: `kvmisolate.slice/kvmisolate-<name>.scope` on systemd hosts,
        /// `kvmisolate/<name>` ([`Target::own_cgroup`]) without systemd.
        cgroup: CgroupPath,
        /// The processes isolated (watched for exit; moved by the engine if `create`).
        pids: Vec<u32>,
        /// `true`: the engine creates the missing cgroups itself (mkdir) and moves `pids` into
        /// the target (no systemd). `false`: the cgroup is made by the request's
        /// [`Request::pre_steps`] (a systemd transient scope with the pids attached) or exists.
        create: bool,
    },
    /// A running libvirt domain: the vCPU and emulator leaves libvirt made below its scope
    /// are partitioned in place, each with its own pins (needs remote partitions). The scope
    /// is the target: the isolation ends when it empties or goes away.
    Libvirt {
        /// The domain's name.
        domain: String,
        /// The domain's scope (`machine.slice/machine-qemu\x2d1\x2dNAME.scope`).
        cgroup: CgroupPath,
        /// The leaves made partitions, each with its CPUs.
        leaves: Vec<LeafPartition>,
        /// What the user should know about the domain's pins.
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// Hugepages held for a libvirt domain about to start (the hook's `prepare`): no CPUs, no
    /// partition, nothing written in cgroupfs.
    Reservation {
        /// The domain's name.
        domain: String,
        /// Always the root (nothing is written there).
        cgroup: CgroupPath,
    },
}

impl Target {
    /// A reservation for domain `domain` (no cgroup: its `cgroup()` is the root, never
    /// written).
    pub fn reservation(domain: &str) -> Self {
        Self::Reservation {
            domain: domain.to_owned(),
            cgroup: CgroupPath::root(),
        }
    }

    /// Whether this is a reservation (no CPUs, no partition, no process to watch).
    pub fn is_reservation(&self) -> bool {
        matches!(self, Self::Reservation { .. })
    }
}

/// A cgroup below the target that becomes a partition of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafPartition {
    /// The cgroup (`.../libvirt/vcpu0`).
    pub cgroup: CgroupPath,
    /// Its CPUs (its `cpuset.cpus.exclusive`).
    pub cpus: CpuSet,
}

impl Target {
    /// The cgroup that becomes the partition.
    pub fn cgroup(&self) -> &CgroupPath {
        match self {
            Self::Unit { cgroup, .. }
            | Self::Own { cgroup, .. }
            | Self::Libvirt { cgroup, .. }
            | Self::Reservation { cgroup, .. } => cgroup,
        }
    }

    /// Every cgroup whose files [`crate::engine::apply::Engine::snapshot`] reads: the root down to the
    /// target, then the leaves below it and the cgroups between.
    pub fn snapshot_cgroups(&self) -> Vec<CgroupPath> {
        let cg = self.cgroup();
        let mut out = cg.ancestors();
        out.push(cg.clone());
        if let Self::Libvirt { leaves, .. } = self {
            for leaf in leaves {
                for p in leaf
                    .cgroup
                    .ancestors()
                    .into_iter()
                    .chain([leaf.cgroup.clone()])
                {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
        out
    }

    /// Warnings recorded with the target (libvirt pins), empty for other targets.
    pub fn warnings(&self) -> &[String] {
        match self {
            Self::Libvirt { warnings, .. } => warnings,
            _ => &[],
        }
    }

    /// `<root>/kvmisolate/<name>`: the engine-created cgroup of a pids target without systemd.
    pub fn own_cgroup(name: &IsolationName) -> CgroupPath {
        CgroupPath::new(&format!("{OWN_SUBTREE}/{name}")).unwrap_or_default()
    }

    /// The `target` text of `Status()`: `unit:vm.scope`, `pids:1234,1235` or `libvirt:NAME`.
    pub fn describe(&self) -> String {
        match self {
            Self::Unit { unit, .. } => TargetText::Unit(unit),
            Self::Own { pids, .. } => TargetText::Pids(pids),
            Self::Libvirt { domain, .. } => TargetText::Libvirt(domain),
            Self::Reservation { domain, .. } => TargetText::Reservation(domain),
        }
        .to_string()
    }
}

/// A step whose effect lives outside cgroupfs (systemd: StartTransientUnit,
/// SetUnitProperties, AttachProcessesToUnit...). `kind` and `data` belong to whoever performs
/// it ([`crate::engine::effects::ExternalEffects`]); the engine journals them like any other step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalStep {
    /// What to do (`start-transient-scope`, ...).
    pub kind: String,
    /// Everything needed to do and undo it, originals included.
    pub data: serde_json::Value,
}

/// One effect, recorded in the journal (with its original state) before it is performed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Step {
    /// Create a cgroup. Undo: remove it, unless it `existed` before (or another active
    /// isolation still shares it).
    Mkdir {
        /// The cgroup.
        path: CgroupPath,
        /// Whether it existed before (read by the engine's prepare; `false` in a plan).
        existed: bool,
    },
    /// Write `value` to `file`. Undo: write `original` back.
    Write {
        /// The cgroup.
        path: CgroupPath,
        /// The attribute file.
        file: String,
        /// Its content before (read by the engine's prepare; empty in a plan).
        original: String,
        /// What to write.
        value: String,
    },
    /// Add CPUs to a cpulist file shared with other isolations. Undo: write
    /// `(current − added) ∪ (original ∩ added)`, which never removes another isolation's CPUs.
    SharedAdd {
        /// The cgroup.
        path: CgroupPath,
        /// The cpulist file (`cpuset.cpus.exclusive`, or `cpuset.cpus` for local partitions).
        file: String,
        /// Its content before (read by the engine's prepare; empty in a plan).
        original: String,
        /// The CPUs added.
        added: CpuSet,
    },
    /// Make an ancestor a `root` partition (local partitions). Undo: write `original` back
    /// unless another active isolation still needs it.
    SharedPartition {
        /// The cgroup.
        path: CgroupPath,
        /// `cpuset.cpus.partition` before (read by the engine's prepare; empty in a plan).
        original: String,
    },
    /// Enable a controller in `cgroup.subtree_control`. Undo: disable it if it was absent
    /// before and no other active isolation depends on it.
    EnableController {
        /// The cgroup.
        path: CgroupPath,
        /// The controller (`cpuset`).
        controller: String,
        /// Whether it was enabled before (read by the engine's prepare; `false` in a plan).
        was_present: bool,
    },
    /// Move processes into `to` (engine-created cgroups). Undo: move each process still in
    /// `to` back to its original cgroup.
    MoveProcs {
        /// The destination.
        to: CgroupPath,
        /// Each pid's cgroup before (journalled as a list of `[pid, cgroup]` pairs).
        #[serde(with = "pid_map")]
        from: BTreeMap<u32, CgroupPath>,
    },
    /// An effect outside cgroupfs.
    External(ExternalStep),
}

/// Serializes a pid map as a list of pairs: integer map keys do not survive the buffering
/// that serde's internally tagged enums do.
mod pid_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::host::cgroupfs::CgroupPath;

    pub(super) fn serialize<S: Serializer>(
        map: &BTreeMap<u32, CgroupPath>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(&u32, &CgroupPath)> = map.iter().collect();
        pairs.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u32, CgroupPath>, D::Error> {
        let pairs = Vec::<(u32, CgroupPath)>::deserialize(d)?;
        Ok(pairs.into_iter().collect())
    }
}

impl Step {
    /// The step's kind, as journalled (`mkdir`, `write`, ...; `external`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Mkdir { .. } => "mkdir",
            Self::Write { .. } => "write",
            Self::SharedAdd { .. } => "shared-add",
            Self::SharedPartition { .. } => "shared-partition",
            Self::EnableController { .. } => "enable-controller",
            Self::MoveProcs { .. } => "move-procs",
            Self::External(_) => "external",
        }
    }

    /// A one-line description for logs and error messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Mkdir { path, .. } => format!("create cgroup {path}"),
            Self::Write {
                path, file, value, ..
            } => format!("write {value} to {path}/{file}"),
            Self::SharedAdd {
                path, file, added, ..
            } => format!("add {added} to {path}/{file}"),
            Self::SharedPartition { path, .. } => {
                format!("make {path} a root partition")
            }
            Self::EnableController {
                path, controller, ..
            } => format!("enable {controller} in {path}/{SUBTREE_CONTROL_FILE}"),
            Self::MoveProcs { to, from } => {
                let pids: Vec<String> = from.keys().map(u32::to_string).collect();
                format!("move processes {} into {to}", pids.join(","))
            }
            Self::External(e) => format!("{} {}", e.kind, e.data),
        }
    }

    /// Whether this writes `cpuset.cpus.partition`.
    #[cfg(test)]
    pub fn is_partition_write(&self) -> bool {
        matches!(self, Self::SharedPartition { .. })
            || matches!(self, Self::Write { file, .. } if file == PARTITION_FILE)
    }

    /// Whether `self` and `other` act on the same shared state (same cgroup created, same
    /// ancestor partition, same controller enabled), so only the last holder may undo it.
    pub fn shares_state_with(&self, other: &Step) -> bool {
        match (self, other) {
            (Self::Mkdir { path: a, .. }, Self::Mkdir { path: b, .. }) => a == b,
            (Self::SharedPartition { path: a, .. }, Self::SharedPartition { path: b, .. }) => {
                a == b
            }
            (
                Self::EnableController {
                    path: a,
                    controller: ca,
                    ..
                },
                Self::EnableController {
                    path: b,
                    controller: cb,
                    ..
                },
            ) => a == b && ca == cb,
            _ => false,
        }
    }
}

/// An isolation request, as the D-Bus layer validated it. Stored in the journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The isolation's name.
    pub name: IsolationName,
    /// The CPUs to isolate.
    pub cpus: CpuSet,
    /// What to partition.
    pub target: Target,
    /// The partition type asked for; `None` = `root` for several CPUs, `isolated` for one.
    pub partition: Option<PartitionType>,
    /// When the isolation ends by itself.
    pub release_when: ReleaseWhen,
    /// The caller's uid.
    pub owner_uid: u32,
    /// The caller's unique bus name (for `caller-disconnects`).
    pub caller: Option<String>,
    /// Creation time, µs since the Unix epoch.
    pub created_usec: u64,
    /// External steps performed first (and undone last), e.g. creating a systemd scope.
    #[serde(default)]
    pub pre_steps: Vec<ExternalStep>,
    /// The host tunings selected (applied after the partition, undone before it).
    #[serde(default)]
    pub tunings: crate::tunings::Selected,
}

/// The content of the cgroup files along the target's path, read by the caller beforehand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// cgroup → file name → content. A cgroup absent from the map does not exist; a file
    /// absent from its map does not exist.
    pub cgroups: BTreeMap<CgroupPath, BTreeMap<String, String>>,
    /// For a pids target: each pid's current cgroup.
    pub pid_cgroups: BTreeMap<u32, CgroupPath>,
}

impl Snapshot {
    /// The files read for each cgroup on the path.
    pub const FILES: &'static [&'static str] = &[
        "cgroup.controllers",
        SUBTREE_CONTROL_FILE,
        CPUS_FILE,
        "cpuset.cpus.effective",
        EXCLUSIVE_FILE,
        PARTITION_FILE,
        crate::host::kernel::ISOLATED_FILE,
    ];

    /// Whether the cgroup exists.
    pub fn exists(&self, path: &CgroupPath) -> bool {
        self.cgroups.contains_key(path)
    }

    /// A file's content, if it was read.
    pub fn file(&self, path: &CgroupPath, file: &str) -> Option<&str> {
        self.cgroups.get(path)?.get(file).map(String::as_str)
    }

    /// A cpulist file's content, if it was read and parses.
    pub fn cpus(&self, path: &CgroupPath, file: &str) -> Option<CpuSet> {
        CpuSet::parse(self.file(path, file)?).ok()
    }
}

/// How partitions are made on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionMode {
    /// `cpuset.cpus.exclusive` on the ancestors; the parent need not be a partition (6.7+).
    Remote,
    /// Every ancestor is a partition root (6.1-6.6).
    Local,
}

/// The first word of a cgroup file's content (`cpuset.cpus.partition` reads e.g.
/// `root invalid (...)`), or `""`.
pub(crate) fn first_word(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or("")
}
