//! What else happened on the measured CPUs during a run: interrupts by source
//! (`/proc/interrupts`), softirqs (`/proc/softirqs`), context switches (`/proc/schedstat`) and
//! the other tasks that ran there (per-thread `schedstat` run counts, last CPU from `stat`).
//! Best effort: a task that ran on a measured CPU and then moved away is not seen.

use std::collections::BTreeMap;

use kvmisolate_dbus::cpulist::CpuSet;
use serde::{Deserialize, Serialize};

use crate::check::host::Host;
use crate::check::irq::{CounterLine, parse_counters};
use crate::check::tasks::read_thread;

/// Counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    interrupts: Vec<CounterLine>,
    softirqs: Vec<CounterLine>,
    schedule_calls: BTreeMap<u32, u64>,
    /// (pid, tid) → (comm, last CPU, run time ns, timeslices).
    tasks: BTreeMap<(u32, u32), (String, u32, u64, u64)>,
}

/// A task other than the benchmark that ran on a measured CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRun {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Its name.
    pub comm: String,
    /// The measured CPU it was last seen on.
    pub cpu: u32,
    /// Timeslices it got during the run (on any CPU).
    pub runs: u64,
    /// CPU time it used during the run, in µs (on any CPU).
    #[serde(rename = "run-us")]
    pub run_us: u64,
}

/// The interference on one measured CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInterference {
    /// Interrupts by source (`LOC`, `24 nvme0q1`), non-zero only.
    pub interrupts: BTreeMap<String, u64>,
    /// Softirqs by kind (`TIMER`, `RCU`), non-zero only.
    pub softirqs: BTreeMap<String, u64>,
    /// schedule() calls on the CPU (`/proc/schedstat`), the measuring thread's own sleeps
    /// and wake-ups included (about two per sample).
    #[serde(rename = "schedule-calls")]
    pub schedule_calls: Option<u64>,
}

fn schedstat(text: &str) -> BTreeMap<u32, u64> {
    // "cpuN yld_count legacy sched_count sched_goidle ttwu_count ..."
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let cpu = w.next()?.strip_prefix("cpu")?.parse().ok()?;
            let sched_count = w.nth(2)?.parse().ok()?;
            Some((cpu, sched_count))
        })
        .collect()
}

/// Reads the counters (and, with `tasks`, every thread).
pub fn take(host: &Host, tasks: bool) -> Snapshot {
    let read = |rel: &str| host.read(&host.proc(rel)).unwrap_or_default();
    let mut s = Snapshot {
        interrupts: parse_counters(&read("interrupts")),
        softirqs: parse_counters(&read("softirqs")),
        schedule_calls: schedstat(&read("schedstat")),
        tasks: BTreeMap::new(),
    };
    if tasks {
        for pid in host.list_numeric(&host.roots.proc) {
            for tid in host.list_numeric(&host.proc(&format!("{pid}/task"))) {
                let Some(t) = read_thread(host, pid, tid) else {
                    continue;
                };
                let ss = host
                    .read_quiet(&host.proc(&format!("{pid}/task/{tid}/schedstat")))
                    .unwrap_or_default();
                let mut w = ss.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
                let run = w.next().unwrap_or(0);
                let slices = w.nth(1).unwrap_or(0);
                s.tasks
                    .insert((pid, tid), (t.comm, t.processor, run, slices));
            }
        }
    }
    s
}

fn counter_key(l: &CounterLine) -> String {
    if l.source.bytes().all(|b| b.is_ascii_digit()) {
        match l.desc.split_whitespace().last() {
            Some(name) => format!("{} {name}", l.source),
            None => l.source.clone(),
        }
    } else {
        l.source.clone()
    }
}

fn deltas(before: &[CounterLine], after: &[CounterLine], cpu: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for a in after {
        let Some(&n) = a.counts.get(&cpu) else {
            continue;
        };
        let was = before
            .iter()
            .find(|b| b.source == a.source)
            .and_then(|b| b.counts.get(&cpu).copied())
            .unwrap_or(0);
        let d = n.saturating_sub(was);
        if d > 0 {
            *out.entry(counter_key(a)).or_insert(0) += d;
        }
    }
    out
}

/// The interference per measured CPU, and the other tasks seen there.
pub fn delta(
    before: &Snapshot,
    after: &Snapshot,
    cpus: &CpuSet,
    own_pid: u32,
) -> (BTreeMap<u32, CpuInterference>, Vec<TaskRun>) {
    let mut per_cpu = BTreeMap::new();
    for cpu in cpus.iter() {
        per_cpu.insert(
            cpu,
            CpuInterference {
                interrupts: deltas(&before.interrupts, &after.interrupts, cpu),
                softirqs: deltas(&before.softirqs, &after.softirqs, cpu),
                schedule_calls: match (
                    before.schedule_calls.get(&cpu),
                    after.schedule_calls.get(&cpu),
                ) {
                    (Some(a), Some(b)) => Some(b.saturating_sub(*a)),
                    _ => None,
                },
            },
        );
    }
    let mut tasks = Vec::new();
    for (&(pid, tid), (comm, cpu, run, slices)) in &after.tasks {
        if pid == own_pid || !cpus.contains(*cpu) {
            continue;
        }
        let (run0, slices0) = before
            .tasks
            .get(&(pid, tid))
            .map_or((0, 0), |(_, _, r, s)| (*r, *s));
        let runs = slices.saturating_sub(slices0);
        if runs > 0 {
            tasks.push(TaskRun {
                pid,
                tid,
                comm: comm.clone(),
                cpu: *cpu,
                runs,
                run_us: run.saturating_sub(run0) / 1000,
            });
        }
    }
    tasks.sort_by(|a, b| b.runs.cmp(&a.runs).then(a.tid.cmp(&b.tid)));
    (per_cpu, tasks)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::check::host::fake::FakeHost;

    #[test]
    fn counts_what_happened_on_measured_cpus() {
        let f = FakeHost::basic();
        f.write(
            "proc/interrupts",
            "     CPU0 CPU1 CPU2 CPU3\n 24: 1 0 5 0 PCI-MSI 1-edge nvme0q1\nLOC: 10 10 10 10 Local timer interrupts\n",
        )
        .write("proc/softirqs", "     CPU0 CPU1 CPU2 CPU3\n TIMER: 1 1 1 1\n RCU: 0 0 0 0\n")
        .write("proc/schedstat", "version 15\ntimestamp 1\ncpu2 0 0 100 50 0 0 0 0 0\n")
        .task(20, "ksoftirqd/2", 0, "2", "/", 0, 2)
        .task(21, "kworker/1:0", 0, "1", "/", 0, 1);
        let h = f.host();
        let before = take(&h, true);
        f.write(
            "proc/interrupts",
            "     CPU0 CPU1 CPU2 CPU3\n 24: 1 0 8 0 PCI-MSI 1-edge nvme0q1\nLOC: 10 10 30 10 Local timer interrupts\n",
        )
        .write("proc/softirqs", "     CPU0 CPU1 CPU2 CPU3\n TIMER: 1 1 21 1\n RCU: 0 0 0 0\n")
        .write("proc/schedstat", "version 15\ntimestamp 2\ncpu2 0 0 180 50 0 0 0 0 0\n")
        .write("proc/20/task/20/schedstat", "3100 0 9\n")
        .write("proc/21/task/21/schedstat", "9000 0 50\n");
        let after = take(&h, true);
        let cpus = CpuSet::parse("2").unwrap();
        let (per, tasks) = delta(&before, &after, &cpus, 1);
        let c = &per[&2];
        assert_eq!(c.interrupts["24 nvme0q1"], 3);
        assert_eq!(c.interrupts["LOC"], 20);
        assert_eq!(c.softirqs.len(), 1);
        assert_eq!(c.softirqs["TIMER"], 20);
        assert_eq!(c.schedule_calls, Some(80));
        assert_eq!(tasks.len(), 1);
        assert_eq!(
            (tasks[0].comm.as_str(), tasks[0].runs, tasks[0].run_us),
            ("ksoftirqd/2", 4, 3)
        );
    }
}
