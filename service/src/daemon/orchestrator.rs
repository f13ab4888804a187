//! The orchestrator between the D-Bus objects and the partition engine: turns a validated
//! request into an engine [`Request`] (resolving systemd units, creating kvmisolate's scope
//! through systemd), runs the engine and the tunings off the async thread (rolling back what
//! was done when a later part fails), and reads an isolation's health back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::Error;
use kvmisolate_dbus::options::IsolationState;
use kvmisolate_dbus::{CpuSet, IsolationName};
use zbus::Connection;

use crate::bus::authz::{self, TargetFacts};
use crate::bus::polkit::Caller;
use crate::bus::request::{IsolateRequest, TargetRequest};
use crate::daemon::ownership::{self, HeldProcess};
use crate::daemon::registry::{Lease, holder_of};
use crate::daemon::systemd::{self, Systemd};
use crate::daemon::systemd_effects::{SystemdEffects, SystemdServices};
use crate::engine::apply::Engine;
use crate::engine::effects::{ExternalEffects, NoExternalEffects};
use crate::engine::journal::{Journal, Record};
use crate::engine::model::{self, Request, Target};
use crate::engine::partition::PartitionState;
use crate::engine::plan::{self, PlanConfig};
use crate::host::HostCpus;
use crate::host::cgroupfs::{CgroupFs, CgroupPath, pid_alive};
use crate::host::kernel::{KernelSupport, kernel_release};
use crate::host::meminfo::MemInfo;
use crate::test_hooks::TestHooks;
use crate::timing;
use crate::tunings::{Holder, HostTunings, NoServices, Paths, Selected, TuningReport};

/// The service's settings (from its command line).
#[derive(Debug, Clone)]
pub struct Config {
    /// cgroup v2 mount point.
    pub cgroup_root: PathBuf,
    /// sysfs mount point.
    pub sysfs_root: PathBuf,
    /// procfs mount point.
    pub proc_root: PathBuf,
    /// Where the journal lives.
    pub run_dir: PathBuf,
    /// Fewest CPUs the host keeps.
    pub min_housekeeping: usize,
    /// Whether CPU 0 may be isolated.
    pub allow_cpu0: bool,
    /// Use systemd when it runs.
    pub use_systemd: bool,
    /// systemd's runtime unit directory (drop-ins).
    pub systemd_runtime_dir: PathBuf,
    /// The test hooks in effect (none in production).
    pub hooks: TestHooks,
    /// `/etc/kvmisolate/kvmisolate.toml`.
    pub file: crate::config::Config,
}

/// What [`Orchestrator::health`] found.
#[derive(Debug, Clone)]
pub struct Health {
    /// Whether the target still has processes.
    pub target_alive: bool,
    /// The isolation's state.
    pub state: IsolationState,
    /// Why (empty when active).
    pub reason: String,
}

/// The engine plus everything needed to drive it from the bus.
pub struct Orchestrator {
    engine: Arc<Engine>,
    config: Config,
    kernel: KernelSupport,
    systemd: Option<Systemd>,
    plan_config: PlanConfig,
    tunings: Arc<HostTunings>,
    /// The last creation time handed out: creation times only grow, even if the clock steps
    /// back, so a name's next lease never has its previous one's identity.
    last_created: std::sync::atomic::AtomicU64,
}

/// Where libvirt's QEMU driver writes `<domain>.pid`.
const LIBVIRT_QEMU_RUN_DIR: &str = "/run/libvirt/qemu";

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Failed(e.to_string())
}

fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Orchestrator {
    /// Detects the host and opens the journal.
    pub async fn new(config: Config, conn: Connection) -> anyhow::Result<Self> {
        let fs = if config.hooks.fake_kernel() {
            CgroupFs::open(&config.cgroup_root, Some(config.proc_root.clone()))
        } else {
            CgroupFs::new(&config.cgroup_root)
        };
        let kernel = KernelSupport::detect(&fs, &kernel_release(&config.proc_root));
        for problem in &kernel.problems {
            tracing::warn!("this host cannot isolate CPUs: {problem}");
        }
        for note in &kernel.notes {
            tracing::info!("{note}");
        }
        let systemd = (config.use_systemd && systemd::booted(std::path::Path::new("/")))
            .then(|| Systemd::new(conn.clone()));
        let effects: Box<dyn ExternalEffects + Send + Sync> = match &systemd {
            Some(s) => Box::new(SystemdEffects::new(
                s.clone(),
                tokio::runtime::Handle::current(),
                config.cgroup_root.clone(),
                config.proc_root.clone(),
            )),
            None => Box::new(NoExternalEffects),
        };
        let journal = Journal::open(config.run_dir.join("isolations"))?;
        let services: Box<dyn crate::tunings::Services> = match &systemd {
            Some(s) => Box::new(SystemdServices::new(
                s.clone(),
                tokio::runtime::Handle::current(),
            )),
            None => Box::new(NoServices {
                proc: config.proc_root.clone(),
            }),
        };
        let mut tunings = HostTunings::new(
            Paths {
                proc: config.proc_root.clone(),
                sys: config.sysfs_root.clone(),
                debugfs: config.sysfs_root.join("kernel/debug"),
                systemd_runtime: config.systemd_runtime_dir.clone(),
                libvirt_run: config
                    .hooks
                    .libvirt_run_dir()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_else(|| LIBVIRT_QEMU_RUN_DIR.into()),
            },
            config.file.settings.clone(),
            &config.run_dir,
            services,
        );
        tunings.set_test_hooks(config.hooks.clone());
        let engine = Arc::new(Engine::new(fs, config.proc_root.clone(), journal, effects));
        let plan_config = PlanConfig {
            min_housekeeping: config.min_housekeeping,
            allow_cpu0: config.allow_cpu0,
        };
        Ok(Self {
            engine,
            config,
            kernel,
            systemd,
            plan_config,
            tunings: Arc::new(tunings),
            last_created: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A creation time later than every record's held or handed out before (see
    /// [`crate::daemon::registry::LeaseKey`]).
    fn next_created(&self, held: &[Record]) -> u64 {
        use std::sync::atomic::Ordering;
        let floor = held
            .iter()
            .map(|r| r.request.created_usec)
            .max()
            .unwrap_or(0)
            .max(self.last_created.load(Ordering::SeqCst));
        let t = now_usec().max(floor + 1);
        self.last_created.fetch_max(t, Ordering::SeqCst);
        t
    }

    /// The CPUs and tunings of a request, completed from the configuration.
    fn complete(&self, req: &IsolateRequest, target: &Target) -> Result<(CpuSet, Selected), Error> {
        use crate::config::Selection;
        let section = self.config.file.isolation(req.name.as_str());
        // A libvirt domain's CPUs come from its pins.
        let derived = matches!(target, Target::Libvirt { .. } | Target::Reservation { .. });
        let cpus = if req.cpus.is_empty() && !derived {
            section.and_then(|s| s.cpus.clone()).ok_or_else(|| {
                Error::InvalidCpuList(format!(
                    "no CPUs given, and the configuration has none for {:?} \
                     ([isolation.{}] cpus = \"...\" in {}); give the CPUs to isolate, e.g. 2-5",
                    req.name.as_str(),
                    req.name.as_str(),
                    crate::config::DEFAULT_PATH
                ))
            })?
        } else {
            req.cpus.clone()
        };
        let selection = if let Some(list) = &req.tunings.list {
            Selection::List(list.clone())
        } else if let Some(p) = req.tunings.profile {
            Selection::Profile(p)
        } else if let Some(s) = section.and_then(|s| s.selection.clone()) {
            s
        } else {
            self.config.file.default_selection.clone()
        };
        let selected = Selected {
            profile: selection.name(),
            tunings: selection.tunings().into_iter().collect(),
            hugepages: req.tunings.hugepages.or(section.and_then(|s| s.hugepages)),
            hugepages_best_effort: req
                .tunings
                .hugepages_best_effort
                .or(section.and_then(|s| s.hugepages_best_effort))
                .unwrap_or(false),
            vfio_irqs: req.tunings.vfio_irqs,
        };
        let mut selected = selected;
        if req.tunings.vfio_irqs.is_some() {
            selected
                .tunings
                .insert(kvmisolate_dbus::tunings::Tuning::VfioIrqs);
        }
        Ok((cpus, selected))
    }

    /// The records the journal holds: the truth about what is held (an isolation whose
    /// release failed is still there, and its CPUs and tunings are still taken). From the
    /// journal's mirror: no file is read.
    fn held(&self) -> Vec<Record> {
        self.engine.journal.records().unwrap_or_else(|e| {
            tracing::warn!("{e}");
            Vec::new()
        })
    }

    /// Whether an isolation named `name` is held (a record of it is in the journal).
    pub fn name_taken(&self, name: &IsolationName) -> bool {
        self.engine.journal.contains(name)
    }

    /// The tunings holders of `held`, but `except`.
    fn holders(held: &[Record], except: &IsolationName) -> Vec<Holder> {
        held.iter()
            .filter(|r| r.name() != except)
            .map(holder_of)
            .collect()
    }

    /// Whether a held isolation's `vfio-irqs` follows a libvirt domain's VFIO IRQs.
    pub fn follows_vfio(&self) -> bool {
        HostTunings::follows_vfio(&Self::all_holders(&self.held()))
    }

    /// Whether the MSI vectors of the followed domains' devices changed since the last
    /// reconcile (read without the lease lock: a cheap check before taking it).
    pub fn vfio_irqs_moved(&self) -> bool {
        self.tunings
            .vfio_irqs_moved(&Self::all_holders(&self.held()))
    }

    /// Places the VFIO IRQs a guest enabled since the last reconcile: every held isolation's
    /// tunings are reconciled again (what is already in place is not written). `Ok(false)`:
    /// nothing moved. Called with the lease lock held.
    pub async fn follow_vfio(&self) -> Result<bool, Error> {
        let holders = Self::all_holders(&self.held());
        if !self.tunings.vfio_irqs_moved(&holders) {
            return Ok(false);
        }
        self.reconcile(holders).await.map(|_| true)
    }

    /// The tunings holders of every isolation in `held`.
    fn all_holders(held: &[Record]) -> Vec<Holder> {
        held.iter().map(holder_of).collect()
    }

    /// The current state of `lease`'s tunings.
    pub fn tuning_reports(&self, lease: &Lease) -> Vec<TuningReport> {
        self.tunings.reports_for(&lease.holder())
    }

    async fn reconcile(&self, holders: Vec<Holder>) -> Result<crate::tunings::Reconciled, Error> {
        let tunings = self.tunings.clone();
        let result = tokio::task::spawn_blocking(move || tunings.reconcile(&holders))
            .await
            .map_err(failed)?;
        if let Ok(r) = &result {
            for w in &r.warnings {
                tracing::warn!("{w}");
            }
        }
        result
    }

    /// Where new kernel threads are followed from: the proc root of a real kernel, `None`
    /// in the emulated test mode (whose CPUs are not the host's).
    pub fn kthread_proc_root(&self) -> Option<PathBuf> {
        (!self.config.hooks.fake_kernel()).then(|| self.config.proc_root.clone())
    }

    /// Where the kernel threads kvmisolated narrowed are recorded (`kthread_ledger`); `None`
    /// in the emulated test mode.
    pub fn kthread_ledger_path(&self) -> Option<PathBuf> {
        (!self.config.hooks.fake_kernel()).then(|| self.config.run_dir.join("kthreads-narrowed"))
    }

    /// `/etc/kvmisolate/kvmisolate.toml` as loaded at start-up.
    pub fn file_config(&self) -> &crate::config::Config {
        &self.config.file
    }

    /// The host's online CPUs now (empty if sysfs cannot be read).
    pub fn online_cpus(&self) -> CpuSet {
        HostCpus::read(&self.config.sysfs_root)
            .map(|h| h.online)
            .unwrap_or_default()
    }

    /// `KernelSupport` as the contract types it.
    pub fn kernel_support(&self) -> kvmisolate_dbus::status::KernelSupport {
        let k = &self.kernel;
        let mut problems = k.problems.clone();
        problems.extend(k.notes.iter().map(|n| format!("note: {n}")));
        kvmisolate_dbus::status::KernelSupport {
            cgroup_v2: k.cgroup_v2 && k.cpuset_controller,
            partition_types: k.partition_type_words(),
            remote_partitions: k.remote_partitions,
            files: k.files.clone(),
            kernel_release: k.kernel_release.clone(),
            systemd: self.systemd.is_some(),
            problems,
        }
    }

    /// The host's memory now (`None` if `/proc/meminfo` cannot be read).
    pub fn meminfo(&self) -> Option<MemInfo> {
        MemInfo::read(&self.config.proc_root)
    }

    /// What authorization needs to know about `req`'s target for a caller `uid` (not 0):
    /// whose processes it holds. The processes of a `pids` target are returned held by
    /// pidfds (on a real kernel), to be passed to [`Orchestrator::isolate`]: a pid reused between
    /// this check and the move is then noticed and nothing is isolated. Cheap reads only:
    /// this runs before polkit is asked.
    pub async fn inspect(
        &self,
        req: &IsolateRequest,
        uid: u32,
    ) -> Result<(TargetFacts, Vec<HeldProcess>), Error> {
        match &req.target {
            TargetRequest::Pids(pids) => {
                let (owners, held) = ownership::pids_owners(
                    &self.config.proc_root,
                    pids,
                    !self.config.hooks.fake_kernel(),
                )?;
                let foreign = authz::foreign_owners("the target", &owners, uid);
                Ok((TargetFacts { owners, foreign }, held))
            }
            TargetRequest::Unit(unit) => {
                let cgroup = self.unit_cgroup(unit).await?;
                let facts = if !ownership::in_user_slice(&cgroup, uid) {
                    TargetFacts {
                        owners: Vec::new(),
                        foreign: Some(format!(
                            "unit {unit} runs in {}, not in the caller's user-{uid}.slice",
                            if cgroup.is_root() {
                                "the root cgroup"
                            } else {
                                cgroup.as_str()
                            }
                        )),
                    }
                } else {
                    match ownership::cgroup_owners(&self.engine.fs, &self.config.proc_root, &cgroup)
                    {
                        Ok(set) => {
                            let owners: Vec<Option<u32>> = set.into_iter().collect();
                            let foreign =
                                authz::foreign_owners(&format!("unit {unit}"), &owners, uid);
                            TargetFacts { owners, foreign }
                        }
                        Err(why) => TargetFacts {
                            owners: Vec::new(),
                            foreign: Some(format!("unit {unit}: {why}")),
                        },
                    }
                };
                Ok((facts, Vec::new()))
            }
            TargetRequest::Libvirt(_) | TargetRequest::Reservation(_) => Ok((
                TargetFacts {
                    owners: Vec::new(),
                    foreign: authz::never_own(&req.target),
                },
                Vec::new(),
            )),
        }
    }

    /// The cgroup of a running systemd unit.
    async fn unit_cgroup(&self, unit: &str) -> Result<CgroupPath, Error> {
        let Some(systemd) = &self.systemd else {
            return Err(Error::UnsupportedHost(
                "isolating a systemd unit needs systemd, which does not manage this host; use pids instead"
                    .into(),
            ));
        };
        let cgroup = systemd.unit_cgroup(unit).await.map_err(|e| match e {
            systemd::SystemdError::NoSuchUnit(_) => Error::TargetNotFound(format!(
                "no running systemd unit {unit:?} (systemctl status {unit})"
            )),
            other => failed(other),
        })?;
        CgroupPath::new(&cgroup).map_err(failed)
    }

    /// Plans and applies an isolation. `active` are the isolations held now; `held` the
    /// processes of a `pids` target as authorization saw them ([`Orchestrator::inspect`]): if one
    /// of them exits before the processes are in place, its pid may name another process by
    /// then, and the isolation is undone (`TargetNotFound`).
    pub async fn isolate(
        &self,
        req: &IsolateRequest,
        caller: &Caller,
        held: &[HeldProcess],
    ) -> Result<Lease, Error> {
        let exited = || {
            held.iter().find(|p| p.exited()).map(|p| {
                Error::TargetNotFound(format!(
                    "process {} exited after it was authorized (its pid may name another process now); nothing was isolated",
                    p.pid
                ))
            })
        };
        if let Some(e) = exited() {
            return Err(e);
        }
        let reads = self.engine.journal.reads();
        let records = self.held();
        let (target, pre_steps) =
            timing::time_async("isolate", "resolve", self.resolve_target(req)).await?;
        let (mut cpus, selected) = self.complete(req, &target)?;
        if let Target::Libvirt { leaves, .. } = &target {
            cpus = leaves
                .iter()
                .fold(CpuSet::new(), |acc, l| acc.union(&l.cpus));
        }
        let request = Request {
            name: req.name.clone(),
            cpus,
            target,
            partition: req.partition,
            release_when: req.release_when,
            owner_uid: caller.uid,
            caller: Some(caller.bus_name.clone()),
            created_usec: self.next_created(&records),
            pre_steps,
            tunings: selected,
        };
        let active: Vec<_> = records.iter().map(Record::to_active).collect();
        let engine = self.engine.clone();
        let kernel = self.kernel.clone();
        let plan_config = self.plan_config.clone();
        let sysfs = self.config.sysfs_root.clone();
        let hooks = self.config.hooks.clone();
        let record = tokio::task::spawn_blocking(move || {
            let planned = timing::phase("isolate", "plan");
            let host = HostCpus::read(&sysfs).map_err(failed)?;
            let snapshot = engine.snapshot(&request.target)?;
            let plan = plan::plan(&request, &host, &kernel, &snapshot, &plan_config, &active)?;
            drop(planned);
            let _applied = timing::phase("isolate", "apply");
            if let Some(reason) = hooks.fake_reject() {
                for p in &plan.partitions {
                    engine.fs.emulate_reject_partition(p, Some(reason));
                }
            }
            engine.apply(&request, &plan, &hooks)
        })
        .await
        .map_err(failed)??;
        // The processes were moved by pid: each was the one authorized only if it is still
        // alive now (a live process keeps its pid).
        if let Some(e) = exited() {
            let engine = self.engine.clone();
            let undo = record.clone();
            let undone = tokio::task::spawn_blocking(move || engine.release(&undo))
                .await
                .map_err(failed)
                .and_then(|r| r.map_err(Error::from));
            return Err(match undone {
                Ok(()) => e,
                Err(problem) => e.with_context(&format!("rolling back failed too: {problem:?}")),
            });
        }
        // The partition stands; now the host tunings, for every isolation including this one.
        let lease = Lease::new(record);
        let mut holders = Self::holders(&records, lease.name());
        holders.push(lease.holder());
        let reconciled =
            timing::time_async("isolate", "tunings", self.reconcile(holders.clone())).await;
        timing::count(
            "isolate",
            "journal-reads",
            self.engine.journal.reads() - reads,
        );
        if let Err(e) = reconciled {
            holders.pop();
            let undo = self.reconcile(holders).await.err();
            let engine = self.engine.clone();
            let record = lease.record.clone();
            let released = tokio::task::spawn_blocking(move || engine.release(&record))
                .await
                .map_err(failed)
                .and_then(|r| r.map_err(Error::from))
                .err();
            let mut e = e;
            for problem in [undo, released].into_iter().flatten() {
                e = e.with_context(&format!("rolling back failed too: {problem}"));
            }
            return Err(e);
        }
        Ok(lease)
    }

    async fn resolve_target(
        &self,
        req: &IsolateRequest,
    ) -> Result<(Target, Vec<model::ExternalStep>), Error> {
        match &req.target {
            TargetRequest::Unit(unit) => {
                let cgroup = self.unit_cgroup(unit).await?;
                let Some(systemd) = &self.systemd else {
                    return Err(failed("systemd is gone"));
                };
                // systemd 261+ writes cpuset.cpus.partition itself for a unit that sets
                // CPUSetPartition=, at every reload and set-property: the partition would be
                // systemd's, not ours, and a release could not restore the file.
                if let Some(value) = systemd.unit_cpuset_partition(unit).await.map_err(failed)? {
                    return Err(Error::PartitionRejected(format!(
                        "unit {unit} sets CPUSetPartition={value}: systemd writes its \
                         cpuset.cpus.partition itself (at every daemon-reload and set-property), \
                         so kvmisolate cannot own that partition; either let systemd do it \
                         (AllowedCPUs= with CPUSetPartition=) or unset it \
                         (systemctl set-property {unit} CPUSetPartition=) and isolate again"
                    )));
                }
                // No systemd property is set on the unit: AllowedCPUs= would make systemd write
                // its cpuset.cpus, which the kernel then refuses to empty again while it runs.
                // A unit that is not delegated gets a keeper slice next to it instead.
                let pre = self.keeper_steps(systemd, unit, &req.name).await?;
                Ok((
                    Target::Unit {
                        unit: unit.clone(),
                        cgroup,
                    },
                    pre,
                ))
            }
            TargetRequest::Reservation(domain) => Ok((Target::reservation(domain), Vec::new())),
            TargetRequest::Libvirt(domain) => {
                Ok((self.resolve_domain(domain, &req.cpus)?, Vec::new()))
            }
            TargetRequest::Pids(pids) => {
                for &pid in pids {
                    if !pid_alive(&self.config.proc_root, pid) {
                        return Err(Error::TargetNotFound(format!(
                            "process {pid} does not exist"
                        )));
                    }
                }
                match &self.systemd {
                    Some(_) => {
                        let unit = req.name.scope_unit();
                        let cgroup = CgroupPath::new(&format!("{}/{unit}", systemd::SLICE))
                            .map_err(failed)?;
                        let pre = vec![crate::daemon::systemd_effects::start_scope_step(
                            &unit, &req.name, pids,
                        )];
                        Ok((
                            Target::Own {
                                cgroup,
                                pids: pids.clone(),
                                create: false,
                            },
                            pre,
                        ))
                    }
                    None => Ok((
                        Target::Own {
                            cgroup: Target::own_cgroup(&req.name),
                            pids: pids.clone(),
                            create: true,
                        },
                        Vec::new(),
                    )),
                }
            }
        }
    }

    /// The keeper step for a unit target that is not delegated with cpuset (none otherwise).
    async fn keeper_steps(
        &self,
        systemd: &Systemd,
        unit: &str,
        name: &IsolationName,
    ) -> Result<Vec<model::ExternalStep>, Error> {
        if systemd.unit_delegates_cpuset(unit).await.unwrap_or(false) {
            return Ok(Vec::new());
        }
        let slice = systemd.unit_slice(unit).await.map_err(failed)?;
        let parent = if slice.is_empty() { "-.slice" } else { &slice };
        let nodes = crate::daemon::keeper::online_memory_nodes(&self.config.sysfs_root);
        let step = crate::daemon::keeper::keeper_step(parent, name, unit, &nodes)
            .map_err(Error::Failed)?;
        Ok(vec![step])
    }

    /// The cgroup of a running domain's QEMU, from libvirt's pid file (`None` if unreadable).
    fn qemu_cgroup(&self, domain: &str) -> Option<CgroupPath> {
        // The test mode's libvirt state lives in the fake tree.
        let dir = match self.config.hooks.libvirt_run_dir() {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from(LIBVIRT_QEMU_RUN_DIR),
        };
        let text = std::fs::read_to_string(dir.join(format!("{domain}.pid"))).ok()?;
        let pid = text.trim().parse::<u32>().ok()?;
        crate::host::cgroupfs::cgroup_of_pid(&self.config.proc_root, pid).ok()
    }

    /// Finds a running libvirt domain's scope and chooses its leaves to partition.
    fn resolve_domain(&self, domain: &str, cpus: &CpuSet) -> Result<Target, Error> {
        let fs = &self.engine.fs;
        let scope = crate::libvirt::find_scope_of(fs, domain, self.qemu_cgroup(domain).as_ref())?;
        let layout = crate::libvirt::Layout::read(fs, &scope)?;
        let host = HostCpus::read(&self.config.sysfs_root).map_err(failed)?;
        let sysfs = self.config.sysfs_root.clone();
        let siblings = move |cpu: u32| {
            let path = sysfs.join(format!(
                "devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
            ));
            let text = std::fs::read_to_string(path).ok()?;
            CpuSet::parse(text.trim()).ok()
        };
        let selection = crate::libvirt::select(domain, &layout, cpus, &host.online, &siblings)?;
        for w in &selection.warnings {
            tracing::warn!(domain, "{w}");
        }
        Ok(Target::Libvirt {
            domain: domain.to_owned(),
            cgroup: scope,
            leaves: selection
                .partitions
                .into_iter()
                .map(|(_, cgroup, cpus)| model::LeafPartition { cgroup, cpus })
                .collect(),
            warnings: selection.warnings,
        })
    }

    /// Restores everything `lease` changed: its tunings (host-wide ones now follow the other
    /// isolations), then its partition. Returns what the user should know (e.g. hugepages
    /// still in use that stay allocated as surplus).
    pub async fn release(&self, lease: &Lease) -> Result<Vec<String>, Error> {
        let reads = self.engine.journal.reads();
        let saves = self.engine.journal.saves();
        let holders = Self::holders(&self.held(), lease.name());
        let reconciled = timing::time_async("release", "tunings", self.reconcile(holders)).await;
        let (tunings, warnings) = match reconciled {
            Ok(r) => (None, r.warnings),
            Err(e) => (Some(e), Vec::new()),
        };
        let engine = self.engine.clone();
        let record = lease.record.clone();
        let partition = tokio::task::spawn_blocking(move || {
            timing::time("release", "engine", || engine.release(&record))
        })
        .await
        .map_err(failed)?
        .map_err(Error::from);
        timing::count(
            "release",
            "journal-reads",
            self.engine.journal.reads() - reads,
        );
        timing::count(
            "release",
            "journal-saves",
            self.engine.journal.saves() - saves,
        );
        match (tunings, partition) {
            (None, r) => r.map(|()| warnings),
            (Some(t), Ok(())) => Err(t),
            (Some(t), Err(p)) => Err(p.with_context(&t.to_string())),
        }
    }

    /// Waits for what the last release left running after its reply (see
    /// [`crate::engine::effects::ExternalEffects::settle`]): before the daemon exits.
    pub async fn settle(&self) {
        let engine = self.engine.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || engine.settle()).await {
            tracing::warn!(error = %e, "waiting for the last release's unit stops failed");
        }
    }

    /// Reads the partition states and whether the target still runs.
    pub fn health(&self, lease: &Lease) -> Health {
        let target = lease.record.request.target.cgroup();
        let target_alive = self.target_alive(&lease.record);
        let mut state = IsolationState::Active;
        let mut reasons = Vec::new();
        for cg in &lease.record.partitions {
            match self.engine.partition_state(cg) {
                Some(PartitionState::Valid(_)) => {}
                Some(PartitionState::Invalid { word, reason }) => {
                    state = IsolationState::Degraded;
                    reasons.push(format!(
                        "{cg}: {word} invalid: {}",
                        crate::engine::partition::explain_invalid(&reason)
                    ));
                }
                Some(PartitionState::Member) => {
                    state = IsolationState::Degraded;
                    reasons.push(format!(
                        "{cg}: the partition was reset to member by someone else"
                    ));
                }
                Some(PartitionState::Other(text)) => {
                    state = IsolationState::Degraded;
                    reasons.push(format!("{cg}: unexpected partition state {text:?}"));
                }
                // The target exited and its cgroup went with it: not degraded, just over.
                None if (cg == target || target.is_ancestor_of(cg))
                    && !self.engine.fs.exists(target) => {}
                None if self.engine.fs.exists(cg) => {
                    state = IsolationState::Degraded;
                    reasons.push(format!(
                        "{cg}: the partition is gone because the cpuset controller was disabled above it \
                         (a systemd daemon-reload removes it where no unit asks for cpuset)"
                    ));
                }
                None => {
                    state = IsolationState::Degraded;
                    reasons.push(format!("{cg}: the cgroup is gone"));
                }
            }
        }
        // Someone re-pinned a partition (libvirt rewrites a leaf's cpuset.cpus on a live
        // `virsh vcpupin`/`emulatorpin`): from 7.0 the kernel no longer refuses such a write nor
        // always invalidates the partition, so compare what it holds with what we gave it.
        for cg in &lease.record.partitions {
            if let Some(r) = self.repinned(cg) {
                state = IsolationState::Degraded;
                reasons.push(r);
            }
        }
        // A partition stays valid while one of its CPUs is online: say which ones it lost.
        if let Some(effective) = self.partition_cpus(&lease.record) {
            let lost = lease.cpus().difference(&effective);
            if !lost.is_empty() && target_alive {
                state = IsolationState::Degraded;
                reasons.push(format!(
                    "{} offline or taken away: the partition holds only {}",
                    lost.phrase(),
                    if effective.is_empty() {
                        "no CPU".to_owned()
                    } else {
                        effective.to_string()
                    }
                ));
            }
        }
        Health {
            target_alive,
            state,
            reason: reasons.join("; "),
        }
    }

    /// The CPUs the isolation's partitions really hold now (`cpuset.cpus.effective`), if
    /// they can be read.
    /// Why partition `cg` no longer matches its pins, if it doesn't: its `cpuset.cpus` was
    /// set (by us or its owner) and now differs from the `cpuset.cpus.exclusive` we gave it.
    fn repinned(&self, cg: &CgroupPath) -> Option<String> {
        let read = |f: &str| {
            self.engine
                .fs
                .read_opt(cg, f)
                .ok()
                .flatten()
                .and_then(|t| CpuSet::parse(t.trim()).ok())
        };
        let exclusive = read(crate::host::kernel::EXCLUSIVE_FILE).filter(|c| !c.is_empty())?;
        let cpus = read("cpuset.cpus").filter(|c| !c.is_empty())?;
        (cpus != exclusive).then(|| {
            format!(
                "{cg}: its cpuset.cpus was changed to {cpus} while its partition holds {exclusive} \
                 (for a libvirt domain: a live virsh vcpupin/emulatorpin); the isolation no longer \
                 matches the pins: pin back to {exclusive}, or release and isolate again"
            )
        })
    }

    fn partition_cpus(&self, record: &Record) -> Option<CpuSet> {
        let mut all = CpuSet::new();
        for cg in &record.partitions {
            let text = self
                .engine
                .fs
                .read_opt(cg, "cpuset.cpus.effective")
                .ok()??;
            all = all.union(&CpuSet::parse(&text).ok()?);
        }
        Some(all)
    }

    /// Whether `record`'s target still has processes; unreadable is not proof of death: the
    /// isolation is kept.
    fn target_alive(&self, record: &Record) -> bool {
        self.engine.target_alive(record).unwrap_or(true)
    }

    /// The files whose changes matter for `lease`.
    pub fn watch_paths(&self, lease: &Lease) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for cg in &lease.record.partitions {
            if let Ok(p) = self
                .engine
                .fs
                .file_path(cg, crate::host::kernel::PARTITION_FILE)
            {
                out.push(p);
            }
            // re-pins (virsh vcpupin/emulatorpin rewrite a leaf's cpuset.cpus)
            if let Ok(p) = self.engine.fs.file_path(cg, "cpuset.cpus") {
                out.push(p);
            }
        }
        if let Ok(p) = self
            .engine
            .fs
            .file_path(lease.record.request.target.cgroup(), "cgroup.events")
        {
            out.push(p);
        }
        out
    }

    /// Start-up: replays the journal. Returns the isolations to adopt and warnings.
    pub async fn recover(&self) -> (Vec<Lease>, Vec<String>) {
        let engine = self.engine.clone();
        let alive = {
            let engine = self.engine.clone();
            move |r: &Record| engine.target_alive(r) == Some(true)
        };
        let report = match tokio::task::spawn_blocking(move || engine.replay(alive)).await {
            Ok(r) => r,
            Err(e) => return (Vec::new(), vec![format!("journal replay failed: {e}")]),
        };
        let mut warnings = report.warnings;
        for name in &report.released {
            tracing::info!(
                name,
                "restored an isolation left by a previous run (target gone or unfinished)"
            );
        }
        for f in &report.failed {
            tracing::error!(error = %f, "could not restore an isolation from the journal");
            warnings.push(f.to_string());
        }
        let adopted: Vec<Lease> = report.adopted.into_iter().map(Lease::new).collect();
        // Tunings: complete those of the isolations adopted again, restore the rest.
        let holders = adopted.iter().map(Lease::holder).collect();
        match self.reconcile(holders).await {
            Ok(r) => warnings.extend(r.warnings),
            Err(e) => {
                tracing::error!(error = %e, "could not restore or complete the host tunings from the journal");
                warnings.push(format!("host tunings: {e}"));
            }
        }
        (adopted, warnings)
    }
}
