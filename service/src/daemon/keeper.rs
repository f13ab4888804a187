//! The keeper of a unit target that is not delegated: a transient, empty slice next to the
//! target that makes systemd keep `+cpuset` in every `cgroup.subtree_control` above it.
//!
//! A unit partitioned in place needs the cpuset controller enabled in its parents. systemd
//! enables a controller in a slice only while some unit below asks for it (its own settings or
//! `Delegate=`), and a `daemon-reload` or any unit starting/stopping recomputes that and drops
//! `+cpuset` when nobody asks, which destroys the partition. The keeper asks: a slice
//! `<parent>-kvmisolate\x2dkeep\x2d<name>.slice` (a child of the target's slice, by systemd's
//! slice naming) with `AllowedMemoryNodes=` set to every online memory node. Memory nodes,
//! not CPUs: the keeper's `cpuset.mems` holds nothing back from anyone, while a `cpuset.cpus`
//! of its own could overlap a later partition's exclusive CPUs and invalidate it. The keeper
//! holds no process, so stopping it undoes everything systemd wrote for it.

use std::path::Path;

use kvmisolate_dbus::{CpuSet, IsolationName};
use serde::{Deserialize, Serialize};

use crate::engine::model::ExternalStep;

/// The external step kind that starts (and, undone, stops) a keeper slice.
pub const START_KEEPER: &str = "start-keeper-slice";

/// systemd's limit on a unit name's length.
const UNIT_NAME_MAX: usize = 255;

/// What a keeper step journals: everything needed to start and stop it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeeperData {
    /// The slice unit (`system-kvmisolate\x2dkeep\x2dvm.slice`).
    pub unit: String,
    /// Its description.
    pub description: String,
    /// The memory nodes it asks for (`AllowedMemoryNodes=`), a node list like `0` or `0-1`.
    pub memory_nodes: String,
}

/// Escapes `text` as one component of a unit name the way `systemd-escape` does: `-` and
/// every character outside `[A-Za-z0-9:_.]` become `\xNN`, and so does a leading `.`.
pub fn escape_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, b) in text.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b':' || b == b'_' || (b == b'.' && i > 0);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The keeper slice of isolation `name` whose target lies in `parent_slice` (`system.slice`,
/// `machine.slice`, `-.slice` for the root). Slice names encode their parent: `a-b.slice` is
/// a child of `a.slice`. Fails (with a sentence) if the result is not a valid unit name.
pub fn slice_name(parent_slice: &str, name: &IsolationName) -> Result<String, String> {
    let Some(prefix) = parent_slice.strip_suffix(".slice") else {
        return Err(format!("{parent_slice:?} is not a slice"));
    };
    let own = escape_component(&format!("kvmisolate-keep-{name}"));
    let unit = if prefix == "-" || prefix.is_empty() {
        format!("{own}.slice")
    } else {
        format!("{prefix}-{own}.slice")
    };
    if unit.len() > UNIT_NAME_MAX {
        return Err(format!(
            "the keeper slice for isolation '{name}' under {parent_slice} would have a name \
             longer than {UNIT_NAME_MAX} characters; choose a shorter isolation name"
        ));
    }
    Ok(unit)
}

/// The memory nodes online (`<sysfs>/devices/system/node/online`); node 0 where the kernel
/// has no NUMA support and the file is missing.
pub fn online_memory_nodes(sysfs_root: &Path) -> CpuSet {
    std::fs::read_to_string(sysfs_root.join("devices/system/node/online"))
        .ok()
        .and_then(|t| CpuSet::parse(&t).ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| std::iter::once(0).collect())
}

/// A node (or CPU) set as systemd's D-Bus bitmask (`ay`, bit n of byte n/8 = node n).
pub fn bitmask(set: &CpuSet) -> Vec<u8> {
    let mut bytes = Vec::new();
    for n in set.iter() {
        let byte = (n / 8) as usize;
        if bytes.len() <= byte {
            bytes.resize(byte + 1, 0);
        }
        bytes[byte] |= 1 << (n % 8);
    }
    bytes
}

/// The step that starts the keeper of isolation `name` under `parent_slice`.
pub fn keeper_step(
    parent_slice: &str,
    name: &IsolationName,
    unit: &str,
    nodes: &CpuSet,
) -> Result<ExternalStep, String> {
    let data = KeeperData {
        unit: slice_name(parent_slice, name)?,
        description: format!("kvmisolate: keeps the cpuset controller on for {unit} ({name})"),
        memory_nodes: nodes.to_string(),
    };
    Ok(ExternalStep {
        kind: START_KEEPER.into(),
        data: serde_json::to_value(data).map_err(|e| e.to_string())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> IsolationName {
        IsolationName::new(s).unwrap()
    }

    #[test]
    fn escapes_like_systemd_escape() {
        assert_eq!(
            escape_component("kvmisolate-keep-vm"),
            "kvmisolate\\x2dkeep\\x2dvm"
        );
        assert_eq!(escape_component("a.b_c:d"), "a.b_c:d");
        assert_eq!(escape_component(".x"), "\\x2ex");
        assert_eq!(escape_component("a b/c"), "a\\x20b\\x2fc");
    }

    #[test]
    fn slice_names_encode_the_parent() {
        assert_eq!(
            slice_name("machine.slice", &name("win-10")).unwrap(),
            "machine-kvmisolate\\x2dkeep\\x2dwin\\x2d10.slice"
        );
        assert_eq!(
            slice_name("system.slice", &name("cpus-4-5")).unwrap(),
            "system-kvmisolate\\x2dkeep\\x2dcpus\\x2d4\\x2d5.slice"
        );
        assert_eq!(
            slice_name("machine-qemu.slice", &name("vm.1")).unwrap(),
            "machine-qemu-kvmisolate\\x2dkeep\\x2dvm.1.slice"
        );
        assert_eq!(
            slice_name("-.slice", &name("vm")).unwrap(),
            "kvmisolate\\x2dkeep\\x2dvm.slice"
        );
        assert!(slice_name("vm.service", &name("vm")).is_err());
        let long = format!("a{}", "-".repeat(63));
        assert!(slice_name("system.slice", &name(&long)).is_err());
    }

    #[test]
    fn bitmasks_are_little_endian_bytes() {
        assert_eq!(bitmask(&CpuSet::parse("0").unwrap()), vec![1]);
        assert_eq!(bitmask(&CpuSet::parse("0-1,9").unwrap()), vec![3, 2]);
        assert!(bitmask(&CpuSet::new()).is_empty());
    }

    #[test]
    fn memory_nodes_default_to_node_0() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(online_memory_nodes(dir.path()).to_string(), "0");
        std::fs::create_dir_all(dir.path().join("devices/system/node")).unwrap();
        std::fs::write(dir.path().join("devices/system/node/online"), "0-1\n").unwrap();
        assert_eq!(online_memory_nodes(dir.path()).to_string(), "0-1");
    }

    #[test]
    fn keeper_steps_round_trip() {
        let s = keeper_step(
            "system.slice",
            &name("vm"),
            "vm.service",
            &CpuSet::parse("0").unwrap(),
        )
        .unwrap();
        assert_eq!(s.kind, START_KEEPER);
        let d: KeeperData = serde_json::from_value(s.data).unwrap();
        assert_eq!(d.unit, "system-kvmisolate\\x2dkeep\\x2dvm.slice");
        assert_eq!(d.memory_nodes, "0");
    }

    /// The keeper is the first step of a unit target's plan, so it is started before any
    /// partition write and stopped after all of them are undone; a crash at any point of the
    /// Isolate ends, after replay, with the keeper stopped exactly when it had been recorded.
    #[test]
    fn keeper_comes_first_and_goes_last_also_after_a_crash() {
        use crate::engine::apply::Point;
        use crate::engine::model::Step;
        use crate::host::cgroupfs::EmulatedKernel;
        use crate::testutil::FakeTree;

        let with_keeper = |t: &FakeTree| {
            let mut req = t.unit_request("vm", "2-3");
            req.pre_steps = vec![
                keeper_step(
                    "machine.slice",
                    &name("vm"),
                    "vm.scope",
                    &CpuSet::parse("0").unwrap(),
                )
                .unwrap(),
            ];
            req
        };
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let before = t.state();
        let req = with_keeper(&t);
        let rec = t.isolate(&req).unwrap();
        assert!(matches!(&rec.steps[0].step, Step::External(e) if e.kind == START_KEEPER));
        assert!(
            rec.steps[1..]
                .iter()
                .all(|s| !matches!(s.step, Step::External(_)))
        );
        t.engine.release(&rec).unwrap();
        assert_eq!(
            *t.systemd_log.lock().unwrap(),
            ["perform start-keeper-slice", "undo start-keeper-slice"]
        );
        t.assert_state(&before, "after release");

        let n = t.plan(&req).unwrap().steps.len();
        for k in 1..=n {
            for point in [
                Point::BeforePerform(k),
                Point::AfterPerform(k),
                Point::AfterDone(k),
            ] {
                let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
                let before = t.state();
                let req = with_keeper(&t);
                let plan = t.plan(&req).unwrap();
                let r = t.engine.apply_with(&req, &plan, &mut |p| p == point);
                assert!(matches!(r, Err(None)), "{point:?}");
                let report = t.engine.replay(|_| true);
                assert_eq!(report.released, ["vm"], "{point:?}");
                let log = t.systemd_log.lock().unwrap().clone();
                assert_eq!(
                    log.last().map(String::as_str),
                    Some("undo start-keeper-slice"),
                    "{point:?}: {log:?}"
                );
                assert_eq!(log.iter().filter(|l| l.starts_with("undo")).count(), 1);
                t.assert_state(&before, &format!("{point:?}"));
            }
        }
    }
}
