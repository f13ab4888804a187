//! `top`'s own tracefs instances, made with only the events and CPUs they need, read through
//! the per-CPU raw buffers and removed on drop. The top-level buffer and its settings are
//! never written. Instances left by a run that died (its pid gone) are removed before new ones
//! are made.
//!
//! Two instances, because what costs the traced CPUs is the events recorded there (about 900
//! guest instructions each, `tests/vm/run --bench-top`), and a filter makes each event dearer
//! (the kernel copies it through a scratch buffer to test it):
//! - `kvmisolate-top-PID`: the traced CPUs' own events (switches, IRQs, softirqs, with
//!   `--timers` the local timer), limited by `tracing_cpumask` to those CPUs, unfiltered;
//! - `kvmisolate-top-PID-wake`: the traced threads' `sched_waking`/`sched_migrate_task`
//!   wherever they happen (a vCPU's waker — an iothread, a device IRQ, another vCPU — runs
//!   on other CPUs), filtered by pid, as ranges of consecutive tids (QEMU starts its vCPU
//!   threads one after the other: one range test instead of one test per thread).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::ring::{self, CPU_EVENTS, Decoder, Event, THREAD_EVENTS, TIMER_EVENTS};

/// The prefix of our instances' names.
pub const PREFIX: &str = "kvmisolate-top-";
/// The suffix of the wake-up instance's name.
const WAKE_SUFFIX: &str = "-wake";

/// Where tracefs is mounted (the first of the usual places that has `instances`).
pub fn root() -> Result<PathBuf, String> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("instances").is_dir() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(
        "tracefs is not mounted (no /sys/kernel/tracing/instances): mount it with \
         `mount -t tracefs nodev /sys/kernel/tracing` (the kernel needs CONFIG_FTRACE)"
            .to_owned(),
    )
}

/// Removes the instances of runs whose process is gone (or whose pid now belongs to another
/// program); returns their names.
pub fn remove_stale(root: &Path) -> Vec<String> {
    let mut gone = Vec::new();
    let Ok(dir) = fs::read_dir(root.join("instances")) else {
        return gone;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|p| p.strip_suffix(WAKE_SUFFIX).unwrap_or(p).parse::<u32>().ok())
        else {
            continue;
        };
        // Alive and still a kvmisolate (not a reused pid): another `top` is running.
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == "kvmisolate" && pid != std::process::id() {
            continue;
        }
        if fs::remove_dir(e.path()).is_ok() {
            gone.push(name);
        }
    }
    gone
}

/// Our instances; removed when dropped.
pub struct Instance {
    /// The CPU-local instance first, then the wake-up one (once made).
    dirs: Vec<PathBuf>,
    readers: Vec<(u32, File)>,
    decoder: Decoder,
    page: Vec<u8>,
    /// Bytes read from the raw buffers.
    pub bytes: u64,
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("cannot write {text:?} to {}: {e}", path.display()))
}

fn hex_mask(cpus: &BTreeSet<u32>) -> String {
    // Comma-separated 32-bit words, most significant first (the cpumask format).
    let max = cpus.iter().max().copied().unwrap_or(0);
    let words = (max / 32 + 1) as usize;
    let mut w = vec![0u32; words];
    for c in cpus {
        w[(c / 32) as usize] |= 1 << (c % 32);
    }
    w.iter()
        .rev()
        .map(|x| format!("{x:08x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `field` in `values`, as a kernel event filter: runs of consecutive values as one range.
fn in_filter(field: &str, values: &BTreeSet<u32>) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &v in values {
        match runs.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(v) => *hi = v,
            _ => runs.push((v, v)),
        }
    }
    runs.iter()
        .map(|&(lo, hi)| match hi - lo {
            0 => format!("{field} == {lo}"),
            1 => format!("{field} == {lo} || {field} == {hi}"),
            _ => format!("({field} >= {lo} && {field} <= {hi})"),
        })
        .collect::<Vec<_>>()
        .join(" || ")
}

impl Instance {
    /// Makes the instances: `tids` are the traced threads (their `sched_waking` and
    /// `sched_migrate_task` events are kept wherever they happen), `cpus` the CPUs whose
    /// switches and interrupts are kept (`timers`: the local timer's too), `online` the CPUs
    /// whose buffers are read.
    pub fn create(
        root: &Path,
        tids: &BTreeSet<u32>,
        cpus: &BTreeSet<u32>,
        online: &BTreeSet<u32>,
        buffer_kb: u32,
        timers: bool,
    ) -> Result<Self, String> {
        let base = root
            .join("instances")
            .join(format!("{PREFIX}{}", std::process::id()));
        let mut me = Self {
            dirs: Vec::new(),
            readers: Vec::new(),
            decoder: Decoder::default(),
            page: vec![0; 4096],
            bytes: 0,
        };
        // Each directory is ours once made: a failure below removes it (Drop).
        let on_cpus: Vec<_> = CPU_EVENTS
            .iter()
            .chain(if timers { &TIMER_EVENTS[..] } else { &[] })
            .map(|&(sys, ev)| (sys, ev, None))
            .collect();
        me.make(&base, cpus, buffer_kb, &on_cpus)?;
        let filter = in_filter("pid", tids);
        let of_threads: Vec<_> = THREAD_EVENTS
            .iter()
            .map(|&(sys, ev)| (sys, ev, Some(filter.as_str())))
            .collect();
        let mut wake = base.into_os_string();
        wake.push(WAKE_SUFFIX);
        me.make(Path::new(&wake), online, buffer_kb, &of_threads)?;
        for d in &me.dirs {
            write(&d.join("tracing_on"), "1")?;
        }
        Ok(me)
    }

    /// Makes one instance recording `events` (with their filters) on `cpus`, tracing off.
    fn make(
        &mut self,
        dir: &Path,
        cpus: &BTreeSet<u32>,
        buffer_kb: u32,
        events: &[(&str, &str, Option<&str>)],
    ) -> Result<(), String> {
        fs::create_dir(dir)
            .map_err(|e| format!("cannot create the tracefs instance {}: {e}", dir.display()))?;
        self.dirs.push(dir.to_owned());
        write(&dir.join("tracing_on"), "0")?;
        write(&dir.join("buffer_size_kb"), &buffer_kb.to_string())?;
        write(&dir.join("tracing_cpumask"), &hex_mask(cpus))?;
        if self.dirs.len() == 1 {
            let header = fs::read_to_string(dir.join("events/header_page")).unwrap_or_default();
            self.decoder = Decoder::new(ring::parse_header_page(&header));
            if let Ok(size) = fs::read_to_string(dir.join("buffer_subbuf_size_kb"))
                && let Ok(kb) = size.trim().parse::<usize>()
            {
                self.page = vec![0; kb.max(4) * 1024];
            }
        }
        for &(sys, ev, filter) in events {
            let ed = dir.join("events").join(sys).join(ev);
            if !ed.is_dir() {
                if sys == "irq_vectors" {
                    continue; // x86 only
                }
                return Err(format!(
                    "the kernel has no trace event {sys}:{ev} (needed by top)"
                ));
            }
            let format = fs::read_to_string(ed.join("format"))
                .map_err(|e| format!("cannot read {}: {e}", ed.join("format").display()))?;
            let f = ring::parse_format(&format).map_err(|e| e.to_string())?;
            self.decoder.add(&f).map_err(|e| e.to_string())?;
            if let Some(filter) = filter {
                write(&ed.join("filter"), filter)?;
            }
            write(&ed.join("enable"), "1")?;
        }
        for cpu in cpus {
            let p = dir.join(format!("per_cpu/cpu{cpu}/trace_pipe_raw"));
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&p)
                .map_err(|e| format!("cannot open {}: {e}", p.display()))?;
            self.readers.push((*cpu, f));
        }
        Ok(())
    }

    /// The instances' directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Reads every page the buffers hold now and decodes them.
    pub fn drain(&mut self) -> Result<Vec<Event>, String> {
        let mut out = Vec::new();
        for (cpu, f) in &mut self.readers {
            loop {
                match f.read(&mut self.page) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.bytes += n as u64;
                        self.decoder.page(*cpu, &self.page[..n], &mut out);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("reading CPU {cpu}'s trace buffer: {e}")),
                }
            }
        }
        Ok(out)
    }

    /// Stops recording in every instance, the CPU-local one first (as it started).
    pub fn stop(&mut self) {
        for d in &self.dirs {
            let _ = fs::write(d.join("tracing_on"), "0");
        }
    }

    /// Pages that said events were lost (the buffer overflowed between reads).
    pub fn missed_pages(&self) -> u64 {
        self.decoder.missed_pages
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = fs::write(d.join("tracing_on"), "0");
        }
        self.readers.clear();
        // The events stay enabled in a removed instance's files, which go with it.
        for d in &self.dirs {
            let _ = fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_filters() {
        assert_eq!(hex_mask(&[0, 2, 3].into()), "0000000d");
        assert_eq!(hex_mask(&[33].into()), "00000002,00000000");
        assert_eq!(in_filter("pid", &[7].into()), "pid == 7");
        assert_eq!(in_filter("pid", &[2, 3].into()), "pid == 2 || pid == 3");
        assert_eq!(
            in_filter("pid", &[100, 101, 102, 103, 200, 202, 203].into()),
            "(pid >= 100 && pid <= 103) || pid == 200 || pid == 202 || pid == 203"
        );
        assert_eq!(
            in_filter("pid", &[u32::MAX - 1, u32::MAX].into()),
            format!("pid == {} || pid == {}", u32::MAX - 1, u32::MAX)
        );
    }
}
