//! A libvirt domain isolated in place on an emulated cgroupfs laid out like libvirt's:
//! find the scope, read the pins, plan, apply, release.

use crate::engine::Error;
use kvmisolate_dbus::options::PartitionType;

use crate::engine::model::Step;
use crate::engine::partition::PartitionState;
use crate::host::cgroupfs::EmulatedKernel;
use crate::host::kernel::{EXCLUSIVE_FILE, PARTITION_FILE};
use crate::libvirt::{Layout, LeafKind, find_scope};
use crate::testutil::*;

/// The guide's recipe scaled to six CPUs: vCPUs on 3-4, emulator on 2, iothread on 0-1.
const RECIPE: &[(&str, &str)] = &[
    ("vcpu0", "3"),
    ("vcpu1", "4"),
    ("emulator", "2"),
    ("iothread1", "0-1"),
];

const SCOPE: &str = r"machine.slice/machine-qemu\x2d1\x2dwin10.scope";

#[test]
fn finds_the_scope_and_reads_the_pins() {
    let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
    let scope = t.libvirt_domain(1, "win10", RECIPE, 300);
    assert_eq!(scope.as_str(), SCOPE);
    t.libvirt_domain(2, "win10-gpu", &[("vcpu0", "5")], 301);
    assert_eq!(find_scope(t.fs(), "win10").unwrap(), scope);
    assert_eq!(
        find_scope(t.fs(), "win10-gpu").unwrap().as_str(),
        r"machine.slice/machine-qemu\x2d2\x2dwin10\x2dgpu.scope"
    );
    let e = find_scope(t.fs(), "win1").unwrap_err();
    assert!(
        matches!(e, Error::TargetNotFound(ref m) if m.contains("\"win1\" is not running")),
        "{e:?}"
    );
    let layout = Layout::read(t.fs(), &scope).unwrap();
    let got: Vec<String> = layout
        .leaves
        .iter()
        .map(|l| format!("{}={}", l.kind, l.pins))
        .collect();
    assert_eq!(got, ["vcpu0=3", "vcpu1=4", "emulator=2", "iothread1=0-1"]);
    assert_eq!(layout.of(|k| k == LeafKind::Emulator).count(), 1);
}

#[test]
fn a_scope_without_leaves_is_not_running_yet() {
    let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
    let e = Layout::read(t.fs(), &cg("machine.slice/vm.scope")).unwrap_err();
    assert!(
        matches!(e, Error::TargetNotFound(ref m) if m.contains("still starting")),
        "{e:?}"
    );
}

#[test]
fn isolates_the_leaves_in_place_and_restores_byte_for_byte() {
    let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
    t.libvirt_domain(1, "win10", RECIPE, 300);
    let before = t.state();
    let req = t.libvirt_request("libvirt-win10", "win10", "").unwrap();
    assert_eq!(req.cpus.to_string(), "2-4");
    assert_eq!(req.target.describe(), "libvirt:win10");
    let plan = t.plan(&req).unwrap();
    assert_eq!(plan.partition, PartitionType::Isolated);
    let leaf = |l: &str| cg(&format!("{SCOPE}/libvirt/{l}"));
    assert_eq!(
        plan.partitions,
        vec![leaf("vcpu0"), leaf("vcpu1"), leaf("emulator")]
    );
    // Never a cpuset.cpus write: libvirt's pins stay as they are.
    assert!(plan.steps.iter().all(|s| !matches!(s,
        Step::Write { file, .. } | Step::SharedAdd { file, .. } if file == "cpuset.cpus")));
    let rec = t
        .engine
        .apply(&req, &plan, &crate::test_hooks::TestHooks::none())
        .unwrap();
    for (l, c) in [("vcpu0", "3"), ("vcpu1", "4"), ("emulator", "2")] {
        let p = format!("{SCOPE}/libvirt/{l}");
        assert_eq!(t.read(&p, PARTITION_FILE), "isolated\n", "{l}");
        assert_eq!(t.read(&p, EXCLUSIVE_FILE), format!("{c}\n"), "{l}");
        assert_eq!(t.read(&p, "cpuset.cpus"), format!("{c}\n"), "{l}");
    }
    for p in ["machine.slice", SCOPE, &format!("{SCOPE}/libvirt")] {
        assert_eq!(t.read(p, EXCLUSIVE_FILE), "2-4\n", "{p}");
    }
    let io = format!("{SCOPE}/libvirt/iothread1");
    assert_eq!(t.read(&io, PARTITION_FILE), "member\n");
    assert_eq!(t.read(&io, "cpuset.cpus"), "0-1\n");
    assert_eq!(
        t.engine.partition_state(&leaf("vcpu1")),
        Some(PartitionState::Valid(PartitionType::Isolated))
    );
    assert_eq!(rec.partitions, plan.partitions);
    // The record survives a restart: the target comes back from the journal as it was.
    let loaded = t.engine.journal.load(rec.name()).unwrap().unwrap();
    assert_eq!(loaded.request.target, req.target);
    t.engine.release(&rec).unwrap();
    t.assert_state(&before, "after release");
}

#[test]
fn a_domain_that_went_away_is_released_cleanly() {
    let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
    let scope = t.libvirt_domain(1, "win10", RECIPE, 300);
    let rec = t
        .isolate(&t.libvirt_request("w", "win10", "").unwrap())
        .unwrap();
    // QEMU killed: libvirt/machined remove the scope with its leaves.
    t.fs()
        .write(&cg("init.scope"), "cgroup.procs", "300")
        .unwrap();
    for l in ["vcpu0", "vcpu1", "emulator", "iothread1"] {
        t.fs().rmdir(&cg(&format!("{SCOPE}/libvirt/{l}"))).unwrap();
    }
    t.fs().rmdir(&scope.join("libvirt").unwrap()).unwrap();
    t.fs().rmdir(&scope).unwrap();
    let gone = t.state();
    t.engine.release(&rec).unwrap();
    assert_eq!(t.read("machine.slice", EXCLUSIVE_FILE), "\n");
    assert!(!t.engine.journal.contains(rec.name()));
    // Only machine.slice's exclusive CPUs changed back.
    let mut now = t.state();
    let mut was = gone;
    for m in [&mut now, &mut was] {
        m.retain(|k, _| !k.ends_with("machine.slice/cpuset.cpus.exclusive"));
    }
    assert!(now == was, "release touched more than machine.slice");
}

#[test]
fn two_domains_on_disjoint_cpus_and_an_overlapping_third() {
    let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
    t.libvirt_domain(1, "a", &[("vcpu0", "2"), ("emulator", "0-1")], 300);
    t.libvirt_domain(2, "b", &[("vcpu0", "4"), ("vcpu1", "5")], 301);
    t.libvirt_domain(3, "c", &[("vcpu0", "5"), ("vcpu1", "3")], 302);
    let all = t.state();
    let a = t
        .isolate(&t.libvirt_request("a", "a", "").unwrap())
        .unwrap();
    let b = t
        .isolate(&t.libvirt_request("b", "b", "").unwrap())
        .unwrap();
    assert_eq!(t.read("machine.slice", EXCLUSIVE_FILE), "2,4-5\n");
    let e = t
        .plan(&t.libvirt_request("c", "c", "").unwrap())
        .unwrap_err();
    assert!(
        matches!(e, Error::CpusBusy(ref m) if m.starts_with("CPU 5 is already held by isolation 'b'")),
        "{e:?}"
    );
    t.engine.release(&a).unwrap();
    t.engine.release(&b).unwrap();
    t.assert_state(&all, "both released");
}

#[test]
fn given_cpus_that_differ_from_the_pins_are_named() {
    let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
    t.libvirt_domain(1, "win10", RECIPE, 300);
    let e = t.libvirt_request("w", "win10", "2-5").unwrap_err();
    assert!(
        matches!(e, Error::InvalidCpuList(ref m) if m.starts_with("CPU 5 asked for")),
        "{e:?}"
    );
    let req = t.libvirt_request("w", "win10", "3-4").unwrap();
    assert_eq!(t.plan(&req).unwrap().partitions.len(), 2);
}

#[test]
fn old_kernels_are_refused_with_the_reason() {
    let t = FakeTree::new(EmulatedKernel::LINUX_6_1);
    t.libvirt_domain(1, "win10", RECIPE, 300);
    let before = t.state();
    let req = t.libvirt_request("w", "win10", "").unwrap();
    let e = t.plan(&req).unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedHost(ref m) if m.contains("remote partitions") && m.contains("6.7")),
        "{e:?}"
    );
    t.assert_state(&before, "nothing written");
}

#[test]
fn a_rejected_leaf_rolls_everything_back() {
    let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
    t.libvirt_domain(1, "win10", RECIPE, 300);
    let before = t.state();
    t.fs().emulate_reject_partition(
        &cg(&format!("{SCOPE}/libvirt/emulator")),
        Some("Cpu list in cpuset.cpus not exclusive"),
    );
    let e = t
        .isolate(&t.libvirt_request("w", "win10", "").unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::PartitionRejected(_)), "{e:?}");
    t.assert_state(&before, "rolled back");
}

#[test]
fn leaves_being_torn_down_count_as_gone() {
    let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
    t.libvirt_domain(1, "win10", RECIPE, 300);
    let rec = t
        .isolate(&t.libvirt_request("w", "win10", "").unwrap())
        .unwrap();
    // libvirt removed the domain's cgroups a moment ago: the kernel answers ENODEV.
    for l in ["vcpu0", "vcpu1", "emulator"] {
        let leaf = cg(&format!("{SCOPE}/libvirt/{l}"));
        t.fs().emulate_fail_write(
            &leaf,
            EXCLUSIVE_FILE,
            None,
            nix::errno::Errno::ENODEV as i32,
        );
        t.fs().emulate_fail_write(
            &leaf,
            PARTITION_FILE,
            None,
            nix::errno::Errno::ENODEV as i32,
        );
    }
    t.engine.release(&rec).unwrap();
    assert!(!t.engine.journal.contains(rec.name()));
    for p in ["machine.slice", SCOPE, &format!("{SCOPE}/libvirt")] {
        assert_eq!(t.read(p, EXCLUSIVE_FILE), "\n", "{p}");
    }
}

#[test]
fn a_reservation_writes_nothing_in_cgroupfs() {
    let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
    let before = t.state();
    let req = t.request(
        "hugepages-w",
        "",
        crate::engine::model::Target::reservation("win10"),
    );
    let plan = t.plan(&req).unwrap();
    assert!(plan.steps.is_empty() && plan.partitions.is_empty());
    assert_eq!(req.target.describe(), "reservation:win10");
    let rec = t
        .engine
        .apply(&req, &plan, &crate::test_hooks::TestHooks::none())
        .unwrap();
    t.assert_state(&before, "nothing written");
    let e = t
        .engine
        .apply(&req, &plan, &crate::test_hooks::TestHooks::none())
        .unwrap_err();
    assert!(matches!(e, Error::NameExists(_)), "{e:?}");
    t.engine.release(&rec).unwrap();
    assert!(!t.engine.journal.contains(rec.name()));
}

/// SIGKILL at every point of a domain's Isolate (another domain already isolated), then a
/// restart: the interrupted one is restored, the other adopted untouched.
#[test]
fn a_crash_at_every_step_restores_the_domain_and_keeps_the_other() {
    use crate::engine::apply::Point;
    use crate::engine::journal::Phase;
    let setup = || {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        t.libvirt_domain(1, "a", &[("vcpu0", "5"), ("emulator", "0-1")], 300);
        t.libvirt_domain(2, "win10", RECIPE, 301);
        t
    };
    let probe = setup();
    probe
        .isolate(&probe.libvirt_request("a", "a", "").unwrap())
        .unwrap();
    let n = probe
        .plan(&probe.libvirt_request("w", "win10", "").unwrap())
        .unwrap()
        .steps
        .len();
    assert!(n >= 9, "{n} steps");
    for k in 1..=n {
        for point in [
            Point::BeforePerform(k),
            Point::AfterPerform(k),
            Point::AfterDone(k),
        ] {
            let t = setup();
            let a = t
                .isolate(&t.libvirt_request("a", "a", "").unwrap())
                .unwrap();
            let before = t.state();
            let req = t.libvirt_request("w", "win10", "").unwrap();
            let plan = t.plan(&req).unwrap();
            let r = t.engine.apply_with(&req, &plan, &mut |p| p == point);
            assert!(matches!(r, Err(None)), "{point:?}: {r:?}");
            let rec = t.engine.journal.load(&req.name).unwrap().unwrap();
            assert_eq!(rec.phase, Phase::Applying);
            let report = t.engine.replay(|_| true);
            assert_eq!(report.adopted.len(), 1, "{point:?}");
            assert_eq!(report.released, ["w".to_owned()], "{point:?}");
            assert!(report.failed.is_empty(), "{point:?}: {:?}", report.failed);
            t.assert_state(&before, &format!("{point:?}"));
            assert_eq!(
                t.engine.partition_state(&a.partitions[0]),
                Some(PartitionState::Valid(PartitionType::Isolated)),
                "{point:?}"
            );
        }
    }
}
