//! What the running kernel can do, detected from the files cgroupfs shows (never from the
//! version number: distributions backport).
//!
//! - cgroup v2: the root has `cgroup.controllers` (a v1 or hybrid `/sys/fs/cgroup` does not);
//! - the cpuset controller: `cpuset` is listed in the root's `cgroup.controllers`;
//! - partitions: a child cgroup with cpuset files has `cpuset.cpus.partition`;
//! - remote partitions (6.7+): that child also has `cpuset.cpus.exclusive`;
//! - `cpuset.cpus.isolated` at the root (6.8+).
//!
//! The per-cgroup files only exist in cgroups whose parent enabled `cpuset`, and at boot nothing
//! may have (systemd enables it on demand). With no such cgroup to look at, detection falls back
//! on the root: `cpuset.cpus.isolated` there implies 6.8+, so partitions and remote partitions;
//! without it partitions are assumed (the kernel's read-back decides) and remote partitions
//! are not. Detect again after enabling the controller for a definitive answer.

use std::path::Path;

use crate::engine::Error;
use kvmisolate_dbus::options::PartitionType;

use crate::host::cgroupfs::{CgroupFs, CgroupPath};

/// Per-cgroup partition file.
pub const PARTITION_FILE: &str = "cpuset.cpus.partition";
/// Per-cgroup exclusive CPUs file (6.7+).
pub const EXCLUSIVE_FILE: &str = "cpuset.cpus.exclusive";
/// Root-only isolated CPUs file (6.8+).
pub const ISOLATED_FILE: &str = "cpuset.cpus.isolated";

/// The kernel features found, as the D-Bus layer reports them in `KernelSupport`
/// (keys `cgroup-v2`, `partition-types`, `remote-partitions`, `files`, `kernel-release`,
/// `problems` of `kvmisolate_dbus::status`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelSupport {
    /// The cgroup root is a cgroup v2 mount (`cgroup.controllers` exists there).
    pub cgroup_v2: bool,
    /// `cpuset` is among the root's `cgroup.controllers`.
    pub cpuset_controller: bool,
    /// cpuset partitions exist (`cpuset.cpus.partition`, seen or assumed).
    pub partitions: bool,
    /// The partition types to offer; the kernel's read-back has the last word.
    pub partition_types: Vec<PartitionType>,
    /// `cpuset.cpus.exclusive` exists: remote partitions (6.7+).
    pub remote_partitions: bool,
    /// The root has `cpuset.cpus.isolated` (6.8+).
    pub isolated_cpus_file: bool,
    /// The cgroup where the per-cgroup cpuset files were seen; `None` if no cgroup had them
    /// and the answer is inferred.
    pub probed: Option<CgroupPath>,
    /// The cpuset and cgroup files found (root's and the probed cgroup's), sorted.
    pub files: Vec<String>,
    /// `uname -r`, for information only.
    pub kernel_release: String,
    /// Why isolation is impossible here (empty if it is possible).
    pub problems: Vec<String>,
    /// What is possible only in part (e.g. no remote partitions).
    pub notes: Vec<String>,
}

impl KernelSupport {
    /// Looks at the tree `fs` shows. `kernel_release` is only reported.
    pub fn detect(fs: &CgroupFs, kernel_release: &str) -> Self {
        let root = CgroupPath::root();
        let mut ks = Self {
            kernel_release: kernel_release.to_owned(),
            ..Self::default()
        };
        let mut files: Vec<String> = Vec::new();
        let controllers = match fs.read(&root, "cgroup.controllers") {
            Ok(text) => text,
            Err(_) => {
                ks.problems.push(format!(
                    "{} has no cgroup.controllers, so it is not a cgroup v2 mount: this host uses \
                     cgroup v1 or a hybrid layout; kvmisolated needs the unified hierarchy (boot \
                     with systemd.unified_cgroup_hierarchy=1, or mount cgroup2 there)",
                    fs.root().display()
                ));
                return ks;
            }
        };
        ks.cgroup_v2 = true;
        files.push("cgroup.controllers".to_owned());
        ks.cpuset_controller = controllers.split_whitespace().any(|c| c == "cpuset");
        if !ks.cpuset_controller {
            ks.problems.push(format!(
                "the cpuset controller is not available in cgroup v2 (the root's cgroup.controllers \
                 lists only: {}); it is bound to a cgroup v1 hierarchy (hybrid layout) or the kernel \
                 lacks CONFIG_CPUSETS; unmount the v1 cpuset hierarchy or boot with \
                 systemd.unified_cgroup_hierarchy=1",
                controllers.trim()
            ));
            ks.files = files;
            return ks;
        }
        for f in [
            "cpuset.cpus.effective",
            "cpuset.mems.effective",
            ISOLATED_FILE,
        ] {
            if fs.has_file(&root, f) {
                files.push(f.to_owned());
            }
        }
        ks.isolated_cpus_file = fs.has_file(&root, ISOLATED_FILE);
        ks.probed = find_cpuset_cgroup(fs);
        match &ks.probed {
            Some(cg) => {
                for f in [
                    "cpuset.cpus",
                    PARTITION_FILE,
                    EXCLUSIVE_FILE,
                    "cpuset.cpus.exclusive.effective",
                ] {
                    if fs.has_file(cg, f) {
                        files.push(f.to_owned());
                    }
                }
                ks.partitions = fs.has_file(cg, PARTITION_FILE);
                ks.remote_partitions = fs.has_file(cg, EXCLUSIVE_FILE);
            }
            None => {
                ks.partitions = true;
                ks.remote_partitions = ks.isolated_cpus_file;
            }
        }
        files.sort();
        files.dedup();
        ks.files = files;
        if ks.partitions {
            ks.partition_types = vec![PartitionType::Root, PartitionType::Isolated];
        } else {
            ks.problems.push(
                "this kernel has no cpuset partitions (no cpuset.cpus.partition in a cgroup with \
                 the cpuset controller); Linux 5.15 or later is needed, 6.1 for isolated partitions \
                 and 6.7 for partitioning units in place"
                    .to_owned(),
            );
        }
        if ks.partitions && !ks.remote_partitions {
            ks.notes.push(
                "no remote partitions (cpuset.cpus.exclusive, Linux 6.7+): units cannot be \
                 partitioned in place; only --pid targets in kvmisolate's own cgroups can be isolated"
                    .to_owned(),
            );
        }
        ks
    }

    /// `Ok` if partitions can be made at all, otherwise `UnsupportedHost` with the reasons.
    pub fn check_usable(&self) -> Result<(), Error> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(Error::UnsupportedHost(self.problems.join("; ")))
        }
    }

    /// Whether `t` is offered.
    pub fn supports(&self, t: PartitionType) -> bool {
        self.partition_types.contains(&t)
    }

    /// The partition type words, for `partition-types`.
    pub fn partition_type_words(&self) -> Vec<String> {
        self.partition_types
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect()
    }
}

/// The first cgroup (breadth first, at most a few hundred looked at) that has `cpuset.cpus`.
fn find_cpuset_cgroup(fs: &CgroupFs) -> Option<CgroupPath> {
    let mut queue = std::collections::VecDeque::from([CgroupPath::root()]);
    let mut seen = 0;
    while let Some(cg) = queue.pop_front() {
        seen += 1;
        if seen > 500 {
            return None;
        }
        if !cg.is_root() && fs.has_file(&cg, "cpuset.cpus") {
            return Some(cg);
        }
        queue.extend(fs.children(&cg).unwrap_or_default());
    }
    None
}

/// The kernel release from `<proc_root>/sys/kernel/osrelease` (empty if unreadable).
pub fn kernel_release(proc_root: &Path) -> String {
    std::fs::read_to_string(proc_root.join("sys/kernel/osrelease"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `(MAJOR, MINOR)` of a kernel release (`7.3.4+deb13-cloud-amd64` → `(7, 3)`). Only for the
/// behaviours no file shows (a backport may make an older release do the same).
pub fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cgroupfs::EmulatedKernel;
    use crate::testutil::FakeTree;

    #[test]
    fn detects_6_12() {
        let t = FakeTree::with_cpuset(EmulatedKernel::LINUX_6_12);
        let ks = KernelSupport::detect(t.fs(), "6.12.0");
        assert!(ks.cgroup_v2 && ks.cpuset_controller && ks.partitions && ks.remote_partitions);
        assert!(ks.isolated_cpus_file);
        assert!(ks.probed.is_some());
        assert!(
            ks.files.contains(&EXCLUSIVE_FILE.to_owned()),
            "{:?}",
            ks.files
        );
        assert_eq!(ks.partition_type_words(), ["root", "isolated"]);
        assert!(ks.check_usable().is_ok());
        assert!(ks.problems.is_empty() && ks.notes.is_empty());
    }

    #[test]
    fn detects_6_1_local_only() {
        let t = FakeTree::with_cpuset(EmulatedKernel::LINUX_6_1);
        let ks = KernelSupport::detect(t.fs(), "6.1.0");
        assert!(ks.partitions && !ks.remote_partitions && !ks.isolated_cpus_file);
        assert!(ks.check_usable().is_ok());
        assert!(ks.notes[0].contains("6.7"), "{:?}", ks.notes);
    }

    #[test]
    fn infers_without_cpuset_children() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("cgroup.controllers"),
            "cpuset cpu memory pids\n",
        )
        .unwrap();
        std::fs::write(tmp.path().join("cgroup.subtree_control"), "memory pids\n").unwrap();
        std::fs::write(tmp.path().join("cpuset.cpus.effective"), "0-3\n").unwrap();
        let fs = CgroupFs::new(tmp.path());
        let ks = KernelSupport::detect(&fs, "");
        assert!(ks.partitions && !ks.remote_partitions && ks.probed.is_none());
        std::fs::write(tmp.path().join(ISOLATED_FILE), "\n").unwrap();
        let ks = KernelSupport::detect(&fs, "");
        assert!(ks.partitions && ks.remote_partitions);
    }

    #[test]
    fn refuses_v1_and_hybrid() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = CgroupFs::new(tmp.path());
        let ks = KernelSupport::detect(&fs, "");
        assert!(!ks.cgroup_v2);
        let Err(Error::UnsupportedHost(msg)) = ks.check_usable() else {
            panic!("expected UnsupportedHost");
        };
        assert!(
            msg.contains("not a cgroup v2 mount") && msg.contains("hybrid"),
            "{msg}"
        );

        std::fs::write(
            tmp.path().join("cgroup.controllers"),
            "cpu io memory pids\n",
        )
        .unwrap();
        let ks = KernelSupport::detect(&fs, "");
        assert!(ks.cgroup_v2 && !ks.cpuset_controller);
        let Err(Error::UnsupportedHost(msg)) = ks.check_usable() else {
            panic!("expected UnsupportedHost");
        };
        assert!(
            msg.contains("cpuset controller") && msg.contains("cpu io memory pids"),
            "{msg}"
        );
    }

    #[test]
    fn refuses_kernels_without_partitions() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), "cpuset memory\n").unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        std::fs::write(tmp.path().join("a/cpuset.cpus"), "\n").unwrap();
        let ks = KernelSupport::detect(&CgroupFs::new(tmp.path()), "");
        assert!(!ks.partitions);
        assert!(matches!(ks.check_usable(), Err(Error::UnsupportedHost(m)) if m.contains("5.15")));
    }

    #[test]
    fn release_versions() {
        assert_eq!(release_version("7.3.4+deb13-cloud-amd64\n"), Some((7, 3)));
        assert_eq!(release_version("6.1.0-50-cloud-amd64"), Some((6, 1)));
        assert_eq!(release_version("test"), None);
    }

    #[test]
    fn reads_kernel_release() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("sys/kernel")).unwrap();
        std::fs::write(
            tmp.path().join("sys/kernel/osrelease"),
            "6.12.9-cloud-amd64\n",
        )
        .unwrap();
        assert_eq!(kernel_release(tmp.path()), "6.12.9-cloud-amd64");
        assert_eq!(kernel_release(&tmp.path().join("nope")), "");
    }
}
