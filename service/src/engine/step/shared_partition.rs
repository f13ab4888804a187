//! `Step::SharedPartition`: an ancestor made a `root` partition for the partitions below
//! it (a local partition's parent must be one); the last holder restores its original.

use kvmisolate_dbus::options::PartitionType;

use super::{
    StepFailure, failed, partition_word, read_for_undo, read_original, restore, write_checked,
};
use crate::engine::apply::Engine;
use crate::engine::model::{Step, first_word};
use crate::engine::partition::{PartitionState, parse_partition};
use crate::host::cgroupfs::CgroupPath;
use crate::host::kernel::PARTITION_FILE;

pub(super) fn prepare(
    engine: &Engine,
    path: &CgroupPath,
    inherited: Option<&Step>,
) -> Result<Step, StepFailure> {
    Ok(Step::SharedPartition {
        path: path.clone(),
        original: match inherited {
            Some(Step::SharedPartition { original, .. }) => original.clone(),
            _ => read_original(engine, path, PARTITION_FILE)?,
        },
    })
}

pub(super) fn perform(engine: &Engine, path: &CgroupPath) -> Result<(), StepFailure> {
    let current = engine
        .fs
        .read(path, PARTITION_FILE)
        .map_err(|e| StepFailure::touched(failed(e)))?;
    if parse_partition(&current) != PartitionState::Valid(PartitionType::Root) {
        write_checked(engine, path, PARTITION_FILE, "root")?;
    }
    Ok(())
}

/// Restores the original (the caller skips this while another isolation holds the state).
pub(super) fn undo(engine: &Engine, path: &CgroupPath, original: &str) -> Result<(), String> {
    let Some(current) = read_for_undo(engine, path, PARTITION_FILE)? else {
        return Ok(());
    };
    let word = partition_word(original);
    if current.trim() == word {
        return Ok(());
    }
    restore(engine, path, PARTITION_FILE, word, |back| {
        first_word(back) == word
    })
}
