//! One file per step kind, each with the kind's three operations:
//!
//! - `prepare`: reads the original state the step changes (right before it is journalled);
//!   a shared step inherits the original from another isolation's record of the same state.
//!   This is the one place originals are derived (the plan leaves them empty: see
//!   [`crate::engine::plan`]);
//! - `perform`: makes the change, every write read back;
//! - `undo`: restores the original; safe whether or not the step was performed (restoring a
//!   value that is already there is a no-op), and a no-op for shared state another record
//!   still holds.
//!
//! [`prepare`], [`perform`] and [`undo`] here dispatch on the kind; the state machine that
//! calls them (journal first, rollback, release, replay) is [`crate::engine::apply`].

mod enable_controller;
mod external;
mod mkdir;
mod move_procs;
mod shared_add;
mod shared_partition;
mod write;

use kvmisolate_dbus::CpuSet;

use crate::engine::Error;
use crate::engine::apply::Engine;
use crate::engine::journal::Record;
use crate::engine::model::{CPUS_FILE, SUBTREE_CONTROL_FILE, Step, first_word};
use crate::engine::partition::{PartitionState, explain_invalid, parse_partition};
use crate::host::cgroupfs::{CgroupError, CgroupPath};
use crate::host::kernel::{EXCLUSIVE_FILE, PARTITION_FILE};

/// A step that failed to prepare or perform.
pub(crate) struct StepFailure {
    pub(crate) error: Error,
    /// Whether the step may have had an effect (and so must be undone).
    pub(crate) touched: bool,
}

impl StepFailure {
    fn touched(error: Error) -> Self {
        Self {
            error,
            touched: true,
        }
    }
    fn untouched(error: Error) -> Self {
        Self {
            error,
            touched: false,
        }
    }
}

/// Fills in a step's original state, read right before it is journalled. Shared steps
/// inherit the original from another isolation's record of the same shared state.
pub(crate) fn prepare(
    engine: &Engine,
    step: &Step,
    others: &[Record],
) -> Result<Step, StepFailure> {
    let inherited = others
        .iter()
        .flat_map(|r| &r.steps)
        .map(|s| &s.step)
        .find(|s| s.shares_state_with(step));
    match step {
        Step::Mkdir { path, .. } => Ok(mkdir::prepare(engine, path, inherited)),
        Step::Write {
            path, file, value, ..
        } => write::prepare(engine, path, file, value),
        Step::SharedAdd {
            path, file, added, ..
        } => shared_add::prepare(engine, path, file, added),
        Step::SharedPartition { path, .. } => shared_partition::prepare(engine, path, inherited),
        Step::EnableController {
            path, controller, ..
        } => enable_controller::prepare(engine, path, controller, inherited),
        Step::MoveProcs { to, from } => move_procs::prepare(engine, to, from),
        Step::External(e) => external::prepare(engine, e),
    }
}

/// Performs a prepared step.
pub(crate) fn perform(engine: &Engine, step: &Step) -> Result<(), StepFailure> {
    match step {
        Step::Mkdir { path, .. } => mkdir::perform(engine, path),
        Step::Write {
            path, file, value, ..
        } => write::perform(engine, path, file, value),
        Step::SharedAdd {
            path, file, added, ..
        } => shared_add::perform(engine, path, file, added),
        Step::SharedPartition { path, .. } => shared_partition::perform(engine, path),
        Step::EnableController {
            path, controller, ..
        } => enable_controller::perform(engine, path, controller),
        Step::MoveProcs { to, from } => move_procs::perform(engine, to, from),
        Step::External(e) => external::perform(engine, e),
    }
}

/// Undoes one step; safe whether or not it was performed. `others` are the other records:
/// state one of them shares with `step` stays.
pub(crate) fn undo(engine: &Engine, step: &Step, others: &[Record]) -> Result<(), String> {
    let shared = others
        .iter()
        .flat_map(|r| &r.steps)
        .any(|s| s.step.shares_state_with(step));
    match step {
        Step::Mkdir { path, existed } => mkdir::undo(engine, path, *existed || shared),
        Step::Write {
            path,
            file,
            original,
            ..
        } => write::undo(engine, path, file, original),
        Step::SharedAdd {
            path,
            file,
            original,
            added,
        } => shared_add::undo(engine, path, file, original, added),
        Step::SharedPartition { path, original } => {
            if shared {
                return Ok(());
            }
            shared_partition::undo(engine, path, original)
        }
        Step::EnableController {
            path,
            controller,
            was_present,
        } => {
            if *was_present || shared {
                return Ok(());
            }
            enable_controller::undo(engine, path, controller)
        }
        Step::MoveProcs { to, from } => move_procs::undo(engine, to, from),
        Step::External(e) => external::undo(engine, e),
    }
}

/// Whether `step` writes a `cpuset.cpus` file (which the kernel won't empty while populated).
pub(crate) fn is_cpus_file(step: &Step) -> bool {
    matches!(step, Step::Write { file, .. } | Step::SharedAdd { file, .. } if file == CPUS_FILE)
}

pub(crate) fn failed(e: impl std::fmt::Display) -> Error {
    Error::Failed(e.to_string())
}

pub(crate) fn has_word(text: &str, word: &str) -> bool {
    text.split_whitespace().any(|w| w == word)
}

fn is_cpulist_file(file: &str) -> bool {
    file != PARTITION_FILE && (file.starts_with("cpuset.cpus") || file.starts_with("cpuset.mems"))
}

/// The partition word a recorded original of `cpuset.cpus.partition` restores to.
fn partition_word(original: &str) -> &str {
    match first_word(original) {
        "" => "member",
        word => word,
    }
}

/// Reads the original content of a file for a prepare (a failure leaves the host untouched).
fn read_original(engine: &Engine, path: &CgroupPath, file: &str) -> Result<String, StepFailure> {
    engine
        .fs
        .read(path, file)
        .map_err(|e| StepFailure::untouched(failed(e)))
}

/// Reads a file for an undo: `None` if it is gone (nothing left to restore).
fn read_for_undo(engine: &Engine, path: &CgroupPath, file: &str) -> Result<Option<String>, String> {
    match engine.fs.read(path, file) {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads a cpulist file.
fn read_cpus(engine: &Engine, path: &CgroupPath, file: &str) -> Result<CpuSet, Error> {
    let text = engine.fs.read(path, file).map_err(failed)?;
    CpuSet::parse(&text)
        .map_err(|e| Error::Failed(format!("{path}/{file} holds {:?}: {e}", text.trim_end())))
}

/// Writes and checks the read-back.
fn write_checked(
    engine: &Engine,
    path: &CgroupPath,
    file: &str,
    value: &str,
) -> Result<(), StepFailure> {
    let back = engine
        .fs
        .write(path, file, value)
        .map_err(|e| StepFailure::touched(write_error(path, file, value, &e)))?;
    verify(path, file, value, &back).map_err(StepFailure::touched)
}

/// Writes an original back for an undo; `ok` judges the read-back. A file gone is restored.
fn restore(
    engine: &Engine,
    path: &CgroupPath,
    file: &str,
    value: &str,
    ok: impl Fn(&str) -> bool,
) -> Result<(), String> {
    match engine.fs.write(path, file, value) {
        Ok(back) if ok(&back) => Ok(()),
        Ok(back) => Err(format!(
            "wrote {:?} to {} but it reads back {:?}",
            value.trim_end(),
            path.file_display(file),
            back.trim_end()
        )),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Maps a failed write to the contract error.
fn write_error(path: &CgroupPath, file: &str, value: &str, e: &CgroupError) -> Error {
    let einval = e.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32);
    let ebusy = e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32);
    if file == PARTITION_FILE && einval {
        let hint = if value == "isolated" {
            "; this kernel may not support isolated partitions (Linux 6.1+): try --partition root"
        } else {
            ""
        };
        return Error::PartitionRejected(format!(
            "the kernel refused to make {path} a {value} partition ({e}){hint}"
        ));
    }
    if file == EXCLUSIVE_FILE && einval {
        return Error::PartitionRejected(format!(
            "the kernel refused CPUs {value} in {path}/{EXCLUSIVE_FILE} ({e}): another cgroup \
             beside it may hold some of them exclusively, or its parent's \
             cpuset.cpus.exclusive lacks them"
        ));
    }
    if file == SUBTREE_CONTROL_FILE && ebusy {
        return Error::Failed(format!(
            "cannot enable the cpuset controller in {path} ({e}): it has processes of its own \
             (cgroup v2's no-internal-processes rule)"
        ));
    }
    Error::Failed(e.to_string())
}

/// Compares a read-back with what was written.
fn verify(path: &CgroupPath, file: &str, value: &str, back: &str) -> Result<(), Error> {
    let mismatch = || {
        Error::Failed(format!(
            "wrote {value:?} to {} but it reads back {:?}",
            path.file_display(file),
            back.trim_end()
        ))
    };
    if file == PARTITION_FILE {
        return match parse_partition(back) {
            PartitionState::Invalid { word, reason } if word == value => {
                Err(Error::PartitionRejected(format!(
                    "the kernel made {path} an invalid {value} partition: {}",
                    if reason.is_empty() {
                        "(this kernel gives no reason)".to_owned()
                    } else {
                        explain_invalid(&reason)
                    }
                )))
            }
            PartitionState::Valid(t) if t.as_str() == value => Ok(()),
            PartitionState::Member if value == "member" => Ok(()),
            _ => Err(mismatch()),
        };
    }
    if file == SUBTREE_CONTROL_FILE {
        let (sign, name) = value.split_at(1);
        let present = has_word(back, name);
        return if (sign == "+") == present {
            Ok(())
        } else {
            Err(mismatch())
        };
    }
    if is_cpulist_file(file) {
        let want = CpuSet::parse(value).map_err(failed)?;
        return match CpuSet::parse(back) {
            Ok(got) if got == want => Ok(()),
            _ => Err(mismatch()),
        };
    }
    if back.trim_end() == value.trim_end() {
        Ok(())
    } else {
        Err(mismatch())
    }
}
