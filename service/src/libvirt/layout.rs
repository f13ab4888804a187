//! The leaves libvirt made below a domain's scope (`libvirt/vcpuN`, `libvirt/emulator`,
//! `libvirt/iothreadN`) and the pins it wrote to their `cpuset.cpus`.

use crate::engine::Error;
use kvmisolate_dbus::CpuSet;

use crate::host::cgroupfs::{CgroupFs, CgroupPath};

/// The directory below the scope that holds libvirt's leaves.
pub const LIBVIRT_DIR: &str = "libvirt";

pub use kvmisolate_dbus::libvirt::LeafKind;

/// One leaf and its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// What it holds.
    pub kind: LeafKind,
    /// Its cgroup.
    pub cgroup: CgroupPath,
    /// Its `cpuset.cpus` (empty: libvirt wrote no pin).
    pub pins: CpuSet,
}

/// A running domain's cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The domain's scope (what the isolation watches).
    pub scope: CgroupPath,
    /// The leaves, vCPUs first (in number order), then the emulator, then the iothreads.
    pub leaves: Vec<Leaf>,
}

impl Layout {
    /// Reads the leaves below `scope/libvirt`. `TargetNotFound` while libvirt has not made
    /// them yet (or the domain is gone).
    pub fn read(fs: &CgroupFs, scope: &CgroupPath) -> Result<Self, Error> {
        let dir = scope
            .join(LIBVIRT_DIR)
            .map_err(|e| Error::Failed(e.to_string()))?;
        let not_found = || {
            Error::TargetNotFound(format!(
                "{scope} has no libvirt/ cgroups: the domain is still starting or has stopped"
            ))
        };
        if !fs.exists(&dir) {
            return Err(not_found());
        }
        let children = fs.children(&dir).map_err(|e| {
            if e.is_not_found() {
                not_found()
            } else {
                Error::Failed(e.to_string())
            }
        })?;
        let mut leaves = Vec::new();
        for cgroup in children {
            let Some(kind) = LeafKind::parse(cgroup.file_name()) else {
                continue;
            };
            let text = fs
                .read_opt(&cgroup, crate::engine::model::CPUS_FILE)
                .map_err(|e| Error::Failed(e.to_string()))?
                .ok_or_else(|| {
                    Error::UnsupportedHost(format!(
                        "{cgroup} has no cpuset.cpus: the cpuset controller is not enabled for \
                         the domain's cgroups (is libvirt's cgroup_controllers missing cpuset?)"
                    ))
                })?;
            let pins = CpuSet::parse(text.trim())
                .map_err(|e| Error::Failed(format!("{cgroup}/cpuset.cpus holds {text:?}: {e}")))?;
            leaves.push(Leaf { kind, cgroup, pins });
        }
        leaves.sort_by_key(|l| l.kind);
        if !leaves.iter().any(|l| matches!(l.kind, LeafKind::Vcpu(_))) {
            return Err(not_found());
        }
        Ok(Self {
            scope: scope.clone(),
            leaves,
        })
    }

    /// The leaves of one kind family.
    pub fn of(&self, pred: impl Fn(LeafKind) -> bool) -> impl Iterator<Item = &Leaf> {
        self.leaves.iter().filter(move |l| pred(l.kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_leaf_names() {
        assert_eq!(LeafKind::parse("vcpu0"), Some(LeafKind::Vcpu(0)));
        assert_eq!(LeafKind::parse("vcpu12"), Some(LeafKind::Vcpu(12)));
        assert_eq!(LeafKind::parse("emulator"), Some(LeafKind::Emulator));
        assert_eq!(LeafKind::parse("iothread1"), Some(LeafKind::Iothread(1)));
        for bad in ["vcpu", "vcpu+1", "iothreadx", "emulator2", "other"] {
            assert_eq!(LeafKind::parse(bad), None, "{bad}");
        }
        assert_eq!(LeafKind::Vcpu(3).to_string(), "vcpu3");
        assert!(LeafKind::Vcpu(9) < LeafKind::Emulator);
        assert!(LeafKind::Emulator < LeafKind::Iothread(0));
    }
}
