//! Planning: a request plus a snapshot of the host becomes a list of [`Step`]s, or a contract
//! [`Error`] whose sentence names the problem and the fix. Pure: no I/O happens here; the
//! caller reads the host (see [`crate::engine::apply::Engine::snapshot`]) and passes it in.
//!
//! # Remote partitions (`cpuset.cpus.exclusive` exists, 6.7+)
//! For each ancestor from the root down to the target's parent: `+cpuset` in its
//! `cgroup.subtree_control` ([`Step::EnableController`]) and, below the root, its
//! `cpuset.cpus.exclusive` grows by the CPUs ([`Step::SharedAdd`]). Then the target gets
//! `cpuset.cpus`, `cpuset.cpus.exclusive` and last `cpuset.cpus.partition`.
//!
//! # Local partitions (6.1-6.6)
//! Every ancestor below the root must itself be a partition root: its `cpuset.cpus` grows by the
//! CPUs and it becomes `root` ([`Step::SharedPartition`]). That is only acceptable in
//! kvmisolate's own subtree, so only [`Target::Own`] can be planned there.
//!
//! # Shared steps
//! Steps on ancestors can be shared by several isolations. [`Step::SharedAdd`] undoes by
//! arithmetic (`(current − added) ∪ (original ∩ added)`), so releases in any order restore the
//! original. [`Step::Mkdir`], [`Step::SharedPartition`] and [`Step::EnableController`] are
//! planned where the snapshot shows them needed *or* where another active isolation lies below
//! the same cgroup; at apply time their original state is inherited from the other isolation's
//! journal record, and on release only the last isolation that shares them restores it.
//!
//! # Originals are not planned
//! The state a step changes (`original`, `existed`, `was_present`) has one owner: the
//! engine's prepare ([`crate::engine::apply`], per kind in `engine/step/`), which reads it right
//! before the step is journalled. The plan leaves those fields empty (`""`, `false`): the
//! snapshot is read before authorization and planning, and by the time a step runs the host
//! may differ (a pre-step has created the scope's slice, another isolation has grown a shared
//! ancestor), while a shared step's original comes from another isolation's journal record,
//! which a pure plan does not see. The plan uses the snapshot only to decide which steps are
//! needed.

use std::collections::BTreeMap;

use crate::engine::Error;
use kvmisolate_dbus::options::PartitionType;
use kvmisolate_dbus::{CpuSet, IsolationName};

use crate::host::HostCpus;
use crate::host::cgroupfs::CgroupPath;
use crate::host::kernel::{EXCLUSIVE_FILE, KernelSupport, PARTITION_FILE};

use crate::engine::model::first_word;

use crate::engine::model::{
    CPUS_FILE, LeafPartition, PartitionMode, Request, SUBTREE_CONTROL_FILE, Snapshot, Step, Target,
};

/// Configuration that limits what may be isolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanConfig {
    /// Fewest online CPUs the host must keep (`--min-housekeeping`, default 1).
    pub min_housekeeping: usize,
    /// Whether CPU 0 may be isolated (`--allow-cpu0`, default false).
    pub allow_cpu0: bool,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            min_housekeeping: 1,
            allow_cpu0: false,
        }
    }
}

/// What the planner needs to know about an isolation that is already active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveIsolation {
    /// Its name.
    pub name: IsolationName,
    /// Its CPUs.
    pub cpus: CpuSet,
    /// The cgroups it made partitions.
    pub cgroups: Vec<CgroupPath>,
}

/// A validated plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The partition type chosen.
    pub partition: PartitionType,
    /// Remote or local partitions.
    pub mode: PartitionMode,
    /// The steps, in the order they are performed.
    pub steps: Vec<Step>,
    /// The cgroups that become partitions.
    pub partitions: Vec<CgroupPath>,
}

/// Plans `req`. See the module documentation for the steps; refusals are contract errors.
pub fn plan(
    req: &Request,
    host: &HostCpus,
    kernel: &KernelSupport,
    snapshot: &Snapshot,
    config: &PlanConfig,
    active: &[ActiveIsolation],
) -> Result<Plan, Error> {
    let cpus = &req.cpus;
    // Names already held are refused before planning (the daemon, against the journal) and
    // again by the engine before it writes a record: not here.
    if req.target.is_reservation() {
        return Ok(Plan {
            partition: PartitionType::Isolated,
            mode: PartitionMode::Remote,
            steps: Vec::new(),
            partitions: Vec::new(),
        });
    }
    if cpus.is_empty() {
        return Err(Error::InvalidCpuList(
            "the CPU list is empty; name at least one CPU, e.g. 2-3".to_owned(),
        ));
    }
    kernel.check_usable()?;

    let missing = cpus.difference(&host.present);
    if !missing.is_empty() {
        let verb = if missing.len() == 1 { "does" } else { "do" };
        return Err(Error::CpuNotAvailable(format!(
            "{} {verb} not exist; this host has CPUs {}",
            missing.phrase(),
            host.present
        )));
    }
    let offline = cpus.difference(&host.online);
    if let Some(first) = offline.first() {
        let verb = if offline.len() == 1 { "is" } else { "are" };
        return Err(Error::CpuNotAvailable(format!(
            "{} {verb} offline; bring it online with 'echo 1 > \
             /sys/devices/system/cpu/cpu{first}/online' or choose online CPUs ({})",
            offline.phrase(),
            host.online
        )));
    }
    if cpus.contains(0) && !config.allow_cpu0 {
        return Err(Error::CpuReserved(
            "CPU 0 is reserved for the host; choose other CPUs, or start kvmisolated with \
             --allow-cpu0"
                .to_owned(),
        ));
    }
    for a in active {
        let busy = cpus.intersection(&a.cpus);
        if !busy.is_empty() {
            let verb = if busy.len() == 1 { "is" } else { "are" };
            return Err(Error::CpusBusy(format!(
                "{} {verb} already held by isolation '{}'; release it (kvmisolate release {}) \
                 or choose other CPUs",
                busy.phrase(),
                a.name,
                a.name
            )));
        }
    }
    let held: CpuSet = active
        .iter()
        .fold(CpuSet::new(), |acc, a| acc.union(&a.cpus));
    let root = CgroupPath::root();
    if let Some(effective) = snapshot.cpus(&root, "cpuset.cpus.effective") {
        let foreign = cpus.difference(&effective).difference(&held);
        if !foreign.is_empty() {
            return Err(Error::CpusBusy(format!(
                "{} {} not in the root cgroup's cpuset.cpus.effective ({effective}): a cpuset \
                 partition kvmisolate does not manage holds them; remove that partition or \
                 choose other CPUs",
                foreign.phrase(),
                if foreign.len() == 1 { "is" } else { "are" },
            )));
        }
    }
    let housekeeping = host.online.difference(&held.union(cpus));
    if housekeeping.is_empty() {
        return Err(Error::HousekeepingTooSmall(format!(
            "isolating {} would leave no online CPU for the host (online: {}{}); isolate fewer CPUs",
            cpus.phrase(),
            host.online,
            if held.is_empty() {
                String::new()
            } else {
                format!(", already isolated: {held}")
            }
        )));
    }
    if housekeeping.len() < config.min_housekeeping {
        return Err(Error::HousekeepingTooSmall(format!(
            "isolating {} would leave {} housekeeping CPU{} ({housekeeping}), fewer than the \
             minimum of {}; isolate fewer CPUs or lower kvmisolated's --min-housekeeping",
            cpus.phrase(),
            housekeeping.len(),
            if housekeeping.len() == 1 { "" } else { "s" },
            config.min_housekeeping
        )));
    }

    let partition = req.partition.unwrap_or(
        if cpus.len() == 1 || matches!(req.target, Target::Libvirt { .. }) {
            PartitionType::Isolated
        } else {
            PartitionType::Root
        },
    );
    if !kernel.supports(partition) {
        return Err(Error::UnsupportedHost(format!(
            "this kernel does not offer {partition} partitions (it offers: {}); {}",
            kernel.partition_type_words().join(", "),
            if partition == PartitionType::Isolated {
                "isolated partitions need Linux 6.1+; use --partition root"
            } else {
                "use another partition type"
            }
        )));
    }

    if partition == PartitionType::Isolated && !host.nohz_full.is_empty() {
        // 6.19+ refuses an isolated partition that would leave no CPU both online and neither
        // nohz_full nor isolated ("partition config conflicts with housekeeping setup"); older
        // kernels accept it and leave the tick housekeeping nowhere to go. Counted with every
        // held CPU as isolated (a root partition's CPUs would do, but may be released first).
        let left = housekeeping.difference(&host.nohz_full);
        if left.is_empty() {
            return Err(Error::PartitionRejected(format!(
                "an isolated partition of {} would leave no CPU that is neither nohz_full ({}) \
                 nor isolated (housekeeping left: {housekeeping}); the kernel refuses it \
                 (\"partition config conflicts with housekeeping setup\", Linux 6.19+) because \
                 the tick and timers need such a CPU; use --partition root, or isolate fewer \
                 CPUs, or boot with a smaller nohz_full=",
                cpus.phrase(),
                host.nohz_full
            )));
        }
    }

    let target_cg = req.target.cgroup();
    if target_cg.is_root() {
        return Err(Error::Failed(
            "the root cgroup cannot become a partition; name a unit or processes".to_owned(),
        ));
    }
    for a in active {
        if let Some(c) = a.cgroups.iter().find(|c| c.overlaps(target_cg)) {
            return Err(Error::Failed(format!(
                "cgroup {target_cg} overlaps cgroup {c} of isolation '{}'; isolations cannot be \
                 nested; release '{}' first",
                a.name, a.name
            )));
        }
    }
    let mode = if kernel.remote_partitions {
        PartitionMode::Remote
    } else {
        PartitionMode::Local
    };
    let (create, pids) = match &req.target {
        Target::Unit { unit, cgroup } => {
            if mode == PartitionMode::Local {
                return Err(Error::UnsupportedHost(
                    "partitioning a unit in place needs remote partitions (cpuset.cpus.exclusive, \
                     Linux 6.7+); on this kernel use --pid instead"
                        .to_owned(),
                ));
            }
            if !snapshot.exists(cgroup) {
                return Err(Error::TargetNotFound(format!(
                    "the cgroup {cgroup} of unit {unit} does not exist; is the unit running?"
                )));
            }
            (false, &[][..])
        }
        Target::Own { pids, create, .. } => (*create, &pids[..]),
        Target::Libvirt {
            domain,
            cgroup,
            leaves,
            ..
        } => {
            if mode == PartitionMode::Local {
                return Err(Error::UnsupportedHost(
                    "isolating a libvirt domain in place needs remote partitions \
                     (cpuset.cpus.exclusive, Linux 6.7+): on this kernel every cgroup above a \
                     partition must be one too, which would take the domain's iothreads and \
                     libvirt's other pins into the isolated CPUs"
                        .to_owned(),
                ));
            }
            if !snapshot.exists(cgroup) {
                return Err(Error::TargetNotFound(format!(
                    "the cgroup {cgroup} of libvirt domain {domain:?} does not exist; is the \
                     domain running?"
                )));
            }
            return plan_leaves(req, snapshot, active, partition, leaves);
        }
        Target::Reservation { .. } => (false, &[][..]),
    };
    if let Some(state) = snapshot.file(target_cg, PARTITION_FILE)
        && first_word(state) != "member"
    {
        return Err(Error::Failed(format!(
            "cgroup {target_cg} is already a cpuset partition ({}); something other than \
             kvmisolate manages it",
            state.trim()
        )));
    }
    let mut from = BTreeMap::new();
    if create {
        for &pid in pids {
            let Some(cg) = snapshot.pid_cgroups.get(&pid) else {
                return Err(Error::TargetNotFound(format!(
                    "process {pid} does not exist"
                )));
            };
            from.insert(pid, cg.clone());
        }
    }

    let shared = |p: &CgroupPath| {
        active
            .iter()
            .flat_map(|a| &a.cgroups)
            .any(|c| p.is_ancestor_of(c))
    };
    // Local partitions: an ancestor that already is a partition root hands all its CPUs to the
    // partitions below it, so a new cgroup made under it by a pre-step (a systemd scope) would
    // have no CPU and the move of its processes fails. Widen such ancestors first.
    let mut steps: Vec<Step> = Vec::new();
    let mut widened = Vec::new();
    if mode == PartitionMode::Local && !req.pre_steps.is_empty() {
        for anc in target_cg.ancestors() {
            let is_partition_root = snapshot
                .file(&anc, PARTITION_FILE)
                .is_some_and(|t| first_word(t) == "root");
            if !anc.is_root() && is_partition_root {
                steps.push(Step::SharedAdd {
                    path: anc.clone(),
                    file: CPUS_FILE.to_owned(),
                    original: String::new(),
                    added: cpus.clone(),
                });
                widened.push(anc);
            }
        }
    }
    steps.extend(req.pre_steps.iter().cloned().map(Step::External));
    for anc in target_cg.ancestors() {
        if !anc.is_root() {
            if create && (!snapshot.exists(&anc) || shared(&anc)) {
                steps.push(Step::Mkdir {
                    path: anc.clone(),
                    existed: false,
                });
            }
            match mode {
                PartitionMode::Remote => steps.push(Step::SharedAdd {
                    path: anc.clone(),
                    file: EXCLUSIVE_FILE.to_owned(),
                    original: String::new(),
                    added: cpus.clone(),
                }),
                PartitionMode::Local => {
                    if !widened.contains(&anc) {
                        steps.push(Step::SharedAdd {
                            path: anc.clone(),
                            file: CPUS_FILE.to_owned(),
                            original: String::new(),
                            added: cpus.clone(),
                        });
                    }
                    let is_root = snapshot
                        .file(&anc, PARTITION_FILE)
                        .is_some_and(|t| t.trim() == "root");
                    if !is_root || shared(&anc) {
                        steps.push(Step::SharedPartition {
                            path: anc.clone(),
                            original: String::new(),
                        });
                    }
                }
            }
        }
        let enabled = snapshot
            .file(&anc, SUBTREE_CONTROL_FILE)
            .is_some_and(|c| c.split_whitespace().any(|w| w == "cpuset"));
        if !enabled || shared(&anc) {
            steps.push(Step::EnableController {
                path: anc.clone(),
                controller: "cpuset".to_owned(),
                was_present: false,
            });
        }
    }
    if create {
        steps.push(Step::Mkdir {
            path: target_cg.clone(),
            existed: false,
        });
    }
    match mode {
        // A remote partition takes its CPUs from `cpuset.cpus.exclusive`; the target's
        // `cpuset.cpus` stays as it is. (Once set, the kernel refuses to empty it again while
        // the cgroup has processes: a running unit could never be restored byte for byte.)
        PartitionMode::Remote => steps.push(Step::Write {
            path: target_cg.clone(),
            file: EXCLUSIVE_FILE.to_owned(),
            original: String::new(),
            value: cpus.to_string(),
        }),
        PartitionMode::Local => steps.push(Step::Write {
            path: target_cg.clone(),
            file: CPUS_FILE.to_owned(),
            original: String::new(),
            value: cpus.to_string(),
        }),
    }
    if !from.is_empty() {
        steps.push(Step::MoveProcs {
            to: target_cg.clone(),
            from,
        });
    }
    steps.push(Step::Write {
        path: target_cg.clone(),
        file: PARTITION_FILE.to_owned(),
        original: String::new(),
        value: partition.as_str().to_owned(),
    });
    Ok(Plan {
        partition,
        mode,
        steps,
        partitions: vec![target_cg.clone()],
    })
}

/// Plans partitions on cgroups below the target (a libvirt domain's leaves), remote mode:
/// every ancestor of a leaf gets `+cpuset` where missing and, below the root, its
/// `cpuset.cpus.exclusive` grows by the CPUs of the leaves below it; then each leaf gets its
/// `cpuset.cpus.exclusive` and last its `cpuset.cpus.partition`. No `cpuset.cpus` is written:
/// the leaves keep the pins libvirt gave them.
fn plan_leaves(
    req: &Request,
    snapshot: &Snapshot,
    active: &[ActiveIsolation],
    partition: PartitionType,
    leaves: &[LeafPartition],
) -> Result<Plan, Error> {
    if leaves.is_empty() {
        return Err(Error::Failed(format!(
            "{} has no cgroup to partition",
            req.target.describe()
        )));
    }
    let union = leaves
        .iter()
        .fold(CpuSet::new(), |acc, l| acc.union(&l.cpus));
    if union != req.cpus {
        return Err(Error::Failed(format!(
            "the leaves' CPUs ({union}) are not the isolation's ({})",
            req.cpus
        )));
    }
    for (i, leaf) in leaves.iter().enumerate() {
        if !req.target.cgroup().is_ancestor_of(&leaf.cgroup) {
            return Err(Error::Failed(format!(
                "{} is not below {}",
                leaf.cgroup,
                req.target.cgroup()
            )));
        }
        if !snapshot.exists(&leaf.cgroup) {
            return Err(Error::TargetNotFound(format!(
                "the cgroup {} does not exist (any more); is the domain running?",
                leaf.cgroup
            )));
        }
        if let Some(state) = snapshot.file(&leaf.cgroup, PARTITION_FILE)
            && first_word(state) != "member"
        {
            return Err(Error::Failed(format!(
                "cgroup {} is already a cpuset partition ({}); something other than \
                 kvmisolate manages it",
                leaf.cgroup,
                state.trim()
            )));
        }
        if leaves[..i].iter().any(|o| !o.cpus.is_disjoint(&leaf.cpus)) {
            return Err(Error::Failed(format!(
                "{} shares CPUs with another partition of the same isolation",
                leaf.cgroup
            )));
        }
    }
    let shared = |p: &CgroupPath| {
        active
            .iter()
            .flat_map(|a| &a.cgroups)
            .any(|c| p.is_ancestor_of(c))
    };
    let mut ancestors: Vec<CgroupPath> = Vec::new();
    for leaf in leaves {
        for anc in leaf.cgroup.ancestors() {
            if !ancestors.contains(&anc) {
                ancestors.push(anc);
            }
        }
    }
    let mut steps = Vec::new();
    for anc in &ancestors {
        if !anc.is_root() {
            let added = leaves
                .iter()
                .filter(|l| anc.is_ancestor_of(&l.cgroup))
                .fold(CpuSet::new(), |acc, l| acc.union(&l.cpus));
            steps.push(Step::SharedAdd {
                path: anc.clone(),
                file: EXCLUSIVE_FILE.to_owned(),
                original: String::new(),
                added,
            });
        }
        let enabled = snapshot
            .file(anc, SUBTREE_CONTROL_FILE)
            .is_some_and(|c| c.split_whitespace().any(|w| w == "cpuset"));
        if !enabled || shared(anc) {
            steps.push(Step::EnableController {
                path: anc.clone(),
                controller: "cpuset".to_owned(),
                was_present: false,
            });
        }
    }
    for leaf in leaves {
        steps.push(Step::Write {
            path: leaf.cgroup.clone(),
            file: EXCLUSIVE_FILE.to_owned(),
            original: String::new(),
            value: leaf.cpus.to_string(),
        });
        steps.push(Step::Write {
            path: leaf.cgroup.clone(),
            file: PARTITION_FILE.to_owned(),
            original: String::new(),
            value: partition.as_str().to_owned(),
        });
    }
    Ok(Plan {
        partition,
        mode: PartitionMode::Remote,
        steps,
        partitions: leaves.iter().map(|l| l.cgroup.clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::ExternalStep;
    use crate::host::cgroupfs::EmulatedKernel;
    use crate::testutil::*;
    use proptest::prelude::*;

    fn ops(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .map(|s| match s {
                Step::Mkdir { path, .. } => format!("mkdir {path}"),
                Step::Write {
                    path, file, value, ..
                } => format!("write {} {value}", path.file_display(file)),
                Step::SharedAdd {
                    path, file, added, ..
                } => format!("add {} {added}", path.file_display(file)),
                Step::SharedPartition { path, .. } => format!("partition {path}"),
                Step::EnableController { path, .. } => format!("enable {path}"),
                Step::MoveProcs { to, from } => format!("move {from:?} {to}"),
                Step::External(e) => format!("external {}", e.kind),
            })
            .collect()
    }

    fn plan_with(t: &FakeTree, req: &Request, config: &PlanConfig) -> Result<Plan, Error> {
        t.plan_with(req, config)
    }

    #[test]
    fn remote_unit_plan() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let p = t.plan(&t.unit_request("vm", "2-3")).unwrap();
        assert_eq!(p.mode, PartitionMode::Remote);
        assert_eq!(
            p.partition,
            PartitionType::Root,
            "several CPUs: root by default"
        );
        assert_eq!(p.partitions, vec![cg("machine.slice/vm.scope")]);
        assert_eq!(
            ops(&p),
            [
                "enable /",
                "add /machine.slice/cpuset.cpus.exclusive 2-3",
                "enable /machine.slice",
                "write /machine.slice/vm.scope/cpuset.cpus.exclusive 2-3",
                "write /machine.slice/vm.scope/cpuset.cpus.partition root",
            ]
        );
    }

    #[test]
    fn enable_controller_only_where_missing() {
        let t = FakeTree::with_cpuset(EmulatedKernel::LINUX_6_12);
        let p = t.plan(&t.unit_request("vm", "2")).unwrap();
        assert_eq!(
            p.partition,
            PartitionType::Isolated,
            "one CPU: isolated by default"
        );
        assert_eq!(
            ops(&p),
            [
                "add /machine.slice/cpuset.cpus.exclusive 2",
                "enable /machine.slice",
                "write /machine.slice/vm.scope/cpuset.cpus.exclusive 2",
                "write /machine.slice/vm.scope/cpuset.cpus.partition isolated",
            ]
        );
        let mut req = t.unit_request("vm", "2");
        req.partition = Some(PartitionType::Root);
        assert_eq!(t.plan(&req).unwrap().partition, PartitionType::Root);
    }

    #[test]
    fn local_pids_plan_makes_ancestors_partition_roots() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_1);
        let p = t.plan(&t.pids_request("x", "2-3", &[100])).unwrap();
        assert_eq!(p.mode, PartitionMode::Local);
        assert_eq!(
            ops(&p),
            [
                "enable /",
                "mkdir /kvmisolate",
                "add /kvmisolate/cpuset.cpus 2-3",
                "partition /kvmisolate",
                "enable /kvmisolate",
                "mkdir /kvmisolate/x",
                "write /kvmisolate/x/cpuset.cpus 2-3",
                "move {100: CgroupPath(/user.slice/session-1.scope)} /kvmisolate/x",
                "write /kvmisolate/x/cpuset.cpus.partition root",
            ]
        );
    }

    #[test]
    fn remote_pids_plan() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let p = t.plan(&t.pids_request("x", "4", &[100, 101])).unwrap();
        assert_eq!(
            ops(&p),
            [
                "enable /",
                "mkdir /kvmisolate",
                "add /kvmisolate/cpuset.cpus.exclusive 4",
                "enable /kvmisolate",
                "mkdir /kvmisolate/x",
                "write /kvmisolate/x/cpuset.cpus.exclusive 4",
                "move {100: CgroupPath(/user.slice/session-1.scope), 101: CgroupPath(/user.slice/session-1.scope)} /kvmisolate/x",
                "write /kvmisolate/x/cpuset.cpus.partition isolated",
            ]
        );
    }

    #[test]
    fn systemd_scope_plan_runs_external_steps_first() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let mut req = t.request(
            "x",
            "2-3",
            Target::Own {
                cgroup: cg("kvmisolate.slice/kvmisolate-x.scope"),
                pids: vec![100],
                create: false,
            },
        );
        req.pre_steps = vec![ExternalStep {
            kind: "start-transient-scope".into(),
            data: serde_json::json!({"unit": "kvmisolate-x.scope", "pids": [100]}),
        }];
        let p = t.plan(&req).unwrap();
        assert_eq!(
            ops(&p),
            [
                "external start-transient-scope",
                "enable /",
                "add /kvmisolate.slice/cpuset.cpus.exclusive 2-3",
                "enable /kvmisolate.slice",
                "write /kvmisolate.slice/kvmisolate-x.scope/cpuset.cpus.exclusive 2-3",
                "write /kvmisolate.slice/kvmisolate-x.scope/cpuset.cpus.partition root",
            ]
        );
    }

    #[test]
    fn second_isolation_shares_ancestors() {
        for kernel in [EmulatedKernel::LINUX_6_12, EmulatedKernel::LINUX_6_1] {
            let t = FakeTree::new(kernel);
            let a = t.isolate(&t.pids_request("a", "2", &[100])).unwrap();
            let p = t.plan(&t.pids_request("b", "3", &[101])).unwrap();
            let o = ops(&p);
            // Shared state is planned again so that its original is inherited and only the
            // last isolation restores it.
            assert_eq!(o[0], "enable /");
            assert_eq!(o[1], "mkdir /kvmisolate");
            assert!(o[2].starts_with("add /kvmisolate/cpuset.cpus") && o[2].ends_with(" 3"));
            if kernel.exclusive {
                assert_eq!(o[3], "enable /kvmisolate");
            } else {
                assert_eq!(o[3], "partition /kvmisolate");
                assert_eq!(o[4], "enable /kvmisolate");
            }
            // The plan leaves the original to prepare, which inherits it from a's record:
            // /kvmisolate did not exist before a, though it does now, so the last of the two
            // to be released removes it.
            assert!(matches!(p.steps[1], Step::Mkdir { existed: false, .. }));
            let b = t.isolate(&t.pids_request("b", "3", &[101])).unwrap();
            let existed = |r: &crate::engine::journal::Record| {
                r.steps.iter().find_map(|s| match &s.step {
                    Step::Mkdir { path, existed } if *path == cg("kvmisolate") => Some(*existed),
                    _ => None,
                })
            };
            assert_eq!(existed(&a), Some(false));
            assert_eq!(existed(&b), Some(false));
        }
    }

    /// The originals have one owner, the engine's prepare: a plan carries none, and the
    /// record of the applied plan carries what the host held.
    #[test]
    fn originals_are_read_by_prepare_not_planned() {
        for kernel in [EmulatedKernel::LINUX_6_12, EmulatedKernel::LINUX_6_1] {
            let t = FakeTree::new(kernel);
            let req = t.pids_request("x", "4", &[100]);
            let p = t.plan(&req).unwrap();
            for step in &p.steps {
                match step {
                    Step::Write { original, .. }
                    | Step::SharedAdd { original, .. }
                    | Step::SharedPartition { original, .. } => {
                        assert_eq!(original, "", "{step:?}")
                    }
                    Step::Mkdir { existed, .. } => assert!(!existed, "{step:?}"),
                    Step::EnableController { was_present, .. } => assert!(!was_present, "{step:?}"),
                    Step::MoveProcs { .. } | Step::External(_) => {}
                }
            }
            let before = t.state();
            let rec = t.isolate(&req).unwrap();
            let partition = rec
                .steps
                .iter()
                .find_map(|s| match &s.step {
                    Step::Write { file, original, .. } if file == PARTITION_FILE => Some(original),
                    _ => None,
                })
                .unwrap();
            assert_eq!(partition, "member\n");
            t.engine.release(&rec).unwrap();
            t.assert_state(&before, "restored from the originals prepare read");
        }
    }

    fn expect_err(t: &FakeTree, req: &Request, config: &PlanConfig) -> Error {
        match plan_with(t, req, config) {
            Ok(p) => panic!("expected an error, got {p:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn refusals_name_problem_and_fix() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let c = PlanConfig::default();
        let msg = |e: Error| format!("{e:?}");

        let e = expect_err(&t, &t.unit_request("vm", ""), &c);
        assert!(
            matches!(e, Error::InvalidCpuList(ref m) if m.contains("empty")),
            "{e:?}"
        );

        let e = expect_err(&t, &t.unit_request("vm", "9"), &c);
        assert!(
            matches!(e, Error::CpuNotAvailable(ref m) if m == "CPU 9 does not exist; this host has CPUs 0-5"),
            "{e:?}"
        );
        let e = expect_err(&t, &t.unit_request("vm", "5-7"), &c);
        assert!(
            matches!(e, Error::CpuNotAvailable(ref m) if m.starts_with("CPUs 6-7 do not exist")),
            "{e:?}"
        );

        std::fs::write(t.sysfs.join("devices/system/cpu/online"), "0-4\n").unwrap();
        let e = expect_err(&t, &t.unit_request("vm", "4-5"), &c);
        assert!(
            matches!(e, Error::CpuNotAvailable(ref m) if m.starts_with("CPU 5 is offline; bring it online with")
                && m.contains("cpu5/online") && m.contains("0-4")),
            "{e:?}"
        );
        std::fs::write(t.sysfs.join("devices/system/cpu/online"), "0-5\n").unwrap();

        let e = expect_err(&t, &t.unit_request("vm", "0-1"), &c);
        assert!(
            matches!(e, Error::CpuReserved(ref m) if m.contains("--allow-cpu0")),
            "{e:?}"
        );

        let all = PlanConfig {
            allow_cpu0: true,
            ..PlanConfig::default()
        };
        let e = expect_err(&t, &t.unit_request("vm", "0-5"), &all);
        assert!(
            matches!(e, Error::HousekeepingTooSmall(ref m) if m.contains("no online CPU")),
            "{e:?}"
        );
        let two = PlanConfig {
            min_housekeeping: 2,
            ..PlanConfig::default()
        };
        let e = expect_err(&t, &t.unit_request("vm", "1-5"), &two);
        assert!(
            matches!(e, Error::HousekeepingTooSmall(ref m) if m.contains("leave 1 housekeeping CPU (0)")
                && m.contains("minimum of 2") && m.contains("--min-housekeeping")),
            "{e:?}"
        );
        assert!(
            plan_with(&t, &t.unit_request("vm", "1-5"), &c).is_ok(),
            "one CPU left is enough"
        );

        // nohz_full=1-5: an isolated partition of 1-5 leaves CPU 0 only if it is not nohz_full
        std::fs::write(t.sysfs.join("devices/system/cpu/nohz_full"), "1-5\n").unwrap();
        let mut req = t.unit_request("vm", "1-5");
        req.partition = Some(PartitionType::Isolated);
        assert!(
            plan_with(&t, &req, &c).is_ok(),
            "CPU 0 is neither nohz_full nor isolated"
        );
        std::fs::write(t.sysfs.join("devices/system/cpu/nohz_full"), "0-5\n").unwrap();
        let before = t.state();
        let e = expect_err(&t, &req, &c);
        assert!(
            matches!(e, Error::PartitionRejected(ref m) if m.contains("partition config conflicts with housekeeping setup")
                && m.contains("--partition root")),
            "{e:?}"
        );
        assert_eq!(before, t.state(), "a refusal changes nothing");
        req.partition = Some(PartitionType::Root);
        assert!(
            plan_with(&t, &req, &c).is_ok(),
            "root partitions do not conflict"
        );
        std::fs::write(t.sysfs.join("devices/system/cpu/nohz_full"), "(null)\n").unwrap();

        let e = expect_err(
            &t,
            &t.request(
                "vm",
                "2",
                Target::Unit {
                    unit: "gone.scope".into(),
                    cgroup: cg("machine.slice/gone.scope"),
                },
            ),
            &c,
        );
        assert!(
            matches!(e, Error::TargetNotFound(ref m) if m.contains("gone.scope")),
            "{e:?}"
        );

        let e = expect_err(&t, &t.pids_request("p", "2", &[999]), &c);
        assert!(
            matches!(e, Error::TargetNotFound(ref m) if m.contains("999")),
            "{e:?}"
        );

        t.isolate(&t.pids_request("a", "2-3", &[100])).unwrap();
        let e = t.isolate(&t.unit_request("a", "4")).unwrap_err();
        assert!(
            matches!(e, Error::NameExists(ref m) if m.contains("'a'")),
            "{e:?}"
        );
        let e = expect_err(&t, &t.unit_request("vm", "3-4"), &c);
        assert!(
            matches!(e, Error::CpusBusy(ref m) if m.starts_with("CPU 3 is already held by isolation 'a'")),
            "{e:?}"
        );
        let e = expect_err(&t, &t.unit_request("vm", "1,4-5"), &two);
        assert!(matches!(e, Error::HousekeepingTooSmall(_)), "{}", msg(e));
        let e = expect_err(&t, &t.unit_request("vm", "0-1,4-5"), &all);
        assert!(
            matches!(e, Error::HousekeepingTooSmall(ref m) if m.contains("already isolated: 2-3")),
            "{e:?}"
        );
    }

    #[test]
    fn foreign_partitions_are_busy() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        std::fs::write(t.fs().root().join("cpuset.cpus.effective"), "0-3\n").unwrap();
        let e = expect_err(&t, &t.unit_request("vm", "3-4"), &PlanConfig::default());
        assert!(
            matches!(e, Error::CpusBusy(ref m) if m.starts_with("CPU 4 is not in the root cgroup's cpuset.cpus.effective")),
            "{e:?}"
        );
    }

    #[test]
    fn unsupported_hosts() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_1);
        let e = expect_err(&t, &t.unit_request("vm", "2"), &PlanConfig::default());
        assert_eq!(
            e,
            Error::UnsupportedHost(
                "partitioning a unit in place needs remote partitions (cpuset.cpus.exclusive, \
                 Linux 6.7+); on this kernel use --pid instead"
                    .into()
            )
        );
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        std::fs::write(
            t.fs().root().join("cgroup.controllers"),
            "cpu memory pids\n",
        )
        .unwrap();
        let e = expect_err(&t, &t.unit_request("vm", "2"), &PlanConfig::default());
        assert!(
            matches!(e, Error::UnsupportedHost(ref m) if m.contains("cpuset controller")),
            "{e:?}"
        );

        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let mut ks = t.kernel_support();
        ks.partition_types = vec![PartitionType::Root];
        let snap = t
            .engine
            .snapshot(&t.unit_request("vm", "2").target)
            .unwrap();
        let e = plan(
            &t.unit_request("vm", "2"),
            &t.host(),
            &ks,
            &snap,
            &PlanConfig::default(),
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::UnsupportedHost(ref m) if m.contains("--partition root")),
            "{e:?}"
        );
    }

    #[test]
    fn refuses_nesting_and_foreign_partitions_and_the_root() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        t.isolate(&t.unit_request("vm", "2")).unwrap();
        let inner = t.request(
            "inner",
            "3",
            Target::Unit {
                unit: "vm.scope".into(),
                cgroup: cg("machine.slice/vm.scope"),
            },
        );
        let e = expect_err(&t, &inner, &PlanConfig::default());
        assert!(
            matches!(e, Error::Failed(ref m) if m.contains("nested")),
            "{e:?}"
        );

        let t = FakeTree::with_cpuset(EmulatedKernel::LINUX_6_12);
        t.fs()
            .write(&cg("system.slice"), "cpuset.cpus.partition", "root")
            .unwrap();
        let e = expect_err(
            &t,
            &t.request(
                "s",
                "2",
                Target::Unit {
                    unit: "system.slice".into(),
                    cgroup: cg("system.slice"),
                },
            ),
            &PlanConfig::default(),
        );
        assert!(
            matches!(e, Error::Failed(ref m) if m.contains("already a cpuset partition")),
            "{e:?}"
        );

        let e = expect_err(
            &t,
            &t.request(
                "r",
                "2",
                Target::Unit {
                    unit: "-.slice".into(),
                    cgroup: CgroupPath::root(),
                },
            ),
            &PlanConfig::default(),
        );
        assert!(
            matches!(e, Error::Failed(ref m) if m.contains("root cgroup")),
            "{e:?}"
        );
    }

    #[test]
    fn targets_describe_and_own_cgroup() {
        assert_eq!(
            Target::own_cgroup(&name("vm-1")).as_str(),
            "kvmisolate/vm-1"
        );
        let t = Target::Own {
            cgroup: cg("a"),
            pids: vec![1, 2],
            create: true,
        };
        assert_eq!(t.describe(), "pids:1,2");
        let u = Target::Unit {
            unit: "vm.scope".into(),
            cgroup: cg("a"),
        };
        assert_eq!(u.describe(), "unit:vm.scope");
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), u);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Planning is pure (the same inputs give the same plan) and a second isolation's plan
        /// never writes into the first one's partition cgroup, nor takes its CPUs.
        #[test]
        fn second_plans_are_pure_and_keep_off_the_first(
            first in 0u8..3,
            second in 0u8..3,
            want in proptest::collection::btree_set(1u32..6, 1..3),
            local in any::<bool>(),
        ) {
            let kernel = if local { EmulatedKernel::LINUX_6_1 } else { EmulatedKernel::LINUX_6_12 };
            let t = FakeTree::new(kernel);
            let make = |which: u8, n: &str, c: &str| match which {
                0 => t.unit_request_for("vm.scope", n, c),
                1 => t.pids_request(n, c, &[100]),
                _ => t.scope_request(n, c, &[101]),
            };
            let Ok(a) = t.isolate(&make(first, "a", "1")) else {
                prop_assume!(false);
                unreachable!()
            };
            let want: CpuSet = want.into_iter().collect();
            let req = make(second, "b", &want.to_string());
            let p1 = t.plan(&req);
            let p2 = t.plan(&req);
            prop_assert_eq!(&p1, &p2);
            if let Ok(p) = p1 {
                prop_assert!(!want.contains(1));
                for s in &p.steps {
                    if let Step::Write { path, .. } | Step::SharedPartition { path, .. } = s {
                        prop_assert!(!a.partitions.contains(path), "{:?} touches {:?}", s, a.partitions);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the CPUs and the isolations already active, a plan that succeeds never
        /// overlaps them, leaves enough housekeeping CPUs, writes the partition last, touches
        /// only the target and its ancestors, and adds exactly the requested CPUs.
        #[test]
        fn plans_keep_invariants(
            want in proptest::collection::btree_set(0u32..8, 0..5),
            held in proptest::collection::btree_set(0u32..6, 0..3),
            min_hk in 1usize..3,
            allow_cpu0 in any::<bool>(),
            local in any::<bool>(),
        ) {
            let kernel = if local { EmulatedKernel::LINUX_6_1 } else { EmulatedKernel::LINUX_6_12 };
            let t = FakeTree::new(kernel);
            let held: CpuSet = held.into_iter().collect();
            let active = if held.is_empty() { vec![] } else {
                vec![ActiveIsolation { name: name("other"), cpus: held.clone(), cgroups: vec![cg("kvmisolate/other")] }]
            };
            let want: CpuSet = want.into_iter().collect();
            let req = Request { cpus: want.clone(), ..t.pids_request("x", "2", &[100]) };
            let config = PlanConfig { min_housekeeping: min_hk, allow_cpu0 };
            let snap = t.engine.snapshot(&req.target).unwrap();
            match plan(&req, &t.host(), &t.kernel_support(), &snap, &config, &active) {
                Ok(p) => {
                    prop_assert!(!want.is_empty());
                    prop_assert!(want.is_disjoint(&held));
                    prop_assert!(allow_cpu0 || !want.contains(0));
                    prop_assert!(want.iter().all(|c| c < 6));
                    let hk = t.host().online.difference(&want.union(&held));
                    prop_assert!(hk.len() >= min_hk);
                    let last = p.steps.last().unwrap();
                    prop_assert!(last.is_partition_write());
                    let target = req.target.cgroup();
                    for s in &p.steps {
                        let path = match s {
                            Step::Mkdir { path, .. } | Step::Write { path, .. }
                            | Step::SharedAdd { path, .. } | Step::SharedPartition { path, .. }
                            | Step::EnableController { path, .. } => path,
                            Step::MoveProcs { to, .. } => to,
                            Step::External(_) => continue,
                        };
                        prop_assert!(path == target || path.is_ancestor_of(target));
                        if let Step::SharedAdd { added, .. } = s {
                            prop_assert_eq!(added, &want);
                        }
                    }
                    // The target's partition write comes after all its other writes.
                    let pos = p.steps.iter().position(|s| s.is_partition_write() && matches!(s, Step::Write { .. })).unwrap();
                    prop_assert_eq!(pos, p.steps.len() - 1);
                }
                Err(e) => {
                    let ok = match &e {
                        Error::InvalidCpuList(_) => want.is_empty(),
                        Error::CpuNotAvailable(_) => want.iter().any(|c| c >= 6),
                        Error::CpuReserved(_) => want.contains(0) && !allow_cpu0,
                        Error::CpusBusy(_) => !want.is_disjoint(&held),
                        Error::HousekeepingTooSmall(_) => {
                            t.host().online.difference(&want.union(&held)).len() < min_hk
                        }
                        _ => false,
                    };
                    prop_assert!(ok, "unexpected {:?} for {} (held {})", e, want, held);
                }
            }
        }
    }
}
