//! Host knobs around an isolation: workqueue masks, `vm.stat_interval`, timer migration, the
//! watchdog mask, SMT siblings, the cpufreq governor (per audited CPU), and host-wide: boot
//! parameters, transparent hugepages and the hugepage pool.

use kvmisolate_dbus::cpulist::CpuSet;

use super::host::Host;
use super::{Ctx, Finding, Severity};
use crate::topology::Topology;

/// Findings about the audited CPUs.
pub fn cpu_findings(ctx: &Ctx<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let host = ctx.host;
    let cpus = ctx.cpus;
    for (id, rel, what, note) in [
        (
            "workqueue-cpumask",
            "devices/virtual/workqueue/cpumask",
            "unbound workqueues",
            " (isolated partitions do it by themselves on 6.8+)",
        ),
        (
            "writeback-cpumask",
            "bus/workqueue/devices/writeback/cpumask",
            "the writeback workqueue (dirty page flushing)",
            "",
        ),
    ] {
        let path = host.sys(rel);
        match host.read_mask(&path) {
            Some(m) if !m.is_disjoint(cpus) => out.push(
                Finding::new(
                    id,
                    Severity::Warning,
                    format!("{what} may run on CPUs {} ({} is {m})", m.intersection(cpus), path.display()),
                )
                .why("a kworker woken on an isolated CPU preempts the vCPU; writeback bursts take hundreds of µs")
                .fix(format!("echo {} > {}{note}", ctx.hk_mask, path.display())),
            ),
            Some(m) => out.push(Finding::ok(id, format!("{what} stay on CPUs {m}"))),
            None => {}
        }
    }
    let sysctl = |rel: &str| host.read_i64(&host.proc(&format!("sys/{rel}")));
    if let Some(v) = sysctl("vm/stat_interval") {
        out.push(if v < 10 {
            Finding::new(
                "vm-stat-interval",
                Severity::Warning,
                format!("vm.stat_interval is {v} s"),
            )
            .why("the vmstat worker wakes on every CPU (isolated ones included) that often to fold per-CPU counters")
            .fix("sysctl vm.stat_interval=120 while the VM runs (restore 1 afterwards)")
        } else {
            Finding::ok("vm-stat-interval", format!("vm.stat_interval is {v} s"))
        });
    }
    if let Some(v) = sysctl("kernel/timer_migration") {
        out.push(if v != 0 && kernel_excludes_from_timer_migration(host, cpus) {
            Finding::ok(
                "timer-migration",
                format!(
                    "kernel.timer_migration is 1, and the kernel (6.19+) keeps timer migration off CPUs {cpus}: they are in isolated partitions"
                ),
            )
        } else if v != 0 {
            Finding::new("timer-migration", Severity::Warning, "kernel.timer_migration is 1")
                .why("with timer migration a busy isolated CPU can be picked to expire the timers of idle CPUs (kernels before 7.0 do not exclude isolated CPUs)")
                .fix("sysctl kernel.timer_migration=0 while the VM runs (restore 1 afterwards)")
        } else {
            Finding::ok("timer-migration", "kernel.timer_migration is 0")
        });
    }
    let watchdog_on = sysctl("kernel/watchdog").is_none_or(|w| w != 0);
    if let Some(m) = host.read_cpulist(&host.proc("sys/kernel/watchdog_cpumask")) {
        out.push(if watchdog_on && !m.is_disjoint(cpus) {
            Finding::new(
                "watchdog-cpumask",
                Severity::Warning,
                format!("the lockup watchdog runs on CPUs {} (kernel.watchdog_cpumask {m})", m.intersection(cpus)),
            )
            .why("the soft-lockup watchdog's hrtimer and thread wake every few seconds on each CPU in the mask")
            .fix(format!("sysctl kernel.watchdog_cpumask={} (or kernel.watchdog=0)", ctx.hk))
        } else {
            Finding::ok(
                "watchdog-cpumask",
                if watchdog_on {
                    format!("the lockup watchdog stays on CPUs {m}")
                } else {
                    "the lockup watchdog is off".to_owned()
                },
            )
        });
    }
    out.extend(ctx.topology.map(|t| smt_finding(t, cpus)));
    if let Some(f) = governor_finding(host, cpus) {
        out.push(f);
    }
    out
}

/// The host's topology (`None`, remembered as unreadable, when sysfs does not have it).
pub fn read_topology(host: &Host) -> Option<Topology> {
    match Topology::read(&host.roots.sys) {
        Ok(t) => Some(t),
        Err(e) => {
            host.push(&host.sys("devices/system/cpu"), e.to_string());
            None
        }
    }
}

/// The CPUs outside `cpus` that share a core with one of them, one detail line per CPU of
/// `cpus` that has such a sibling (`who` names the other side: "host side"...).
pub fn split_cores(topo: &Topology, cpus: &CpuSet, who: &str) -> (CpuSet, Vec<String>) {
    let mut all = CpuSet::new();
    let mut details = Vec::new();
    for c in cpus.iter() {
        if let Some(core) = topo.core_of(c) {
            let other = core.cpus.difference(cpus);
            if !other.is_empty() {
                details.push(format!("CPU {c} shares its core with {other} ({who})"));
                all = all.union(&other);
            }
        }
    }
    (all, details)
}

fn smt_finding(topo: &Topology, cpus: &CpuSet) -> Finding {
    let (_, split) = split_cores(topo, cpus, "host side");
    if split.is_empty() {
        Finding::ok(
            "smt-siblings",
            format!("no core is shared between CPUs {cpus} and the host"),
        )
    } else {
        Finding::new(
            "smt-siblings",
            Severity::Warning,
            format!("{} isolated CPU(s) share a core with host CPUs", split.len()),
        )
        .why("SMT siblings share the core's execution units and caches: host load on the sibling slows the vCPU and adds jitter")
        .fix("isolate whole cores (both siblings, see thread_siblings_list), or leave the sibling idle")
        .details(split)
    }
}

fn governor_finding(host: &Host, cpus: &CpuSet) -> Option<Finding> {
    let mut seen = 0;
    let mut slow = Vec::new();
    for c in cpus.iter() {
        let p = host.sys(&format!(
            "devices/system/cpu/cpu{c}/cpufreq/scaling_governor"
        ));
        if let Some(g) = host.read_trim(&p) {
            seen += 1;
            if g != "performance" {
                slow.push(format!("CPU {c}: {g}"));
            }
        }
    }
    Some(if seen == 0 {
        Finding::new(
            "cpu-governor",
            Severity::Info,
            format!("no cpufreq on CPUs {cpus} (fixed frequency, a VM, or no driver loaded)"),
        )
    } else if slow.is_empty() {
        Finding::ok(
            "cpu-governor",
            format!("CPUs {cpus} use the performance governor"),
        )
    } else {
        Finding::new(
            "cpu-governor",
            Severity::Warning,
            format!("{} isolated CPU(s) do not use the performance governor", slow.len()),
        )
        .why("frequency ramps after idle make a vCPU's first microseconds of work slower and less predictable")
        .fix("echo performance > /sys/devices/system/cpu/cpufreq/policyN/scaling_governor for the policies of the isolated CPUs")
        .details(slow)
    })
}

/// The value of boot parameter `name` in `cmdline` (`Some("")` for a bare flag).
pub fn boot_param<'a>(cmdline: &'a str, name: &str) -> Option<&'a str> {
    cmdline.split_whitespace().rev().find_map(|w| {
        if w == name {
            Some("")
        } else {
            w.strip_prefix(name).and_then(|r| r.strip_prefix('='))
        }
    })
}

/// The CPUs of a boot parameter value, skipping flag words (`managed_irq,domain,2-3`).
pub fn boot_cpus(value: &str) -> Option<CpuSet> {
    let items: Vec<&str> = value
        .split(',')
        .filter(|i| i.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    if items.is_empty() {
        return None;
    }
    CpuSet::parse(&items.join(",")).ok()
}

/// `MAJOR.MINOR` of a kernel release string (`7.3.4+deb13-cloud-amd64` → `(7, 3)`).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Who keeps one source of interference off the isolated CPUs on a given kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duty {
    /// What is kept off (`unbound kthreads`...).
    pub what: &'static str,
    /// Who does it, with `isolated` partitions.
    pub isolated: &'static str,
    /// Who does it, with `root` partitions.
    pub root: &'static str,
}

/// The run-time duties on kernel `v` (measured in the test VM on 6.1, 6.12 and 7.3: case
/// `kernel-duties`; docs/ARCHITECTURE.md "Kernel duties"). From the version, so a backport
/// may make a kernel do more than this says, never less than kvmisolated covers.
pub fn kernel_duties(v: (u32, u32)) -> Vec<Duty> {
    let at_least = |m: u32, n: u32| v >= (m, n);
    vec![
        Duty {
            what: "unbound kthreads",
            isolated: if at_least(7, 0) {
                "the kernel (existing and new ones: housekeeping follows isolated partitions)"
            } else {
                "the kernel moves the existing ones; kvmisolated pins new ones"
            },
            root: if at_least(7, 0) {
                "kvmisolated (the kernel leaves kthreads of the top cpuset alone; restored at release)"
            } else {
                "the kernel moves the existing ones; kvmisolated pins new ones"
            },
        },
        Duty {
            what: "unbound workqueues",
            isolated: if at_least(6, 8) {
                "the kernel (workqueue cpumask)"
            } else {
                "kvmisolated's workqueue tuning"
            },
            root: "kvmisolated's workqueue tuning",
        },
        Duty {
            what: "timer migration",
            isolated: if at_least(6, 19) {
                "the kernel (isolated CPUs are not timer-migration targets)"
            } else {
                "kvmisolated's timer-migration tuning"
            },
            root: "kvmisolated's timer-migration tuning",
        },
    ]
}

/// Whether the running kernel itself keeps timer migration off `cpus`: 6.19+ does for the CPUs
/// of isolated partitions (7dec062cfcf2), which the root's `cpuset.cpus.isolated` lists. The
/// `timer-migration` tuning of kvmisolated is skipped there, so the sysctl stays 1.
fn kernel_excludes_from_timer_migration(host: &Host, cpus: &CpuSet) -> bool {
    let new_enough = host
        .read_trim(&host.proc("sys/kernel/osrelease"))
        .and_then(|r| kernel_version(&r))
        .is_some_and(|v| v >= (6, 19));
    new_enough
        && host
            .read_cpulist(&host.cgroup("cpuset.cpus.isolated"))
            .is_some_and(|isolated| !cpus.is_empty() && cpus.is_subset(&isolated))
}

/// The `kernel-duties` finding: what the running kernel does itself at run time, what
/// kvmisolated does, and what still takes boot parameters.
pub fn duties_finding(release: &str, cmdline: &str, cpus: &CpuSet) -> Finding {
    let Some(v) = kernel_version(release) else {
        return Finding::new(
            "kernel-duties",
            Severity::Info,
            format!("cannot tell this kernel's isolation duties (release '{release}')"),
        );
    };
    let mut details: Vec<String> = kernel_duties(v)
        .into_iter()
        .map(|d| {
            format!(
                "{}: with isolated partitions {}; with root partitions {}",
                d.what, d.isolated, d.root
            )
        })
        .collect();
    let nohz = nohz_full_value(cmdline);
    let isolcpus = boot_param(cmdline, "isolcpus").unwrap_or("");
    let boot_only = [
        ("scheduler tick", "nohz_full", nohz.as_deref()),
        (
            "RCU callbacks",
            "rcu_nocbs",
            boot_param(cmdline, "rcu_nocbs"),
        ),
        (
            "managed IRQs",
            "isolcpus=managed_irq",
            isolcpus
                .split(',')
                .any(|w| w == "managed_irq")
                .then_some(isolcpus),
        ),
    ];
    let mut missing = Vec::new();
    for (what, param, value) in boot_only {
        details.push(match value {
            Some(v) => format!("{what}: boot-only, set ({param}: {v})"),
            None => {
                missing.push(param);
                format!(
                    "{what}: boot-only, not set (boot with {param}={})",
                    cpus_or_list(cpus)
                )
            }
        });
    }
    Finding::new(
        "kernel-duties",
        Severity::Info,
        format!(
            "Linux {}.{}: at run time {}; boot-only and not set: {}",
            v.0,
            v.1,
            if v >= (7, 0) {
                "the kernel itself keeps unbound kthreads, workqueues and timers off isolated partitions, kvmisolated does it for root partitions"
            } else if v >= (6, 19) {
                "the kernel keeps workqueues and timers off isolated partitions, kvmisolated pins new kthreads"
            } else {
                "kvmisolated pins new kthreads and tunes workqueues and timer migration"
            },
            if missing.is_empty() {
                "none".to_owned()
            } else {
                missing.join(", ")
            }
        ),
    )
    .why("partitions move tasks at run time; the tick, RCU callbacks and managed IRQs can only be moved off CPUs at boot (runtime nohz_full/managed_irq through partitions is not merged as of 7.3)")
    .details(details)
}

/// The value that means `nohz_full`: `nohz_full=` itself, or `isolcpus=` with the `nohz` flag
/// (the same thing since 6.14).
pub fn nohz_full_value(cmdline: &str) -> Option<String> {
    if let Some(v) = boot_param(cmdline, "nohz_full") {
        return Some(v.to_owned());
    }
    let iso = boot_param(cmdline, "isolcpus")?;
    iso.split(',').any(|w| w == "nohz").then(|| iso.to_owned())
}

/// Host-wide findings: boot parameters, THP, the hugepage pool.
pub fn host_findings(host: &Host, cpus: &CpuSet) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(cmdline) = host.read(&host.proc("cmdline")) {
        out.extend(boot_findings(&cmdline, cpus));
        if let Some(release) = host.read_trim(&host.proc("sys/kernel/osrelease")) {
            out.push(duties_finding(&release, &cmdline, cpus));
        }
    }
    let thp = host.sys("kernel/mm/transparent_hugepage/enabled");
    if let Some(text) = host.read_trim(&thp) {
        let mode = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
            .unwrap_or(text.as_str())
            .to_owned();
        out.push(if mode == "always" {
            Finding::new(
                "thp",
                Severity::Warning,
                "transparent hugepages are enabled for every process (always)",
            )
            .why("khugepaged scans and compacts memory on every process's behalf, and page faults can stall on direct compaction")
            .fix("echo madvise > /sys/kernel/mm/transparent_hugepage/enabled, and back the VM with a hugepage pool")
        } else {
            Finding::ok("thp", format!("transparent hugepages: {mode}"))
        });
    }
    let dir = host.sys("kernel/mm/hugepages");
    let mut pools = Vec::new();
    for name in host.list(&dir) {
        let Some(size) = name.strip_prefix("hugepages-") else {
            continue;
        };
        let nr = host.read_i64(&dir.join(&name).join("nr_hugepages"));
        let free = host.read_i64(&dir.join(&name).join("free_hugepages"));
        if let Some(nr) = nr {
            pools.push(format!(
                "{size}: {nr} page(s), {} free",
                free.map_or("?".to_owned(), |f| f.to_string())
            ));
        }
    }
    if !pools.is_empty() {
        out.push(
            Finding::new(
                "hugepages",
                Severity::Info,
                format!("hugepage pool: {}", pools.join("; ")),
            )
            .why("a VM backed by hugepages (memoryBacking/hugepages) has fewer TLB misses and no THP compaction; the pool must hold the whole guest RAM")
            .fix("size the pool for the guest: sysctl vm.nr_hugepages=N (2 MiB pages) before starting it"),
        );
    }
    out
}

fn boot_findings(cmdline: &str, cpus: &CpuSet) -> Vec<Finding> {
    let mut out = Vec::new();
    let covers = |v: &str| boot_cpus(v).map(|c| cpus.difference(&c));
    for (id, name, why, fix) in [
        (
            "boot-nohz-full",
            "nohz_full",
            "the scheduler tick interrupts every isolated CPU (250-1000 times a second) even when one task runs there",
            "boot with nohz_full=ISOLATED (it is boot-only; it costs some throughput on those CPUs)",
        ),
        (
            "boot-rcu-nocbs",
            "rcu_nocbs",
            "RCU callbacks run in softirq on the CPU that queued them, isolated ones included",
            "boot with rcu_nocbs=ISOLATED (boot-only; pairs with nohz_full)",
        ),
    ] {
        // isolcpus=nohz,LIST means nohz_full=LIST (6.14+: both feed the same housekeeping type)
        let value = if name == "nohz_full" {
            nohz_full_value(cmdline)
        } else {
            boot_param(cmdline, name).map(str::to_owned)
        };
        let f = match value.as_deref() {
            None => Finding::new(
                id,
                Severity::Info,
                format!("{name} is not on the kernel command line"),
            )
            .why(why)
            .fix(fix.replace("ISOLATED", &cpus_or_list(cpus))),
            Some(v) => match covers(v) {
                Some(missing) if !missing.is_empty() => Finding::new(
                    id,
                    Severity::Info,
                    format!("{name}={v} does not cover CPUs {missing}"),
                )
                .why(why)
                .fix(fix.replace("ISOLATED", &cpus.to_string())),
                _ => Finding::ok(id, format!("{name}={v}")),
            },
        };
        out.push(f);
    }
    out.push(match boot_param(cmdline, "isolcpus") {
        None => Finding::ok(
            "boot-isolcpus",
            "isolcpus is not used (cpuset partitions do the same at run time)",
        ),
        Some(v) => {
            let managed = v.split(',').any(|w| w == "managed_irq");
            Finding::new(
                "boot-isolcpus",
                Severity::Info,
                format!("isolcpus={v}"),
            )
            .why("isolcpus CPUs are fixed at boot and have no load balancing; a partition over them may be refused with 'partition config conflicts with housekeeping setup' on some kernels")
            .fix(if managed {
                "nothing to do if partitions on those CPUs are valid (managed_irq keeps managed IRQs away, which partitions cannot)"
            } else {
                "prefer partitions for run-time isolation; keep isolcpus=managed_irq,LIST only if managed IRQs (NVMe queues) must stay off those CPUs"
            })
        }
    });
    out.push(match boot_param(cmdline, "irqaffinity") {
        None => Finding::new(
            "boot-irqaffinity",
            Severity::Info,
            "irqaffinity is not on the kernel command line: IRQs start on every CPU",
        )
        .why("IRQs set up at boot or later are allowed on the isolated CPUs until moved")
        .fix(
            "boot with irqaffinity=HOUSEKEEPING, or set /proc/irq/default_smp_affinity at run time",
        ),
        Some(v) => match boot_cpus(v) {
            Some(c) if !c.is_disjoint(cpus) => Finding::new(
                "boot-irqaffinity",
                Severity::Warning,
                format!(
                    "irqaffinity={v} includes the isolated CPUs {}",
                    c.intersection(cpus)
                ),
            )
            .why("IRQs start on those CPUs")
            .fix("boot with irqaffinity= listing only housekeeping CPUs"),
            _ => Finding::ok("boot-irqaffinity", format!("irqaffinity={v}")),
        },
    });
    out
}

fn cpus_or_list(cpus: &CpuSet) -> String {
    if cpus.is_empty() {
        "LIST".to_owned()
    } else {
        cpus.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::host::fake::FakeHost;
    use super::super::tests::{cpus, find, sev};
    use super::super::{Severity, audit};
    use super::*;

    fn tuned() -> FakeHost {
        let f = FakeHost::basic();
        f.partition("vm.scope", "isolated", "2-3")
            .write("sys/devices/virtual/workqueue/cpumask", "3\n")
            .write("sys/bus/workqueue/devices/writeback/cpumask", "1\n")
            .write("proc/sys/vm/stat_interval", "120\n")
            .write("proc/sys/kernel/timer_migration", "0\n")
            .write("proc/sys/kernel/watchdog", "1\n")
            .write("proc/sys/kernel/watchdog_cpumask", "0-1\n")
            .write(
                "sys/kernel/mm/transparent_hugepage/enabled",
                "always [madvise] never\n",
            )
            .write(
                "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
                "512\n",
            )
            .write(
                "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
                "500\n",
            )
            .write(
                "proc/cmdline",
                "root=/dev/sda nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1\n",
            );
        for c in 2..4 {
            f.write(
                &format!("sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"),
                "performance\n",
            );
        }
        f
    }

    #[test]
    fn all_fine_when_tuned() {
        let r = audit(tuned().roots(), None);
        for id in [
            "workqueue-cpumask",
            "writeback-cpumask",
            "vm-stat-interval",
            "timer-migration",
            "watchdog-cpumask",
            "smt-siblings",
            "cpu-governor",
            "thp",
            "boot-nohz-full",
            "boot-rcu-nocbs",
            "boot-isolcpus",
            "boot-irqaffinity",
        ] {
            assert_eq!(sev(&r, id), Severity::Ok, "{id}: {:?}", find(&r, id));
        }
        assert_eq!(sev(&r, "hugepages"), Severity::Info);
        assert!(
            find(&r, "hugepages")
                .unwrap()
                .found
                .contains("2048kB: 512 page(s), 500 free")
        );
    }

    #[test]
    fn timer_migration_is_the_kernels_job_for_isolated_partitions_on_6_19() {
        let f = tuned();
        f.write("proc/sys/kernel/timer_migration", "1\n")
            .write("cgroup/cpuset.cpus.isolated", "2-3\n")
            .write("proc/sys/kernel/osrelease", "7.3.4+deb13-cloud-amd64\n");
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "timer-migration"), Severity::Ok);
        assert!(find(&r, "timer-migration").unwrap().found.contains("6.19+"));
        // Before 6.19 the kernel does not: the sysctl is still a warning.
        f.write("proc/sys/kernel/osrelease", "6.18.1\n");
        assert_eq!(
            sev(&audit(f.roots(), None), "timer-migration"),
            Severity::Warning
        );
        // A root partition is not in cpuset.cpus.isolated: a warning on 7.3 too.
        f.write("proc/sys/kernel/osrelease", "7.3.4\n")
            .write("cgroup/cpuset.cpus.isolated", "\n");
        assert_eq!(
            sev(&audit(f.roots(), None), "timer-migration"),
            Severity::Warning
        );
    }

    #[test]
    fn all_triggered_when_default() {
        let f = tuned();
        f.write("sys/devices/virtual/workqueue/cpumask", "f\n")
            .write("sys/bus/workqueue/devices/writeback/cpumask", "f\n")
            .write("proc/sys/vm/stat_interval", "1\n")
            .write("proc/sys/kernel/timer_migration", "1\n")
            .write("proc/sys/kernel/watchdog_cpumask", "0-3\n")
            .write(
                "sys/kernel/mm/transparent_hugepage/enabled",
                "[always] madvise never\n",
            )
            .write(
                "sys/devices/system/cpu/cpu2/topology/thread_siblings_list",
                "0,2\n",
            )
            .write(
                "sys/devices/system/cpu/cpu0/topology/thread_siblings_list",
                "0,2\n",
            )
            .write(
                "sys/devices/system/cpu/cpu3/cpufreq/scaling_governor",
                "powersave\n",
            )
            .write(
                "proc/cmdline",
                "root=/dev/sda irqaffinity=0-3 isolcpus=domain,3\n",
            );
        let r = audit(f.roots(), None);
        for id in [
            "workqueue-cpumask",
            "writeback-cpumask",
            "vm-stat-interval",
            "timer-migration",
            "watchdog-cpumask",
            "smt-siblings",
            "cpu-governor",
            "thp",
            "boot-irqaffinity",
        ] {
            assert_eq!(sev(&r, id), Severity::Warning, "{id}: {:?}", find(&r, id));
        }
        for id in ["boot-nohz-full", "boot-rcu-nocbs", "boot-isolcpus"] {
            assert_eq!(sev(&r, id), Severity::Info, "{id}");
        }
        assert_eq!(
            find(&r, "smt-siblings").unwrap().details,
            ["CPU 2 shares its core with 0 (host side)"]
        );
        assert!(
            find(&r, "boot-nohz-full")
                .unwrap()
                .fix
                .contains("nohz_full=2-3")
        );
    }

    #[test]
    fn no_hugepage_pool_no_finding() {
        let f = tuned();
        f.remove("sys/kernel/mm/hugepages");
        assert!(find(&audit(f.roots(), None), "hugepages").is_none());
    }

    #[test]
    fn watchdog_off_is_fine() {
        let f = tuned();
        f.write("proc/sys/kernel/watchdog_cpumask", "0-3\n")
            .write("proc/sys/kernel/watchdog", "0\n");
        assert_eq!(
            sev(&audit(f.roots(), None), "watchdog-cpumask"),
            Severity::Ok
        );
    }

    #[test]
    fn no_cpufreq_is_info_and_partial_nohz() {
        let f = tuned();
        f.remove("sys/devices/system/cpu/cpu2/cpufreq")
            .remove("sys/devices/system/cpu/cpu3/cpufreq")
            .write("proc/cmdline", "nohz_full=2 rcu_nocbs\n");
        let r = audit(f.roots(), cpus("2-3"));
        assert_eq!(sev(&r, "cpu-governor"), Severity::Info);
        assert_eq!(sev(&r, "boot-nohz-full"), Severity::Info);
        // A bare rcu_nocbs (all CPUs on newer kernels): no list to compare, fine.
        assert_eq!(sev(&r, "boot-rcu-nocbs"), Severity::Ok);
    }

    #[test]
    fn isolcpus_nohz_counts_as_nohz_full() {
        let f = tuned();
        f.write(
            "proc/cmdline",
            "isolcpus=nohz,managed_irq,2-3 rcu_nocbs=2-3\n",
        );
        let r = audit(f.roots(), cpus("2-3"));
        assert_eq!(
            sev(&r, "boot-nohz-full"),
            Severity::Ok,
            "{:?}",
            find(&r, "boot-nohz-full")
        );
        f.write("proc/cmdline", "isolcpus=managed_irq,2-3 rcu_nocbs=2-3\n");
        let r = audit(f.roots(), cpus("2-3"));
        assert_eq!(sev(&r, "boot-nohz-full"), Severity::Info);
    }

    #[test]
    fn duties_follow_the_kernel_version() {
        let c = cpus("2-3").unwrap();
        let f = duties_finding("7.3.4+deb13-cloud-amd64", "root=/dev/vda", &c);
        assert_eq!(f.severity, Severity::Info);
        assert!(
            f.found.contains("Linux 7.3")
                && f.found.contains("kvmisolated does it for root partitions"),
            "{}",
            f.found
        );
        assert!(
            f.found
                .contains("nohz_full, rcu_nocbs, isolcpus=managed_irq"),
            "{}",
            f.found
        );
        assert!(
            f.details
                .iter()
                .any(|d| d.starts_with("unbound kthreads: with isolated partitions the kernel")),
            "{:?}",
            f.details
        );
        let f = duties_finding(
            "6.12.57+deb13-cloud-amd64",
            "isolcpus=nohz,managed_irq,2-3 rcu_nocbs=2-3",
            &c,
        );
        assert!(
            f.found.contains("Linux 6.12") && f.found.ends_with("not set: none"),
            "{}",
            f.found
        );
        assert!(
            f.details.iter().any(|d| d.starts_with(
                "timer migration: with isolated partitions kvmisolated's timer-migration tuning"
            )),
            "{:?}",
            f.details
        );
        let f = duties_finding("6.19.2", "", &c);
        assert!(
            f.details
                .iter()
                .any(|d| d.starts_with("timer migration: with isolated partitions the kernel")),
            "{:?}",
            f.details
        );
        assert_eq!(kernel_version("6.1.0-50-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(duties_finding("?", "", &c).found.contains("cannot tell"));
    }

    #[test]
    fn boot_params_parse() {
        let c = "a=1 isolcpus=managed_irq,domain,2-3,5 rcu_nocbs";
        assert_eq!(boot_param(c, "isolcpus"), Some("managed_irq,domain,2-3,5"));
        assert_eq!(boot_param(c, "rcu_nocbs"), Some(""));
        assert_eq!(boot_param(c, "nohz_full"), None);
        assert_eq!(
            boot_cpus("managed_irq,domain,2-3,5").unwrap().to_string(),
            "2-3,5"
        );
        assert_eq!(boot_cpus("domain"), None);
    }
}
