//! Reading the host for `check` and `bench`: procfs, sysfs and cgroupfs under injectable roots
//! (fake trees in tests), remembering what could not be read and why.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use kvmisolate_dbus::cpulist::CpuSet;

/// Where procfs, sysfs and the cgroup2 mount are (`/proc`, `/sys`, `/sys/fs/cgroup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// procfs.
    pub proc: PathBuf,
    /// sysfs.
    pub sys: PathBuf,
    /// The cgroup2 mount.
    pub cgroup: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
            cgroup: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// A file that exists but could not be read, and why (for the "could not read" list).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unreadable {
    /// The path.
    pub path: String,
    /// The error.
    pub error: String,
}

/// A reader over [`Roots`].
#[derive(Debug, Default)]
pub struct Host {
    /// The roots.
    pub roots: Roots,
    unreadable: RefCell<Vec<Unreadable>>,
}

impl Host {
    /// A reader over `roots`.
    pub fn new(roots: Roots) -> Self {
        Self {
            roots,
            unreadable: RefCell::new(Vec::new()),
        }
    }

    /// A path under the proc root (`rel` without a leading `/`).
    pub fn proc(&self, rel: &str) -> PathBuf {
        self.roots.proc.join(rel)
    }

    /// A path under the sysfs root.
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.roots.sys.join(rel)
    }

    /// A path under the cgroup root.
    pub fn cgroup(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.roots.cgroup.clone()
        } else {
            self.roots.cgroup.join(rel)
        }
    }

    /// The file's text; `None` if it does not exist (the caller decides what absence means) or
    /// cannot be read (then it is remembered in [`Host::unreadable`]).
    pub fn read(&self, path: &Path) -> Option<String> {
        match std::fs::read(path) {
            Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if is_gone(&e) => None,
            Err(e) => {
                self.note_unreadable(path, &e);
                None
            }
        }
    }

    /// Like [`Host::read`] but a vanished file (a task that exited) is not remembered either.
    pub fn read_quiet(&self, path: &Path) -> Option<String> {
        std::fs::read(path)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// The file's text, trimmed.
    pub fn read_trim(&self, path: &Path) -> Option<String> {
        self.read(path).map(|s| s.trim().to_owned())
    }

    /// The file as a cpulist (`None` if absent, unreadable or malformed; malformed is remembered).
    pub fn read_cpulist(&self, path: &Path) -> Option<CpuSet> {
        let text = self.read_trim(path)?;
        match CpuSet::parse(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                self.push(path, format!("not a CPU list: {e}"));
                None
            }
        }
    }

    /// The file as a hex CPU mask.
    pub fn read_mask(&self, path: &Path) -> Option<CpuSet> {
        let text = self.read_trim(path)?;
        match CpuSet::from_hex_mask(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                self.push(path, format!("not a CPU mask: {e}"));
                None
            }
        }
    }

    /// The file as an integer.
    pub fn read_i64(&self, path: &Path) -> Option<i64> {
        let text = self.read_trim(path)?;
        match text.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                self.push(path, format!("not an integer: {text:?}"));
                None
            }
        }
    }

    /// The names in a directory (empty if it cannot be listed; an unlistable existing
    /// directory is remembered).
    pub fn list(&self, dir: &Path) -> Vec<String> {
        match std::fs::read_dir(dir) {
            Ok(rd) => {
                let mut v: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            }
            Err(e) if is_gone(&e) => Vec::new(),
            Err(e) => {
                self.note_unreadable(dir, &e);
                Vec::new()
            }
        }
    }

    /// The numeric names in a directory (PIDs, IRQ numbers, TIDs), sorted.
    pub fn list_numeric(&self, dir: &Path) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .list(dir)
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    /// The online CPUs (`devices/system/cpu/online`).
    pub fn online_cpus(&self) -> Option<CpuSet> {
        self.read_cpulist(&self.sys("devices/system/cpu/online"))
    }

    /// Remembers that `path` could not be read because of `why`.
    pub fn push(&self, path: &Path, why: String) {
        let path = path.display().to_string();
        let mut u = self.unreadable.borrow_mut();
        if !u.iter().any(|x| x.path == path) {
            u.push(Unreadable { path, error: why });
        }
    }

    fn note_unreadable(&self, path: &Path, e: &std::io::Error) {
        let why = match e.kind() {
            ErrorKind::PermissionDenied => "permission denied (run as root to read it)".to_owned(),
            _ => e.to_string(),
        };
        self.push(path, why);
    }

    /// What could not be read so far.
    pub fn unreadable(&self) -> Vec<Unreadable> {
        self.unreadable.borrow().clone()
    }
}

fn is_gone(e: &std::io::Error) -> bool {
    // ESRCH: a /proc/PID file of a task that exited meanwhile.
    e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(3)
}

/// Test helpers: a fake host tree in a tempdir.
#[cfg(test)]
pub(crate) mod fake {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A temporary tree with `proc/`, `sys/` and `cgroup/`.
    pub struct FakeHost {
        /// Holds the directory.
        pub dir: tempfile::TempDir,
    }

    impl FakeHost {
        /// An empty tree.
        pub fn empty() -> Self {
            let dir = tempfile::tempdir().unwrap();
            for d in ["proc", "sys", "cgroup"] {
                std::fs::create_dir_all(dir.path().join(d)).unwrap();
            }
            Self { dir }
        }

        /// The roots of this tree.
        pub fn roots(&self) -> Roots {
            Roots {
                proc: self.dir.path().join("proc"),
                sys: self.dir.path().join("sys"),
                cgroup: self.dir.path().join("cgroup"),
            }
        }

        /// A reader over this tree.
        pub fn host(&self) -> Host {
            Host::new(self.roots())
        }

        /// Writes `text` to `rel` (e.g. `proc/cmdline`), creating directories.
        pub fn write(&self, rel: &str, text: &str) -> &Self {
            let p = self.dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
            self
        }

        /// Removes `rel` (file or tree).
        pub fn remove(&self, rel: &str) -> &Self {
            let p = self.dir.path().join(rel);
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                let _ = std::fs::remove_file(p);
            }
            self
        }

        /// A 4-CPU host with cgroup v2, cpuset and a 6.12-style kernel, no partitions, no tasks.
        pub fn basic() -> Self {
            let f = Self::empty();
            f.write("sys/devices/system/cpu/online", "0-3\n")
                .write("sys/devices/system/cpu/present", "0-3\n")
                .write("cgroup/cgroup.controllers", "cpuset cpu io memory pids\n")
                .write("cgroup/cgroup.subtree_control", "cpuset cpu memory pids\n")
                .write("cgroup/cpuset.cpus.effective", "0-3\n")
                .write("cgroup/cpuset.cpus.isolated", "\n")
                .write("cgroup/system.slice/cpuset.cpus", "\n")
                .write("cgroup/system.slice/cpuset.cpus.effective", "0-3\n")
                .write("cgroup/system.slice/cpuset.cpus.partition", "member\n")
                .write("cgroup/system.slice/cpuset.cpus.exclusive", "\n")
                .write("proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/vda quiet\n")
                .write("proc/irq/default_smp_affinity", "f\n");
            for c in 0..4 {
                let topo = format!("sys/devices/system/cpu/cpu{c}/topology");
                f.write(&format!("{topo}/thread_siblings_list"), &format!("{c}\n"))
                    .write(&format!("{topo}/core_id"), &format!("{c}\n"))
                    .write(&format!("{topo}/physical_package_id"), "0\n");
            }
            f
        }

        /// Adds a valid partition at `rel` (under the cgroup root) holding `cpus`.
        pub fn partition(&self, rel: &str, kind: &str, cpus: &str) -> &Self {
            let c = |f: &str| format!("cgroup/{rel}/{f}");
            self.write(&c("cpuset.cpus.partition"), &format!("{kind}\n"))
                .write(&c("cpuset.cpus.exclusive"), &format!("{cpus}\n"))
                .write(&c("cpuset.cpus.exclusive.effective"), &format!("{cpus}\n"))
                .write(&c("cpuset.cpus"), "\n")
                .write(&c("cpuset.cpus.effective"), &format!("{cpus}\n"))
        }

        /// Adds a task (a process with one thread, TID = PID) to /proc.
        #[allow(clippy::too_many_arguments)]
        pub fn task(
            &self,
            pid: u32,
            comm: &str,
            flags: u64,
            allowed: &str,
            cgroup: &str,
            policy: u32,
            processor: u32,
        ) -> &Self {
            let stat = stat_line(pid, comm, flags, processor, policy);
            let status = format!("Name:\t{comm}\nCpus_allowed_list:\t{allowed}\n");
            for base in [format!("proc/{pid}"), format!("proc/{pid}/task/{pid}")] {
                self.write(&format!("{base}/stat"), &stat)
                    .write(&format!("{base}/status"), &status)
                    .write(&format!("{base}/comm"), &format!("{comm}\n"))
                    .write(&format!("{base}/schedstat"), "100 0 5\n");
            }
            self.write(&format!("proc/{pid}/cgroup"), &format!("0::{cgroup}\n"))
        }
    }

    /// A /proc/PID/stat line with the fields `check` reads.
    pub fn stat_line(pid: u32, comm: &str, flags: u64, processor: u32, policy: u32) -> String {
        // Fields 3.. after "(comm)": state ppid pgrp session tty tpgid flags(9) ...
        let mut rest: Vec<String> = vec!["S".into(), "1".into()];
        rest.extend((5..=52).map(|_| "0".to_owned()));
        rest[9 - 3] = flags.to_string();
        rest[39 - 3] = processor.to_string();
        rest[41 - 3] = policy.to_string();
        format!("{pid} ({comm}) {}\n", rest.join(" "))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::fake::FakeHost;

    #[test]
    fn absent_is_quiet_malformed_is_noted() {
        let f = FakeHost::basic();
        f.write("proc/sys/vm/stat_interval", "x\n");
        let h = f.host();
        assert_eq!(h.read(&h.proc("nope")), None);
        assert!(h.unreadable().is_empty());
        assert_eq!(h.read_i64(&h.proc("sys/vm/stat_interval")), None);
        assert_eq!(h.unreadable().len(), 1);
        assert_eq!(h.online_cpus().unwrap().to_string(), "0-3");
    }
}
