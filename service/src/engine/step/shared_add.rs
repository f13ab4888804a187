//! `Step::SharedAdd`: CPUs added to an ancestor's cpulist that other isolations may add to
//! as well; undo takes away only the CPUs this step added that were not there before.

use kvmisolate_dbus::CpuSet;

use super::{StepFailure, read_cpus, read_for_undo, read_original, restore, write_checked};
use crate::engine::apply::Engine;
use crate::engine::model::Step;
use crate::host::cgroupfs::CgroupPath;

pub(super) fn prepare(
    engine: &Engine,
    path: &CgroupPath,
    file: &str,
    added: &CpuSet,
) -> Result<Step, StepFailure> {
    Ok(Step::SharedAdd {
        path: path.clone(),
        file: file.to_owned(),
        original: read_original(engine, path, file)?,
        added: added.clone(),
    })
}

pub(super) fn perform(
    engine: &Engine,
    path: &CgroupPath,
    file: &str,
    added: &CpuSet,
) -> Result<(), StepFailure> {
    let current = read_cpus(engine, path, file).map_err(StepFailure::touched)?;
    let wanted = current.union(added);
    if wanted != current {
        write_checked(engine, path, file, &wanted.to_string())?;
    }
    Ok(())
}

pub(super) fn undo(
    engine: &Engine,
    path: &CgroupPath,
    file: &str,
    original: &str,
    added: &CpuSet,
) -> Result<(), String> {
    let Some(current_text) = read_for_undo(engine, path, file)? else {
        return Ok(());
    };
    let current = CpuSet::parse(&current_text)
        .map_err(|e| format!("{path}/{file} holds {current_text:?}: {e}"))?;
    let orig = CpuSet::parse(original)
        .map_err(|e| format!("the recorded original {original:?} of {path}/{file}: {e}"))?;
    let wanted = current.difference(added).union(&orig.intersection(added));
    if wanted == current {
        return Ok(());
    }
    // Byte for byte where possible: the original text if that is the result.
    let text = if wanted == orig {
        original.to_owned()
    } else {
        wanted.to_string()
    };
    restore(engine, path, file, &text, |back| {
        CpuSet::parse(back).ok().as_ref() == Some(&wanted)
    })
}

#[cfg(test)]
mod tests {
    use crate::host::cgroupfs::EmulatedKernel;
    use crate::host::kernel::EXCLUSIVE_FILE;
    use crate::testutil::*;

    #[test]
    fn shared_add_keeps_cpus_that_were_there_before() {
        let t = FakeTree::with_cpuset(EmulatedKernel::LINUX_6_12);
        t.fs()
            .write(&cg("machine.slice"), EXCLUSIVE_FILE, "3")
            .unwrap();
        let before = t.state();
        let a = t
            .isolate(&t.unit_request_for("vm.scope", "a", "2-3"))
            .unwrap();
        assert_eq!(t.read("machine.slice", EXCLUSIVE_FILE), "2-3\n");
        t.engine.release(&a).unwrap();
        assert_eq!(t.read("machine.slice", EXCLUSIVE_FILE), "3\n");
        t.assert_state(&before, "state");
    }
}
