//! Test helpers: an emulated cgroup tree, `/proc` and sysfs in a temporary directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::engine::Error;
use kvmisolate_dbus::options::ReleaseWhen;
use kvmisolate_dbus::{CpuSet, IsolationName};

use crate::engine::apply::Engine;
use crate::engine::effects::ExternalEffects;
use crate::engine::journal::Journal;
use crate::engine::model::{ExternalStep, Request, Target};
use crate::engine::plan::{Plan, PlanConfig};
use crate::host::HostCpus;
use crate::host::cgroupfs::{CgroupFs, CgroupPath, EmulatedKernel};
use crate::host::kernel::KernelSupport;

/// A stand-in for the systemd layer: `start-scope` creates a scope cgroup (and its slice) and
/// moves pids into it, recording their original cgroups in `prepare`; undo moves the living
/// pids back and removes what it created. `fail` always fails.
#[derive(Debug)]
pub struct FakeSystemd {
    pub fs: CgroupFs,
    pub proc_root: PathBuf,
    pub log: std::sync::Arc<Mutex<Vec<String>>>,
}

fn fail(e: impl std::fmt::Display) -> Error {
    Error::Failed(e.to_string())
}

impl ExternalEffects for FakeSystemd {
    fn prepare(&self, step: &ExternalStep) -> Result<ExternalStep, Error> {
        let mut step = step.clone();
        if step.kind == "start-scope" {
            let cgroup = cg(step.data["cgroup"].as_str().unwrap());
            let slice = cgroup.parent().unwrap();
            let mut from = serde_json::Map::new();
            for pid in step.data["pids"].as_array().unwrap() {
                let pid = pid.as_u64().unwrap() as u32;
                let c = crate::host::cgroupfs::cgroup_of_pid(&self.proc_root, pid).map_err(fail)?;
                from.insert(pid.to_string(), c.as_str().into());
            }
            step.data["from"] = from.into();
            step.data["slice_existed"] = self.fs.exists(&slice).into();
        }
        Ok(step)
    }

    fn perform(&self, step: &ExternalStep) -> Result<(), Error> {
        self.log
            .lock()
            .unwrap()
            .push(format!("perform {}", step.kind));
        match step.kind.as_str() {
            "start-scope" => {
                let cgroup = cg(step.data["cgroup"].as_str().unwrap());
                let slice = cgroup.parent().unwrap();
                if !self.fs.exists(&slice) {
                    self.fs.mkdir(&slice).map_err(fail)?;
                }
                self.fs.mkdir(&cgroup).map_err(fail)?;
                for pid in step.data["pids"].as_array().unwrap() {
                    self.fs
                        .write(&cgroup, "cgroup.procs", &pid.to_string())
                        .map_err(fail)?;
                }
                Ok(())
            }
            "fail" => Err(Error::Failed("external step failed".into())),
            _ => Ok(()),
        }
    }

    fn undo(&self, step: &ExternalStep) -> Result<(), Error> {
        if step.kind != "start-scope" {
            self.log.lock().unwrap().push(format!("undo {}", step.kind));
            return Ok(());
        }
        let root_control = self
            .fs
            .read(&CgroupPath::root(), "cgroup.subtree_control")
            .unwrap();
        self.log.lock().unwrap().push(format!(
            "undo {} (cgroup.subtree_control of / is {:?})",
            step.kind,
            root_control.trim_end()
        ));
        let cgroup = cg(step.data["cgroup"].as_str().unwrap());
        let slice = cgroup.parent().unwrap();
        if let Some(from) = step.data.get("from").and_then(|f| f.as_object()) {
            for (pid, orig) in from {
                let pid: u32 = pid.parse().unwrap();
                if crate::host::cgroupfs::cgroup_of_pid(&self.proc_root, pid).ok()
                    == Some(cgroup.clone())
                {
                    self.fs
                        .write(
                            &cg(orig.as_str().unwrap()),
                            "cgroup.procs",
                            &pid.to_string(),
                        )
                        .map_err(fail)?;
                }
            }
        }
        if self.fs.exists(&cgroup) {
            self.fs.rmdir(&cgroup).map_err(fail)?;
        }
        let slice_existed = step
            .data
            .get("slice_existed")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        if !slice_existed
            && self.fs.exists(&slice)
            && self.fs.children(&slice).map_err(fail)?.is_empty()
        {
            self.fs.rmdir(&slice).map_err(fail)?;
        }
        Ok(())
    }
}

pub struct FakeTree {
    pub tmp: tempfile::TempDir,
    pub engine: Engine,
    pub sysfs: PathBuf,
    pub proc_root: PathBuf,
    pub systemd_log: std::sync::Arc<Mutex<Vec<String>>>,
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
        Self::build(kernel, false)
    }

    /// Same, with the cpuset controller already enabled at the root.
    pub fn with_cpuset(kernel: EmulatedKernel) -> Self {
        Self::build(kernel, true)
    }

    pub fn build(kernel: EmulatedKernel, cpuset_enabled: bool) -> Self {
        // A tmpfs when there is one: thousands of trees are built by the crash tests.
        let shm = Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("kvmisolated-test")
                .tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
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
        for pid in [1u32, 100, 101, 200, 201] {
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
            "machine.slice/vm2.scope",
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
        let mut journal = Journal::open(tmp.path().join("run/isolations")).unwrap();
        // fsync makes the exhaustive crash tests slow and proves nothing on a tmpfs.
        journal.set_fsync(false);
        let systemd = FakeSystemd {
            fs: CgroupFs::emulated(&root, kernel, Some(proc_root.clone())),
            proc_root: proc_root.clone(),
            log: Default::default(),
        };
        let systemd_log = systemd.log.clone();
        let engine = Engine::new(fs, &proc_root, journal, Box::new(systemd));
        Self {
            tmp,
            engine,
            sysfs,
            proc_root,
            systemd_log,
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

    /// Asserts that the tree is in `expected` state, listing only the differences.
    #[track_caller]
    pub fn assert_state(&self, expected: &BTreeMap<String, Vec<u8>>, context: &str) {
        let now = self.state();
        if now == *expected {
            return;
        }
        let root = self.tmp.path().display().to_string();
        let mut diff = Vec::new();
        for (k, v) in expected {
            match now.get(k) {
                None => diff.push(format!("missing {}", k.replace(&root, ""))),
                Some(n) if n != v => diff.push(format!(
                    "{}: {:?} instead of {:?}",
                    k.replace(&root, ""),
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )),
                _ => {}
            }
        }
        for k in now.keys().filter(|k| !expected.contains_key(*k)) {
            diff.push(format!("extra {}", k.replace(&root, "")));
        }
        panic!("{context}: the tree differs:\n  {}", diff.join("\n  "));
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
            tunings: Default::default(),
        }
    }

    pub fn unit_request(&self, n: &str, c: &str) -> Request {
        self.unit_request_for("vm.scope", n, c)
    }

    pub fn unit_request_for(&self, unit: &str, n: &str, c: &str) -> Request {
        self.request(
            n,
            c,
            Target::Unit {
                unit: unit.into(),
                cgroup: cg(&format!("machine.slice/{unit}")),
            },
        )
    }

    /// A pids target the way the systemd layer does it: an external step creates the scope
    /// `kvmisolate.slice/kvmisolate-<n>.scope` with the pids in it.
    pub fn scope_request(&self, n: &str, c: &str, pids: &[u32]) -> Request {
        let cgroup = cg(&format!("kvmisolate.slice/kvmisolate-{n}.scope"));
        let mut req = self.request(
            n,
            c,
            Target::Own {
                cgroup: cgroup.clone(),
                pids: pids.to_vec(),
                create: false,
            },
        );
        req.pre_steps = vec![ExternalStep {
            kind: "start-scope".into(),
            data: serde_json::json!({"cgroup": cgroup.as_str(), "pids": pids}),
        }];
        req
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
        self.plan_with(req, &PlanConfig::default())
    }

    /// Plans `req` under `config` against the isolations in the journal.
    pub fn plan_with(&self, req: &Request, config: &PlanConfig) -> Result<Plan, Error> {
        let active: Vec<_> = self
            .engine
            .journal
            .records()
            .unwrap()
            .iter()
            .map(|r| r.to_active())
            .collect();
        let snap = self.engine.snapshot(&req.target)?;
        crate::engine::plan::plan(
            req,
            &self.host(),
            &self.kernel_support(),
            &snap,
            config,
            &active,
        )
    }

    /// Plans and applies.
    pub fn isolate(&self, req: &Request) -> Result<crate::engine::journal::Record, Error> {
        let plan = self.plan(req)?;
        self.engine
            .apply(req, &plan, &crate::test_hooks::TestHooks::none())
    }

    /// A running libvirt domain laid out as libvirt does it:
    /// `machine.slice/machine-qemu\x2d<id>\x2d<name>.scope/libvirt/<leaf>`, cpuset enabled
    /// down to the leaves (libvirt asks for it), each leaf's `cpuset.cpus` = its pins (`""`:
    /// none written), process `pid` in the emulator leaf (or the first leaf). Returns the scope.
    pub fn libvirt_domain(
        &self,
        id: u32,
        name: &str,
        leaves: &[(&str, &str)],
        pid: u32,
    ) -> CgroupPath {
        let machine = format!("qemu-{id}-{name}").replace('-', "\\x2d");
        let scope = cg(&format!("machine.slice/machine-{machine}.scope"));
        let dir = scope.join("libvirt").unwrap();
        let fs = self.fs();
        for p in [CgroupPath::root(), cg("machine.slice")] {
            if !fs
                .read(&p, "cgroup.subtree_control")
                .unwrap()
                .contains("cpuset")
            {
                fs.write(&p, "cgroup.subtree_control", "+cpuset").unwrap();
            }
        }
        for p in [&scope, &dir] {
            fs.mkdir(p).unwrap();
            fs.write(p, "cgroup.subtree_control", "+cpuset").unwrap();
        }
        for (leaf, pins) in leaves {
            let p = dir.join(leaf).unwrap();
            fs.mkdir(&p).unwrap();
            if !pins.is_empty() {
                fs.write(&p, "cpuset.cpus", pins).unwrap();
            }
        }
        put(
            &self.proc_root.join(pid.to_string()).join("cgroup"),
            "0::/\n",
        );
        let home = leaves
            .iter()
            .find(|(l, _)| *l == "emulator")
            .or(leaves.first())
            .map(|(l, _)| dir.join(l).unwrap())
            .unwrap_or(dir);
        fs.write(&home, "cgroup.procs", &pid.to_string()).unwrap();
        fs.emulated_writes();
        scope
    }

    /// A libvirt domain's engine request, resolved and selected as the backend does it.
    pub fn libvirt_request(&self, n: &str, domain: &str, want: &str) -> Result<Request, Error> {
        let scope = crate::libvirt::find_scope(self.fs(), domain)?;
        let layout = crate::libvirt::Layout::read(self.fs(), &scope)?;
        let sel =
            crate::libvirt::select(domain, &layout, &cpus(want), &self.host().online, &|_| None)?;
        let mut req = self.request(
            n,
            &sel.cpus.to_string(),
            Target::Libvirt {
                domain: domain.to_owned(),
                cgroup: scope,
                leaves: sel
                    .partitions
                    .into_iter()
                    .map(|(_, cgroup, cpus)| crate::engine::model::LeafPartition { cgroup, cpus })
                    .collect(),
                warnings: sel.warnings,
            },
        );
        req.release_when = ReleaseWhen::TargetExits;
        Ok(req)
    }

    pub fn read(&self, p: &str, f: &str) -> String {
        self.fs().read(&cg(p), f).unwrap()
    }
}
