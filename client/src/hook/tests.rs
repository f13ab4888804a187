//! The hook's pure parts over a corpus of domain XMLs (`client/tests/fixtures/libvirt/`).
#![allow(clippy::unwrap_used)]

use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::libvirt::{OnConflict, VmHugepages, VmSection};
use kvmisolate_dbus::tunings::{PageSize, Profile, Tuning};

use super::check::{HostView, check, chosen_cpus};
use crate::libvirt::domain::{Domain, DomainError};
use crate::libvirt::optin::{Settings, read_vm_sections, settings};

fn fixture(name: &str) -> Domain {
    let path = format!(
        "{}/tests/fixtures/libvirt/{name}.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    Domain::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cpus(s: &str) -> CpuSet {
    CpuSet::parse(s).unwrap()
}

fn host() -> HostView {
    HostView {
        online: cpus("0-5"),
        remote_partitions: true,
        ..HostView::default()
    }
}

#[test]
fn the_recipe_parses_whole() {
    let d = fixture("recipe");
    assert_eq!(d.name, "win10");
    assert_eq!(d.id, Some(3));
    assert_eq!(d.vcpus, 2);
    assert_eq!(d.vcpupins[&0], cpus("3"));
    assert_eq!(d.vcpupins[&1], cpus("4"));
    assert_eq!(d.emulatorpin, Some(cpus("2")));
    assert_eq!(d.iothreadpins[&1], cpus("0-1"));
    assert!(d.realtime_vcpus);
    assert_eq!(d.memory_kib, 4 << 20);
    assert_eq!(d.hugepages.as_ref().unwrap().page_kib, Some(1 << 20));
    let m = d.metadata.clone().unwrap();
    assert_eq!(m.profile.as_deref(), Some("realtime"));
    assert_eq!(m.hugepages.as_deref(), Some("auto"));

    let s = settings(&d, None).unwrap().unwrap();
    assert_eq!(s.profile, Some(Profile::Realtime));
    assert!(s.disables_rt_throttling());
    let spec = s.hugepage_spec(&d).unwrap().unwrap();
    assert_eq!((spec.pages(), spec.page_size), (4, PageSize::G1));
    // <numatune> binds the memory to node 0: the pages are reserved there.
    assert_eq!(spec.node, Some(0));
    // Memory spread over two nodes: the kernel spreads the pool too.
    let two = Domain {
        numa_nodes: Some(cpus("0-1")),
        ..d.clone()
    };
    assert_eq!(s.hugepage_spec(&two).unwrap().unwrap().node, None);

    let v = check(&d, &s, &host());
    assert_eq!(v.cpus.to_string(), "2-4");
    assert!(v.conflicts.is_empty(), "{:?}", v.conflicts);
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
}

#[test]
fn domains_without_the_element_do_not_opt_in() {
    for name in ["virt-manager-default", "foreign-only"] {
        let d = fixture(name);
        assert_eq!(d.metadata, None, "{name}");
        assert_eq!(settings(&d, None).unwrap(), None, "{name}");
    }
    let d = fixture("foreign-only");
    assert_eq!(d.name, "build & test");
    assert_eq!(d.id, None, "inactive domains say id='-1'");
    assert_eq!(d.memory_kib, 1 << 20, "no unit: KiB");
    let d = fixture("virt-manager-default");
    assert!(d.vcpupins.is_empty() && d.emulatorpin.is_none() && d.hugepages.is_none());
    // A [vm.NAME] section opts a domain in without touching its XML.
    let s = settings(&d, Some(&VmSection::default())).unwrap().unwrap();
    assert_eq!(s, Settings::default());
    let v = check(&d, &s, &host());
    assert!(v.cpus.is_empty());
    assert!(
        v.conflicts[0].contains("no vCPU pinned"),
        "{:?}",
        v.conflicts
    );
    assert!(
        v.warnings[0].starts_with("vcpu0: not pinned"),
        "{:?}",
        v.warnings
    );
}

#[test]
fn any_prefix_of_our_namespace_and_libvirt_syntax() {
    let d = fixture("other-prefix");
    let m = d.metadata.clone().unwrap();
    assert_eq!(m.tunings.as_deref(), Some("irq-affinity,thp"));
    assert_eq!(m.on_conflict.as_deref(), Some("warn"));
    assert_eq!(d.memory_kib, 8 << 20);
    assert_eq!(d.vcpupins[&2], cpus("5"), "^ exclusions");
    let s = settings(&d, None).unwrap().unwrap();
    assert_eq!(s.tunings, Some(vec![Tuning::IrqAffinity, Tuning::Thp]));
    assert_eq!(s.on_conflict, OnConflict::Warn);
    // <hugepages/> without a size: the default 2M pages, exactly the memory.
    let spec = s.hugepage_spec(&d).unwrap().unwrap();
    assert_eq!((spec.pages(), spec.page_size), (4096, PageSize::M2));
    // Four vCPUs, three pinned; the emulator shares the host's CPUs 0-1: not isolated.
    let c = chosen_cpus(&d, &cpus("0-7"));
    assert_eq!(c.cpus.to_string(), "2,4-5");
    assert!(
        c.warnings
            .iter()
            .any(|w| w.starts_with("vcpu3: not pinned")),
        "{:?}",
        c.warnings
    );
    assert!(c.conflicts.is_empty(), "{:?}", c.conflicts);
}

#[test]
fn conflicts_and_warnings() {
    let d = fixture("recipe");
    let s = settings(&d, None).unwrap().unwrap();
    let busy = HostView {
        held: vec![("libvirt-other".into(), cpus("4-5"))],
        remote_partitions: false,
        kernel: "6.1.0-50-cloud-amd64".into(),
        ..host()
    };
    let v = check(&d, &s, &busy);
    let all = v.conflicts.join("\n");
    assert!(
        all.contains("CPU 4 is already held by isolation 'libvirt-other'"),
        "{all}"
    );
    assert!(
        all.contains("this kernel (6.1.0-50-cloud-amd64) cannot isolate a libvirt domain in place: it needs remote cpuset partitions"),
        "{all}"
    );
    // Nothing left for the host.
    let v = check(
        &d,
        &s,
        &HostView {
            online: cpus("2-5"),
            held: vec![("x".into(), cpus("5"))],
            ..host()
        },
    );
    assert!(
        v.conflicts
            .iter()
            .any(|c| c.contains("leave the host no CPU")),
        "{:?}",
        v.conflicts
    );
    // FIFO vCPUs without the realtime profile.
    let plain = Settings {
        profile: Some(Profile::Default),
        ..s
    };
    let v = check(&d, &plain, &host());
    assert!(
        v.warnings.iter().any(|w| w.contains("RT throttling")),
        "{:?}",
        v.warnings
    );
    let v = check(
        &d,
        &plain,
        &HostView {
            rt_throttling_off: true,
            ..host()
        },
    );
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
}

#[test]
fn shared_pins_are_refused_or_warned_about() {
    let mut d = fixture("nested-test");
    d.vcpupins.insert(1, cpus("3"));
    d.emulatorpin = Some(cpus("3"));
    let c = chosen_cpus(&d, &cpus("0-5"));
    assert_eq!(c.cpus.to_string(), "3");
    // Two vCPUs on one CPU: the service would refuse at `started`, so `prepare` refuses.
    assert_eq!(
        c.conflicts,
        [
            "vcpu0 and vcpu1 are both pinned to CPU 3; each vCPU needs CPUs of its own to be \
          isolated (one <vcpupin> per vCPU, each on a different CPU)"
        ]
    );
    assert!(
        c.warnings
            .iter()
            .any(|w| w.starts_with("emulator: shares CPU 3 with a vCPU")),
        "{:?}",
        c.warnings
    );
    let s = settings(&d, None).unwrap().unwrap();
    let v = check(&d, &s, &host());
    assert!(
        v.conflicts
            .iter()
            .any(|c| c.contains("both pinned to CPU 3"))
    );
}

#[test]
fn the_configuration_section_wins_over_the_metadata() {
    let d = fixture("recipe");
    let conf = VmSection {
        tunings: Some(vec!["thp".into()]),
        hugepages: Some("none".into()),
        on_conflict: Some(OnConflict::Warn),
        ..VmSection::default()
    };
    let s = settings(&d, Some(&conf)).unwrap().unwrap();
    assert_eq!(s.profile, None);
    assert_eq!(s.tunings, Some(vec![Tuning::Thp]));
    assert_eq!(s.hugepages, VmHugepages::None);
    assert_eq!(s.on_conflict, OnConflict::Warn);
    assert_eq!(s.hugepage_spec(&d).unwrap(), None);
}

#[test]
fn bad_input_is_named() {
    let mut d = fixture("recipe");
    d.metadata.as_mut().unwrap().profile = Some("fast".into());
    let e = settings(&d, None).unwrap_err();
    assert!(
        e.starts_with("the <kvmisolate:isolate> element of domain \"win10\": profile:"),
        "{e}"
    );
    let e = settings(
        &fixture("virt-manager-default"),
        Some(&VmSection {
            hugepages: Some("lots".into()),
            ..VmSection::default()
        }),
    )
    .unwrap_err();
    assert!(
        e.contains("[vm.debian12]") && e.contains("hugepages"),
        "{e}"
    );
    for (xml, want) in [
        ("<domain><name>x</name>", "not well-formed"),
        ("<vm><name>x</name></vm>", "has <vm> at the top"),
        ("<domain></domain>", "has no <name>"),
        (
            "<domain><name>x</name><cputune><vcpupin vcpu='0' cpuset='3-'/></cputune></domain>",
            "vcpupin cpuset='3-'",
        ),
        (
            "<domain><name>x</name><cputune><vcpupin cpuset='3'/></cputune></domain>",
            "without vcpu=",
        ),
        (
            "<domain><name>x</name><memory unit='parsec'>1</memory></domain>",
            "unknown unit",
        ),
        ("", "no <domain>"),
    ] {
        let e = Domain::parse(xml).unwrap_err();
        assert!(e.to_string().contains(want), "{xml}: {e}");
        let _: &DomainError = &e;
    }
}

#[test]
fn vm_sections_come_from_the_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kvmisolate.toml");
    assert!(
        read_vm_sections(&path).unwrap().is_empty(),
        "no file: nothing"
    );
    std::fs::write(
        &path,
        "[service]\nmin-housekeeping = 2\n\n[vm.win10]\nprofile = \"realtime\"\non-conflict = \"warn\"\n",
    )
    .unwrap();
    let v = read_vm_sections(&path).unwrap();
    assert_eq!(v["win10"].on_conflict, Some(OnConflict::Warn));
    std::fs::write(&path, "[vm.win10]\ncpus = \"2\"\n").unwrap();
    assert!(
        read_vm_sections(&path)
            .unwrap_err()
            .contains("unknown field")
    );
}
