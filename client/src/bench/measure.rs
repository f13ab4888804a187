//! The measuring threads: pinned, SCHED_FIFO, absolute `clock_nanosleep` on CLOCK_MONOTONIC,
//! lateness into a [`Histogram`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::hist::Histogram;

/// What one measuring thread hands back.
#[derive(Debug)]
pub struct CpuRun {
    /// The CPU.
    pub cpu: u32,
    /// The latencies.
    pub hist: Histogram,
    /// Periods skipped because a wake-up came later than the next deadline.
    pub overruns: u64,
    /// The thread's involuntary context switches during the run (preemptions).
    pub preempted: Option<u64>,
}

/// Shared run state: 0 waiting, 1 measuring, 2 stop.
pub type Phase = Arc<AtomicU8>;
/// Waiting for the start.
pub const WAIT: u8 = 0;
/// Measuring.
pub const GO: u8 = 1;
/// Stop now.
pub const STOP: u8 = 2;

/// Nanoseconds on CLOCK_MONOTONIC.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sleep_until(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; the remaining-time pointer may be null with
        // TIMER_ABSTIME. The call only reads `ts`.
        let r = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if r != libc::EINTR {
            return;
        }
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpus: &[u32]) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    for &c in cpus {
        set.set(c as usize)
            .map_err(|e| format!("CPU {c} cannot be in an affinity mask: {e}"))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("cannot pin to CPU(s) {cpus:?}: {}", e.desc()))
}

/// Puts the calling thread in SCHED_FIFO at `priority`. `Err(true)` means "not permitted".
fn set_fifo(priority: u8) -> Result<(), (bool, String)> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param that the call reads.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err((
        e.raw_os_error() == Some(libc::EPERM),
        format!("cannot switch to SCHED_FIFO priority {priority}: {e}"),
    ))
}

/// Locks all current and future memory (no page faults while measuring). Returns the error.
pub fn lock_memory() -> Result<(), String> {
    // SAFETY: mlockall takes flags only and has no memory-safety preconditions.
    let r = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

fn involuntary_switches() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A setup failure of one thread: (not permitted, message).
pub type SetupError = (bool, String);

/// Starts one measuring thread on `cpu`. It reports its setup on `ready`, waits for `phase`
/// to become [`GO`], then measures until `end_ns` or [`STOP`]. The threads share nothing
/// they write while measuring (no cache line bouncing between measured CPUs).
pub fn spawn(
    cpu: u32,
    interval: Duration,
    end_ns: Arc<AtomicU64>,
    priority: u8,
    phase: Phase,
    ready: mpsc::Sender<Result<(), SetupError>>,
) -> std::io::Result<JoinHandle<CpuRun>> {
    std::thread::Builder::new()
        .name(format!("bench-cpu{cpu}"))
        .spawn(move || {
            let mut run = CpuRun {
                cpu,
                hist: Histogram::new(),
                overruns: 0,
                preempted: None,
            };
            let setup = pin_to(&[cpu])
                .map_err(|m| (false, m))
                .and_then(|()| set_fifo(priority));
            let failed = setup.is_err();
            let _ = ready.send(setup);
            if failed {
                return run;
            }
            while phase.load(Ordering::Acquire) == WAIT {
                std::thread::sleep(Duration::from_millis(1));
            }
            let before = involuntary_switches();
            let step = interval.as_nanos() as u64;
            let end = end_ns.load(Ordering::Acquire);
            let mut next = now_ns() + step;
            while phase.load(Ordering::Relaxed) == GO {
                sleep_until(next);
                let now = now_ns();
                run.hist.record(now.saturating_sub(next));
                next += step;
                if now >= next {
                    // Woke after the next deadline: skip the periods already gone.
                    let missed = (now - next) / step + 1;
                    run.overruns += missed;
                    next += missed * step;
                }
                if now >= end {
                    break;
                }
            }
            run.preempted = match (before, involuntary_switches()) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            };
            run
        })
}
