//! Who owns what a request acts on: the processes of a `pids` target (held through pidfds from
//! the check to the move), the processes of a unit's cgroup. Only what authorization needs, and
//! only cheap reads: `/proc/PID/status` of the named processes, `cgroup.procs` of a unit's
//! cgroup (at most [`MAX_UNIT_PROCESSES`]).
//!
//! A process belongs to uid U when its real, effective and saved uids are all U: a set-uid
//! program started by U is not U's.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::engine::Error;

use crate::host::cgroupfs::{CgroupFs, CgroupPath};

/// How many processes of a unit are looked at before it counts as not the caller's.
pub const MAX_UNIT_PROCESSES: usize = 4096;

/// The owner of a process: its uid when real, effective and saved uids agree, else `None`
/// (a set-uid program in flight belongs to nobody in particular, so to nobody's request).
pub fn owner_from_status(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let ids: Vec<u32> = line
        .split_whitespace()
        .take(3)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match ids[..] {
        [r, e, s] if r == e && e == s => Some(r),
        _ => None,
    }
}

/// The owner of process `pid` under `proc_root` (`Ok(None)`: its uids differ).
pub fn process_owner(proc_root: &Path, pid: u32) -> Result<Option<u32>, Error> {
    let path = proc_root.join(pid.to_string()).join("status");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(owner_from_status(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::TargetNotFound(format!(
            "process {pid} does not exist"
        ))),
        Err(e) => Err(Error::Failed(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// A process held by a pidfd: while it has not exited, its pid names it and nothing else.
#[derive(Debug)]
pub struct HeldProcess {
    /// The pid it had when it was opened.
    pub pid: u32,
    fd: OwnedFd,
}

impl HeldProcess {
    /// Opens a pidfd for `pid` (`TargetNotFound` if there is no such process).
    pub fn open(pid: u32) -> Result<Self, Error> {
        let raw_pid = nix::libc::pid_t::try_from(pid)
            .map_err(|_| Error::TargetNotFound(format!("process {pid} does not exist")))?;
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
        let raw = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, raw_pid, 0) };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(nix::libc::ESRCH) => {
                    Error::TargetNotFound(format!("process {pid} does not exist"))
                }
                _ => Error::Failed(format!("cannot open a pidfd for process {pid}: {e}")),
            });
        }
        let raw = i32::try_from(raw)
            .map_err(|_| Error::Failed("pidfd_open returned a bad descriptor".into()))?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { pid, fd })
    }

    /// Whether the process has exited (its pidfd polls readable). After that its pid may
    /// name another process.
    pub fn exited(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => false,
            Ok(_) => true,
            // Cannot tell: treat as gone, which fails safe.
            Err(_) => true,
        }
    }
}

/// The owners of the `pids` of a request, each process held by a pidfd when `hold` (a real
/// kernel; the emulated test mode has no such processes). Each owner was read while its
/// process was held and alive, so it is that process's and no later holder's of the pid.
pub fn pids_owners(
    proc_root: &Path,
    pids: &[u32],
    hold: bool,
) -> Result<(Vec<Option<u32>>, Vec<HeldProcess>), Error> {
    let mut owners = Vec::with_capacity(pids.len());
    let mut held = Vec::new();
    for &pid in pids {
        let process = hold.then(|| HeldProcess::open(pid)).transpose()?;
        let owner = process_owner(proc_root, pid)?;
        if let Some(p) = process {
            if p.exited() {
                return Err(Error::TargetNotFound(format!(
                    "process {pid} exited while it was being checked"
                )));
            }
            held.push(p);
        }
        owners.push(owner);
    }
    Ok((owners, held))
}

/// Whether a unit's cgroup lies in `user-UID.slice` (its sessions, its user manager and the
/// units that manager runs).
pub fn in_user_slice(cgroup: &CgroupPath, uid: u32) -> bool {
    let slice = format!("user-{uid}.slice");
    let mut parts = cgroup.as_str().split('/');
    parts.next() == Some("user.slice") && parts.next() == Some(slice.as_str())
}

/// The owners of every process in `cgroup` and below (`None` for a process whose uids
/// differ), or `Err` with a reason when there are more than [`MAX_UNIT_PROCESSES`].
pub fn cgroup_owners(
    fs: &CgroupFs,
    proc_root: &Path,
    cgroup: &CgroupPath,
) -> Result<BTreeSet<Option<u32>>, String> {
    let mut owners = BTreeSet::new();
    let mut seen = 0usize;
    let mut stack = vec![cgroup.clone()];
    while let Some(cg) = stack.pop() {
        let pids = fs.procs(&cg).map_err(|e| e.to_string())?;
        for pid in pids {
            seen += 1;
            if seen > MAX_UNIT_PROCESSES {
                return Err(format!(
                    "it has more than {MAX_UNIT_PROCESSES} processes, too many to check"
                ));
            }
            match process_owner(proc_root, pid) {
                Ok(o) => {
                    owners.insert(o);
                }
                // Exited meanwhile: no longer in it.
                Err(Error::TargetNotFound(_)) => {}
                Err(e) => return Err(format!("{e:?}")),
            }
        }
        stack.extend(fs.children(&cg).map_err(|e| e.to_string())?);
    }
    Ok(owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_need_all_three_uids() {
        let st = |uids: &str| format!("Name:\tx\nUid:\t{uids}\nGid:\t0\t0\t0\t0\n");
        assert_eq!(owner_from_status(&st("1000\t1000\t1000\t1000")), Some(1000));
        assert_eq!(owner_from_status(&st("0\t0\t0\t0")), Some(0));
        // A set-uid program started by 1000.
        assert_eq!(owner_from_status(&st("1000\t0\t0\t1000")), None);
        assert_eq!(owner_from_status(&st("1000\t1000\t0\t1000")), None);
        assert_eq!(owner_from_status("Name:\tx\n"), None);
        assert_eq!(owner_from_status("Uid:\tx\ty\tz\n"), None);
    }

    #[test]
    fn user_slices_by_component() {
        let cg = |s: &str| CgroupPath::new(s).unwrap();
        assert!(in_user_slice(
            &cg("user.slice/user-1000.slice/session-3.scope"),
            1000
        ));
        assert!(in_user_slice(
            &cg("user.slice/user-1000.slice/user@1000.service/app.slice/x.service"),
            1000
        ));
        assert!(!in_user_slice(
            &cg("user.slice/user-10000.slice/session-3.scope"),
            1000
        ));
        assert!(!in_user_slice(&cg("user.slice/user-1001.slice"), 1000));
        assert!(!in_user_slice(&cg("system.slice/user-1000.slice"), 1000));
        assert!(!in_user_slice(&cg("user.slice"), 1000));
    }

    #[test]
    fn a_held_process_is_ours_until_it_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let held = HeldProcess::open(child.id()).unwrap();
        assert!(!held.exited());
        let (owners, fds) = pids_owners(Path::new("/proc"), &[child.id()], true).unwrap();
        assert_eq!(owners, vec![Some(nix::unistd::getuid().as_raw())]);
        assert_eq!(fds.len(), 1);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(held.exited());
    }
}
