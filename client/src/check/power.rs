//! Power management and memory placement around an isolation: idle states and the
//! energy/performance preference of the audited CPUs, and host-wide the split-lock mitigation
//! and NUMA balancing (the `cpu-idle`, `energy-perf`, `split-lock` and `numa-balancing`
//! tunings of kvmisolated).

use kvmisolate_dbus::cpulist::CpuSet;
use kvmisolate_dbus::tunings::DEFAULT_CPU_IDLE_LATENCY_US;

use super::host::Host;
use super::{Ctx, Finding, Severity};

/// Findings about the audited CPUs.
pub fn cpu_findings(ctx: &Ctx<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(cpu_idle_finding(ctx.host, ctx.cpus));
    out.extend(energy_perf_finding(ctx.host, ctx.cpus));
    out
}

/// Host-wide findings.
pub fn host_findings(host: &Host) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(split_lock_finding(host));
    out.extend(numa_balancing_finding(host));
    out
}

/// One idle state of a CPU (`cpuidle/stateK`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct IdleState {
    name: String,
    /// Exit latency, µs.
    latency: u64,
    disabled: bool,
}

fn idle_states(host: &Host, cpu: u32) -> Vec<IdleState> {
    let dir = host.sys(&format!("devices/system/cpu/cpu{cpu}/cpuidle"));
    host.list(&dir)
        .iter()
        .filter(|n| n.starts_with("state"))
        .filter_map(|n| {
            let d = dir.join(n);
            Some(IdleState {
                name: host.read_trim(&d.join("name"))?,
                latency: host.read_trim(&d.join("latency"))?.parse().ok()?,
                disabled: host.read_trim(&d.join("disable")).is_some_and(|v| v != "0"),
            })
        })
        .collect()
}

/// The CPU's PM QoS resume latency limit in µs: `None` for "no limit" (the file reads `0`,
/// or is absent), `Some(0)` for `n/a` (no latency accepted: polling only).
fn pm_qos_limit(host: &Host, cpu: u32) -> Option<u64> {
    let text = host.read_trim(&host.sys(&format!(
        "devices/system/cpu/cpu{cpu}/power/pm_qos_resume_latency_us"
    )))?;
    match text.as_str() {
        "n/a" => Some(0),
        "0" => None,
        n => n.parse().ok(),
    }
}

fn cpu_idle_finding(host: &Host, cpus: &CpuSet) -> Option<Finding> {
    let threshold = u64::from(DEFAULT_CPU_IDLE_LATENCY_US);
    let mut seen = false;
    let mut deep = Vec::new();
    for c in cpus.iter() {
        let states = idle_states(host, c);
        if states.is_empty() {
            continue;
        }
        seen = true;
        let limit = pm_qos_limit(host, c);
        let usable: Vec<String> = states
            .iter()
            .filter(|s| !s.disabled && s.latency > threshold)
            .filter(|s| limit.is_none_or(|l| s.latency <= l))
            .map(|s| format!("{} ({} µs)", s.name, s.latency))
            .collect();
        if !usable.is_empty() {
            deep.push(format!("CPU {c}: {}", usable.join(", ")));
        }
    }
    if !seen {
        return Some(Finding::new(
            "cpu-idle",
            Severity::Info,
            format!("no cpuidle states on CPUs {cpus} (no idle driver, idle=poll, or a VM)"),
        ));
    }
    Some(if deep.is_empty() {
        Finding::ok(
            "cpu-idle",
            format!("CPUs {cpus} enter no idle state that takes more than {threshold} µs to leave"),
        )
    } else {
        Finding::new(
            "cpu-idle",
            Severity::Warning,
            format!(
                "{} isolated CPU(s) may enter idle states that take more than {threshold} µs to leave",
                deep.len()
            ),
        )
        .why("a vCPU that halts lets its CPU sleep: an interrupt for the guest then waits for the CPU to leave the deep state (its exit latency) and for cold caches")
        .fix(format!(
            "the cpu-idle tuning (--tunings realtime, or cpu-idle by name), or echo {threshold} > /sys/devices/system/cpu/cpuN/power/pm_qos_resume_latency_us for the isolated CPUs"
        ))
        .details(deep)
    })
}

fn energy_perf_finding(host: &Host, cpus: &CpuSet) -> Option<Finding> {
    let mut seen = 0;
    let mut other = Vec::new();
    for c in cpus.iter() {
        let p = host.sys(&format!(
            "devices/system/cpu/cpu{c}/cpufreq/energy_performance_preference"
        ));
        if let Some(v) = host.read_trim(&p) {
            seen += 1;
            if v != "performance" {
                other.push(format!("CPU {c}: {v}"));
            }
        }
    }
    if seen == 0 {
        // No EPP driver (acpi-cpufreq, passive mode, a VM): `cpu-governor` says all there is.
        return None;
    }
    Some(if other.is_empty() {
        Finding::ok(
            "energy-perf",
            format!("CPUs {cpus} prefer performance (energy_performance_preference)"),
        )
    } else {
        Finding::new(
            "energy-perf",
            Severity::Warning,
            format!(
                "{} isolated CPU(s) do not prefer performance (energy_performance_preference)",
                other.len()
            ),
        )
        .why("with intel_pstate or amd-pstate in active mode the hardware picks the frequency from this hint: anything but performance ramps up slowly after idle, whatever the governor")
        .fix("the energy-perf tuning (in the default profile), or echo performance > /sys/devices/system/cpu/cpufreq/policyN/energy_performance_preference for the policies of the isolated CPUs")
        .details(other)
    })
}

fn split_lock_finding(host: &Host) -> Option<Finding> {
    let v = host.read_i64(&host.proc("sys/kernel/split_lock_mitigate"))?;
    Some(if v == 0 {
        Finding::ok(
            "split-lock",
            "kernel.split_lock_mitigate is 0: a guest's split locks are not slowed down",
        )
    } else {
        Finding::new(
            "split-lock",
            Severity::Info,
            "kernel.split_lock_mitigate is 1: a vCPU that takes a split lock is made to sleep",
        )
        .why("the kernel slows down a guest's split-locked access by sleeping its vCPU thread for about 10 ms (Windows games and anti-cheat take them: DPC spikes in LatencyMon); the mitigation protects the host from a guest that hogs the memory bus on purpose, so keep it with untrusted guests")
        .fix("the split-lock tuning (--tunings realtime, or split-lock by name), or sysctl kernel.split_lock_mitigate=0 while the VM runs")
    })
}

fn numa_balancing_finding(host: &Host) -> Option<Finding> {
    let v = host.read_i64(&host.proc("sys/kernel/numa_balancing"))?;
    let nodes = host
        .read_trim(&host.sys("devices/system/node/online"))
        .and_then(|t| CpuSet::parse(&t).ok())
        .map_or(1, |n| n.len());
    Some(if v == 0 {
        Finding::ok("numa-balancing", "kernel.numa_balancing is 0")
    } else {
        Finding::new(
            "numa-balancing",
            if nodes > 1 {
                Severity::Warning
            } else {
                Severity::Info
            },
            format!("kernel.numa_balancing is {v} ({nodes} NUMA node(s))"),
        )
        .why("NUMA balancing unmaps the guest's memory now and then to find where it is used: each access then takes a hinting fault, and pages may be migrated under the running guest")
        .fix("the numa-balancing tuning (--tunings realtime, or numa-balancing by name), or sysctl kernel.numa_balancing=0 while the VM runs; bind the guest's memory to its node (<numatune>)")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::host::fake::FakeHost;
    use super::super::tests::{cpus, find, sev};
    use super::super::{Severity, audit};

    /// Copies `client/tests/fixtures/sysfs/cpuidle-intel` under `cpuN/` of the audited CPUs.
    fn intel_idle(f: &FakeHost, cpus: &[u32]) {
        fn files(dir: &std::path::Path, rel: &str, out: &mut Vec<(String, String)>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                if e.path().is_dir() {
                    files(&e.path(), &rel, out);
                } else if !name.ends_with(".md") {
                    out.push((rel, std::fs::read_to_string(e.path()).unwrap()));
                }
            }
        }
        let mut all = Vec::new();
        files(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/sysfs/cpuidle-intel"),
            "",
            &mut all,
        );
        for c in cpus {
            for (rel, text) in &all {
                f.write(&format!("sys/devices/system/cpu/cpu{c}/{rel}"), text);
            }
        }
    }

    #[test]
    fn deep_idle_states_are_listed_with_their_exit_latency() {
        let f = FakeHost::basic();
        intel_idle(&f, &[2, 3]);
        let r = audit(f.roots(), cpus("2-3"));
        let cpu_idle = find(&r, "cpu-idle").unwrap();
        assert_eq!(cpu_idle.severity, Severity::Warning);
        assert_eq!(
            cpu_idle.details,
            ["CPU 2: C6 (133 µs)", "CPU 3: C6 (133 µs)"]
        );
        assert!(
            cpu_idle.fix.contains("pm_qos_resume_latency_us"),
            "{}",
            cpu_idle.fix
        );
        // A PM QoS limit below C6's exit latency (what the tuning writes) or C6 disabled: fine.
        f.write(
            "sys/devices/system/cpu/cpu2/power/pm_qos_resume_latency_us",
            "20\n",
        )
        .write("sys/devices/system/cpu/cpu3/cpuidle/state3/disable", "1\n");
        assert_eq!(
            sev(&audit(f.roots(), cpus("2-3")), "cpu-idle"),
            Severity::Ok
        );
        // "n/a": polling only.
        f.write(
            "sys/devices/system/cpu/cpu3/power/pm_qos_resume_latency_us",
            "n/a\n",
        )
        .write("sys/devices/system/cpu/cpu3/cpuidle/state3/disable", "0\n");
        assert_eq!(
            sev(&audit(f.roots(), cpus("2-3")), "cpu-idle"),
            Severity::Ok
        );
        // No cpuidle at all (a VM without an idle driver): information.
        let f = FakeHost::basic();
        assert_eq!(
            sev(&audit(f.roots(), cpus("2-3")), "cpu-idle"),
            Severity::Info
        );
    }

    #[test]
    fn energy_perf_other_than_performance_warns() {
        let f = FakeHost::basic();
        assert!(find(&audit(f.roots(), cpus("2-3")), "energy-perf").is_none());
        for c in [2, 3] {
            f.write(
                &format!("sys/devices/system/cpu/cpu{c}/cpufreq/energy_performance_preference"),
                "balance_performance\n",
            );
        }
        let r = audit(f.roots(), cpus("2-3"));
        let e = find(&r, "energy-perf").unwrap();
        assert_eq!(e.severity, Severity::Warning);
        assert_eq!(
            e.details,
            ["CPU 2: balance_performance", "CPU 3: balance_performance"]
        );
        for c in [2, 3] {
            f.write(
                &format!("sys/devices/system/cpu/cpu{c}/cpufreq/energy_performance_preference"),
                "performance\n",
            );
        }
        assert_eq!(
            sev(&audit(f.roots(), cpus("2-3")), "energy-perf"),
            Severity::Ok
        );
    }

    #[test]
    fn split_lock_and_numa_balancing() {
        let f = FakeHost::basic();
        let r = audit(f.roots(), None);
        assert!(find(&r, "split-lock").is_none() && find(&r, "numa-balancing").is_none());
        f.write("proc/sys/kernel/split_lock_mitigate", "1\n")
            .write("proc/sys/kernel/numa_balancing", "1\n");
        let r = audit(f.roots(), None);
        let s = find(&r, "split-lock").unwrap();
        assert_eq!(s.severity, Severity::Info);
        assert!(s.why.contains("untrusted"), "{}", s.why);
        assert_eq!(sev(&r, "numa-balancing"), Severity::Info);
        f.write("sys/devices/system/node/online", "0-1\n");
        assert_eq!(
            sev(&audit(f.roots(), None), "numa-balancing"),
            Severity::Warning
        );
        f.write("proc/sys/kernel/split_lock_mitigate", "0\n")
            .write("proc/sys/kernel/numa_balancing", "0\n");
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "split-lock"), Severity::Ok);
        assert_eq!(sev(&r, "numa-balancing"), Severity::Ok);
    }
}
