//! cgroup v2, the cpuset controller, the kernel's partition features, every partition's state,
//! and which CPUs the partitions isolate.

use std::path::Path;

use kvmisolate_dbus::cpulist::CpuSet;

use super::host::Host;
use super::{Ctx, Finding, Severity};

/// A cgroup whose `cpuset.cpus.partition` is not `member`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Path relative to the cgroup root (`machine.slice/x.scope`).
    pub path: String,
    /// The whole `cpuset.cpus.partition` text (`isolated`, `root invalid (reason)`).
    pub state: String,
    /// Whether the kernel calls it valid.
    pub valid: bool,
    /// The CPUs asked for (`cpuset.cpus.exclusive`, else `cpuset.cpus`).
    pub requested: CpuSet,
    /// The CPUs its tasks get (`cpuset.cpus.effective`: online CPUs only, and without those
    /// handed down to child partitions).
    pub effective: CpuSet,
}

impl Partition {
    /// The kernel's reason for an invalid partition (the text in parentheses), if any.
    pub fn reason(&self) -> Option<&str> {
        let open = self.state.find('(')?;
        let close = self.state.rfind(')')?;
        (close > open).then(|| &self.state[open + 1..close])
    }
}

/// What a walk of cgroupfs found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Every partition (valid or not), in path order.
    pub partitions: Vec<Partition>,
    /// Some cgroup has `cpuset.cpus.partition`.
    pub partition_file: bool,
    /// Some cgroup has `cpuset.cpus.exclusive` (remote partitions, 6.7+).
    pub exclusive_file: bool,
}

/// The deepest level walked (systemd nests a few levels; libvirt adds three).
const MAX_DEPTH: usize = 16;
/// At most this many cgroups are visited.
const MAX_CGROUPS: usize = 20_000;

/// Walks cgroupfs for partitions and feature files.
pub fn scan(host: &Host) -> Scan {
    let mut scan = Scan::default();
    let mut visited = 0;
    walk(host, "", 0, &mut visited, &mut scan);
    scan
}

fn walk(host: &Host, rel: &str, depth: usize, visited: &mut usize, scan: &mut Scan) {
    if depth > MAX_DEPTH || *visited >= MAX_CGROUPS {
        return;
    }
    *visited += 1;
    let dir = host.cgroup(rel);
    if !rel.is_empty() {
        let exclusive = dir.join("cpuset.cpus.exclusive");
        scan.exclusive_file |= exclusive.exists();
        if let Some(state) = host.read_trim(&dir.join("cpuset.cpus.partition")) {
            scan.partition_file = true;
            if state != "member" && !state.is_empty() {
                scan.partitions.push(read_partition(host, rel, &dir, state));
            }
        }
    }
    for name in host.list(&dir) {
        let child = dir.join(&name);
        let is_dir = std::fs::symlink_metadata(&child)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir {
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            walk(host, &child_rel, depth + 1, visited, scan);
        }
    }
}

fn read_partition(host: &Host, rel: &str, dir: &Path, state: String) -> Partition {
    let nonempty = |f: &str| host.read_cpulist(&dir.join(f)).filter(|c| !c.is_empty());
    let requested = nonempty("cpuset.cpus.exclusive")
        .or_else(|| nonempty("cpuset.cpus"))
        .unwrap_or_default();
    // Not cpuset.cpus.exclusive.effective: it keeps offline CPUs (seen on 6.12).
    let effective = nonempty("cpuset.cpus.effective").unwrap_or_default();
    let valid = !state.contains("invalid");
    Partition {
        path: rel.to_owned(),
        state,
        valid,
        requested,
        effective,
    }
}

/// cgroup v2, the cpuset controller, and the partition features of this kernel.
pub fn base_findings(host: &Host, scan: &Scan) -> Vec<Finding> {
    let mut out = Vec::new();
    let root = host.cgroup("");
    let Some(controllers) = host.read_trim(&root.join("cgroup.controllers")) else {
        out.push(
            Finding::new(
                "cgroup-v2",
                Severity::Error,
                format!("no cgroup v2 hierarchy at {} (cgroup v1 or hybrid mode)", root.display()),
            )
            .why("cpuset partitions, which give CPUs exclusively to a VM, exist only in cgroup v2")
            .fix("boot with systemd.unified_cgroup_hierarchy=1 (and without cgroup_no_v1/cgroup v1 cpuset mounts)"),
        );
        return out;
    };
    out.push(Finding::ok(
        "cgroup-v2",
        format!("cgroup v2 is mounted at {}", root.display()),
    ));
    if controllers.split_whitespace().any(|c| c == "cpuset") {
        out.push(Finding::ok(
            "cpuset-controller",
            "the cpuset controller is available in cgroup v2",
        ));
    } else {
        out.push(
            Finding::new(
                "cpuset-controller",
                Severity::Error,
                format!("the cpuset controller is not in cgroup v2 (controllers: {controllers})"),
            )
            .why("without it there are no partitions: CPUs cannot be given exclusively to a VM")
            .fix("unmount any cgroup v1 cpuset hierarchy (it holds the controller) or boot with cgroup_no_v1=all"),
        );
        return out;
    }
    let isolated_file = root.join("cpuset.cpus.isolated").exists();
    // cpuset.cpus.isolated (6.8+) implies partitions and remote partitions.
    let partitions = scan.partition_file || isolated_file;
    let remote = scan.exclusive_file || isolated_file;
    let yes = |b: bool| if b { "yes" } else { "no" };
    let details = vec![
        format!(
            "partitions (cpuset.cpus.partition, root/isolated): {}",
            yes(partitions)
        ),
        format!(
            "remote partitions (cpuset.cpus.exclusive, Linux 6.7+): {}",
            yes(remote)
        ),
        format!(
            "cpuset.cpus.isolated at the root (Linux 6.8+): {}",
            yes(isolated_file)
        ),
    ];
    let f = if !partitions {
        if scan.partition_file || has_cpuset_child(host) {
            Finding::new(
                "kernel-features",
                Severity::Error,
                "this kernel has no cpuset partitions",
            )
            .why("without partitions host tasks and unbound kernel threads cannot be kept off the VM's CPUs")
            .fix("use Linux 5.15 or later (6.1 for isolated partitions, 6.7 for partitioning a VM's unit in place)")
        } else {
            Finding::new(
                "kernel-features",
                Severity::Info,
                "partition support could not be seen: no cgroup below the root has the cpuset controller enabled",
            )
            .fix("nothing to do: kvmisolate enables cpuset below the root when it isolates")
        }
    } else if !remote || !isolated_file {
        Finding::new(
            "kernel-features",
            Severity::Info,
            "cpuset partitions are supported, some newer features are missing",
        )
        .why("without remote partitions (6.7+) a VM's own cgroup cannot be partitioned in place; without cpuset.cpus.isolated (6.8+) isolated partitions do not leave the unbound workqueue mask")
        .fix("a newer kernel (6.8 or later) brings them")
    } else {
        Finding::ok(
            "kernel-features",
            "partitions (root, isolated), remote partitions and cpuset.cpus.isolated are supported",
        )
    };
    out.push(f.details(details));
    out
}

fn has_cpuset_child(host: &Host) -> bool {
    host.list(&host.cgroup(""))
        .iter()
        .any(|n| host.cgroup(n).join("cpuset.cpus").exists())
}

/// One finding per partition: valid and whole, valid but short of CPUs, or invalid.
pub fn partition_findings(partitions: &[Partition]) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in partitions {
        // What the partition and the partitions below it hold.
        let below = format!("{}/", p.path);
        let held = partitions
            .iter()
            .filter(|c| c.valid && c.path.starts_with(&below))
            .fold(p.effective.clone(), |acc, c| acc.union(&c.effective));
        let f = if !p.valid {
            let reason = p
                .reason()
                .unwrap_or("the kernel gives no reason (Linux < 6.1)");
            Finding::new(
                "partition-state",
                Severity::Error,
                format!("partition {} is invalid: {reason}", p.path),
            )
            .why("an invalid partition isolates nothing: its CPUs went back to the host and every task may run there")
            .fix(format!(
                "fix the cause the kernel names ({}), or release the isolation and isolate again (kvmisolate status shows it)",
                p.state
            ))
        } else if !p.requested.is_subset(&held) {
            let missing = p.requested.difference(&held);
            Finding::new(
                "partition-state",
                Severity::Warning,
                format!(
                    "partition {} ({}) holds only CPUs {} of {}: {} missing",
                    p.path,
                    p.state,
                    fmt_cpus(&held),
                    p.requested,
                    missing
                ),
            )
            .why("the VM's vCPUs pinned to missing CPUs cannot run where they should; the kernel drops offline CPUs from partitions")
            .fix(format!(
                "bring the missing CPUs online (echo 1 > /sys/devices/system/cpu/cpuN/online for {missing})"
            ))
        } else {
            Finding::ok(
                "partition-state",
                format!(
                    "partition {} is {} on CPUs {}",
                    p.path, p.state, p.effective
                ),
            )
        };
        out.push(f);
    }
    out
}

fn fmt_cpus(c: &CpuSet) -> String {
    if c.is_empty() {
        "(none)".to_owned()
    } else {
        c.to_string()
    }
}

/// The CPUs the partitions isolate (or were asked to): every partition's requested and
/// effective CPUs, plus the root's `cpuset.cpus.isolated`.
pub fn isolated_cpus(host: &Host, partitions: &[Partition]) -> CpuSet {
    let mut cpus = host
        .read_cpulist(&host.cgroup("cpuset.cpus.isolated"))
        .unwrap_or_default();
    for p in partitions {
        cpus = cpus.union(&p.requested).union(&p.effective);
    }
    cpus
}

/// Whether the audited CPUs are really held by valid partitions, and online.
pub fn coverage_findings(ctx: &Ctx<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let held = ctx
        .partitions
        .iter()
        .filter(|p| p.valid)
        .fold(CpuSet::new(), |acc, p| acc.union(&p.effective));
    let online = ctx.host.online_cpus();
    let uncovered = ctx.cpus.difference(&held);
    let uncovered_online = match &online {
        Some(o) => uncovered.intersection(o),
        None => uncovered.clone(),
    };
    if uncovered_online.is_empty() {
        let by: Vec<String> = ctx
            .partitions
            .iter()
            .filter(|p| p.valid && !p.effective.is_disjoint(ctx.cpus))
            .map(|p| format!("{} ({}, CPUs {})", p.path, p.state, p.effective))
            .collect();
        out.push(Finding::ok(
            "cpus-not-partitioned",
            format!(
                "every online audited CPU is held by a valid partition: {}",
                by.join(", ")
            ),
        ));
    } else {
        out.push(
            Finding::new(
                "cpus-not-partitioned",
                Severity::Error,
                format!("CPUs {uncovered_online} are in no valid cpuset partition"),
            )
            .why("any host task, unbound kernel thread or workqueue may run there and preempt the VM")
            .fix(format!(
                "kvmisolate isolate --cpus {uncovered_online} --pid <VM PID> (or --unit <VM scope>)"
            )),
        );
    }
    if let Some(o) = online {
        let offline = ctx.cpus.difference(&o);
        if offline.is_empty() {
            out.push(Finding::ok(
                "cpus-offline",
                format!("CPUs {} are online", ctx.cpus),
            ));
        } else {
            out.push(
                Finding::new(
                    "cpus-offline",
                    Severity::Warning,
                    format!("CPUs {offline} are offline"),
                )
                .why("an offline CPU leaves its partition; vCPUs pinned there cannot run on it")
                .fix(format!(
                    "echo 1 > /sys/devices/system/cpu/cpuN/online for each of {offline}"
                )),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::host::fake::FakeHost;
    use super::super::tests::{cpus, find, sev};
    use super::super::{Severity, audit};

    #[test]
    fn cgroup_v2_missing() {
        let f = FakeHost::basic();
        f.remove("cgroup/cgroup.controllers");
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "cgroup-v2"), Severity::Error);
        assert!(find(&r, "cpuset-controller").is_none());
    }

    #[test]
    fn cgroup_v2_and_cpuset_present() {
        let r = audit(FakeHost::basic().roots(), None);
        assert_eq!(sev(&r, "cgroup-v2"), Severity::Ok);
        assert_eq!(sev(&r, "cpuset-controller"), Severity::Ok);
        assert_eq!(sev(&r, "kernel-features"), Severity::Ok);
    }

    #[test]
    fn cpuset_controller_missing() {
        let f = FakeHost::basic();
        f.write("cgroup/cgroup.controllers", "cpu io memory pids\n");
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "cpuset-controller"), Severity::Error);
    }

    #[test]
    fn kernel_features_old_and_none() {
        // 6.1: partitions, no exclusive, no isolated file.
        let f = FakeHost::basic();
        f.remove("cgroup/cpuset.cpus.isolated")
            .remove("cgroup/system.slice/cpuset.cpus.exclusive");
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "kernel-features"), Severity::Info);
        // No partition file anywhere, but cpuset children: no partitions.
        f.remove("cgroup/system.slice/cpuset.cpus.partition");
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "kernel-features"), Severity::Error);
    }

    #[test]
    fn partition_valid_degraded_invalid() {
        let f = FakeHost::basic();
        f.partition("a.scope", "isolated", "2-3");
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "partition-state"), Severity::Ok);
        assert_eq!(sev(&r, "cpus-not-partitioned"), Severity::Ok);
        // CPU 3 offline: the partition holds only 2 (exclusive.effective still says 2-3).
        f.write("cgroup/a.scope/cpuset.cpus.effective", "2\n")
            .write("sys/devices/system/cpu/online", "0-2\n");
        let r = audit(f.roots(), None);
        assert_eq!(r.cpus.to_string(), "2-3");
        let p = find(&r, "partition-state").unwrap();
        assert_eq!(p.severity, Severity::Warning);
        assert!(p.found.contains("3 missing"), "{}", p.found);
        assert_eq!(sev(&r, "cpus-offline"), Severity::Warning);
        // Invalid, with the kernel's reason.
        f.write(
            "cgroup/a.scope/cpuset.cpus.partition",
            "isolated invalid (Parent is not a partition root)\n",
        );
        let r = audit(f.roots(), None);
        let p = find(&r, "partition-state").unwrap();
        assert_eq!(p.severity, Severity::Error);
        assert!(p.found.contains("Parent is not a partition root"));
        assert_eq!(sev(&r, "cpus-not-partitioned"), Severity::Error);
    }

    #[test]
    fn nested_partitions_are_found() {
        let f = FakeHost::basic();
        f.partition("kvmisolate.slice", "root", "1-3").partition(
            "kvmisolate.slice/vm.scope",
            "isolated",
            "2-3",
        );
        let s = super::scan(&f.host());
        let paths: Vec<&str> = s.partitions.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["kvmisolate.slice", "kvmisolate.slice/vm.scope"]);
        assert!(s.partition_file && s.exclusive_file);
        // A local parent partition that handed CPUs 2-3 down keeps only 1 itself: not short.
        f.write("cgroup/kvmisolate.slice/cpuset.cpus.effective", "1\n");
        let r = audit(f.roots(), None);
        assert!(
            r.findings
                .iter()
                .filter(|x| x.id == "partition-state")
                .all(|x| x.severity == Severity::Ok),
            "{:#?}",
            r.findings
        );
    }

    #[test]
    fn cpus_option_not_partitioned_and_online() {
        let f = FakeHost::basic();
        let r = audit(f.roots(), cpus("2-3"));
        assert_eq!(sev(&r, "cpus-not-partitioned"), Severity::Error);
        assert_eq!(sev(&r, "cpus-offline"), Severity::Ok);
    }
}
