//! `Step::MoveProcs`: processes moved into the partition; on undo, those still in it go
//! back to their original cgroup (or its nearest existing ancestor).

use std::collections::BTreeMap;

use super::{StepFailure, failed};
use crate::engine::Error;
use crate::engine::apply::Engine;
use crate::engine::model::Step;
use crate::host::cgroupfs::{CgroupPath, cgroup_of_pid, pid_alive};

/// Each process's cgroup right now (`TargetNotFound` if one has exited).
pub(super) fn prepare(
    engine: &Engine,
    to: &CgroupPath,
    from: &BTreeMap<u32, CgroupPath>,
) -> Result<Step, StepFailure> {
    let mut now = BTreeMap::new();
    for &pid in from.keys() {
        match cgroup_of_pid(&engine.proc_root, pid) {
            Ok(c) => {
                now.insert(pid, c);
            }
            Err(e) if e.is_not_found() => {
                return Err(StepFailure::untouched(Error::TargetNotFound(format!(
                    "process {pid} has exited"
                ))));
            }
            Err(e) => return Err(StepFailure::untouched(failed(e))),
        }
    }
    Ok(Step::MoveProcs {
        to: to.clone(),
        from: now,
    })
}

pub(super) fn perform(
    engine: &Engine,
    to: &CgroupPath,
    from: &BTreeMap<u32, CgroupPath>,
) -> Result<(), StepFailure> {
    for &pid in from.keys() {
        engine
            .fs
            .write(to, "cgroup.procs", &pid.to_string())
            .map_err(|e| {
                StepFailure::touched(if e.is_not_found() {
                    Error::TargetNotFound(format!("process {pid} has exited"))
                } else {
                    failed(e)
                })
            })?;
        let now =
            cgroup_of_pid(&engine.proc_root, pid).map_err(|e| StepFailure::touched(failed(e)))?;
        if now != *to {
            return Err(StepFailure::touched(Error::Failed(format!(
                "moved process {pid} into {to} but it is in {now}"
            ))));
        }
    }
    Ok(())
}

pub(super) fn undo(
    engine: &Engine,
    to: &CgroupPath,
    from: &BTreeMap<u32, CgroupPath>,
) -> Result<(), String> {
    let mut errors = Vec::new();
    for (&pid, orig) in from {
        if !pid_alive(&engine.proc_root, pid) {
            continue;
        }
        // Only a process still in our cgroup is ours (the pid may have been reused).
        match cgroup_of_pid(&engine.proc_root, pid) {
            Ok(now) if now == *to => {}
            _ => continue,
        }
        // The original cgroup may be gone: use its nearest existing ancestor.
        let mut dest = orig.clone();
        while !dest.is_root() && !engine.fs.exists(&dest) {
            dest = dest.parent().unwrap_or_default();
        }
        match engine.fs.write(&dest, "cgroup.procs", &pid.to_string()) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use crate::host::cgroupfs::{CgroupPath, EmulatedKernel, cgroup_of_pid};
    use crate::testutil::*;

    #[test]
    fn moved_processes_that_left_are_not_moved_back() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let rec = t.isolate(&t.pids_request("x", "4", &[100, 101])).unwrap();
        // 100 moved elsewhere by someone else, 101 exited.
        t.fs()
            .write(&cg("system.slice/dbus.service"), "cgroup.procs", "100")
            .unwrap();
        t.fs()
            .write(&CgroupPath::root(), "cgroup.procs", "101")
            .unwrap();
        std::fs::remove_dir_all(t.proc_root.join("101")).unwrap();
        t.engine.release(&rec).unwrap();
        assert_eq!(
            cgroup_of_pid(&t.proc_root, 100).unwrap(),
            cg("system.slice/dbus.service")
        );
        assert!(!t.fs().exists(&cg("kvmisolate")));
    }
}
