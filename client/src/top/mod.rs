//! `kvmisolate top`: what a running guest loses, measured from the host with a tracefs
//! instance of its own: per vCPU thread the wake-up delay (histogram, p50/p99/p99.9/max),
//! preemptions, time runnable but not running and migrations; per traced CPU what ran
//! instead (tasks, kernel threads, hard IRQs, softirqs, the tick); a verdict against the
//! 1000 µs goal and the top offenders with the fix for each.
//!
//! Layers: [`threads`] finds the threads and CPUs, [`tracefs`] owns the instance and reads
//! the per-CPU raw buffers, [`ring`] decodes pages (pure), [`analyze`] turns events into
//! figures (pure), [`report`] renders them.

pub mod analyze;
pub mod check;
pub mod report;
pub mod ring;
pub mod threads;
pub mod tracefs;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use kvmisolate_dbus::CpuSet;
use tokio::signal::unix::{SignalKind, signal};

use crate::check::args::RootArgs;
use crate::failure::{ExitCode, Failure};
use crate::output::print;
use analyze::{Analyzer, Target};
use report::{Cost, TopReport};

/// `kvmisolate top` arguments.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// A running libvirt domain: its vCPU, emulator and iothread threads (cgroup leaves).
    #[arg(long, value_name = "DOMAIN", conflicts_with_all = ["pid", "name"])]
    pub vm: Option<String>,

    /// A QEMU process: its threads (vCPUs by their `CPU N/KVM` or `CPU N/TCG` names).
    #[arg(long, value_name = "PID", conflicts_with = "name")]
    pub pid: Option<u32>,

    /// The threads of a kvmisolate isolation (its cgroups).
    #[arg(long, value_name = "ISOLATION")]
    pub name: Option<String>,

    /// Stop after this long (30s, 1m; a bare number is seconds) and print the figures.
    /// Without it: until Ctrl-C.
    #[arg(long, value_name = "TIME", value_parser = parse_window)]
    pub duration: Option<Duration>,

    /// Print the figures as JSON at the end (the input of --compare).
    #[arg(long)]
    pub json: bool,

    /// Also write the wake-up delay histograms as an SVG picture.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Print the difference between two saved --json windows (A before, B after) and exit.
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"],
          conflicts_with_all = ["vm", "pid", "name", "json", "plot", "duration"])]
    pub compare: Option<Vec<PathBuf>>,

    /// Also trace the local timer interrupt on the traced CPUs (the tick and hrtimers): its
    /// time and the vCPU waits it causes. Without it, only its count is read (from
    /// /proc/interrupts), which costs the traced CPUs nothing; tracing it costs them about
    /// 0.5% more at 3000 vCPU wake-ups a second (x86 only).
    #[arg(long)]
    pub timers: bool,

    /// Per-CPU trace buffer of the instance, KiB.
    #[arg(long, value_name = "KIB", default_value_t = 1024, hide = true,
          value_parser = clap::value_parser!(u32).range(64..=65536))]
    pub buffer_kb: u32,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub roots: RootArgs,
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = crate::bench::parse_duration(s, crate::bench::Unit::Seconds)?;
    if d < Duration::from_millis(200) {
        return Err(format!("{s:?} is too short: trace at least 200ms"));
    }
    Ok(d)
}

/// How often the buffers are drained (the table is redrawn every second).
const DRAIN: Duration = Duration::from_millis(250);

/// What to trace, found.
pub struct Traced {
    /// `vm NAME`, `pid N`, `isolation NAME`.
    pub label: String,
    /// The threads.
    pub targets: Vec<Target>,
    /// The CPUs.
    pub cpus: BTreeSet<u32>,
}

/// Finds the threads of `a` (`isolation_cgroups`: the cgroups of `--name`, asked of
/// kvmisolated by the caller).
pub fn discover(a: &TopArgs, isolation_cgroups: Option<&[String]>) -> Result<Traced, Failure> {
    let not_found = |m: String| Failure::new(ExitCode::NotFound, m);
    let (label, targets) = if let Some(vm) = &a.vm {
        (
            format!("vm {vm}"),
            threads::of_domain(&a.roots.cgroup_root, vm).map_err(not_found)?,
        )
    } else if let Some(pid) = a.pid {
        (
            format!("pid {pid}"),
            threads::of_pid(pid).map_err(not_found)?,
        )
    } else if let Some(name) = &a.name {
        let t = threads::of_cgroups(&a.roots.cgroup_root, isolation_cgroups.unwrap_or_default());
        if t.is_empty() {
            return Err(not_found(format!(
                "isolation {name:?} has no thread in its cgroups (is its target running?)"
            )));
        }
        (format!("isolation {name}"), t)
    } else {
        return Err(Failure::new(
            ExitCode::Usage,
            "top needs what to watch: --vm DOMAIN, --pid PID or --name ISOLATION (or \
             --compare A.json B.json)",
        ));
    };
    let cpus = threads::cpus_of(&targets);
    Ok(Traced {
        label,
        targets,
        cpus,
    })
}

/// This process's CPU time (all threads, user + system), ms.
fn rusage_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

/// Local timer interrupts per CPU so far (`LOC` in /proc/interrupts; empty off x86).
fn local_timer_counts() -> BTreeMap<u32, u64> {
    std::fs::read_to_string("/proc/interrupts")
        .map(|t| {
            crate::check::irq::parse_counters(&t)
                .into_iter()
                .find(|l| l.source == "LOC")
                .map(|l| l.counts)
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

fn online_cpus() -> BTreeSet<u32> {
    crate::topology::online_cpus(std::path::Path::new(crate::topology::DEFAULT_ROOT))
        .map(|c| c.iter().collect())
        .unwrap_or_default()
}

/// Moves this process off the traced CPUs: to the CPUs it may already use (a `taskset` the
/// user gave it stays honoured) minus the traced ones, or to every other online CPU when that
/// leaves none. Best effort: with no other CPU online, or when the affinity cannot be changed,
/// it stays where it is.
fn keep_off(traced: &BTreeSet<u32>) {
    let online = online_cpus();
    let allowed: BTreeSet<u32> = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            online
                .iter()
                .copied()
                .filter(|c| set.is_set(*c as usize).unwrap_or(false))
                .collect()
        })
        .unwrap_or_default();
    let mut set = nix::sched::CpuSet::new();
    let mut any = false;
    for c in &off_traced(&allowed, &online, traced) {
        if set.set(*c as usize).is_ok() {
            any = true;
        }
    }
    if any {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Where `top` runs: the allowed CPUs minus the traced ones, or every other online CPU when
/// that leaves none.
fn off_traced(
    allowed: &BTreeSet<u32>,
    online: &BTreeSet<u32>,
    traced: &BTreeSet<u32>,
) -> BTreeSet<u32> {
    let chosen: BTreeSet<u32> = allowed.difference(traced).copied().collect();
    if chosen.is_empty() {
        online.difference(traced).copied().collect()
    } else {
        chosen
    }
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A live tracing session: the instance and the figures so far.
pub struct Session {
    instance: tracefs::Instance,
    analyzer: Analyzer,
    traced: Traced,
    started: Instant,
    cpu0: f64,
    /// Without `--timers`: the traced CPUs' local timer interrupts (LOC) at the start.
    loc0: Option<BTreeMap<u32, u64>>,
}

impl Session {
    /// Makes the instance (removing stale ones first; their names are returned).
    pub fn start(
        traced: Traced,
        buffer_kb: u32,
        timers: bool,
    ) -> Result<(Self, Vec<String>), Failure> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Failure::new(
                ExitCode::NotAuthorized,
                "top traces the kernel's scheduler through tracefs: run it as root (sudo \
                 kvmisolate top ...)",
            ));
        }
        keep_off(&traced.cpus);
        let root = tracefs::root().map_err(|m| Failure::new(ExitCode::HostCannot, m))?;
        let stale = tracefs::remove_stale(&root);
        let tids: BTreeSet<u32> = traced.targets.iter().map(|t| t.tid).collect();
        let instance = tracefs::Instance::create(
            &root,
            &tids,
            &traced.cpus,
            &online_cpus(),
            buffer_kb,
            timers,
        )
        .map_err(|m| Failure::new(ExitCode::HostCannot, m))?;
        let analyzer = Analyzer::new(&traced.targets, &traced.cpus);
        Ok((
            Self {
                instance,
                analyzer,
                traced,
                started: Instant::now(),
                cpu0: rusage_ms(),
                loc0: (!timers).then(local_timer_counts),
            },
            stale,
        ))
    }

    /// Reads what the buffers hold and feeds it to the figures.
    pub fn poll(&mut self) -> Result<(), Failure> {
        let ev = self.instance.drain().map_err(Failure::other)?;
        self.analyzer.feed(ev);
        Ok(())
    }

    /// Stops recording (the buffers keep what they hold for the next [`Session::poll`]).
    pub fn stop(&mut self) {
        self.instance.stop();
    }

    /// The figures so far.
    pub fn report(&self) -> TopReport {
        let cost = Cost {
            events: self.analyzer.events,
            bytes: self.instance.bytes,
            cpu_ms: rusage_ms() - self.cpu0,
            lost_pages: self.instance.missed_pages(),
        };
        let mut r = report::build(
            &self.analyzer,
            &self.traced.label,
            &kernel(),
            self.started.elapsed().as_secs_f64(),
            cost,
            &threads::is_kthread,
        );
        if let Some(loc0) = &self.loc0 {
            report::count_timers(&mut r, loc0, &local_timer_counts());
        }
        r
    }

    /// The instances' directories.
    pub fn dirs(&self) -> &[PathBuf] {
        self.instance.dirs()
    }
}

/// A one-shot sample of `window` (for `check --vm`): the report, or why there is none.
pub fn sample(a: &TopArgs, window: Duration) -> Result<TopReport, Failure> {
    let (mut s, _) = Session::start(discover(a, None)?, a.buffer_kb, a.timers)?;
    let end = Instant::now() + window;
    while Instant::now() < end {
        std::thread::sleep(DRAIN.min(end.saturating_duration_since(Instant::now())));
        s.poll()?;
    }
    s.stop();
    s.poll()?;
    Ok(s.report())
}

/// `kvmisolate top`.
pub async fn cmd(
    a: TopArgs,
    isolation_cgroups: Option<Vec<String>>,
    quiet: bool,
) -> Result<(), Failure> {
    if let Some(files) = &a.compare {
        let [x, y] = files.as_slice() else {
            return Err(Failure::new(ExitCode::Usage, "--compare needs two files"));
        };
        let load = |p: &PathBuf| report::load(p).map_err(|m| Failure::new(ExitCode::BadRequest, m));
        return print(&report::format_compare(&load(x)?, &load(y)?, x, y));
    }
    let traced = discover(&a, isolation_cgroups.as_deref())?;
    if traced.cpus.is_empty() {
        return Err(Failure::other("no CPU found for the traced threads"));
    }
    let (mut s, stale) = Session::start(traced, a.buffer_kb, a.timers)?;
    if !quiet {
        for n in stale {
            eprintln!(
                "kvmisolate: removed the tracefs instance {n} of a run that did not end cleanly"
            );
        }
    }
    let live = !a.json && std::io::stdout().is_terminal();
    let signal_failure = |e: std::io::Error| Failure::other(format!("cannot handle signals: {e}"));
    let (mut sigint, mut sigterm) = (
        signal(SignalKind::interrupt()).map_err(signal_failure)?,
        signal(SignalKind::terminate()).map_err(signal_failure)?,
    );
    if !quiet && !live {
        eprintln!(
            "kvmisolate: tracing {} on CPUs {} ({}){}",
            s.traced.label,
            s.traced.cpus.iter().copied().collect::<CpuSet>(),
            s.dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if a.duration.is_none() {
                "; Ctrl-C to stop"
            } else {
                ""
            }
        );
    }
    let end = a.duration.map(|d| Instant::now() + d);
    let mut next_draw = Instant::now() + Duration::from_secs(1);
    loop {
        let mut wait = DRAIN;
        if let Some(e) = end {
            let left = e.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            wait = wait.min(left);
        }
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = tokio::time::sleep(wait) => {}
        }
        s.poll()?;
        if live && Instant::now() >= next_draw {
            next_draw += Duration::from_secs(1);
            print(&format!(
                "\x1b[H\x1b[2J{}",
                report::format_human(&s.report())
            ))?;
        }
    }
    // Stopped first, so the last read holds every event of the window.
    s.stop();
    s.poll()?;
    let r = s.report();
    drop(s);
    if let Some(p) = &a.plot {
        std::fs::write(p, report::svg(&r))
            .map_err(|e| Failure::other(format!("cannot write {}: {e}", p.display())))?;
    }
    if a.json {
        let t = serde_json::to_string_pretty(&r)
            .map_err(|e| Failure::other(format!("cannot write JSON: {e}")))?;
        print(&format!("{t}\n"))
    } else {
        print(&report::format_human(&r))
    }
}

#[cfg(test)]
mod tests {
    use super::off_traced;
    use std::collections::BTreeSet;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn top_stays_within_a_taskset_and_off_the_traced_cpus() {
        let online = set(&[0, 1, 2, 3]);
        // `taskset -c 0-1 kvmisolate top` tracing CPU 3: stays on 0-1
        assert_eq!(off_traced(&set(&[0, 1]), &online, &set(&[3])), set(&[0, 1]));
        // no taskset: every CPU but the traced one
        assert_eq!(off_traced(&online, &online, &set(&[3])), set(&[0, 1, 2]));
        // a taskset inside the traced CPUs: moved to the other online CPUs
        assert_eq!(off_traced(&set(&[3]), &online, &set(&[2, 3])), set(&[0, 1]));
        // every CPU traced: nothing to move to (the caller stays where it is)
        assert!(off_traced(&online, &online, &online).is_empty());
    }
}
