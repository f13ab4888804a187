//! `Step::EnableController`: a controller enabled in a cgroup's `cgroup.subtree_control`;
//! disabled again on undo unless it was there before or another isolation holds it.

use super::{StepFailure, failed, has_word, read_for_undo, read_original, write_checked};
use crate::engine::apply::Engine;
use crate::engine::model::{SUBTREE_CONTROL_FILE, Step};
use crate::host::cgroupfs::CgroupPath;

pub(super) fn prepare(
    engine: &Engine,
    path: &CgroupPath,
    controller: &str,
    inherited: Option<&Step>,
) -> Result<Step, StepFailure> {
    Ok(Step::EnableController {
        path: path.clone(),
        controller: controller.to_owned(),
        was_present: match inherited {
            Some(Step::EnableController { was_present, .. }) => *was_present,
            _ => has_word(
                &read_original(engine, path, SUBTREE_CONTROL_FILE)?,
                controller,
            ),
        },
    })
}

pub(super) fn perform(
    engine: &Engine,
    path: &CgroupPath,
    controller: &str,
) -> Result<(), StepFailure> {
    let current = engine
        .fs
        .read(path, SUBTREE_CONTROL_FILE)
        .map_err(|e| StepFailure::touched(failed(e)))?;
    if !has_word(&current, controller) {
        write_checked(
            engine,
            path,
            SUBTREE_CONTROL_FILE,
            &format!("+{controller}"),
        )?;
    }
    Ok(())
}

/// Disables the controller (the caller skips this when it was present before or is shared).
pub(super) fn undo(engine: &Engine, path: &CgroupPath, controller: &str) -> Result<(), String> {
    let Some(current) = read_for_undo(engine, path, SUBTREE_CONTROL_FILE)? else {
        return Ok(());
    };
    if !has_word(&current, controller) {
        return Ok(());
    }
    match engine
        .fs
        .write(path, SUBTREE_CONTROL_FILE, &format!("-{controller}"))
    {
        Ok(back) if !has_word(&back, controller) => Ok(()),
        Ok(back) => Err(format!(
            "{} still reads {:?}",
            path.file_display(SUBTREE_CONTROL_FILE),
            back.trim_end()
        )),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => {
            // Something below uses the controller now (systemd enabled it for a unit); it is
            // no longer ours to take away.
            tracing::info!(
                "leaving {controller} enabled in {}: a cgroup below uses it",
                path.file_display(SUBTREE_CONTROL_FILE)
            );
            Ok(())
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
