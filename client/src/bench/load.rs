//! `--load`: pressure on the housekeeping CPUs while measuring — a CPU spinner per CPU, a
//! memory writer (64 MiB rewritten over and over) and a disk writer (write + fsync a file in a
//! loop), all pinned to the housekeeping CPUs.
//!
//! The disk writer's file is unnamed (`O_TMPFILE` in /var/tmp): the bench may run as root, and
//! a name in a world-writable directory could be a symlink someone placed there. Where the
//! file system has no `O_TMPFILE`, a fresh name is created with `O_EXCL|O_NOFOLLOW` (never an
//! existing file, never through a symlink) and unlinked at once.
//!
//! When the bench may run on the housekeeping CPUs, the load is threads of its own process.
//! When it is confined to the measured CPUs (run inside their isolation, `kvmisolate run --cpus
//! 2-3 -- kvmisolate bench --load`), threads of it could not leave them: the load then runs
//! as a child process (`kvmisolate bench-load`) moved into the cgroup of the bench's parent
//! (the shell that started it, on the housekeeping CPUs) before it starts.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use super::measure::{GO, Phase, STOP, pin_to};

/// The running load threads.
pub struct Load {
    threads: Vec<JoinHandle<()>>,
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

/// Where the disk writer's file goes: /var/tmp (on disk, unlike a tmpfs /tmp).
fn scratch_dir() -> PathBuf {
    ["/var/tmp", "/tmp"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// An unnamed file in `dir` for the disk writer, readable by nobody else.
pub fn scratch_file(dir: &Path) -> std::io::Result<std::fs::File> {
    let unnamed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        // O_EXCL: the file can never be given a name (linkat) later either.
        .custom_flags(libc::O_TMPFILE | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(dir);
    match unnamed {
        Ok(f) => Ok(f),
        // No O_TMPFILE on this file system (or kernel).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = dir.join(format!(
                "kvmisolate-bench-load-{}-{nanos:08x}",
                std::process::id()
            ));
            let f = create_new_here(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
        Err(e) => Err(e),
    }
}

/// Creates `path` as a new file: fails if anything (a file, a symlink) is there already.
fn create_new_here(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(path)
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
        .args(["bench-load", "--cpus", &list.join(","), "--dir"])
        .arg(scratch_dir())
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
/// stops (the disk writer's file, unnamed in `dir`, goes with it).
pub fn serve(cpus: &[u32], dir: &Path) -> std::io::Result<()> {
    use std::io::BufRead as _;
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    if line.trim() != "go" {
        return Ok(());
    }
    let phase: Phase = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(GO));
    let load = start_at(cpus, &phase, dir.to_owned())?;
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
    start_at(cpus, phase, scratch_dir())
}

fn start_at(cpus: &[u32], phase: &Phase, dir: PathBuf) -> std::io::Result<Load> {
    // First: a refusal is the caller's error, before any thread runs.
    let mut f = scratch_file(&dir)?;
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
    threads.push(
        std::thread::Builder::new()
            .name("load-disk".into())
            .spawn(move || {
                let _ = pin_to(&hk);
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
    Ok(Load { threads })
}

impl Load {
    /// Waits for the threads (after `phase` became [`STOP`]); the unnamed file goes with
    /// the disk writer's descriptor.
    pub fn finish(self, phase: &Phase) {
        phase.store(STOP, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_scratch_file_has_no_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = scratch_file(dir.path()).unwrap();
        f.write_all(b"data").unwrap();
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[test]
    fn a_planted_name_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let planted = dir.path().join("planted");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let e = create_new_here(&planted).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        std::fs::write(dir.path().join("file"), "x").unwrap();
        assert!(create_new_here(&dir.path().join("file")).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }
}
