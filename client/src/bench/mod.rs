//! `kvmisolate bench`: a cyclictest-style wake-up latency measurement on chosen CPUs, with the
//! interference seen there during the run.
//!
//! One thread per measured CPU, pinned to it, SCHED_FIFO, memory locked (mlockall), sleeps with
//! `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)` until absolute deadlines `interval` apart
//! and records how late it woke (`hist`). Without the privilege for SCHED_FIFO the run is
//! refused ([`BenchError::NotPermitted`]): figures taken under SCHED_OTHER would measure the
//! scheduler's fairness, not the isolation.

pub mod args;
pub mod hist;
pub mod interference;
pub mod load;
pub mod measure;
pub mod report;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use kvmisolate_dbus::cpulist::CpuSet;

use crate::check::cgroup;
use crate::check::host::{Host, Roots};
use measure::{GO, STOP, WAIT};
use report::{BenchReport, CpuResult, JSON_VERSION};

/// The unit of a bare number in [`parse_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Seconds (`--duration 20`).
    Seconds,
    /// Microseconds (`--interval 200`, as cyclictest's `-i`).
    Micros,
}

/// Parses `60s`, `1m`, `1m30s`, `200us`, `200µs`, `1.5ms`, `2h`; a bare number is in `bare`.
pub fn parse_duration(text: &str, bare: Unit) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration (write e.g. 60s, 1m or 200us)".to_owned());
    }
    if let Ok(n) = t.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            return Err(format!("{text:?} is not a duration"));
        }
        return Ok(match bare {
            Unit::Seconds => Duration::from_secs_f64(n),
            Unit::Micros => Duration::from_secs_f64(n / 1e6),
        });
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!(
                "{text:?} is not a duration: expected a number at {rest:?}"
            ));
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| {
            format!(
                "{text:?} is not a duration: bad number {:?}",
                &rest[..num_len]
            )
        })?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("{text:?}: a unit is missing after {n}")),
            u => {
                return Err(format!(
                    "{text:?}: unknown unit {u:?} (use ns, us, ms, s, m or h)"
                ));
            }
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 1e9 {
        return Err(format!("{text:?} is too long"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--cpus` (default: the isolated CPUs found in cgroupfs).
    pub cpus: Option<CpuSet>,
    /// How long.
    pub duration: Duration,
    /// The period.
    pub interval: Duration,
    /// SCHED_FIFO priority.
    pub priority: u8,
    /// `--load`.
    pub load: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// No privilege for SCHED_FIFO.
    #[error(
        "{0}: kvmisolate bench needs root (or CAP_SYS_NICE, or an RLIMIT_RTPRIO at least the priority) \
         to run its measuring threads as SCHED_FIFO; run it with sudo"
    )]
    NotPermitted(String),
    /// The CPUs cannot be measured.
    #[error("{0}")]
    BadCpus(String),
    /// Anything else.
    #[error("{0}")]
    Setup(String),
}

fn choose_cpus(opts: &Options, host: &Host) -> Result<(CpuSet, CpuSet), BenchError> {
    let online = host.online_cpus().ok_or_else(|| {
        BenchError::Setup(format!(
            "cannot read the online CPUs ({})",
            host.sys("devices/system/cpu/online").display()
        ))
    })?;
    let cpus = match &opts.cpus {
        Some(c) => c.clone(),
        None => {
            let scan = cgroup::scan(host);
            let c = cgroup::isolated_cpus(host, &scan.partitions).intersection(&online);
            if c.is_empty() {
                return Err(BenchError::BadCpus(
                    "no --cpus given and no isolated CPUs found in cgroupfs: pass --cpus LIST"
                        .to_owned(),
                ));
            }
            c
        }
    };
    let offline = cpus.difference(&online);
    if !offline.is_empty() {
        return Err(BenchError::BadCpus(format!(
            "CPU(s) {offline} are offline or do not exist (online: {online})"
        )));
    }
    let hk = online.difference(&cpus);
    if opts.load && hk.is_empty() {
        return Err(BenchError::BadCpus(format!(
            "--load needs housekeeping CPUs besides the measured ones (online: {online})"
        )));
    }
    Ok((cpus, hk))
}

/// Holds `/dev/cpu_dma_latency` at 0 µs while the returned file is open (as cyclictest does):
/// no deep C-state exit latency in the figures.
fn hold_cpu_dma_latency(warnings: &mut Vec<String>) -> Option<std::fs::File> {
    let open = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")
        .and_then(|mut f| f.write_all(&0i32.to_ne_bytes()).map(|()| f));
    match open {
        Ok(f) => Some(f),
        Err(e) => {
            warnings.push(format!(
                "cannot hold /dev/cpu_dma_latency at 0 ({e}): idle-state exit latency may show up"
            ));
            None
        }
    }
}

fn progress_bar(done: f64, total: f64) {
    let width = 40;
    let frac = (done / total).clamp(0.0, 1.0);
    let filled = (frac * width as f64) as usize;
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r[{}{}] {:>4.0}/{:.0} s",
        "#".repeat(filled),
        " ".repeat(width - filled),
        done,
        total
    );
    let _ = err.flush();
}

/// Runs the benchmark.
pub fn run(opts: &Options, roots: &Roots) -> Result<BenchReport, BenchError> {
    let host = Host::new(roots.clone());
    let (cpus, hk) = choose_cpus(opts, &host)?;
    let mut warnings = Vec::new();
    let memory_locked = match measure::lock_memory() {
        Ok(()) => true,
        Err(e) => {
            warnings.push(format!(
                "memory not locked (mlockall: {e}): page faults may show up as latency"
            ));
            false
        }
    };
    let phase = Arc::new(AtomicU8::new(WAIT));
    let end_ns = Arc::new(AtomicU64::new(u64::MAX));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for cpu in cpus.iter() {
        let h = measure::spawn(
            cpu,
            opts.interval,
            end_ns.clone(),
            opts.priority,
            phase.clone(),
            tx.clone(),
        )
        .map_err(|e| BenchError::Setup(format!("cannot start a thread for CPU {cpu}: {e}")));
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                phase.store(STOP, Ordering::Release);
                for h in handles {
                    let _ = h.join();
                }
                return Err(e);
            }
        }
    }
    drop(tx);
    let mut failure = None;
    for _ in 0..handles.len() {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err((denied, msg))) => {
                failure.get_or_insert(if denied {
                    BenchError::NotPermitted(msg)
                } else {
                    BenchError::Setup(msg)
                });
            }
            Err(_) => {
                failure.get_or_insert(BenchError::Setup("a measuring thread died".to_owned()));
            }
        }
    }
    if let Some(f) = failure {
        phase.store(STOP, Ordering::Release);
        for h in handles {
            let _ = h.join();
        }
        return Err(f);
    }
    let _pm_qos = hold_cpu_dma_latency(&mut warnings);
    let before = interference::take(&host, true);
    let hk_list: Vec<u32> = hk.iter().collect();
    let load = if opts.load {
        match load::start_anywhere(&hk_list, &phase, &roots.cgroup) {
            Ok(l) => Some(l),
            Err(e) => {
                warnings.push(format!("the host load did not start: {e}"));
                None
            }
        }
    } else {
        None
    };
    let start = measure::now_ns();
    end_ns.store(start + opts.duration.as_nanos() as u64, Ordering::Release);
    phase.store(GO, Ordering::Release);
    let total = opts.duration.as_secs_f64();
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(250));
        if opts.progress {
            progress_bar((measure::now_ns() - start) as f64 / 1e9, total);
        }
    }
    if opts.progress {
        let _ = write!(std::io::stderr(), "\r\x1b[K");
    }
    let elapsed = (measure::now_ns() - start) as f64 / 1e9;
    let runs: Vec<measure::CpuRun> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    let after = interference::take(&host, true);
    if let Some(l) = load {
        l.finish(&phase);
    }
    phase.store(STOP, Ordering::Release);
    let (mut per_cpu, other_tasks) =
        interference::delta(&before, &after, &cpus, std::process::id());
    let results = runs
        .into_iter()
        .map(|r| CpuResult {
            cpu: r.cpu,
            stats: r.hist.stats(),
            overruns: r.overruns,
            preempted: r.preempted,
            histogram: r.hist.sparse(),
            interference: per_cpu.remove(&r.cpu).unwrap_or_default(),
        })
        .collect();
    let kernel = host
        .read_trim(&host.proc("sys/kernel/osrelease"))
        .unwrap_or_default();
    Ok(BenchReport {
        version: JSON_VERSION,
        kernel,
        cpus,
        interval_us: opts.interval.as_micros() as u64,
        duration_s: (elapsed * 10.0).round() / 10.0,
        priority: opts.priority,
        load: opts.load,
        memory_locked,
        results,
        other_tasks,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::check::host::fake::FakeHost;

    #[test]
    fn durations() {
        let s = |t: &str| parse_duration(t, Unit::Seconds);
        let us = |t: &str| parse_duration(t, Unit::Micros);
        assert_eq!(s("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(s("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(s("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(s("20").unwrap(), Duration::from_secs(20));
        assert_eq!(s("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(s("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(us("200us").unwrap(), Duration::from_micros(200));
        assert_eq!(us("200µs").unwrap(), Duration::from_micros(200));
        assert_eq!(us("1ms").unwrap(), Duration::from_millis(1));
        assert_eq!(us("200").unwrap(), Duration::from_micros(200));
        assert_eq!(us("500ns").unwrap(), Duration::from_nanos(500));
        for bad in ["", "s", "10x", "1m30", "-5", "1..2s", "abc"] {
            assert!(s(bad).is_err(), "{bad}");
        }
        assert!(s("10x").unwrap_err().contains("unknown unit \"x\""));
    }

    #[test]
    fn cpu_choice() {
        let f = FakeHost::basic();
        let host = f.host();
        let opts = |cpus: Option<&str>, load| Options {
            cpus: cpus.map(|c| CpuSet::parse(c).unwrap()),
            duration: Duration::from_secs(1),
            interval: Duration::from_micros(200),
            priority: 95,
            load,
            progress: false,
        };
        let e = choose_cpus(&opts(None, false), &host).unwrap_err();
        assert!(e.to_string().contains("pass --cpus"), "{e}");
        let e = choose_cpus(&opts(Some("3-5"), false), &host).unwrap_err();
        assert!(e.to_string().contains("4-5 are offline"), "{e}");
        let e = choose_cpus(&opts(Some("0-3"), true), &host).unwrap_err();
        assert!(e.to_string().contains("--load needs"), "{e}");
        let (c, hk) = choose_cpus(&opts(Some("2-3"), true), &host).unwrap();
        assert_eq!(
            (c.to_string(), hk.to_string()),
            ("2-3".into(), "0-1".into())
        );
        f.partition("vm.scope", "isolated", "3");
        let (c, _) = choose_cpus(&opts(None, false), &f.host()).unwrap();
        assert_eq!(c.to_string(), "3");
    }
}
