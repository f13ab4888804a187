//! The kernel threads kvmisolated narrowed, with what each was allowed on before, so that it
//! can put every one back exactly.
//!
//! Up to 6.x cpuset re-affined the kernel threads of the top cpuset itself, both ways: off a
//! partition when it formed, back when it went. From Linux 7.0 cpuset leaves `PF_KTHREAD` tasks
//! alone and only the housekeeping mask (boot `isolcpus=` plus *isolated* partitions) moves
//! unbound kthreads: with a `root` partition nothing moves them off, and nothing widens back
//! what a tool narrowed. So whatever kvmisolated narrows is recorded here first (journal
//! first: the file is written before `sched_setaffinity`), and restored from here when no
//! isolation needs it narrowed any more, also after a crash of the daemon.
//!
//! A thread is known by its tid and its start time (`/proc/TID/stat` field 22), so a tid
//! reused by a later thread is never "restored". The file is a few text lines,
//! `TID START ORIGINAL SET` (CPU lists), rewritten atomically; it is removed when empty.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kvmisolate_dbus::CpuSet;

/// One narrowed kernel thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Narrowed {
    /// Its start time (clock ticks after boot), telling it from a later thread with its tid.
    pub start: u64,
    /// What it was allowed on before kvmisolated narrowed it.
    pub original: CpuSet,
    /// What kvmisolated set last.
    pub set: CpuSet,
}

/// The narrowed kernel threads, by tid, kept in a file.
#[derive(Debug, Default)]
pub struct Ledger {
    path: Option<PathBuf>,
    entries: BTreeMap<u32, Narrowed>,
}

impl Ledger {
    /// The ledger kept in `path` (`None`: in memory only), with what a previous run left there.
    /// Lines that cannot be read are dropped with a warning.
    pub fn load(path: Option<PathBuf>) -> Self {
        let mut entries = BTreeMap::new();
        if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match parse_line(line) {
                    Some((tid, n)) => {
                        entries.insert(tid, n);
                    }
                    None => tracing::warn!(line, "unreadable line in the kthread ledger, dropped"),
                }
            }
        }
        Self { path, entries }
    }

    /// The entry of `tid`, if it is the thread that started at `start`.
    pub fn get(&self, tid: u32, start: u64) -> Option<&Narrowed> {
        self.entries.get(&tid).filter(|n| n.start == start)
    }

    /// Records (or replaces) `tid`'s entry. Not saved until [`Ledger::save`].
    pub fn insert(&mut self, tid: u32, n: Narrowed) {
        self.entries.insert(tid, n);
    }

    /// Forgets `tid`. Not saved until [`Ledger::save`].
    pub fn remove(&mut self, tid: u32) -> Option<Narrowed> {
        self.entries.remove(&tid)
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = (u32, &Narrowed)> {
        self.entries.iter().map(|(t, n)| (*t, n))
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the file atomically (temp file, fsync, rename); removes it when empty.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.entries.is_empty() {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = tmp_path(path);
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }

    fn render(&self) -> String {
        self.entries
            .iter()
            .map(|(tid, n)| format!("{tid} {} {} {}\n", n.start, n.original, n.set))
            .collect()
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn parse_line(line: &str) -> Option<(u32, Narrowed)> {
    let mut w = line.split_whitespace();
    let tid = w.next()?.parse().ok()?;
    let start = w.next()?.parse().ok()?;
    let original = CpuSet::parse(w.next()?).ok()?;
    let set = CpuSet::parse(w.next()?).ok()?;
    if w.next().is_some() || original.is_empty() || set.is_empty() {
        return None;
    }
    Some((
        tid,
        Narrowed {
            start,
            original,
            set,
        },
    ))
}

/// A thread's start time from its `/proc/TID/stat` text (field 22, counted after the
/// parenthesised `comm`, which may itself hold spaces and parentheses).
pub fn start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> CpuSet {
        CpuSet::parse(t).unwrap()
    }

    #[test]
    fn survives_a_restart_and_disappears_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kthreads-narrowed");
        let mut l = Ledger::load(Some(path.clone()));
        assert!(l.is_empty());
        l.insert(
            17,
            Narrowed {
                start: 5,
                original: s("0-5"),
                set: s("0-1,4-5"),
            },
        );
        l.save().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "17 5 0-5 0-1,4-5\n"
        );
        let mut again = Ledger::load(Some(path.clone()));
        assert_eq!(again.get(17, 5).unwrap().original, s("0-5"));
        assert!(again.get(17, 6).is_none(), "a reused tid is another thread");
        again.remove(17);
        again.save().unwrap();
        assert!(!path.exists());
        again.save().unwrap();
    }

    #[test]
    fn drops_unreadable_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(
            &path,
            "1 2 0-3 0-1\nbad line\n3 4 0-3\n5 6 0-3 0 extra\n7 8  0\n",
        )
        .unwrap();
        let l = Ledger::load(Some(path));
        assert_eq!(l.entries().map(|(t, _)| t).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn start_time_is_field_22() {
        let stat = "77 (rcu (x) y) S 2 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0";
        assert_eq!(start_time(stat), Some(4242));
        assert_eq!(start_time("garbage"), None);
    }
}
