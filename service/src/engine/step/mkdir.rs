//! `Step::Mkdir`: a cgroup created (or found); removed on undo unless it existed before or
//! another isolation still holds it.

use super::{StepFailure, failed};
use crate::engine::apply::Engine;
use crate::engine::model::Step;
use crate::host::cgroupfs::CgroupPath;

/// Whether the cgroup exists now (or, shared, whether it existed before the first holder).
pub(super) fn prepare(engine: &Engine, path: &CgroupPath, inherited: Option<&Step>) -> Step {
    Step::Mkdir {
        path: path.clone(),
        existed: match inherited {
            Some(Step::Mkdir { existed, .. }) => *existed,
            _ => engine.fs.exists(path),
        },
    }
}

pub(super) fn perform(engine: &Engine, path: &CgroupPath) -> Result<(), StepFailure> {
    if !engine.fs.exists(path) {
        engine
            .fs
            .mkdir(path)
            .map_err(|e| StepFailure::untouched(failed(e)))?;
    }
    Ok(())
}

/// `keep`: the cgroup existed before, or another isolation holds it.
pub(super) fn undo(engine: &Engine, path: &CgroupPath, keep: bool) -> Result<(), String> {
    if keep {
        return Ok(());
    }
    match engine.fs.rmdir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
