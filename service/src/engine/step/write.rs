//! `Step::Write`: one cgroup file set to a value; its original restored on undo (the
//! partition word for `cpuset.cpus.partition`, the CPU set for cpulists, the text otherwise).

use kvmisolate_dbus::CpuSet;

use super::{StepFailure, is_cpulist_file, partition_word, read_for_undo, read_original, restore};
use crate::engine::apply::Engine;
use crate::engine::model::{Step, first_word};
use crate::host::cgroupfs::CgroupPath;
use crate::host::kernel::PARTITION_FILE;

pub(super) fn prepare(
    engine: &Engine,
    path: &CgroupPath,
    file: &str,
    value: &str,
) -> Result<Step, StepFailure> {
    Ok(Step::Write {
        path: path.clone(),
        file: file.to_owned(),
        original: read_original(engine, path, file)?,
        value: value.to_owned(),
    })
}

pub(super) fn perform(
    engine: &Engine,
    path: &CgroupPath,
    file: &str,
    value: &str,
) -> Result<(), StepFailure> {
    super::write_checked(engine, path, file, value)
}

pub(super) fn undo(
    engine: &Engine,
    path: &CgroupPath,
    file: &str,
    original: &str,
) -> Result<(), String> {
    let Some(current) = read_for_undo(engine, path, file)? else {
        return Ok(());
    };
    if file == PARTITION_FILE {
        let word = partition_word(original);
        if current.trim() == word {
            return Ok(());
        }
        restore(engine, path, file, word, |back| first_word(back) == word)
    } else if is_cpulist_file(file) {
        let want = CpuSet::parse(original)
            .map_err(|e| format!("the recorded original {original:?} of {path}/{file}: {e}"))?;
        if current == original || CpuSet::parse(&current).ok().as_ref() == Some(&want) {
            return Ok(());
        }
        restore(engine, path, file, original, |back| {
            CpuSet::parse(back).ok().as_ref() == Some(&want)
        })
    } else {
        if current.trim_end() == original.trim_end() {
            return Ok(());
        }
        restore(engine, path, file, original, |back| {
            back.trim_end() == original.trim_end()
        })
    }
}
