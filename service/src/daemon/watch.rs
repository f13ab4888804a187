//! Change notification without polling: inotify on cgroupfs files.
//!
//! The kernel raises an inotify modify event on `cpuset.cpus.partition` whenever a partition's
//! state changes (its own write, someone else's, CPU hotplug) and on `cgroup.events` when a
//! cgroup's `populated` flag flips (the target's last process exited). The watcher only says
//! *which isolation* to look at again; the isolator re-reads the files and decides.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::sync::mpsc;

/// Watches files on behalf of isolations and reports the isolation's name when one changes.
#[derive(Clone)]
pub struct Watcher {
    inner: Arc<Inner>,
}

struct Inner {
    inotify: Inotify,
    watches: Mutex<HashMap<WatchDescriptor, String>>,
}

impl Watcher {
    /// Creates the watcher and the thread that reads events (a blocking read: no wake-ups
    /// while nothing changes); changed isolations' names arrive on the returned channel.
    pub fn start() -> std::io::Result<(Self, mpsc::UnboundedReceiver<String>)> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
        let inner = Arc::new(Inner {
            inotify,
            watches: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = inner.clone();
        std::thread::Builder::new()
            .name("inotify".into())
            .spawn(move || read_loop(&reader, &tx))?;
        Ok((Self { inner }, rx))
    }

    /// Watches `path` for isolation `name`. A file that vanished (the cgroup is gone) is not an
    /// error: the caller learns of it when it re-reads.
    pub fn watch(&self, name: &str, path: &Path) -> std::io::Result<()> {
        let flags =
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_ATTRIB;
        match self.inner.inotify.add_watch(path, flags) {
            Ok(wd) => {
                if let Ok(mut w) = self.inner.watches.lock() {
                    w.insert(wd, name.to_owned());
                }
                Ok(())
            }
            Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stops watching everything for isolation `name`.
    pub fn unwatch(&self, name: &str) {
        let Ok(mut watches) = self.inner.watches.lock() else {
            return;
        };
        let mine: Vec<WatchDescriptor> = watches
            .iter()
            .filter(|(_, n)| n.as_str() == name)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in mine {
            watches.remove(&wd);
            // The watch may already be gone with its file (IN_IGNORED); nothing to undo then.
            let _ = self.inner.inotify.rm_watch(wd);
        }
    }
}

fn read_loop(inner: &Inner, tx: &mpsc::UnboundedSender<String>) {
    loop {
        let events = match inner.inotify.read_events() {
            Ok(events) => events,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "reading inotify events failed; change notification stops");
                return;
            }
        };
        let names: Vec<String> = match inner.watches.lock() {
            Ok(watches) => events
                .iter()
                .filter_map(|e| watches.get(&e.wd).cloned())
                .collect(),
            Err(_) => return,
        };
        let mut seen = std::collections::HashSet::new();
        for name in names {
            if seen.insert(name.clone()) && tx.send(name).is_err() {
                return;
            }
        }
    }
}
