//! A polkit text agent for the duration of a call, as systemctl does it.
//!
//! When stdin is a terminal and interactive authorization is allowed, `pkttyagent` is started
//! for our own process with `--fallback` (an agent of the desktop session wins), and we wait
//! until it closes its notify fd, which it does once it is registered with polkitd.

use std::io::IsTerminal as _;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long to wait for the agent to register before going on without it.
const READY_TIMEOUT_MS: u16 = 10_000;

/// A running `pkttyagent`, stopped on drop.
#[derive(Debug)]
pub struct TtyAgent {
    child: Child,
}

fn find_pkttyagent() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join("pkttyagent"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl TtyAgent {
    /// Starts `pkttyagent` if `allowed`, stdin is a terminal and it is installed; returns
    /// `None` otherwise or if it cannot be started (the call then goes on without an agent).
    pub fn start_if_useful(allowed: bool) -> Option<Self> {
        // root is always authorized by polkit, and needs no agent (systemctl does the same).
        if !allowed || nix::unistd::geteuid().is_root() || !std::io::stdin().is_terminal() {
            return None;
        }
        let program = find_pkttyagent()?;
        Self::start(&program).ok()
    }

    fn start(program: &Path) -> std::io::Result<Self> {
        // Both ends close-on-exec, then the write end made inheritable: the agent gets only
        // the write end, and closes it when it has registered.
        let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        fcntl(&write_end, FcntlArg::F_SETFD(FdFlag::empty()))?;
        let child = Command::new(program)
            .arg("--notify-fd")
            .arg(write_end.as_raw_fd().to_string())
            .arg("--fallback")
            .arg("--process")
            .arg(std::process::id().to_string())
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()?;
        drop(write_end);
        let agent = Self { child };
        // Wait for EOF (or anything) on the read end: registered, or the agent is gone.
        let mut fds = [PollFd::new(read_end.as_fd(), PollFlags::POLLIN)];
        while let Err(nix::errno::Errno::EINTR) =
            poll(&mut fds, PollTimeout::from(READY_TIMEOUT_MS))
        {}
        Ok(agent)
    }
}

impl Drop for TtyAgent {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_started_when_not_allowed() {
        assert!(TtyAgent::start_if_useful(false).is_none());
    }

    #[test]
    fn waits_for_the_notify_fd_and_stops_the_agent() {
        // A stand-in agent: closes the notify fd (given as the second argument), then waits.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-agent");
        std::fs::write(
            &script,
            "#!/bin/bash\necho ready > \"$0.log\"\neval \"exec $2>&-\"\nexec sleep 30\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = std::time::Instant::now();
        let agent = TtyAgent::start(&script).unwrap();
        assert!(started.elapsed().as_secs() < 5);
        assert!(dir.path().join("fake-agent.log").exists());
        drop(agent);
        assert!(started.elapsed().as_secs() < 10);
    }
}
