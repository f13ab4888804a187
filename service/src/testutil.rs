//! Test helpers: an emulated cgroup tree, `/proc` and sysfs in a temporary directory.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kvmisolate_dbus::options::{PartitionType, ReleaseWhen};
use kvmisolate_dbus::{CpuSet, Error, IsolationName};

use crate::apply::{Engine, ExternalEffects};
use crate::cgroupfs::{CgroupFs, CgroupPath, EmulatedKernel};
use crate::host::HostCpus;
use crate::journal::Journal;
use crate::kernel::KernelSupport;
use crate::plan::{ExternalStep, Plan, PlanConfig, Request, Target};

/// Records external steps performed and undone.
#[derive(Debug, Default)]
pub struct RecordingEffects {
    pub log: Mutex<Vec<String>>,
}

impl ExternalEffects for std::sync::Arc<RecordingEffects> {
    fn perform(&self, step: &ExternalStep) -> Result<(), Error> {
        self.log
            .lock()
            .unwrap()
            .push(format!("perform {}", step.kind));
        if step.kind == "fail" {
            return Err(Error::Failed("external step failed".into()));
        }
        Ok(())
    }
    fn undo(&self, step: &ExternalStep) -> Result<(), Error> {
        self.log.lock().unwrap().push(format!("undo {}", step.kind));
        Ok(())
    }
}

pub struct FakeTree {
    pub tmp: tempfile::TempDir,
    pub engine: Engine,
    pub sysfs: PathBuf,
    pub proc_root: PathBuf,
    pub kernel: EmulatedKernel,
}

pub fn cg(p: &str) -> CgroupPath {
    CgroupPath::new(p).unwrap()
}

pub fn cpus(s: &str) -> CpuSet {
    CpuSet::parse(s).unwrap()
}

pub fn name(s: &str) -> IsolationName {
    IsolationName::new(s).unwrap()
}

fn put(p: &Path, text: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, text).unwrap();
}

impl FakeTree {
    /// Six CPUs (0-5), root `cgroup.subtree_control` = `memory pids` (boot state).
    pub fn new(kernel: EmulatedKernel) -> Self {
        Self::build(kernel, false, Box::new(crate::apply::NoExternalEffects))
    }

    /// Same, with the cpuset controller already enabled at the root.
    pub fn with_cpuset(kernel: EmulatedKernel) -> Self {
        Self::build(kernel, true, Box::new(crate::apply::NoExternalEffects))
    }

    pub fn build(
        kernel: EmulatedKernel,
        cpuset_enabled: bool,
        effects: Box<dyn ExternalEffects + Send + Sync>,
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cgroup");
        let proc_root = tmp.path().join("proc");
        let sysfs = tmp.path().join("sys");
        for f in ["present", "online", "possible"] {
            put(&sysfs.join("devices/system/cpu").join(f), "0-5\n");
        }
        put(
            &root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        );
        put(&root.join("cgroup.subtree_control"), "memory pids\n");
        put(&root.join("cgroup.procs"), "1\n");
        put(&root.join("cpuset.cpus.effective"), "0-5\n");
        put(&root.join("cpuset.mems.effective"), "0\n");
        if kernel.exclusive {
            put(&root.join("cpuset.cpus.isolated"), "\n");
        }
        for pid in [1u32, 100, 101, 200] {
            put(&proc_root.join(pid.to_string()).join("cgroup"), "0::/\n");
        }
        let fs = CgroupFs::emulated(&root, kernel, Some(proc_root.clone()));
        if cpuset_enabled {
            fs.write(&CgroupPath::root(), "cgroup.subtree_control", "+cpuset")
                .unwrap();
        }
        for p in [
            "init.scope",
            "system.slice",
            "system.slice/dbus.service",
            "user.slice",
            "user.slice/session-1.scope",
            "machine.slice",
            "machine.slice/vm.scope",
        ] {
            fs.mkdir(&cg(p)).unwrap();
        }
        fs.write(&cg("init.scope"), "cgroup.procs", "1").unwrap();
        fs.write(&cg("user.slice/session-1.scope"), "cgroup.procs", "100")
            .unwrap();
        fs.write(&cg("user.slice/session-1.scope"), "cgroup.procs", "101")
            .unwrap();
        fs.write(&cg("machine.slice/vm.scope"), "cgroup.procs", "200")
            .unwrap();
        fs.emulated_writes();
        let journal = Journal::open(tmp.path().join("run/isolations")).unwrap();
        let engine = Engine::new(fs, &proc_root, journal, effects);
        Self {
            tmp,
            engine,
            sysfs,
            proc_root,
            kernel,
        }
    }

    pub fn fs(&self) -> &CgroupFs {
        &self.engine.fs
    }

    pub fn host(&self) -> HostCpus {
        HostCpus::read(&self.sysfs).unwrap()
    }

    pub fn kernel_support(&self) -> KernelSupport {
        KernelSupport::detect(self.fs(), "test")
    }

    /// Every file of the cgroup tree and of `/proc/*/cgroup`, byte for byte.
    pub fn state(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for base in [self.fs().root().to_owned(), self.proc_root.clone()] {
            let mut stack = vec![base.clone()];
            while let Some(dir) = stack.pop() {
                out.insert(format!("{}/", dir.display()), Vec::new());
                for e in std::fs::read_dir(&dir).unwrap() {
                    let e = e.unwrap();
                    let p = e.path();
                    if e.file_type().unwrap().is_dir() {
                        stack.push(p);
                    } else {
                        out.insert(p.display().to_string(), std::fs::read(&p).unwrap());
                    }
                }
            }
        }
        out
    }

    pub fn request(&self, n: &str, c: &str, target: Target) -> Request {
        Request {
            name: name(n),
            cpus: cpus(c),
            target,
            partition: None,
            release_when: ReleaseWhen::TargetExits,
            owner_uid: 1000,
            caller: Some(":1.42".into()),
            created_usec: 1,
            pre_steps: Vec::new(),
        }
    }

    pub fn unit_request(&self, n: &str, c: &str) -> Request {
        self.request(
            n,
            c,
            Target::Unit {
                unit: "vm.scope".into(),
                cgroup: cg("machine.slice/vm.scope"),
            },
        )
    }

    pub fn pids_request(&self, n: &str, c: &str, pids: &[u32]) -> Request {
        self.request(
            n,
            c,
            Target::Own {
                cgroup: Target::own_cgroup(&name(n)),
                pids: pids.to_vec(),
                create: true,
            },
        )
    }

    pub fn plan(&self, req: &Request) -> Result<Plan, Error> {
        let active: Vec<_> = self
            .engine
            .journal
            .load_all()
            .unwrap()
            .records
            .iter()
            .map(|r| r.to_active())
            .collect();
        let snap = self.engine.snapshot(&req.target)?;
        crate::plan::plan(
            req,
            &self.host(),
            &self.kernel_support(),
            &snap,
            &PlanConfig::default(),
            &active,
        )
    }

    /// Plans and applies.
    pub fn isolate(&self, req: &Request) -> Result<crate::journal::Record, Error> {
        let plan = self.plan(req)?;
        self.engine.apply(req, &plan, None)
    }

    pub fn read(&self, p: &str, f: &str) -> String {
        self.fs().read(&cg(p), f).unwrap()
    }
}

/// Shorthand for a partition type.
pub fn ptype(s: &str) -> PartitionType {
    s.parse().unwrap()
}
