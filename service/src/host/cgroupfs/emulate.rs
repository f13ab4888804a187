//! A plain directory standing in for cgroupfs: just enough kernel behaviour for the engine's
//! tests and for running the daemon against a temporary tree.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kvmisolate_dbus::CpuSet;

use super::{CgroupError, CgroupFs, CgroupPath};

/// The kernel features an emulated tree pretends to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmulatedKernel {
    /// Child cgroups get `cpuset.cpus.partition` (5.15+).
    pub partitions: bool,
    /// Child cgroups get `cpuset.cpus.exclusive` (6.7+: remote partitions).
    pub exclusive: bool,
}

impl EmulatedKernel {
    /// Linux 6.12: partitions, remote partitions.
    pub const LINUX_6_12: Self = Self {
        partitions: true,
        exclusive: true,
    };
    /// Linux 6.1: local partitions only.
    pub const LINUX_6_1: Self = Self {
        partitions: true,
        exclusive: false,
    };

    /// Guesses the features from an existing tree: the files of the first cgroup with
    /// `cpuset.cpus`, else 6.12 if the root has `cpuset.cpus.isolated`, else 6.1.
    pub fn infer(root: &Path) -> Self {
        let mut dirs = vec![root.to_owned()];
        let mut seen = 0;
        while let Some(dir) = dirs.pop() {
            seen += 1;
            if seen > 1000 {
                break;
            }
            if dir != root && dir.join("cpuset.cpus").is_file() {
                return Self {
                    partitions: dir.join("cpuset.cpus.partition").is_file(),
                    exclusive: dir.join("cpuset.cpus.exclusive").is_file(),
                };
            }
            dirs.extend(subdirs(&dir));
        }
        if root.join("cpuset.cpus.isolated").is_file() {
            Self::LINUX_6_12
        } else {
            Self::LINUX_6_1
        }
    }

    fn cpuset_files(self) -> Vec<(&'static str, &'static str)> {
        let mut files = vec![
            ("cpuset.cpus", "\n"),
            ("cpuset.cpus.effective", "\n"),
            ("cpuset.mems", "\n"),
            ("cpuset.mems.effective", "\n"),
        ];
        if self.partitions {
            files.push(("cpuset.cpus.partition", "member\n"));
        }
        if self.exclusive {
            files.push(("cpuset.cpus.exclusive", "\n"));
            files.push(("cpuset.cpus.exclusive.effective", "\n"));
        }
        files
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

#[derive(Debug)]
struct Failure {
    path: CgroupPath,
    file: String,
    value: Option<String>,
    errno: i32,
}

#[derive(Debug)]
pub(super) struct Emulation {
    kernel: EmulatedKernel,
    proc_root: Option<PathBuf>,
    rejects: Mutex<BTreeMap<CgroupPath, String>>,
    failures: Mutex<Vec<Failure>>,
    log: Mutex<Vec<String>>,
}

fn os_err(op: &str, path: &Path, errno: nix::errno::Errno) -> CgroupError {
    CgroupError::io(op, path, io::Error::from_raw_os_error(errno as i32))
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

impl Emulation {
    pub(super) fn new(kernel: EmulatedKernel, proc_root: Option<PathBuf>) -> Self {
        Self {
            kernel,
            proc_root,
            rejects: Mutex::new(BTreeMap::new()),
            failures: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn reject_partition(&self, path: &CgroupPath, reason: Option<&str>) {
        let mut map = self.rejects.lock().unwrap_or_else(|e| e.into_inner());
        match reason {
            Some(r) => map.insert(path.clone(), r.to_owned()),
            None => map.remove(path),
        };
    }

    pub(super) fn fail_write(
        &self,
        path: &CgroupPath,
        file: &str,
        value: Option<&str>,
        errno: i32,
    ) {
        let mut list = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|f| !(f.path == *path && f.file == file && f.value.as_deref() == value));
        if errno != 0 {
            list.push(Failure {
                path: path.clone(),
                file: file.to_owned(),
                value: value.map(str::to_owned),
                errno,
            });
        }
    }

    fn injected_failure(&self, path: &CgroupPath, file: &str, value: &str) -> Option<i32> {
        let list = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .find(|f| {
                f.path == *path
                    && f.file == file
                    && f.value
                        .as_deref()
                        .is_none_or(|v| v.trim_end() == value.trim_end())
            })
            .map(|f| f.errno)
    }

    fn put(&self, path: &Path, text: &str) -> Result<(), CgroupError> {
        std::fs::write(path, text).map_err(|e| CgroupError::io("write", path, e))
    }

    pub(super) fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn write(
        &self,
        fs: &CgroupFs,
        path: &CgroupPath,
        file: &str,
        text: &str,
    ) -> Result<(), CgroupError> {
        self.write_inner(fs, path, file, text)?;
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{}={}", path.file_display(file), text.trim_end()));
        Ok(())
    }

    fn write_inner(
        &self,
        fs: &CgroupFs,
        path: &CgroupPath,
        file: &str,
        text: &str,
    ) -> Result<(), CgroupError> {
        let p = fs.file_path(path, file)?;
        let op = format!("write {:?} to", text.trim_end());
        if !p.is_file() {
            return Err(os_err(&op, &p, nix::errno::Errno::ENOENT));
        }
        if let Some(errno) = self.injected_failure(path, file, text) {
            return Err(CgroupError::io(op, &p, io::Error::from_raw_os_error(errno)));
        }
        let einval = || os_err(&op, &p, nix::errno::Errno::EINVAL);
        match file {
            "cgroup.subtree_control" => self.subtree_control(fs, path, text, &op),
            "cgroup.procs" => self.move_pid(fs, path, text, &op),
            "cpuset.cpus.partition" => {
                let word = text.trim();
                if !matches!(word, "member" | "root" | "isolated") {
                    return Err(einval());
                }
                let rejects = self.rejects.lock().unwrap_or_else(|e| e.into_inner());
                let (content, valid) = match rejects.get(path) {
                    Some(reason) if word != "member" => {
                        (format!("{word} invalid ({reason})\n"), false)
                    }
                    _ => (format!("{word}\n"), word != "member"),
                };
                drop(rejects);
                self.put(&p, &content)?;
                // A valid partition's effective CPUs are its exclusive CPUs (or its cpuset.cpus);
                // back to member, the emulation shows the empty default it started with.
                let effective = fs.file_path(path, "cpuset.cpus.effective")?;
                if effective.is_file() {
                    let own = |f: &str| fs.read_opt(path, f).ok().flatten().unwrap_or_default();
                    let text = if !valid {
                        "\n".to_owned()
                    } else if !own("cpuset.cpus.exclusive").trim().is_empty() {
                        own("cpuset.cpus.exclusive")
                    } else {
                        own("cpuset.cpus")
                    };
                    self.put(&effective, &text)?;
                }
                Ok(())
            }
            f if f.starts_with("cpuset.cpus") || f.starts_with("cpuset.mems") => {
                let set = CpuSet::parse(text.trim_end()).map_err(|_| einval())?;
                self.put(&p, &format!("{set}\n"))
            }
            _ => self.put(&p, text),
        }
    }

    fn subtree_control(
        &self,
        fs: &CgroupFs,
        path: &CgroupPath,
        text: &str,
        op: &str,
    ) -> Result<(), CgroupError> {
        let p = fs.dir(path).join("cgroup.subtree_control");
        let available = words(&fs.read(path, "cgroup.controllers")?);
        let mut enabled = words(&fs.read(path, "cgroup.subtree_control")?);
        let children = fs.children(path)?;
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for token in text.split_whitespace() {
            let (sign, name) = token.split_at(1);
            if !available.iter().any(|c| c == name) {
                return Err(os_err(op, &p, nix::errno::Errno::EINVAL));
            }
            match sign {
                "+" => {
                    if !path.is_root() && !fs.procs(path)?.is_empty() {
                        // The "no internal processes" rule.
                        return Err(os_err(op, &p, nix::errno::Errno::EBUSY));
                    }
                    if !enabled.iter().any(|c| c == name) {
                        enabled.push(name.to_owned());
                        added.push(name.to_owned());
                    }
                }
                "-" => {
                    for child in &children {
                        if words(&fs.read(child, "cgroup.subtree_control")?)
                            .iter()
                            .any(|c| c == name)
                        {
                            return Err(os_err(op, &p, nix::errno::Errno::EBUSY));
                        }
                    }
                    if enabled.iter().any(|c| c == name) {
                        enabled.retain(|c| c != name);
                        removed.push(name.to_owned());
                    }
                }
                _ => return Err(os_err(op, &p, nix::errno::Errno::EINVAL)),
            }
        }
        enabled.sort_by_key(|c| available.iter().position(|a| a == c));
        let line = format!("{}\n", enabled.join(" "));
        self.put(&p, &line)?;
        for child in &children {
            let dir = fs.dir(child);
            self.put(&dir.join("cgroup.controllers"), &line)?;
            if added.iter().any(|c| c == "cpuset") {
                for (name, content) in self.kernel.cpuset_files() {
                    if !dir.join(name).exists() {
                        self.put(&dir.join(name), content)?;
                    }
                }
            }
            if removed.iter().any(|c| c == "cpuset") {
                for (name, _) in self.kernel.cpuset_files() {
                    let f = dir.join(name);
                    if f.exists() {
                        std::fs::remove_file(&f).map_err(|e| CgroupError::io("remove", &f, e))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn move_pid(
        &self,
        fs: &CgroupFs,
        path: &CgroupPath,
        text: &str,
        op: &str,
    ) -> Result<(), CgroupError> {
        let p = fs.dir(path).join("cgroup.procs");
        let pid: u32 = text
            .trim()
            .parse()
            .map_err(|_| os_err(op, &p, nix::errno::Errno::EINVAL))?;
        if let Some(proc_root) = &self.proc_root
            && !proc_root.join(pid.to_string()).is_dir()
        {
            return Err(os_err(op, &p, nix::errno::Errno::ESRCH));
        }
        if !path.is_root() && !words(&fs.read(path, "cgroup.subtree_control")?).is_empty() {
            // The "no internal processes" rule.
            return Err(os_err(op, &p, nix::errno::Errno::EBUSY));
        }
        let mut stack = vec![CgroupPath::root()];
        while let Some(cg) = stack.pop() {
            if let Some(content) = fs.read_opt(&cg, "cgroup.procs")? {
                let kept: String = content
                    .lines()
                    .filter(|l| l.trim() != pid.to_string())
                    .map(|l| format!("{l}\n"))
                    .collect();
                if kept != content {
                    self.put(&fs.dir(&cg).join("cgroup.procs"), &kept)?;
                }
            }
            stack.extend(fs.children(&cg)?);
        }
        // Listed in pid order (the kernel's order is unspecified).
        let mut pids: Vec<u32> = fs.procs(path)?;
        pids.push(pid);
        pids.sort_unstable();
        pids.dedup();
        let content: String = pids.iter().map(|p| format!("{p}\n")).collect();
        self.put(&p, &content)?;
        if let Some(proc_root) = &self.proc_root {
            self.put(
                &proc_root.join(pid.to_string()).join("cgroup"),
                &format!("0::{path}\n"),
            )?;
        }
        self.update_populated(fs, &CgroupPath::root()).map(|_| ())
    }

    /// Rewrites the `populated` line of `cgroup.events` below `path` (processes in the cgroup
    /// or any descendant); returns whether `path` is populated.
    fn update_populated(&self, fs: &CgroupFs, path: &CgroupPath) -> Result<bool, CgroupError> {
        let mut populated = !fs
            .read_opt(path, "cgroup.procs")?
            .unwrap_or_default()
            .trim()
            .is_empty();
        for child in fs.children(path)? {
            populated |= self.update_populated(fs, &child)?;
        }
        if let Some(events) = fs.read_opt(path, "cgroup.events")? {
            let line = format!("populated {}", u8::from(populated));
            let updated: String = events
                .lines()
                .map(|l| {
                    if l.starts_with("populated ") {
                        line.clone()
                    } else {
                        l.to_owned()
                    }
                })
                .map(|l| l + "\n")
                .collect();
            if updated != events {
                self.put(&fs.dir(path).join("cgroup.events"), &updated)?;
            }
        }
        Ok(populated)
    }

    pub(super) fn populate(&self, fs: &CgroupFs, path: &CgroupPath) -> Result<(), CgroupError> {
        let dir = fs.dir(path);
        let parent = path.parent().unwrap_or_default();
        let parent_control = fs
            .read_opt(&parent, "cgroup.subtree_control")?
            .unwrap_or_default();
        let mut files: Vec<(&str, String)> = vec![
            ("cgroup.procs", String::new()),
            ("cgroup.threads", String::new()),
            ("cgroup.subtree_control", "\n".to_owned()),
            ("cgroup.controllers", parent_control.clone()),
            ("cgroup.events", "populated 0\nfrozen 0\n".to_owned()),
            ("cgroup.type", "domain\n".to_owned()),
        ];
        if words(&parent_control).iter().any(|c| c == "cpuset") {
            files.extend(
                self.kernel
                    .cpuset_files()
                    .into_iter()
                    .map(|(n, c)| (n, c.to_owned())),
            );
        }
        for (name, content) in files {
            self.put(&dir.join(name), &content)?;
        }
        Ok(())
    }

    pub(super) fn rmdir(&self, fs: &CgroupFs, path: &CgroupPath) -> Result<(), CgroupError> {
        let dir = fs.dir(path);
        if !dir.is_dir() {
            return Err(os_err("remove", &dir, nix::errno::Errno::ENOENT));
        }
        let busy = !subdirs(&dir).is_empty()
            || fs
                .read_opt(path, "cgroup.procs")?
                .is_some_and(|p| !p.trim().is_empty());
        if busy {
            return Err(os_err("remove", &dir, nix::errno::Errno::EBUSY));
        }
        let entries = std::fs::read_dir(&dir).map_err(|e| CgroupError::io("list", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| CgroupError::io("list", &dir, e))?;
            let f = entry.path();
            std::fs::remove_file(&f).map_err(|e| CgroupError::io("remove", &f, e))?;
        }
        std::fs::remove_dir(&dir).map_err(|e| CgroupError::io("remove", &dir, e))
    }
}
