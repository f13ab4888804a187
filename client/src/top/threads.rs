//! Finding the threads to trace: a libvirt domain's cgroup leaves (`vcpuN`, `emulator`,
//! `iothreadN` under its machine scope), a process's threads (vCPUs by QEMU's `CPU N/KVM`
//! or `CPU N/TCG` names), or the cgroups of a kvmisolate isolation; and the CPUs they may
//! run on.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::libvirt::LeafKind;
use kvmisolate_dbus::libvirt::machine::{MACHINE_DIR, MACHINE_SLICE, is_scope_of};

use super::analyze::{Role, Target};

/// The role QEMU's thread name gives: `CPU 3/KVM`, `CPU 0/TCG` → vCPU; `IO ...` → iothread.
pub fn role_of_name(comm: &str) -> Option<Role> {
    if let Some(rest) = comm.strip_prefix("CPU ") {
        let (n, accel) = rest.split_once('/')?;
        if !accel.is_empty() {
            return n.parse().ok().map(Role::Vcpu);
        }
    }
    if comm.starts_with("IO ") {
        return Some(Role::Iothread);
    }
    None
}

fn comm(tid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// The CPU a thread last ran on (`processor` in /proc/TID/stat).
pub fn last_cpu(tid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    // Fields after the name start at field 3 (state); processor is field 39.
    after.split_whitespace().nth(36)?.parse().ok()
}

/// The CPUs a thread may run on (Cpus_allowed_list).
pub fn allowed_cpus(tid: u32) -> Option<CpuSet> {
    let status = fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|v| CpuSet::parse(v.trim()).ok())
}

fn target(tid: u32, role: Option<Role>) -> Option<Target> {
    let name = comm(tid)?;
    let role = role
        .or_else(|| role_of_name(&name))
        .unwrap_or(Role::Emulator);
    Some(Target {
        tid,
        name,
        role,
        cpu: last_cpu(tid),
    })
}

fn tids_in(cgroup: &Path) -> Vec<u32> {
    fs::read_to_string(cgroup.join("cgroup.threads"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The threads of process `pid`.
pub fn of_pid(pid: u32) -> Result<Vec<Target>, String> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let rd = fs::read_dir(&dir).map_err(|e| {
        format!("no process {pid} ({e}): give the pid of a running QEMU (pgrep qemu)")
    })?;
    let mut v: Vec<Target> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter_map(|tid| target(tid, None))
        .collect();
    v.sort_by_key(|t| (t.role, t.tid));
    Ok(v)
}

/// The threads of a running libvirt domain, by its cgroup leaves (`cgroot`: the cgroup v2
/// mount).
pub fn of_domain(cgroot: &Path, name: &str) -> Result<Vec<Target>, String> {
    let mut scope = None;
    for parent in [MACHINE_SLICE, MACHINE_DIR] {
        for e in fs::read_dir(cgroot.join(parent))
            .into_iter()
            .flatten()
            .flatten()
        {
            let child = e.file_name().to_string_lossy().into_owned();
            if is_scope_of(&child, name) {
                scope = Some(e.path());
            }
        }
    }
    let scope = scope.ok_or_else(|| {
        format!(
            "libvirt domain {name:?} is not running (no cgroup of it under /{MACHINE_SLICE} or \
             /{MACHINE_DIR}): start it (virsh start {name}) or give --pid"
        )
    })?;
    let mut v = Vec::new();
    for e in fs::read_dir(scope.join("libvirt"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let leaf = e.file_name().to_string_lossy().into_owned();
        let Some(kind) = LeafKind::parse(&leaf) else {
            continue;
        };
        let role = match kind {
            LeafKind::Vcpu(n) => Role::Vcpu(n),
            LeafKind::Emulator => Role::Emulator,
            LeafKind::Iothread(_) => Role::Iothread,
        };
        v.extend(
            tids_in(&e.path())
                .into_iter()
                .filter_map(|t| target(t, Some(role))),
        );
    }
    if v.is_empty() {
        return Err(format!(
            "no thread found in the leaves of {} (libvirt/vcpuN, emulator): is it a QEMU \
             domain on cgroup v2?",
            scope.display()
        ));
    }
    v.sort_by_key(|t| (t.role, t.tid));
    Ok(v)
}

/// The threads in `cgroups` (relative to `cgroot`) and their descendants; roles by name.
pub fn of_cgroups(cgroot: &Path, cgroups: &[String]) -> Vec<Target> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<PathBuf> = cgroups
        .iter()
        .map(|c| cgroot.join(c.trim_start_matches('/')))
        .collect();
    while let Some(dir) = stack.pop() {
        seen.extend(tids_in(&dir));
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    let mut v: Vec<Target> = seen.into_iter().filter_map(|t| target(t, None)).collect();
    v.sort_by_key(|t| (t.role, t.tid));
    v
}

/// The CPUs to trace: where the vCPU threads may run (all threads' when there is no vCPU).
pub fn cpus_of(targets: &[Target]) -> BTreeSet<u32> {
    let vcpus: Vec<&Target> = targets
        .iter()
        .filter(|t| matches!(t.role, Role::Vcpu(_)))
        .collect();
    let pool: Vec<&Target> = if vcpus.is_empty() {
        targets.iter().collect()
    } else {
        vcpus
    };
    let mut cpus = BTreeSet::new();
    for t in pool {
        if let Some(a) = allowed_cpus(t.tid) {
            cpus.extend(a.iter());
        }
        cpus.extend(t.cpu);
    }
    cpus
}

/// Whether `pid` is a kernel thread (PF_KTHREAD in /proc/PID/stat's flags); for a thread
/// gone meanwhile, guessed from its name.
pub fn is_kthread(pid: u32, comm: &str) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    if let Some(flags) = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')').and_then(|(_, a)| {
                a.split_whitespace()
                    .nth(6)
                    .and_then(|f| f.parse::<u64>().ok())
            })
        })
    {
        return flags & PF_KTHREAD != 0;
    }
    [
        "kworker/",
        "ksoftirqd/",
        "migration/",
        "rcu",
        "cpuhp/",
        "irq/",
        "kthreadd",
        "watchdog/",
    ]
    .iter()
    .any(|p| comm.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_thread_names() {
        assert_eq!(role_of_name("CPU 0/KVM"), Some(Role::Vcpu(0)));
        assert_eq!(role_of_name("CPU 12/TCG"), Some(Role::Vcpu(12)));
        assert_eq!(role_of_name("IO iothread1"), Some(Role::Iothread));
        assert_eq!(role_of_name("CPU x/KVM"), None);
        assert_eq!(role_of_name("CPU 1/"), None);
        assert_eq!(role_of_name("qemu-system-x86"), None);
    }

    #[test]
    fn this_process() {
        let me = of_pid(std::process::id()).unwrap_or_default();
        assert!(me.iter().any(|t| t.tid == std::process::id()));
        assert!(of_pid(u32::MAX).is_err());
        assert!(!cpus_of(&me).is_empty());
        assert!(!is_kthread(std::process::id(), "kworker/0:1"));
        assert!(is_kthread(u32::MAX, "kworker/0:1"));
    }
}
