//! A `top` window as data (JSON `"version": 1`): per-thread and per-CPU figures, the verdict
//! against the goal, the offenders with their fixes; the human table, `--compare` and the
//! `--plot` SVG.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use kvmisolate_dbus::CpuSet;
use serde::{Deserialize, Serialize};

use super::analyze::{Analyzer, Culprit, Role, Tally};
use crate::bench::hist::Stats;
use crate::bench::report::{change, histograms_svg};

/// The `version` of the JSON.
pub const JSON_VERSION: u32 = 1;
/// The guide's goal for a vCPU's wake-up delay, µs.
pub const GOAL_US: u64 = 1000;

/// One traced thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadRow {
    /// Its tid.
    pub tid: u32,
    /// Its name.
    pub name: String,
    /// `vcpu`, `emulator` or `iothread`.
    pub role: String,
    /// Its vCPU number.
    pub vcpu: Option<u32>,
    /// The CPU it ran on last.
    pub cpu: Option<u32>,
    /// Wake-up delays (µs).
    pub wakeup: Stats,
    /// `[µs, count]` for every non-empty bucket.
    pub histogram: Vec<(u64, u64)>,
    /// Switched out while runnable.
    pub preemptions: u64,
    /// Time runnable but not running, µs.
    #[serde(rename = "lost-us")]
    pub lost_us: f64,
    /// Time running, µs.
    #[serde(rename = "running-us")]
    pub running_us: f64,
    /// CPU changes.
    pub migrations: u64,
}

/// Something that ran on a traced CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ran {
    /// What (a task's `comm (pid)`, an IRQ's `N name`, a softirq's name).
    pub what: String,
    /// How often.
    pub count: u64,
    /// How long in all, µs.
    pub us: f64,
}

/// What ran on a traced CPU besides the traced threads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuRow {
    /// The CPU.
    pub cpu: u32,
    /// User tasks.
    pub tasks: Vec<Ran>,
    /// Kernel threads.
    pub kthreads: Vec<Ran>,
    /// Hard IRQs.
    pub irqs: Vec<Ran>,
    /// Softirqs.
    pub softirqs: Vec<Ran>,
    /// The local timer interrupt (x86): traced with `--timers`, else its count only.
    pub tick: Ran,
}

/// Who made the vCPUs wait, and the fix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offender {
    /// `irq`, `task`, `vm-thread`, `kworker`, `kthread`, `tick`, `softirq` or `idle-exit`.
    pub kind: String,
    /// What it is.
    pub what: String,
    /// On which CPU.
    pub cpu: u32,
    /// Time the traced threads waited while it held the CPU, µs.
    #[serde(rename = "wait-us")]
    pub wait_us: f64,
    /// What would remove it.
    pub fix: String,
}

/// The verdict against [`GOAL_US`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// vCPU wake-ups seen.
    pub samples: u64,
    /// p99, µs.
    #[serde(rename = "p99-us")]
    pub p99_us: u64,
    /// max, µs.
    #[serde(rename = "max-us")]
    pub max_us: f64,
    /// The goal, µs.
    #[serde(rename = "goal-us")]
    pub goal_us: u64,
    /// Whether p99 and max are under it.
    pub ok: bool,
    /// The sentence.
    pub line: String,
}

/// What the window cost `top`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Events decoded.
    pub events: u64,
    /// Bytes read from the raw buffers.
    pub bytes: u64,
    /// `top`'s own CPU time (user + system), ms.
    #[serde(rename = "cpu-ms")]
    pub cpu_ms: f64,
    /// Pages that reported lost events (0: nothing was lost).
    #[serde(rename = "lost-pages")]
    pub lost_pages: u64,
}

/// A window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopReport {
    /// [`JSON_VERSION`].
    pub version: u32,
    /// What was traced (`vm NAME`, `pid N`, `isolation NAME`).
    pub target: String,
    /// `uname -r`.
    pub kernel: String,
    /// The traced CPUs.
    pub cpus: CpuSet,
    /// The window, seconds.
    #[serde(rename = "duration-s")]
    pub duration_s: f64,
    /// vCPU threads first, then the others.
    pub threads: Vec<ThreadRow>,
    /// Per traced CPU.
    #[serde(rename = "cpu-details")]
    pub cpu_details: Vec<CpuRow>,
    /// The verdict.
    pub verdict: Verdict,
    /// Worst first.
    pub offenders: Vec<Offender>,
    /// The cost.
    pub cost: Cost,
    /// What makes the figures less trustworthy.
    pub warnings: Vec<String>,
    /// Whether the local timer interrupt was traced (`--timers`): its time and the waits it
    /// caused are known. Otherwise `tick` holds its count from /proc/interrupts only.
    #[serde(rename = "timers-traced", default = "traced_before")]
    pub timers_traced: bool,
}

/// Windows saved before `--timers` existed traced the local timer.
fn traced_before() -> bool {
    true
}

/// Without `--timers`: each CPU's `tick` is its local timer interrupts between `before` and
/// `after` (per-CPU `LOC` counts of /proc/interrupts), with no time.
pub fn count_timers(r: &mut TopReport, before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) {
    r.timers_traced = false;
    for c in &mut r.cpu_details {
        let n = match (before.get(&c.cpu), after.get(&c.cpu)) {
            (Some(b), Some(a)) => a.saturating_sub(*b),
            _ => 0,
        };
        c.tick = Ran {
            what: "local timer".into(),
            count: n,
            us: 0.0,
        };
    }
}

/// Softirq vector names, as in /proc/softirqs.
pub fn softirq_name(vec: u32) -> String {
    const N: [&str; 10] = [
        "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER",
        "RCU",
    ];
    N.get(vec as usize)
        .map_or_else(|| format!("softirq {vec}"), |n| (*n).to_owned())
}

fn ran(what: String, t: &Tally) -> Ran {
    Ran {
        what,
        count: t.count,
        us: t.ns as f64 / 1000.0,
    }
}

fn by_time(mut v: Vec<Ran>) -> Vec<Ran> {
    v.sort_by(|a, b| b.us.total_cmp(&a.us).then_with(|| a.what.cmp(&b.what)));
    v
}

/// The verdict sentence for vCPU delays `s`.
pub fn verdict(s: &Stats) -> Verdict {
    let ok = s.samples > 0 && s.p99_us < GOAL_US && s.max_us < GOAL_US as f64;
    let line = if s.samples == 0 {
        "no vCPU wake-up seen in the window (idle guest, or no vCPU thread traced)".to_owned()
    } else {
        format!(
            "vCPU wake-up delay p99 {} us, max {:.0} us (goal < {GOAL_US} us): {}",
            s.p99_us,
            s.max_us,
            if ok { "met" } else { "missed" }
        )
    };
    Verdict {
        samples: s.samples,
        p99_us: s.p99_us,
        max_us: s.max_us,
        goal_us: GOAL_US,
        ok,
        line,
    }
}

/// The kind and fix for a culprit on `cpu` (`cpus`: all traced CPUs).
pub fn diagnose(
    c: &Culprit,
    cpu: u32,
    cpus: &CpuSet,
    vm_thread: bool,
    kthread: bool,
) -> (String, String, String) {
    match c {
        Culprit::Irq { irq, name } => (
            "irq".into(),
            format!("IRQ {irq} ({name})"),
            format!(
                "move IRQ {irq} off CPU {cpu}: isolating the CPUs does it (kvmisolate's \
                 irq-affinity tuning), or by hand: echo HOUSEKEEPING-CPUS > /proc/irq/{irq}/smp_affinity_list"
            ),
        ),
        Culprit::Task { pid, comm } if vm_thread => (
            "vm-thread".into(),
            format!("{comm} ({pid})"),
            format!(
                "another thread of this VM shares CPU {cpu}: give each vCPU a CPU of its own \
                 and the emulator/iothreads others (<vcpupin>, <emulatorpin>, <iothreadpin>)"
            ),
        ),
        Culprit::Task { pid, comm } if kthread && comm.starts_with("kworker/") => (
            "kworker".into(),
            format!("{comm} ({pid})"),
            format!(
                "kernel work on CPU {cpu}: isolating the CPUs sets the unbound workqueue mask \
                 (/sys/devices/virtual/workqueue/cpumask) to the housekeeping CPUs; per-CPU \
                 work comes from what runs on CPU {cpu} (its IRQs, timers)"
            ),
        ),
        Culprit::Task { pid, comm } if kthread => (
            "kthread".into(),
            format!("{comm} ({pid})"),
            format!(
                "kernel thread on CPU {cpu}: isolating the CPUs moves the movable ones; per-CPU \
                 ones (ksoftirqd, rcuc, migration) need nohz_full={cpus} rcu_nocbs={cpus} at boot"
            ),
        ),
        Culprit::Task { pid, comm } => (
            "task".into(),
            format!("{comm} ({pid})"),
            format!(
                "CPU {cpu} is not isolated: {comm} runs there; isolate the vCPUs' CPUs (opt \
                 the domain in, or kvmisolate isolate --vm NAME)"
            ),
        ),
        Culprit::Tick => (
            "tick".into(),
            "local timer (tick)".into(),
            format!(
                "the scheduler tick: boot with nohz_full={cpus} so it stops while one task runs"
            ),
        ),
        Culprit::Softirq(v) => (
            "softirq".into(),
            format!("softirq {}", softirq_name(*v)),
            format!(
                "softirqs follow the IRQs and timers of CPU {cpu}: move its IRQs off \
                 (irq-affinity) and boot with nohz_full={cpus} for the timer ones"
            ),
        ),
        Culprit::Idle => (
            "idle-exit".into(),
            "idle exit / wake-up IPI".into(),
            format!(
                "CPU {cpu} was idle when the vCPU was woken: the exit from deep C-states adds \
                 to every wake-up; limit them on these CPUs (/dev/cpu_dma_latency, or \
                 processor.max_cstate=1 at boot)"
            ),
        ),
    }
}

/// The figures of `a` over `duration_s`. `kthread(pid, comm)` tells kernel threads.
pub fn build(
    a: &Analyzer,
    target: &str,
    kernel: &str,
    duration_s: f64,
    cost: Cost,
    kthread: &dyn Fn(u32, &str) -> bool,
) -> TopReport {
    let cpus: CpuSet = a.cpus.keys().copied().collect();
    let mut threads: Vec<ThreadRow> = a
        .threads
        .values()
        .map(|t| ThreadRow {
            tid: t.target.tid,
            name: t.target.name.clone(),
            role: match t.target.role {
                Role::Vcpu(_) => "vcpu",
                Role::Emulator => "emulator",
                Role::Iothread => "iothread",
            }
            .to_owned(),
            vcpu: match t.target.role {
                Role::Vcpu(n) => Some(n),
                _ => None,
            },
            cpu: t.target.cpu,
            wakeup: t.delay.stats(),
            histogram: t.delay.sparse(),
            preemptions: t.preemptions,
            lost_us: t.waiting_ns as f64 / 1000.0,
            running_us: t.running_ns as f64 / 1000.0,
            migrations: t.migrations,
        })
        .collect();
    threads.sort_by_key(|t| (t.vcpu.is_none(), t.vcpu, t.role.clone(), t.tid));
    let mut cpu_details = Vec::new();
    let mut offenders = Vec::new();
    for (cpu, c) in &a.cpus {
        let (mut tasks, mut kth) = (Vec::new(), Vec::new());
        for ((pid, comm), t) in &c.tasks {
            let r = ran(format!("{comm} ({pid})"), t);
            if kthread(*pid, comm) {
                kth.push(r);
            } else {
                tasks.push(r);
            }
        }
        cpu_details.push(CpuRow {
            cpu: *cpu,
            tasks: by_time(tasks),
            kthreads: by_time(kth),
            irqs: by_time(
                c.irqs
                    .iter()
                    .map(|((n, name), t)| ran(format!("{n} {name}"), t))
                    .collect(),
            ),
            softirqs: by_time(
                c.softirqs
                    .iter()
                    .map(|(v, t)| ran(softirq_name(*v), t))
                    .collect(),
            ),
            tick: ran("local timer".into(), &c.timer),
        });
        for (who, ns) in &c.blame {
            let (vm_thread, kt) = match who {
                Culprit::Task { pid, comm } => (a.threads.contains_key(pid), kthread(*pid, comm)),
                _ => (false, false),
            };
            let (kind, what, fix) = diagnose(who, *cpu, &cpus, vm_thread, kt);
            offenders.push(Offender {
                kind,
                what,
                cpu: *cpu,
                wait_us: *ns as f64 / 1000.0,
                fix,
            });
        }
    }
    offenders.sort_by(|x, y| y.wait_us.total_cmp(&x.wait_us));
    let mut warnings = Vec::new();
    if cost.lost_pages > 0 {
        warnings.push(format!(
            "the trace buffer overflowed {} time(s): some events were lost, figures are low",
            cost.lost_pages
        ));
    }
    TopReport {
        version: JSON_VERSION,
        target: target.to_owned(),
        kernel: kernel.to_owned(),
        cpus,
        duration_s,
        threads,
        cpu_details,
        verdict: verdict(&a.vcpu_delay.stats()),
        offenders,
        cost,
        warnings,
        timers_traced: true,
    }
}

fn list(v: &[Ran], n: usize) -> String {
    let mut parts: Vec<String> = v
        .iter()
        .take(n)
        .map(|r| format!("{} x{} {:.1} ms", r.what, r.count, r.us / 1000.0))
        .collect();
    if v.len() > n {
        parts.push(format!("+{} more", v.len() - n));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The table: threads (vCPUs first, worst p99 first within each group), per CPU what ran
/// instead, the verdict and the offenders.
pub fn format_human(r: &TopReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "kvmisolate top: {}, CPUs {}, {:.1} s, kernel {}",
        r.target, r.cpus, r.duration_s, r.kernel
    );
    let _ = writeln!(
        s,
        "\n{:<18} {:>7} {:<9} {:>4} {:>7} {:>6} {:>6} {:>7} {:>8} {:>7} {:>9} {:>5}",
        "THREAD",
        "TID",
        "ROLE",
        "CPU",
        "WAKEUPS",
        "P50",
        "P99",
        "P99.9",
        "MAX(us)",
        "PREEMPT",
        "LOST(ms)",
        "MIGR"
    );
    let mut rows: Vec<&ThreadRow> = r.threads.iter().collect();
    rows.sort_by(|a, b| {
        (a.vcpu.is_none())
            .cmp(&b.vcpu.is_none())
            .then(b.wakeup.p99_us.cmp(&a.wakeup.p99_us))
            .then(b.lost_us.total_cmp(&a.lost_us))
    });
    for t in rows {
        let role = t
            .vcpu
            .map_or_else(|| t.role.clone(), |n| format!("vcpu{n}"));
        let _ = writeln!(
            s,
            "{:<18} {:>7} {:<9} {:>4} {:>7} {:>6} {:>6} {:>7} {:>8.0} {:>7} {:>9.1} {:>5}",
            t.name.chars().take(18).collect::<String>(),
            t.tid,
            role,
            t.cpu.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            t.wakeup.samples,
            t.wakeup.p50_us,
            t.wakeup.p99_us,
            t.wakeup.p999_us,
            t.wakeup.max_us,
            t.preemptions,
            t.lost_us / 1000.0,
            t.migrations
        );
    }
    for c in &r.cpu_details {
        let _ = writeln!(s, "\nCPU {}:", c.cpu);
        let _ = writeln!(s, "  tasks:    {}", list(&c.tasks, 5));
        let _ = writeln!(s, "  kthreads: {}", list(&c.kthreads, 5));
        let _ = writeln!(s, "  IRQs:     {}", list(&c.irqs, 5));
        let _ = writeln!(s, "  softirqs: {}", list(&c.softirqs, 5));
        if !r.timers_traced {
            let _ = writeln!(
                s,
                "  tick:     x{} (local timer interrupts; their time: --timers)",
                c.tick.count
            );
        } else if c.tick.count > 0 {
            let _ = writeln!(
                s,
                "  tick:     x{} {:.1} ms",
                c.tick.count,
                c.tick.us / 1000.0
            );
        }
    }
    let _ = writeln!(s, "\n{}", r.verdict.line);
    if !r.offenders.is_empty() {
        let _ = writeln!(
            s,
            "Top offenders (time the traced threads waited for them):"
        );
        for (i, o) in r.offenders.iter().take(5).enumerate() {
            let _ = writeln!(
                s,
                "  {}. {} on CPU {}: {:.1} ms ({})\n     fix: {}",
                i + 1,
                o.what,
                o.cpu,
                o.wait_us / 1000.0,
                o.kind,
                o.fix
            );
        }
    }
    let _ = writeln!(
        s,
        "cost: {} events, {} KiB read, {:.1} ms CPU",
        r.cost.events,
        r.cost.bytes / 1024,
        r.cost.cpu_ms
    );
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

/// Reads a saved `--json` window.
pub fn load(path: &Path) -> Result<TopReport, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    match v.get("version").and_then(serde_json::Value::as_u64) {
        Some(1) => {}
        Some(n) => {
            return Err(format!(
                "{}: version {n}, this kvmisolate reads version 1",
                path.display()
            ));
        }
        None => {
            return Err(format!(
                "{} is not a kvmisolate top --json result (no \"version\")",
                path.display()
            ));
        }
    }
    serde_json::from_value(v).map_err(|e| {
        format!(
            "{} is not a kvmisolate top --json result: {e}",
            path.display()
        )
    })
}

/// The difference between window `a` (before) and `b` (after), per thread (matched by name).
pub fn format_compare(a: &TopReport, b: &TopReport, pa: &Path, pb: &Path) -> String {
    let mut s = String::new();
    for (tag, r, p) in [("A", a, pa), ("B", b, pb)] {
        let _ = writeln!(
            s,
            "{tag}: {} ({}, CPUs {}, {:.0} s): {}",
            p.display(),
            r.target,
            r.cpus,
            r.duration_s,
            r.verdict.line
        );
    }
    for ta in &a.threads {
        let Some(tb) = b.threads.iter().find(|t| t.name == ta.name) else {
            let _ = writeln!(s, "\n{}: only in A", ta.name);
            continue;
        };
        let _ = writeln!(
            s,
            "\n{} ({})     {:>10} {:>10}  change",
            ta.name, ta.role, "A", "B"
        );
        let rows: [(&str, f64, f64); 7] = [
            ("p50 us", ta.wakeup.p50_us as f64, tb.wakeup.p50_us as f64),
            ("p99 us", ta.wakeup.p99_us as f64, tb.wakeup.p99_us as f64),
            (
                "p99.9 us",
                ta.wakeup.p999_us as f64,
                tb.wakeup.p999_us as f64,
            ),
            ("max us", ta.wakeup.max_us, tb.wakeup.max_us),
            ("preemptions", ta.preemptions as f64, tb.preemptions as f64),
            ("lost ms", ta.lost_us / 1000.0, tb.lost_us / 1000.0),
            ("migrations", ta.migrations as f64, tb.migrations as f64),
        ];
        for (name, va, vb) in rows {
            let _ = writeln!(s, "  {name:<12} {va:>10.1} {vb:>10.1}  {}", change(va, vb));
        }
    }
    for (tag, r) in [("A", a), ("B", b)] {
        if let Some(o) = r.offenders.first() {
            let _ = writeln!(
                s,
                "\ntop offender {tag}: {} on CPU {} ({:.1} ms)",
                o.what,
                o.cpu,
                o.wait_us / 1000.0
            );
        }
    }
    s
}

/// The wake-up delay histograms, one line per thread that woke.
pub fn svg(r: &TopReport) -> String {
    let series: Vec<(String, &[(u64, u64)])> = r
        .threads
        .iter()
        .filter(|t| !t.histogram.is_empty())
        .map(|t| {
            (
                format!("{} (p99 {} us)", t.name, t.wakeup.p99_us),
                t.histogram.as_slice(),
            )
        })
        .collect();
    histograms_svg(
        &format!(
            "wake-up delay, {}, CPUs {}, {:.0} s",
            r.target, r.cpus, r.duration_s
        ),
        &series,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::analyze::{Analyzer, Target};
    use super::super::ring::{Event, Kind};
    use super::*;

    fn sample() -> TopReport {
        let t = [
            Target {
                tid: 42,
                name: "CPU 0/KVM".into(),
                role: Role::Vcpu(0),
                cpu: Some(3),
            },
            Target {
                tid: 40,
                name: "qemu-system-x86".into(),
                role: Role::Emulator,
                cpu: Some(2),
            },
        ];
        let mut a = Analyzer::new(&t, &[3].into());
        let sw = |ts, prev: (&str, u32), st, next: (&str, u32)| Event {
            ts,
            cpu: 3,
            kind: Kind::Switch {
                prev_pid: prev.1,
                prev_comm: prev.0.into(),
                prev_state: st,
                next_pid: next.1,
                next_comm: next.0.into(),
            },
        };
        let v = ("CPU 0/KVM", 42);
        a.feed(vec![
            sw(0, v, 1, ("spin", 900)),
            Event {
                ts: 1_000,
                cpu: 3,
                kind: Kind::Waking { pid: 42 },
            },
            sw(2_001_000, ("spin", 900), 0, ("kworker/3:1", 55)),
            sw(2_101_000, ("kworker/3:1", 55), 1, v),
        ]);
        build(
            &a,
            "vm guest",
            "6.12.0",
            1.0,
            Cost {
                events: 4,
                bytes: 4096,
                cpu_ms: 1.0,
                lost_pages: 0,
            },
            &|_, comm| comm.starts_with("kworker"),
        )
    }

    #[test]
    fn offenders_verdict_and_kinds() {
        let r = sample();
        assert_eq!(r.verdict.samples, 1);
        assert_eq!(r.verdict.max_us, 2100.0);
        assert!(!r.verdict.ok);
        assert!(
            r.verdict
                .line
                .contains("max 2100 us (goal < 1000 us): missed"),
            "{}",
            r.verdict.line
        );
        assert_eq!(r.offenders[0].what, "spin (900)");
        assert_eq!(r.offenders[0].kind, "task");
        assert_eq!(r.offenders[0].wait_us, 2000.0);
        assert!(r.offenders[0].fix.contains("CPU 3 is not isolated"));
        assert_eq!(r.offenders[1].kind, "kworker");
        assert_eq!(r.cpu_details[0].tasks[0].what, "spin (900)");
        assert_eq!(r.cpu_details[0].kthreads[0].what, "kworker/3:1 (55)");
        assert_eq!(r.threads[0].name, "CPU 0/KVM");
        assert_eq!(r.threads[1].role, "emulator");
        let h = format_human(&r);
        assert!(h.contains("1. spin (900) on CPU 3: 2.0 ms (task)"), "{h}");
    }

    #[test]
    fn json_round_trip_compare_and_svg() {
        let r = sample();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        std::fs::write(&p, serde_json::to_string(&r).unwrap()).unwrap();
        let back = load(&p).unwrap();
        assert_eq!(back, r);
        std::fs::write(&p, "{\"version\": 7}").unwrap();
        assert!(load(&p).unwrap_err().contains("version 7"));
        let c = format_compare(&r, &r, Path::new("a"), Path::new("b"));
        assert!(c.contains("p99 us"), "{c}");
        assert!(c.contains("top offender A: spin (900)"), "{c}");
        let svg = svg(&r);
        assert!(svg.contains("CPU 0/KVM (p99 2100 us)"));
        assert!(svg.ends_with("</svg>\n"));
    }

    /// Without `--timers`: each CPU's local timer count is the /proc/interrupts difference,
    /// the text says its time was not traced, and the JSON says so (old files: traced).
    #[test]
    fn timers_counted_not_traced() {
        let mut r = sample();
        assert!(r.timers_traced);
        count_timers(
            &mut r,
            &[(2, 10), (3, 100)].into(),
            &[(2, 20), (3, 350)].into(),
        );
        assert!(!r.timers_traced);
        assert_eq!(r.cpu_details[0].tick.count, 250);
        assert_eq!(r.cpu_details[0].tick.us, 0.0);
        assert!(
            format_human(&r)
                .contains("tick:     x250 (local timer interrupts; their time: --timers)")
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["timers-traced"], false);
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("timers-traced");
        let back: TopReport = serde_json::from_value(old).unwrap();
        assert!(back.timers_traced);
    }

    #[test]
    fn every_culprit_has_a_fix() {
        let cpus: CpuSet = [3].into_iter().collect();
        for (c, kt, kind) in [
            (
                Culprit::Irq {
                    irq: 9,
                    name: "acpi".into(),
                },
                false,
                "irq",
            ),
            (Culprit::Tick, false, "tick"),
            (Culprit::Softirq(1), false, "softirq"),
            (Culprit::Idle, false, "idle-exit"),
            (
                Culprit::Task {
                    pid: 5,
                    comm: "rcu_preempt".into(),
                },
                true,
                "kthread",
            ),
        ] {
            let (k, _, fix) = diagnose(&c, 3, &cpus, false, kt);
            assert_eq!(k, kind);
            assert!(!fix.is_empty());
        }
        assert!(
            diagnose(&Culprit::Tick, 3, &cpus, false, false)
                .2
                .contains("nohz_full=3")
        );
        assert!(
            diagnose(
                &Culprit::Irq {
                    irq: 9,
                    name: "acpi".into()
                },
                3,
                &cpus,
                false,
                false
            )
            .2
            .contains("/proc/irq/9/smp_affinity_list")
        );
    }
}
