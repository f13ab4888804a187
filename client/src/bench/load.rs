//! `--load`: pressure on the housekeeping CPUs while measuring — a CPU spinner per CPU, a
//! memory writer (64 MiB rewritten over and over) and a disk writer (write + fsync a temp file
//! in a loop), all pinned to the housekeeping CPUs.
//!
//! When the bench may run on the housekeeping CPUs, the load is threads of its own process.
//! When it is confined to the measured CPUs (run inside their isolation, `kvmisolate run --cpus
//! 2-3 -- kvmisolate bench --load`), threads of it could not leave them: the load then runs
//! as a child process (`kvmisolate bench-load`) moved into the cgroup of the bench's parent
//! (the shell that started it, on the housekeeping CPUs) before it starts.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use super::measure::{GO, Phase, STOP, pin_to};

/// The running load threads and the file the disk writer uses.
pub struct Load {
    threads: Vec<JoinHandle<()>>,
    file: PathBuf,
}

/// The load, in this process or in a child.
pub enum Running {
    /// Threads of this process.
    Here(Load),
    /// A `kvmisolate bench-load` child; its stdin closing stops it.
    Child(std::process::Child),
}

impl Running {
    /// Stops the load and waits for it (the child is killed if it does not stop in 10 s).
    pub fn finish(self, phase: &Phase) {
        match self {
            Self::Here(l) => l.finish(phase),
            Self::Child(mut c) => {
                drop(c.stdin.take());
                let start = std::time::Instant::now();
                while matches!(c.try_wait(), Ok(None)) {
                    if start.elapsed() > std::time::Duration::from_secs(10) {
                        let _ = c.kill();
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let _ = c.wait();
            }
        }
    }
}

fn temp_file() -> PathBuf {
    let dir = ["/var/tmp", "/tmp"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("kvmisolate-bench-load-{}", std::process::id()))
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<u32> {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count() as u32)
                .filter(|&c| set.is_set(c as usize).unwrap_or(false))
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup (relative to the cgroup2 mount) of process `pid`.
fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().trim_start_matches('/').to_owned())
}

/// Starts the load on `cpus` (the housekeeping CPUs): threads here when this process may run
/// there, else a child process moved into the cgroup of this process's parent (under
/// `cgroup_root`). The load stops with [`Running::finish`].
pub fn start_anywhere(
    cpus: &[u32],
    phase: &Phase,
    cgroup_root: &std::path::Path,
) -> std::io::Result<Running> {
    let allowed = allowed_cpus();
    if cpus.iter().all(|c| allowed.contains(c)) {
        return start(cpus, phase).map(Running::Here);
    }
    let fail = |m: String| std::io::Error::other(m);
    let list: Vec<String> = cpus.iter().map(u32::to_string).collect();
    let ppid = nix::unistd::getppid().as_raw() as u32;
    let (ours, theirs) = (cgroup_of(std::process::id()), cgroup_of(ppid));
    let Some(target) = theirs.filter(|t| Some(t) != ours.as_ref()) else {
        return Err(fail(format!(
            "this process may not run on the housekeeping CPUs {} and its parent is in the same cgroup: nowhere to put the load",
            list.join(",")
        )));
    };
    let exe = std::env::current_exe().map_err(|e| fail(format!("cannot find kvmisolate: {e}")))?;
    let mut child = std::process::Command::new(exe)
        .args(["bench-load", "--cpus", &list.join(","), "--file"])
        .arg(temp_file())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot start the load process: {e}")))?;
    let procs = cgroup_root.join(&target).join("cgroup.procs");
    let moved = std::fs::write(&procs, child.id().to_string());
    let go = moved.as_ref().map_err(|e| e.to_string()).and_then(|()| {
        child
            .stdin
            .as_mut()
            .ok_or_else(|| "no pipe to it".to_owned())
            .and_then(|i| i.write_all(b"go\n").map_err(|e| e.to_string()))
    });
    if let Err(e) = go {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail(format!(
            "cannot move the load process into {} (the housekeeping CPUs' cgroup of the bench's parent): {e}",
            procs.display()
        )));
    }
    Ok(Running::Child(child))
}

/// `kvmisolate bench-load`: waits for "go" on stdin, loads `cpus` until stdin closes, then
/// stops and removes `file`.
pub fn serve(cpus: &[u32], file: &std::path::Path) -> std::io::Result<()> {
    use std::io::BufRead as _;
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    if line.trim() != "go" {
        return Ok(());
    }
    let phase: Phase = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(GO));
    let load = start_at(cpus, &phase, file.to_owned())?;
    // Until EOF (the bench finished, or died).
    while stdin.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {}
    load.finish(&phase);
    Ok(())
}

fn running(phase: &Phase) -> bool {
    phase.load(Ordering::Relaxed) <= GO
}

/// Starts the load on `cpus` (the housekeeping CPUs) as threads of this process. The threads
/// stop when `phase` is [`STOP`].
pub fn start(cpus: &[u32], phase: &Phase) -> std::io::Result<Load> {
    start_at(cpus, phase, temp_file())
}

fn start_at(cpus: &[u32], phase: &Phase, file: PathBuf) -> std::io::Result<Load> {
    let mut threads = Vec::new();
    for &c in cpus {
        let p = phase.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("load-cpu{c}"))
                .spawn(move || {
                    let _ = pin_to(&[c]);
                    let mut x: u64 = 1;
                    while running(&p) {
                        for _ in 0..100_000 {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        }
                        std::hint::black_box(x);
                    }
                })?,
        );
    }
    let hk: Vec<u32> = cpus.to_vec();
    let p = phase.clone();
    let hk2 = hk.clone();
    threads.push(
        std::thread::Builder::new()
            .name("load-memory".into())
            .spawn(move || {
                let _ = pin_to(&hk2);
                let mut buf = vec![0u8; 64 << 20];
                let mut v: u8 = 0;
                while running(&p) {
                    v = v.wrapping_add(1);
                    for chunk in buf.chunks_mut(4096) {
                        chunk[0] = v;
                    }
                    buf.copy_within(0..(32 << 20), 32 << 20);
                    std::hint::black_box(&buf);
                }
            })?,
    );
    let p = phase.clone();
    let path = file.clone();
    threads.push(
        std::thread::Builder::new()
            .name("load-disk".into())
            .spawn(move || {
                let _ = pin_to(&hk);
                let Ok(mut f) = std::fs::File::create(&path) else {
                    return;
                };
                let block = vec![0x5au8; 1 << 20];
                let mut written = 0usize;
                while running(&p) {
                    if f.write_all(&block).and_then(|()| f.sync_data()).is_err() {
                        return;
                    }
                    written += block.len();
                    if written >= 128 << 20 {
                        let _ = f.set_len(0);
                        let _ = std::io::Seek::rewind(&mut f);
                        written = 0;
                    }
                }
            })?,
    );
    Ok(Load { threads, file })
}

impl Load {
    /// Waits for the threads (after `phase` became [`STOP`]) and removes the temp file.
    pub fn finish(self, phase: &Phase) {
        phase.store(STOP, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}
