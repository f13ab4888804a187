//! `--load`: pressure on the housekeeping CPUs while measuring — a CPU spinner per CPU, a
//! memory writer (64 MiB rewritten over and over) and a disk writer (write + fsync a temp file
//! in a loop), all pinned to the housekeeping CPUs.

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

fn running(phase: &Phase) -> bool {
    phase.load(Ordering::Relaxed) <= GO
}

/// Starts the load on `cpus` (the housekeeping CPUs). The threads stop when `phase` is
/// [`STOP`].
pub fn start(cpus: &[u32], phase: &Phase) -> std::io::Result<Load> {
    let dir = ["/var/tmp", "/tmp"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let file = dir.join(format!("kvmisolate-bench-load-{}", std::process::id()));
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
