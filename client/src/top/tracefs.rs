//! `top`'s own tracefs instance (`instances/kvmisolate-top-PID`): made with only the events
//! and CPUs it needs, read through the per-CPU raw buffers, removed on drop. The top-level
//! buffer and its settings are never written. Instances left by a run that died (its pid
//! gone) are removed before a new one is made.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::ring::{self, Decoder, EVENTS, Event};

/// The prefix of our instances' names.
pub const PREFIX: &str = "kvmisolate-top-";

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
            .and_then(|p| p.parse::<u32>().ok())
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

/// An instance of ours; removed when dropped.
pub struct Instance {
    dir: PathBuf,
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

fn or_filter(field: &str, values: &BTreeSet<u32>) -> String {
    values
        .iter()
        .map(|v| format!("{field} == {v}"))
        .collect::<Vec<_>>()
        .join(" || ")
}

impl Instance {
    /// Makes the instance: `tids` are the traced threads (their `sched_waking` and
    /// `sched_migrate_task` events are kept wherever they happen: a vCPU's waker runs on
    /// other CPUs), `cpus` the CPUs whose switches and interrupts are kept, `online` the
    /// CPUs whose buffers are read.
    pub fn create(
        root: &Path,
        tids: &BTreeSet<u32>,
        cpus: &BTreeSet<u32>,
        online: &BTreeSet<u32>,
        buffer_kb: u32,
    ) -> Result<Self, String> {
        let dir = root
            .join("instances")
            .join(format!("{PREFIX}{}", std::process::id()));
        fs::create_dir(&dir)
            .map_err(|e| format!("cannot create the tracefs instance {}: {e}", dir.display()))?;
        // From here the instance exists: a failure below removes it (Drop).
        let mut me = Self {
            dir,
            readers: Vec::new(),
            decoder: Decoder::default(),
            page: vec![0; 4096],
            bytes: 0,
        };
        me.setup(tids, cpus, online, buffer_kb)?;
        Ok(me)
    }

    fn setup(
        &mut self,
        tids: &BTreeSet<u32>,
        cpus: &BTreeSet<u32>,
        online: &BTreeSet<u32>,
        buffer_kb: u32,
    ) -> Result<(), String> {
        let d = self.dir.clone();
        write(&d.join("tracing_on"), "0")?;
        write(&d.join("buffer_size_kb"), &buffer_kb.to_string())?;
        write(&d.join("tracing_cpumask"), &hex_mask(online))?;
        let header = fs::read_to_string(d.join("events/header_page")).unwrap_or_default();
        self.decoder = Decoder::new(ring::parse_header_page(&header));
        if let Ok(size) = fs::read_to_string(d.join("buffer_subbuf_size_kb"))
            && let Ok(kb) = size.trim().parse::<usize>()
        {
            self.page = vec![0; kb.max(4) * 1024];
        }
        let by_tid = |f: &str| or_filter(f, tids);
        let on_cpus = or_filter("CPU", cpus);
        for (sys, ev) in EVENTS {
            let ed = d.join("events").join(sys).join(ev);
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
            let filter = match ev {
                "sched_waking" | "sched_migrate_task" => by_tid("pid"),
                _ => on_cpus.clone(),
            };
            write(&ed.join("filter"), &filter)?;
            write(&ed.join("enable"), "1")?;
        }
        for cpu in online {
            let p = d.join(format!("per_cpu/cpu{cpu}/trace_pipe_raw"));
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&p)
                .map_err(|e| format!("cannot open {}: {e}", p.display()))?;
            self.readers.push((*cpu, f));
        }
        write(&d.join("tracing_on"), "1")
    }

    /// The instance's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Pages that said events were lost (the buffer overflowed between reads).
    pub fn missed_pages(&self) -> u64 {
        self.decoder.missed_pages
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("tracing_on"), "0");
        self.readers.clear();
        // The events stay enabled in a removed instance's files, which go with it.
        let _ = fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_filters() {
        assert_eq!(hex_mask(&[0, 2, 3].into()), "0000000d");
        assert_eq!(hex_mask(&[33].into()), "00000002,00000000");
        assert_eq!(or_filter("CPU", &[2, 3].into()), "CPU == 2 || CPU == 3");
    }
}
