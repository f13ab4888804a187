//! cgroup v2 attribute files under an injectable root (`/sys/fs/cgroup` in production).
//!
//! - [`CgroupPath`] is a validated path *relative to the cgroup root* (no `..`, not absolute,
//!   no NUL or newline), so nothing outside the root can ever be named.
//! - [`CgroupFs::write`] writes a value in one `write(2)` and returns what the file reads back
//!   afterwards; callers compare (the kernel often accepts a write and then reports a different
//!   state, e.g. `isolated invalid (...)`).
//! - [`CgroupFs::emulated`] stands a plain directory in for cgroupfs (unit tests, bus tests with
//!   `--cgroup-root` pointing at a temporary tree): `mkdir` creates the files a fresh cgroup has,
//!   `rmdir` removes them, `cgroup.subtree_control` and `cgroup.procs` writes behave like the
//!   kernel's, and partition rejections or write failures can be injected.

use std::fmt;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

mod emulate;

pub use emulate::EmulatedKernel;

/// The default cgroup v2 mount point.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// An error on cgroupfs or `/proc`, carrying the path and the OS error.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A system call failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted (`read`, `write 2-3 to`, `create`, `remove`...).
        op: String,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A path or file name that would leave the cgroup root or is otherwise unusable.
    #[error("invalid cgroup path {path:?}: {reason}")]
    BadPath {
        /// The offending text.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A file holds something unexpected.
    #[error("unexpected content in {}: {content:?} ({reason})", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it holds.
        content: String,
        /// What was expected.
        reason: String,
    },
}

impl CgroupError {
    /// The OS error number, if this is an I/O error that has one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the file, directory or process does not exist (`ENOENT`, `ESRCH`), or the
    /// cgroup is being removed (`ENODEV`: its files still show while the kernel takes it
    /// offline, e.g. right after libvirt tore a domain's cgroups down).
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Io { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32)
                    || source.raw_os_error() == Some(nix::errno::Errno::ENODEV as i32)
            }
            _ => false,
        }
    }

    fn io(op: impl Into<String>, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op: op.into(),
            path: path.to_owned(),
            source,
        }
    }
}

/// A cgroup, as a path relative to the cgroup root; the empty path is the root itself.
///
/// Displayed with a leading `/` (`/machine.slice/vm.scope`, `/` for the root), as
/// `/proc/PID/cgroup` and systemd show it; [`CgroupPath::as_str`] gives the relative form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CgroupPath(String);

impl CgroupPath {
    /// The root cgroup.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Validates a relative path (`machine.slice/vm.scope`; `""` is the root).
    pub fn new(path: &str) -> Result<Self, CgroupError> {
        let bad = |reason| CgroupError::BadPath {
            path: path.to_owned(),
            reason,
        };
        if path.is_empty() {
            return Ok(Self::root());
        }
        if path.starts_with('/') {
            return Err(bad("absolute paths are not allowed"));
        }
        if path.len() > 4096 {
            return Err(bad("too long"));
        }
        for component in path.split('/') {
            check_component(component).map_err(bad)?;
        }
        Ok(Self(path.to_owned()))
    }

    /// Parses the path form of `/proc/PID/cgroup` and systemd's `ControlGroup` (`/a/b`, `/`).
    pub fn from_absolute(path: &str) -> Result<Self, CgroupError> {
        match path.strip_prefix('/') {
            Some(rest) => Self::new(rest),
            None => Err(CgroupError::BadPath {
                path: path.to_owned(),
                reason: "expected a path starting with '/'",
            }),
        }
    }

    /// The path relative to the root, without a leading `/` (`""` for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root cgroup.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last component (`""` for the root).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    /// The parent cgroup; `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rsplit_once('/') {
            Some((parent, _)) => Self(parent.to_owned()),
            None => Self::root(),
        })
    }

    /// A child cgroup named `name` (one path component).
    pub fn join(&self, name: &str) -> Result<Self, CgroupError> {
        check_component(name).map_err(|reason| CgroupError::BadPath {
            path: name.to_owned(),
            reason,
        })?;
        Ok(if self.is_root() {
            Self(name.to_owned())
        } else {
            Self(format!("{}/{name}", self.0))
        })
    }

    /// Every strict ancestor, from the root down to the parent (empty for the root).
    pub fn ancestors(&self) -> Vec<Self> {
        let mut out = Vec::new();
        let mut cur = self.parent();
        while let Some(p) = cur {
            cur = p.parent();
            out.push(p);
        }
        out.reverse();
        out
    }

    /// `/path/file` for messages (`/file` for the root).
    pub fn file_display(&self, file: &str) -> String {
        if self.is_root() {
            format!("/{file}")
        } else {
            format!("/{}/{file}", self.0)
        }
    }

    /// Whether `self` is a strict ancestor of `other`.
    pub fn is_ancestor_of(&self, other: &CgroupPath) -> bool {
        if self.is_root() {
            return !other.is_root();
        }
        other
            .0
            .strip_prefix(&self.0)
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Whether one of the two contains the other (or they are equal).
    pub fn overlaps(&self, other: &CgroupPath) -> bool {
        self == other || self.is_ancestor_of(other) || other.is_ancestor_of(self)
    }
}

fn check_component(component: &str) -> Result<(), &'static str> {
    if component.is_empty() {
        return Err("empty path component");
    }
    if component == "." || component == ".." {
        return Err("'.' and '..' are not allowed");
    }
    if component.contains('/') {
        return Err("a name may not contain '/'");
    }
    if component.bytes().any(|b| b == 0 || b == b'\n') {
        return Err("NUL and newline are not allowed");
    }
    if component.len() > 255 {
        return Err("a path component is longer than 255 bytes");
    }
    Ok(())
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

impl fmt::Debug for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CgroupPath({self})")
    }
}

impl serde::Serialize for CgroupPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for CgroupPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        CgroupPath::new(&text).map_err(serde::de::Error::custom)
    }
}

/// Access to the cgroup v2 tree mounted at `root`.
#[derive(Debug)]
pub struct CgroupFs {
    root: PathBuf,
    emulation: Option<emulate::Emulation>,
}

impl CgroupFs {
    /// The real cgroupfs mounted at `root` (`/sys/fs/cgroup`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            emulation: None,
        }
    }

    /// A plain directory tree standing in for cgroupfs, with kernel behaviour emulated as
    /// described in the module documentation. `proc_root`, if given, is a fake `/proc` whose
    /// `PID/cgroup` files are updated when a pid is written to `cgroup.procs`.
    pub fn emulated(
        root: impl Into<PathBuf>,
        kernel: EmulatedKernel,
        proc_root: Option<PathBuf>,
    ) -> Self {
        Self {
            root: root.into(),
            emulation: Some(emulate::Emulation::new(kernel, proc_root)),
        }
    }

    /// The real cgroupfs if `root` is a cgroup2 mount, otherwise an emulated tree whose
    /// kernel features are guessed from the files already in it (see [`EmulatedKernel::infer`]).
    pub fn open(root: impl Into<PathBuf>, proc_root: Option<PathBuf>) -> Self {
        let root = root.into();
        if is_cgroup2_mount(&root) {
            Self::new(root)
        } else {
            let kernel = EmulatedKernel::infer(&root);
            Self::emulated(root, kernel, proc_root)
        }
    }

    /// Whether this is an emulated tree rather than the kernel's.
    #[cfg(test)]
    pub fn is_emulated(&self) -> bool {
        self.emulation.is_some()
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a cgroup.
    pub fn dir(&self, path: &CgroupPath) -> PathBuf {
        if path.is_root() {
            self.root.clone()
        } else {
            self.root.join(path.as_str())
        }
    }

    /// The path of an attribute file; `file` must be a plain file name.
    pub fn file_path(&self, path: &CgroupPath, file: &str) -> Result<PathBuf, CgroupError> {
        check_component(file).map_err(|reason| CgroupError::BadPath {
            path: file.to_owned(),
            reason,
        })?;
        Ok(self.dir(path).join(file))
    }

    /// Whether the cgroup exists.
    pub fn exists(&self, path: &CgroupPath) -> bool {
        self.dir(path).is_dir()
    }

    /// Whether the cgroup has the attribute file `file`.
    pub fn has_file(&self, path: &CgroupPath, file: &str) -> bool {
        self.file_path(path, file).is_ok_and(|p| p.is_file())
    }

    /// Reads an attribute file (the whole content, trailing newline included).
    pub fn read(&self, path: &CgroupPath, file: &str) -> Result<String, CgroupError> {
        let p = self.file_path(path, file)?;
        std::fs::read_to_string(&p).map_err(|e| CgroupError::io("read", &p, e))
    }

    /// Reads an attribute file; `None` if it (or the cgroup) does not exist.
    pub fn read_opt(&self, path: &CgroupPath, file: &str) -> Result<Option<String>, CgroupError> {
        match self.read(path, file) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` to an attribute file in a single `write(2)` (a newline is appended if
    /// missing), then reads the file back and returns what it holds. The file must exist: a
    /// write never creates one.
    pub fn write(&self, path: &CgroupPath, file: &str, value: &str) -> Result<String, CgroupError> {
        let p = self.file_path(path, file)?;
        let mut text = value.to_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        match &self.emulation {
            Some(emu) => emu.write(self, path, file, &text)?,
            None => write_raw(&p, &text)
                .map_err(|e| CgroupError::io(format!("write {:?} to", value.trim_end()), &p, e))?,
        }
        self.read(path, file)
    }

    /// Creates a cgroup (its parent must exist).
    pub fn mkdir(&self, path: &CgroupPath) -> Result<(), CgroupError> {
        if path.is_root() {
            return Err(CgroupError::BadPath {
                path: String::new(),
                reason: "the root cgroup cannot be created",
            });
        }
        let dir = self.dir(path);
        std::fs::create_dir(&dir).map_err(|e| CgroupError::io("create", &dir, e))?;
        if let Some(emu) = &self.emulation {
            emu.populate(self, path)?;
        }
        Ok(())
    }

    /// Removes an empty cgroup (no processes, no children).
    pub fn rmdir(&self, path: &CgroupPath) -> Result<(), CgroupError> {
        if path.is_root() {
            return Err(CgroupError::BadPath {
                path: String::new(),
                reason: "the root cgroup cannot be removed",
            });
        }
        match &self.emulation {
            Some(emu) => emu.rmdir(self, path),
            None => {
                let dir = self.dir(path);
                std::fs::remove_dir(&dir).map_err(|e| CgroupError::io("remove", &dir, e))
            }
        }
    }

    /// The processes in a cgroup (`cgroup.procs`).
    pub fn procs(&self, path: &CgroupPath) -> Result<Vec<u32>, CgroupError> {
        let text = self.read(path, "cgroup.procs")?;
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.trim().parse::<u32>().map_err(|_| CgroupError::Parse {
                    path: self.dir(path).join("cgroup.procs"),
                    content: l.to_owned(),
                    reason: "expected one pid per line".to_owned(),
                })
            })
            .collect()
    }

    /// The child cgroups, sorted by name.
    pub fn children(&self, path: &CgroupPath) -> Result<Vec<CgroupPath>, CgroupError> {
        let dir = self.dir(path);
        let entries = std::fs::read_dir(&dir).map_err(|e| CgroupError::io("list", &dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CgroupError::io("list", &dir, e))?;
            let is_dir = entry
                .file_type()
                .map_err(|e| CgroupError::io("stat", &entry.path(), e))?
                .is_dir();
            if !is_dir {
                continue;
            }
            // Names that are not UTF-8 or not valid components are not ours to touch.
            if let Some(name) = entry.file_name().to_str()
                && let Ok(child) = path.join(name)
            {
                out.push(child);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Emulation only: make writes of anything but `member` to `path`'s
    /// `cpuset.cpus.partition` read back `<value> invalid (<reason>)`. No-op on real cgroupfs.
    pub fn emulate_reject_partition(&self, path: &CgroupPath, reason: Option<&str>) {
        if let Some(emu) = &self.emulation {
            emu.reject_partition(path, reason);
        }
    }

    /// Emulation only: the successful writes since the last call (`/path/file=value`, in
    /// order), for tests that check ordering. Empty on real cgroupfs.
    pub fn emulated_writes(&self) -> Vec<String> {
        self.emulation
            .as_ref()
            .map(emulate::Emulation::take_log)
            .unwrap_or_default()
    }

    /// Emulation only: make writes of `value` (any value if `None`) to `path`/`file` fail with
    /// the OS error `errno`; `errno == 0` clears. No-op on real cgroupfs.
    pub fn emulate_fail_write(
        &self,
        path: &CgroupPath,
        file: &str,
        value: Option<&str>,
        errno: i32,
    ) {
        if let Some(emu) = &self.emulation {
            emu.fail_write(path, file, value, errno);
        }
    }
}

/// Whether `path` is the root of a cgroup2 mount.
pub fn is_cgroup2_mount(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

fn write_raw(path: &Path, text: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    // One write(2): cgroupfs handlers see each write as one command.
    let n = f.write(text.as_bytes())?;
    if n != text.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write ({n} of {} bytes)", text.len()),
        ));
    }
    Ok(())
}

/// The cgroup v2 cgroup of a process, from the `0::` line of `<proc_root>/PID/cgroup`.
pub fn cgroup_of_pid(proc_root: &Path, pid: u32) -> Result<CgroupPath, CgroupError> {
    let p = proc_root.join(pid.to_string()).join("cgroup");
    let text = std::fs::read_to_string(&p).map_err(|e| CgroupError::io("read", &p, e))?;
    let parse_err = |reason: &str| CgroupError::Parse {
        path: p.clone(),
        content: text.clone(),
        reason: reason.to_owned(),
    };
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| parse_err("no cgroup v2 (0::) line: is this a cgroup v1 or hybrid host?"))?;
    if line.ends_with(" (deleted)") {
        return Err(parse_err("the process's cgroup has been removed"));
    }
    CgroupPath::from_absolute(line).map_err(|_| parse_err("not a valid cgroup path"))
}

/// Whether process `pid` exists under `proc_root`.
pub fn pid_alive(proc_root: &Path, pid: u32) -> bool {
    proc_root.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cgroupfs::EmulatedKernel;

    #[test]
    fn paths_are_validated() {
        for ok in [
            "",
            "a",
            "machine.slice/machine-qemu\\x2d1\\x2dvm.scope",
            "a/b/c",
            "a b",
        ] {
            assert!(CgroupPath::new(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "/a", "a/", "a//b", "..", "a/../b", "./a", "a/.", "a\0b", "a\nb",
        ] {
            assert!(CgroupPath::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(CgroupPath::from_absolute("/").unwrap(), CgroupPath::root());
        assert_eq!(CgroupPath::from_absolute("/a/b").unwrap().as_str(), "a/b");
        assert!(CgroupPath::from_absolute("a").is_err());
        assert!(CgroupPath::root().join("..").is_err());
        assert!(CgroupPath::root().join("a/b").is_err());
        assert!(serde_json::from_str::<CgroupPath>("\"../etc\"").is_err());
    }

    #[test]
    fn path_relations() {
        let p = CgroupPath::new("a/b/c").unwrap();
        let anc: Vec<String> = p.ancestors().iter().map(|a| a.to_string()).collect();
        assert_eq!(anc, ["/", "/a", "/a/b"]);
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(
            CgroupPath::new("a").unwrap().parent(),
            Some(CgroupPath::root())
        );
        assert!(CgroupPath::root().parent().is_none());
        assert!(CgroupPath::root().is_ancestor_of(&p));
        assert!(CgroupPath::new("a").unwrap().is_ancestor_of(&p));
        assert!(!CgroupPath::new("a/b/c").unwrap().is_ancestor_of(&p));
        assert!(
            !CgroupPath::new("a/bb")
                .unwrap()
                .is_ancestor_of(&CgroupPath::new("a/b").unwrap())
        );
        assert!(
            !CgroupPath::new("a/b")
                .unwrap()
                .is_ancestor_of(&CgroupPath::new("a/bb").unwrap())
        );
        assert!(p.overlaps(&CgroupPath::new("a").unwrap()));
        assert_eq!(p.file_name(), "c");
        assert_eq!(p.to_string(), "/a/b/c");
    }

    #[test]
    fn real_mode_reads_writes_and_reports_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = CgroupFs::new(tmp.path());
        let cg = CgroupPath::new("x").unwrap();
        fs.mkdir(&cg).unwrap();
        // A write never creates a file.
        let err = fs.write(&cg, "cpuset.cpus", "2-3").unwrap_err();
        assert!(err.is_not_found());
        assert!(err.to_string().contains("x/cpuset.cpus"), "{err}");
        std::fs::write(fs.dir(&cg).join("cpuset.cpus"), "\n").unwrap();
        assert_eq!(fs.write(&cg, "cpuset.cpus", "2-3").unwrap(), "2-3\n");
        assert_eq!(fs.read_opt(&cg, "nope").unwrap(), None);
        assert!(fs.read(&cg, "../x").is_err());
        std::fs::write(fs.dir(&cg).join("cgroup.procs"), "12\n34\n").unwrap();
        assert_eq!(fs.procs(&cg).unwrap(), vec![12, 34]);
        assert_eq!(fs.children(&CgroupPath::root()).unwrap(), vec![cg.clone()]);
        assert!(
            fs.rmdir(&cg).is_err(),
            "plain rmdir of a non-empty directory fails"
        );
    }

    fn emulated() -> (tempfile::TempDir, CgroupFs) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cg");
        let proc_root = tmp.path().join("proc");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu memory pids\n").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "memory\n").unwrap();
        std::fs::write(root.join("cgroup.procs"), "1\n7\n").unwrap();
        for pid in [1, 7] {
            std::fs::create_dir_all(proc_root.join(pid.to_string())).unwrap();
            std::fs::write(proc_root.join(format!("{pid}/cgroup")), "0::/\n").unwrap();
        }
        let fs = CgroupFs::emulated(&root, EmulatedKernel::LINUX_6_12, Some(proc_root));
        (tmp, fs)
    }

    #[test]
    fn emulated_tree_behaves_like_cgroupfs() {
        let (tmp, fs) = emulated();
        assert!(fs.is_emulated());
        assert!(!is_cgroup2_mount(tmp.path()));
        let root = CgroupPath::root();
        let a = CgroupPath::new("a").unwrap();
        let b = CgroupPath::new("a/b").unwrap();
        fs.mkdir(&a).unwrap();
        assert_eq!(fs.read(&a, "cgroup.controllers").unwrap(), "memory\n");
        assert!(
            !fs.has_file(&a, "cpuset.cpus"),
            "cpuset not enabled in the parent"
        );
        // Enabling the controller gives the children its files, in the kernel's order.
        assert_eq!(
            fs.write(&root, "cgroup.subtree_control", "+cpuset")
                .unwrap(),
            "cpuset memory\n"
        );
        assert_eq!(fs.read(&a, "cpuset.cpus.partition").unwrap(), "member\n");
        assert_eq!(fs.read(&a, "cpuset.cpus.exclusive").unwrap(), "\n");
        assert!(fs.write(&root, "cgroup.subtree_control", "+bogus").is_err());
        // cpulists are stored in canonical form; bad ones are EINVAL.
        assert_eq!(fs.write(&a, "cpuset.cpus", "3,2,4").unwrap(), "2-4\n");
        let err = fs.write(&a, "cpuset.cpus", "4-2").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::EINVAL as i32));
        let err = fs.write(&a, "cpuset.cpus.partition", "bogus").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::EINVAL as i32));
        // Moving a process updates cgroup.procs, /proc/PID/cgroup and cgroup.events.
        fs.mkdir(&b).unwrap();
        fs.write(&b, "cgroup.procs", "7").unwrap();
        assert_eq!(fs.read(&root, "cgroup.procs").unwrap(), "1\n");
        assert_eq!(fs.procs(&b).unwrap(), vec![7]);
        assert_eq!(cgroup_of_pid(&tmp.path().join("proc"), 7).unwrap(), b);
        assert!(
            fs.read(&a, "cgroup.events")
                .unwrap()
                .contains("populated 1")
        );
        assert!(
            fs.read(&b, "cgroup.events")
                .unwrap()
                .contains("populated 1")
        );
        let err = fs.write(&b, "cgroup.procs", "99").unwrap_err();
        assert!(
            err.is_not_found(),
            "ESRCH for a pid that does not exist: {err}"
        );
        // No internal processes: b has a process, so it cannot enable controllers.
        fs.write(&a, "cgroup.subtree_control", "+cpuset").unwrap();
        let err = fs
            .write(&b, "cgroup.subtree_control", "+cpuset")
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::EBUSY as i32));
        // A parent cannot drop a controller a child still enables... (a enables it for b)
        let err = fs
            .write(&root, "cgroup.subtree_control", "-cpuset")
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::EBUSY as i32));
        // ...and a populated or non-leaf cgroup cannot be removed.
        assert_eq!(
            fs.rmdir(&a).unwrap_err().raw_os_error(),
            Some(nix::errno::Errno::EBUSY as i32)
        );
        assert_eq!(
            fs.rmdir(&b).unwrap_err().raw_os_error(),
            Some(nix::errno::Errno::EBUSY as i32)
        );
        fs.write(&root, "cgroup.procs", "7").unwrap();
        assert!(
            fs.read(&a, "cgroup.events")
                .unwrap()
                .contains("populated 0")
        );
        fs.rmdir(&b).unwrap();
        assert!(fs.rmdir(&b).unwrap_err().is_not_found());
        fs.write(&a, "cgroup.subtree_control", "-cpuset").unwrap();
        fs.write(&root, "cgroup.subtree_control", "-cpuset")
            .unwrap();
        assert!(!fs.has_file(&a, "cpuset.cpus"));
        assert_eq!(
            fs.read(&root, "cgroup.subtree_control").unwrap(),
            "memory\n"
        );
        fs.rmdir(&a).unwrap();
        assert!(!fs.exists(&a));
    }

    #[test]
    fn emulated_rejections_and_failures() {
        let (_tmp, fs) = emulated();
        let root = CgroupPath::root();
        let a = CgroupPath::new("a").unwrap();
        fs.write(&root, "cgroup.subtree_control", "+cpuset")
            .unwrap();
        fs.mkdir(&a).unwrap();
        fs.emulate_reject_partition(&a, Some("Parent is not a partition root"));
        assert_eq!(
            fs.write(&a, "cpuset.cpus.partition", "isolated").unwrap(),
            "isolated invalid (Parent is not a partition root)\n"
        );
        assert_eq!(
            fs.write(&a, "cpuset.cpus.partition", "member").unwrap(),
            "member\n"
        );
        fs.emulate_reject_partition(&a, None);
        assert_eq!(
            fs.write(&a, "cpuset.cpus.partition", "root").unwrap(),
            "root\n"
        );
        fs.emulate_fail_write(&a, "cpuset.cpus", Some("2"), nix::errno::Errno::EIO as i32);
        assert!(fs.write(&a, "cpuset.cpus", "2").is_err());
        assert!(fs.write(&a, "cpuset.cpus", "3").is_ok());
        fs.emulate_fail_write(&a, "cpuset.cpus", Some("2"), 0);
        assert!(fs.write(&a, "cpuset.cpus", "2").is_ok());
        let log = fs.emulated_writes();
        assert_eq!(
            log.first().map(String::as_str),
            Some("/cgroup.subtree_control=+cpuset")
        );
        assert_eq!(log.last().map(String::as_str), Some("/a/cpuset.cpus=2"));
        assert!(fs.emulated_writes().is_empty());
    }

    #[test]
    fn open_infers_the_emulated_kernel() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), "cpuset\n").unwrap();
        assert_eq!(EmulatedKernel::infer(tmp.path()), EmulatedKernel::LINUX_6_1);
        std::fs::write(tmp.path().join("cpuset.cpus.isolated"), "\n").unwrap();
        assert_eq!(
            EmulatedKernel::infer(tmp.path()),
            EmulatedKernel::LINUX_6_12
        );
        std::fs::create_dir(tmp.path().join("x")).unwrap();
        std::fs::write(tmp.path().join("x/cpuset.cpus"), "\n").unwrap();
        std::fs::write(tmp.path().join("x/cpuset.cpus.partition"), "member\n").unwrap();
        assert_eq!(EmulatedKernel::infer(tmp.path()), EmulatedKernel::LINUX_6_1);
        let fs = CgroupFs::open(tmp.path(), None);
        assert!(fs.is_emulated());
    }

    #[test]
    fn cgroup_of_pid_reads_v2_line() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("42");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup"), "0::/user.slice/x.scope\n").unwrap();
        assert_eq!(
            cgroup_of_pid(tmp.path(), 42).unwrap().as_str(),
            "user.slice/x.scope"
        );
        std::fs::write(
            d.join("cgroup"),
            "12:cpuset:/\n1:name=systemd:/init.scope\n",
        )
        .unwrap();
        assert!(cgroup_of_pid(tmp.path(), 42).is_err());
        std::fs::write(d.join("cgroup"), "0::/gone (deleted)\n").unwrap();
        assert!(cgroup_of_pid(tmp.path(), 42).is_err());
        assert!(cgroup_of_pid(tmp.path(), 43).unwrap_err().is_not_found());
        assert!(pid_alive(tmp.path(), 42));
        assert!(!pid_alive(tmp.path(), 43));
    }
}
