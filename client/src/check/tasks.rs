//! Threads allowed on the isolated CPUs (host tasks that should not be, per-CPU kernel threads
//! that cannot help it) and RT throttling when real-time threads run there.

use std::path::Path;

use kvmisolate_dbus::cpulist::CpuSet;

use super::host::Host;
use super::{Ctx, Finding, Severity, shorten};

/// `PF_KTHREAD` in the flags field of `/proc/PID/stat`.
pub const PF_KTHREAD: u64 = 0x0020_0000;
/// `PF_NO_SETAFFINITY`: the kernel refuses affinity changes (per-CPU kthreads).
pub const PF_NO_SETAFFINITY: u64 = 0x0400_0000;
/// `SCHED_FIFO`.
pub const SCHED_FIFO: u32 = 1;
/// `SCHED_RR`.
pub const SCHED_RR: u32 = 2;

/// What `/proc/PID/task/TID/stat` and `status` say about one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// `comm`.
    pub comm: String,
    /// `flags` (field 9).
    pub flags: u64,
    /// The CPU it last ran on (field 39).
    pub processor: u32,
    /// Scheduling policy (field 41).
    pub policy: u32,
    /// `Cpus_allowed_list`.
    pub allowed: CpuSet,
}

impl Thread {
    /// A kernel thread.
    pub fn is_kthread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// A per-CPU kernel thread nobody can move (single CPU, or `PF_NO_SETAFFINITY`).
    pub fn is_percpu_kthread(&self) -> bool {
        self.is_kthread() && (self.allowed.len() == 1 || self.flags & PF_NO_SETAFFINITY != 0)
    }

    /// SCHED_FIFO or SCHED_RR.
    pub fn is_rt(&self) -> bool {
        self.policy == SCHED_FIFO || self.policy == SCHED_RR
    }
}

/// Parses a `stat` line: `(comm, flags, processor, policy)`.
pub fn parse_stat(text: &str) -> Option<(String, u64, u32, u32)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state).
    let field = |n: usize| rest.get(n - 3).copied();
    let flags = field(9)?.parse().ok()?;
    let processor = field(39)?.parse().ok()?;
    let policy = field(41).and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((comm, flags, processor, policy))
}

/// The `Cpus_allowed_list` of a `status` file.
pub fn allowed_of_status(text: &str) -> Option<CpuSet> {
    text.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|v| CpuSet::parse(v.trim()).ok())
}

/// Reads one thread (`None` if it vanished or is unreadable).
pub fn read_thread(host: &Host, pid: u32, tid: u32) -> Option<Thread> {
    let dir = host.proc(&format!("{pid}/task/{tid}"));
    let (comm, flags, processor, policy) = parse_stat(&host.read_quiet(&dir.join("stat"))?)?;
    let allowed = allowed_of_status(&host.read_quiet(&dir.join("status"))?)?;
    Some(Thread {
        pid,
        tid,
        comm,
        flags,
        processor,
        policy,
        allowed,
    })
}

/// Every thread on the host, with its process's cgroup (relative, no leading `/`).
pub fn all_threads(host: &Host) -> Vec<(Thread, String)> {
    let own = (host.roots.proc == Path::new("/proc")).then(std::process::id);
    let mut out = Vec::new();
    for pid in host.list_numeric(&host.roots.proc) {
        if Some(pid) == own {
            continue;
        }
        let cgroup = host
            .read_quiet(&host.proc(&format!("{pid}/cgroup")))
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_owned()))
            })
            .unwrap_or_default();
        let cgroup = cgroup.trim_start_matches('/').to_owned();
        let tids = {
            let tasks = host.proc(&format!("{pid}/task"));
            let v: Vec<u32> = std::fs::read_dir(&tasks)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                        .collect()
                })
                .unwrap_or_default();
            v
        };
        for tid in tids {
            if let Some(t) = read_thread(host, pid, tid) {
                out.push((t, cgroup.clone()));
            }
        }
    }
    out.sort_by_key(|(t, _)| (t.pid, t.tid));
    out
}

fn within(cgroup: &str, partition: &str) -> bool {
    cgroup == partition
        || cgroup
            .strip_prefix(partition)
            .is_some_and(|r| r.starts_with('/'))
}

fn describe(t: &Thread) -> String {
    let kind = if t.is_kthread() {
        "kernel thread"
    } else {
        "task"
    };
    let id = if t.pid == t.tid {
        t.pid.to_string()
    } else {
        format!("{}/{}", t.pid, t.tid)
    };
    format!("{id} {} ({kind}) allowed on {}", t.comm, t.allowed)
}

/// Threads on the isolated CPUs and RT throttling.
pub fn findings(ctx: &Ctx<'_>) -> Vec<Finding> {
    let threads = all_threads(ctx.host);
    let mut offenders = Vec::new();
    let mut percpu = Vec::new();
    let mut rt = Vec::new();
    let mut targets = 0usize;
    for (t, cg) in &threads {
        if t.allowed.is_disjoint(ctx.cpus) {
            continue;
        }
        let in_partition = ctx
            .partitions
            .iter()
            .any(|p| p.valid && within(cg, &p.path));
        if t.is_rt() && !t.is_kthread() {
            rt.push(describe(t));
        }
        if in_partition {
            targets += 1;
        } else if t.is_percpu_kthread() {
            percpu.push(describe(t));
        } else {
            offenders.push(describe(t));
        }
    }
    let mut out = Vec::new();
    if offenders.is_empty() {
        out.push(Finding::ok(
            "threads-on-isolated-cpus",
            format!(
                "no thread outside the partitions may run on CPUs {} ({targets} threads of the isolated workloads)",
                ctx.cpus
            ),
        ));
    } else {
        out.push(
            Finding::new(
                "threads-on-isolated-cpus",
                Severity::Warning,
                format!(
                    "{} thread(s) outside the partitions may run on CPUs {}: {}",
                    offenders.len(),
                    ctx.cpus,
                    shorten(&offenders.iter().map(|d| d.split(" allowed").next().unwrap_or(d).to_owned()).collect::<Vec<_>>(), 3)
                ),
            )
            .why("each one can preempt a vCPU (a context switch, cache and TLB pollution): tens to hundreds of µs")
            .fix("isolate the CPUs with a partition (kvmisolate isolate), which moves every other task off them; threads created later by a kernel thread (e.g. psimon) need taskset -p or a restart of what made them")
            .details(offenders),
        );
    }
    if percpu.is_empty() {
        out.push(Finding::ok(
            "percpu-kthreads",
            format!("no per-CPU kernel thread is bound to CPUs {}", ctx.cpus),
        ));
    } else {
        out.push(
            Finding::new(
                "percpu-kthreads",
                Severity::Info,
                format!(
                    "{} per-CPU kernel thread(s) are bound to CPUs {} (unavoidable: ksoftirqd, migration, cpuhp, kworker/N...)",
                    percpu.len(),
                    ctx.cpus
                ),
            )
            .why("they run only when their CPU has work for them (softirqs, per-CPU workqueue items, RCU); nohz_full and rcu_nocbs at boot reduce that work")
            .details(percpu),
        );
    }
    let runtime_path = ctx.host.proc("sys/kernel/sched_rt_runtime_us");
    let runtime = ctx.host.read_i64(&runtime_path);
    let shown = runtime.map_or("unknown".to_owned(), |r| r.to_string());
    out.push(match (rt.is_empty(), runtime) {
        (true, _) => Finding::ok(
            "rt-throttling",
            format!("no SCHED_FIFO/RR thread on CPUs {}: RT throttling (sched_rt_runtime_us {shown}) does not apply", ctx.cpus),
        ),
        (false, Some(-1)) => Finding::ok(
            "rt-throttling",
            format!("{} SCHED_FIFO/RR thread(s) on CPUs {} and RT throttling is off (sched_rt_runtime_us -1)", rt.len(), ctx.cpus),
        )
        .details(rt),
        (false, _) => Finding::new(
            "rt-throttling",
            Severity::Warning,
            format!(
                "{} SCHED_FIFO/RR thread(s) run on CPUs {} with RT throttling on (sched_rt_runtime_us {shown})",
                rt.len(),
                ctx.cpus
            ),
        )
        .why("a real-time vCPU that spins is stopped for (1 s - runtime) every second: a 50 ms stall per second with the default 950000")
        .fix("sysctl kernel.sched_rt_runtime_us=-1 while the VM runs (restore 950000 afterwards)")
        .details(rt),
    });
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::host::fake::{FakeHost, stat_line};
    use super::super::tests::{cpus, find, sev};
    use super::super::{Severity, audit};
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = stat_line(7, "a) (b", PF_KTHREAD, 3, 1);
        let (comm, flags, cpu, pol) = parse_stat(&line).unwrap();
        assert_eq!(
            (comm.as_str(), flags, cpu, pol),
            ("a) (b", PF_KTHREAD, 3, 1)
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    fn isolated_host() -> FakeHost {
        let f = FakeHost::basic();
        f.partition("vm.scope", "isolated", "2-3")
            .write("proc/sys/kernel/sched_rt_runtime_us", "950000\n")
            .task(1, "systemd", 0, "0-1", "/init.scope", 0, 0)
            .task(50, "qemu", 0, "2-3", "/vm.scope", 0, 2)
            .task(
                20,
                "ksoftirqd/2",
                PF_KTHREAD | PF_NO_SETAFFINITY,
                "2",
                "/",
                0,
                2,
            );
        f
    }

    #[test]
    fn clean_partition() {
        let r = audit(isolated_host().roots(), None);
        assert_eq!(sev(&r, "threads-on-isolated-cpus"), Severity::Ok);
        assert_eq!(sev(&r, "percpu-kthreads"), Severity::Info);
        assert_eq!(sev(&r, "rt-throttling"), Severity::Ok);
        let p = find(&r, "percpu-kthreads").unwrap();
        assert!(p.details[0].contains("ksoftirqd/2"));
    }

    #[test]
    fn offenders_listed() {
        let f = isolated_host();
        f.task(99, "psimon", PF_KTHREAD, "0-3", "/", 0, 1).task(
            100,
            "bash",
            0,
            "0-3",
            "/user.slice",
            0,
            0,
        );
        let r = audit(f.roots(), None);
        let o = find(&r, "threads-on-isolated-cpus").unwrap();
        assert_eq!(o.severity, Severity::Warning);
        assert_eq!(o.details.len(), 2, "{:?}", o.details);
        assert!(o.details[0].contains("psimon (kernel thread)"));
        assert!(o.details[1].contains("bash (task) allowed on 0-3"));
    }

    #[test]
    fn no_percpu_kthreads() {
        let f = isolated_host();
        f.remove("proc/20");
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "percpu-kthreads"), Severity::Ok);
    }

    #[test]
    fn rt_throttling() {
        let f = isolated_host();
        f.task(51, "CPU 0/KVM", 0, "2", "/vm.scope", SCHED_FIFO, 2);
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "rt-throttling"), Severity::Warning);
        f.write("proc/sys/kernel/sched_rt_runtime_us", "-1\n");
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "rt-throttling"), Severity::Ok);
    }

    #[test]
    fn cpus_option_with_unpartitioned_tasks() {
        let f = FakeHost::basic();
        f.task(1, "systemd", 0, "0-3", "/init.scope", 0, 0);
        let r = audit(f.roots(), cpus("3"));
        assert_eq!(sev(&r, "threads-on-isolated-cpus"), Severity::Warning);
    }
}
