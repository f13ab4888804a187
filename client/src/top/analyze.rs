//! Events to figures (pure): per traced thread the wake-up delay (`sched_waking` of it to the
//! `sched_switch` onto it), preemptions (switched out while still runnable), the time it was
//! runnable but not running and its migrations; per traced CPU what ran there instead (tasks,
//! hard IRQs, softirqs, the local timer), and who the waiting threads waited for (the
//! "blame": while a traced thread is runnable and not running, the time of whatever holds its
//! CPU is charged to that).

use std::collections::{BTreeMap, BTreeSet};

use super::ring::{Event, Kind};
use crate::bench::hist::Histogram;

/// What a traced thread is to its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// vCPU N (QEMU's `CPU N/KVM` or `CPU N/TCG`, libvirt's `vcpuN` leaf).
    Vcpu(u32),
    /// The emulator (QEMU's main loop and helpers).
    Emulator,
    /// An iothread.
    Iothread,
}

/// A thread to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its tid.
    pub tid: u32,
    /// Its name (comm).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The CPU it last ran on (from /proc), until the trace says otherwise.
    pub cpu: Option<u32>,
}

/// What held a CPU while a traced thread waited for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Culprit {
    /// A task (a thread of a process or a kernel thread).
    Task {
        /// Its pid.
        pid: u32,
        /// Its name.
        comm: String,
    },
    /// A hard IRQ's handler.
    Irq {
        /// Its number.
        irq: u32,
        /// Its action's name.
        name: String,
    },
    /// A softirq.
    Softirq(u32),
    /// The local timer interrupt (the tick, hrtimers).
    Tick,
    /// Nothing ran: the CPU was leaving idle (or the wake-up IPI was on its way).
    Idle,
}

/// A count and the time it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Occurrences.
    pub count: u64,
    /// Total, ns.
    pub ns: u64,
}

impl Tally {
    fn add(&mut self, ns: u64) {
        self.count += 1;
        self.ns += ns;
    }
}

/// A traced thread's figures.
#[derive(Debug, Clone)]
pub struct ThreadStats {
    /// The thread.
    pub target: Target,
    /// Wake-up delays (waking to running).
    pub delay: Histogram,
    /// Switched out while runnable.
    pub preemptions: u64,
    /// Time runnable but not running, ns.
    pub waiting_ns: u64,
    /// Time running, ns.
    pub running_ns: u64,
    /// CPU changes.
    pub migrations: u64,
    running: bool,
    since: Option<u64>,
    wake_ts: Option<u64>,
    runnable_since: Option<u64>,
    wait_cpu: Option<u32>,
}

/// A traced CPU's figures.
#[derive(Debug, Clone, Default)]
pub struct CpuStats {
    /// Tasks other than the traced threads and idle that ran here: (pid, comm) → runs/time.
    pub tasks: BTreeMap<(u32, String), Tally>,
    /// Hard IRQs: (number, name) → count/time.
    pub irqs: BTreeMap<(u32, String), Tally>,
    /// Softirqs by vector.
    pub softirqs: BTreeMap<u32, Tally>,
    /// The local timer interrupt.
    pub timer: Tally,
    /// What the traced threads waiting for this CPU waited for, ns.
    pub blame: BTreeMap<Culprit, u64>,
    cur: Option<(u32, String, u64)>,
    irq: Option<(u32, String, u64)>,
    softirq: Option<(u32, u64)>,
    timer_since: Option<u64>,
    waiting: u32,
    mark: u64,
}

impl CpuStats {
    /// Charges the time since the last event here to what held the CPU, if anyone waited.
    fn advance(&mut self, ts: u64) {
        let dt = ts.saturating_sub(self.mark);
        self.mark = self.mark.max(ts);
        if self.waiting == 0 || dt == 0 {
            return;
        }
        let who = if let Some((irq, name, _)) = &self.irq {
            Culprit::Irq {
                irq: *irq,
                name: name.clone(),
            }
        } else if self.timer_since.is_some() {
            Culprit::Tick
        } else if let Some((vec, _)) = self.softirq {
            Culprit::Softirq(vec)
        } else {
            match &self.cur {
                Some((0, _, _)) | None => Culprit::Idle,
                Some((pid, comm, _)) => Culprit::Task {
                    pid: *pid,
                    comm: comm.clone(),
                },
            }
        };
        *self.blame.entry(who).or_default() += dt;
    }
}

/// The state of one trace: feed it events in time order, read the figures.
#[derive(Debug, Clone)]
pub struct Analyzer {
    /// Traced threads by tid.
    pub threads: BTreeMap<u32, ThreadStats>,
    /// Traced CPUs.
    pub cpus: BTreeMap<u32, CpuStats>,
    /// All wake-up delays of vCPU threads.
    pub vcpu_delay: Histogram,
    /// First and last event time.
    pub span: Option<(u64, u64)>,
    /// Events seen.
    pub events: u64,
}

/// Whether a `prev_state` says the task was still runnable (0: TASK_RUNNING; the kernel
/// reports a preempted task as TASK_REPORT_MAX, a bit above the state bits).
pub fn still_runnable(prev_state: u64) -> bool {
    prev_state & 0xff == 0
}

impl Analyzer {
    /// An analyzer for `targets` on `cpus`.
    pub fn new(targets: &[Target], cpus: &BTreeSet<u32>) -> Self {
        Self {
            threads: targets
                .iter()
                .map(|t| {
                    (
                        t.tid,
                        ThreadStats {
                            target: t.clone(),
                            delay: Histogram::new(),
                            preemptions: 0,
                            waiting_ns: 0,
                            running_ns: 0,
                            migrations: 0,
                            running: false,
                            since: None,
                            wake_ts: None,
                            runnable_since: None,
                            wait_cpu: None,
                        },
                    )
                })
                .collect(),
            cpus: cpus.iter().map(|c| (*c, CpuStats::default())).collect(),
            vcpu_delay: Histogram::new(),
            span: None,
            events: 0,
        }
    }

    /// Feeds a batch (sorted here by time, stable).
    pub fn feed(&mut self, mut events: Vec<Event>) {
        events.sort_by_key(|e| e.ts);
        for e in &events {
            self.event(e);
        }
    }

    fn wait_start(&mut self, tid: u32, ts: u64) {
        let Some(t) = self.threads.get_mut(&tid) else {
            return;
        };
        if t.runnable_since.is_some() {
            return;
        }
        t.runnable_since = Some(ts);
        t.wait_cpu = t.target.cpu;
        if let Some(c) = t.wait_cpu.and_then(|c| self.cpus.get_mut(&c)) {
            c.advance(ts);
            c.waiting += 1;
        }
    }

    fn wait_end(&mut self, tid: u32, ts: u64) {
        let Some(t) = self.threads.get_mut(&tid) else {
            return;
        };
        let Some(since) = t.runnable_since.take() else {
            return;
        };
        t.waiting_ns += ts.saturating_sub(since);
        if let Some(c) = t.wait_cpu.take().and_then(|c| self.cpus.get_mut(&c)) {
            c.advance(ts);
            c.waiting = c.waiting.saturating_sub(1);
        }
    }

    /// One event.
    pub fn event(&mut self, e: &Event) {
        self.events += 1;
        self.span = Some(match self.span {
            None => (e.ts, e.ts),
            Some((a, b)) => (a.min(e.ts), b.max(e.ts)),
        });
        if let Some(c) = self.cpus.get_mut(&e.cpu) {
            c.advance(e.ts);
        }
        match &e.kind {
            Kind::Waking { pid } => {
                if let Some(t) = self.threads.get_mut(pid)
                    && !t.running
                    && t.runnable_since.is_none()
                {
                    t.wake_ts = Some(e.ts);
                    self.wait_start(*pid, e.ts);
                }
            }
            Kind::Switch {
                prev_pid,
                prev_comm: _,
                prev_state,
                next_pid,
                next_comm,
            } => {
                self.switch(e, *prev_pid, *prev_state, *next_pid, next_comm);
            }
            Kind::Migrate { pid, dest_cpu, .. } => {
                if let Some(t) = self.threads.get_mut(pid) {
                    t.migrations += 1;
                    t.target.cpu = Some(*dest_cpu);
                }
            }
            Kind::IrqEntry { irq, name } => {
                if let Some(c) = self.cpus.get_mut(&e.cpu) {
                    c.irq = Some((*irq, name.clone(), e.ts));
                }
            }
            Kind::IrqExit { irq } => {
                if let Some(c) = self.cpus.get_mut(&e.cpu)
                    && let Some((n, name, t0)) = c.irq.take()
                    && n == *irq
                {
                    c.irqs
                        .entry((n, name))
                        .or_default()
                        .add(e.ts - t0.min(e.ts));
                }
            }
            Kind::SoftirqEntry { vec } => {
                if let Some(c) = self.cpus.get_mut(&e.cpu) {
                    c.softirq = Some((*vec, e.ts));
                }
            }
            Kind::SoftirqExit { vec } => {
                if let Some(c) = self.cpus.get_mut(&e.cpu)
                    && let Some((v, t0)) = c.softirq.take()
                    && v == *vec
                {
                    c.softirqs.entry(v).or_default().add(e.ts - t0.min(e.ts));
                }
            }
            Kind::TimerEntry => {
                if let Some(c) = self.cpus.get_mut(&e.cpu) {
                    c.timer_since = Some(e.ts);
                }
            }
            Kind::TimerExit => {
                if let Some(c) = self.cpus.get_mut(&e.cpu)
                    && let Some(t0) = c.timer_since.take()
                {
                    c.timer.add(e.ts - t0.min(e.ts));
                }
            }
        }
    }

    fn switch(
        &mut self,
        e: &Event,
        prev_pid: u32,
        prev_state: u64,
        next_pid: u32,
        next_comm: &str,
    ) {
        if let Some(c) = self.cpus.get_mut(&e.cpu) {
            if let Some((pid, comm, t0)) = c.cur.take()
                && pid != 0
                && pid == prev_pid
                && !self.threads.contains_key(&pid)
            {
                c.tasks
                    .entry((pid, comm))
                    .or_default()
                    .add(e.ts - t0.min(e.ts));
            }
            c.cur = Some((next_pid, next_comm.to_owned(), e.ts));
        }
        if let Some(t) = self.threads.get_mut(&prev_pid) {
            t.running = false;
            if let Some(s) = t.since.take() {
                t.running_ns += e.ts.saturating_sub(s);
            }
            t.target.cpu = Some(e.cpu);
            if still_runnable(prev_state) {
                t.preemptions += 1;
                self.wait_start(prev_pid, e.ts);
            }
        }
        if self.threads.contains_key(&next_pid) {
            self.wait_end(next_pid, e.ts);
            if let Some(t) = self.threads.get_mut(&next_pid) {
                t.running = true;
                t.since = Some(e.ts);
                t.target.cpu = Some(e.cpu);
                if let Some(w) = t.wake_ts.take() {
                    let d = e.ts.saturating_sub(w);
                    t.delay.record(d);
                    if matches!(t.target.role, Role::Vcpu(_)) {
                        self.vcpu_delay.record(d);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(ts: u64, cpu: u32, kind: Kind) -> Event {
        Event { ts, cpu, kind }
    }
    fn sw(prev: (&str, u32), state: u64, next: (&str, u32)) -> Kind {
        Kind::Switch {
            prev_pid: prev.1,
            prev_comm: prev.0.into(),
            prev_state: state,
            next_pid: next.1,
            next_comm: next.0.into(),
        }
    }
    fn vm() -> Analyzer {
        let t = [Target {
            tid: 42,
            name: "CPU 0/KVM".into(),
            role: Role::Vcpu(0),
            cpu: Some(3),
        }];
        Analyzer::new(&t, &[3].into())
    }

    /// A wake-up with a known delay, a preemption by a known task, an IRQ meanwhile.
    #[test]
    fn wakeup_preemption_and_irq() {
        let mut a = vm();
        let v = ("CPU 0/KVM", 42);
        let spin = ("spin", 900);
        a.feed(vec![
            // The vCPU sleeps (state 1: S); spin runs.
            ev(1_000, 3, sw(v, 1, spin)),
            // Woken at 10 µs (from another CPU), runs at 60 µs: 50 µs of delay, of which an
            // IRQ took 5 µs.
            ev(10_000, 1, Kind::Waking { pid: 42 }),
            ev(
                20_000,
                3,
                Kind::IrqEntry {
                    irq: 24,
                    name: "eth0".into(),
                },
            ),
            ev(25_000, 3, Kind::IrqExit { irq: 24 }),
            ev(60_000, 3, sw(spin, 0x100, v)),
            // Preempted by spin (still runnable) at 100 µs, back at 400 µs.
            ev(100_000, 3, sw(v, 0x100, spin)),
            ev(400_000, 3, sw(spin, 0, v)),
            // A migration.
            ev(
                500_000,
                3,
                Kind::Migrate {
                    pid: 42,
                    orig_cpu: 3,
                    dest_cpu: 4,
                },
            ),
        ]);
        let t = &a.threads[&42];
        let s = t.delay.stats();
        assert_eq!(s.samples, 1);
        assert_eq!(s.max_us, 50.0);
        assert_eq!(t.preemptions, 1);
        assert_eq!(t.waiting_ns, 50_000 + 300_000);
        assert_eq!(t.migrations, 1);
        assert_eq!(t.running_ns, 40_000);
        let c = &a.cpus[&3];
        let spin_key = Culprit::Task {
            pid: 900,
            comm: "spin".into(),
        };
        assert_eq!(c.blame[&spin_key], 45_000 + 300_000);
        assert_eq!(
            c.blame[&Culprit::Irq {
                irq: 24,
                name: "eth0".into()
            }],
            5_000
        );
        assert_eq!(
            c.irqs[&(24, "eth0".to_owned())],
            Tally {
                count: 1,
                ns: 5_000
            }
        );
        assert_eq!(
            c.tasks[&(900, "spin".to_owned())],
            Tally {
                count: 2,
                ns: 59_000 + 300_000
            }
        );
        assert_eq!(a.vcpu_delay.stats().samples, 1);
    }

    #[test]
    fn waking_while_runnable_is_not_a_new_wakeup_and_idle_is_blamed() {
        let mut a = vm();
        let v = ("CPU 0/KVM", 42);
        a.feed(vec![
            ev(0, 3, sw(v, 1, ("swapper/3", 0))),
            ev(1_000, 3, Kind::Waking { pid: 42 }),
            ev(2_000, 3, Kind::Waking { pid: 42 }),
            ev(1_500, 3, Kind::TimerEntry),
            ev(1_800, 3, Kind::TimerExit),
            ev(4_000, 3, sw(("swapper/3", 0), 0, v)),
            // While running: a waking is ignored.
            ev(5_000, 3, Kind::Waking { pid: 42 }),
        ]);
        let t = &a.threads[&42];
        assert_eq!(t.delay.stats().samples, 1);
        assert_eq!(t.delay.stats().max_us, 3.0);
        assert_eq!(t.preemptions, 0);
        let c = &a.cpus[&3];
        assert_eq!(c.blame[&Culprit::Tick], 300);
        assert_eq!(c.blame[&Culprit::Idle], 2_700);
        assert_eq!(c.timer, Tally { count: 1, ns: 300 });
        assert!(c.tasks.is_empty(), "idle is not a task that ran instead");
    }

    #[test]
    fn preempted_state_marker() {
        assert!(still_runnable(0));
        assert!(still_runnable(0x100));
        assert!(!still_runnable(1));
        assert!(!still_runnable(2));
        assert!(!still_runnable(0x80));
    }
}
