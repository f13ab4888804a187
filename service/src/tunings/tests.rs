//! Tunings against a fake procfs/sysfs tree: what is written, and that release puts every
//! byte back. (The kernel's own behaviour — bracketed THP words, managed IRQs, hugepage
//! shortfalls — is exercised in the VM suite.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use kvmisolate_dbus::tunings::{Profile, VfioIrqPlacement};

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    /// A host with `cpus` online CPUs, IRQs 0, 1, 8, 9, 24, 25 (gaps on purpose) and the usual
    /// knobs.
    fn new(cpus: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let f = Self { dir };
        let all = format!("0-{}", cpus - 1);
        let mask = CpuSet::parse(&all).unwrap().to_hex_mask();
        for n in ["online", "present", "possible"] {
            f.put(&format!("sys/devices/system/cpu/{n}"), &format!("{all}\n"));
        }
        f.put("proc/irq/default_smp_affinity", &format!("{mask}\n"));
        let mut interrupts = String::from("           CPU0       CPU1\n");
        for (n, name) in [
            (0, "timer"),
            (1, "i8042"),
            (8, "rtc0"),
            (9, "acpi"),
            (24, "virtio0-config"),
            (25, "virtio0-input.0"),
        ] {
            f.put(
                &format!("proc/irq/{n}/smp_affinity_list"),
                &format!("{all}\n"),
            );
            interrupts.push_str(&format!(
                "{n:>3}:         12          0   IO-APIC   {n}-edge      {name}\n"
            ));
        }
        // An IRQ already on housekeeping CPUs: never touched.
        f.put("proc/irq/30/smp_affinity_list", "0\n");
        interrupts.push_str(
            " 30:          5          0  PCI-MSIX-0000:00:03.0   0-edge      ahci[0000:00:03.0]\n",
        );
        interrupts.push_str("NMI:          0          0   Non-maskable interrupts\n");
        f.put("proc/interrupts", &interrupts);
        f.put(
            "sys/devices/virtual/workqueue/cpumask",
            &format!("{mask}\n"),
        );
        f.put(
            "sys/devices/virtual/workqueue/cpumask_requested",
            &format!("{mask}\n"),
        );
        f.put(
            "sys/bus/workqueue/devices/writeback/cpumask",
            &format!("{mask}\n"),
        );
        f.put("proc/sys/vm/stat_interval", "1\n");
        f.put("proc/sys/kernel/timer_migration", "1\n");
        f.put("proc/sys/kernel/watchdog_cpumask", &format!("{all}\n"));
        f.put("proc/sys/kernel/sched_rt_runtime_us", "950000\n");
        f.put(
            "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
            "0\n",
        );
        f.put(
            "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages",
            "0\n",
        );
        f.put(
            "sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages",
            "4\n",
        );
        std::fs::create_dir_all(f.path("run/systemd/system")).unwrap();
        std::fs::create_dir_all(f.path("run/kvmisolate")).unwrap();
        f
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn put(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn get(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    fn paths(&self) -> Paths {
        Paths {
            libvirt_run: self.path("run/libvirt/qemu"),
            proc: self.path("proc"),
            sys: self.path("sys"),
            debugfs: self.path("sys/kernel/debug"),
            systemd_runtime: self.path("run/systemd/system"),
        }
    }

    fn engine(&self, settings: Settings, services: Box<dyn Services>) -> HostTunings {
        let mut e = HostTunings::new(
            self.paths(),
            settings,
            &self.path("run/kvmisolate"),
            services,
        );
        e.set_fsync(false);
        e
    }

    fn plain(&self) -> HostTunings {
        self.engine(
            Settings::default(),
            Box::new(NoServices {
                proc: self.path("proc"),
            }),
        )
    }

    /// Every file of the tree but the journal, with its content.
    fn snapshot(&self) -> BTreeMap<String, String> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else if !p.to_string_lossy().contains("run/kvmisolate") {
                    out.insert(
                        p.strip_prefix(base).unwrap().to_string_lossy().into_owned(),
                        // procfs and sysfs end what they print with a newline; plain files
                        // keep what was written, so compare without it.
                        std::fs::read_to_string(&p).unwrap().trim_end().to_owned(),
                    );
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out
    }
}

fn holder(name: &str, cpus: &str, profile: Profile) -> Holder {
    Holder {
        name: name.into(),
        cpus: CpuSet::parse(cpus).unwrap(),
        tunings: profile
            .tunings()
            .into_iter()
            .filter(|t| *t != Tuning::Thp)
            .collect(),
        hugepages: None,
        hugepages_best_effort: false,
        isolated_partition: false,
        vfio: None,
    }
}

fn report(r: &Reconciled, t: Tuning) -> &TuningReport {
    r.reports
        .get(&t)
        .unwrap_or_else(|| panic!("no report for {t}"))
}

#[test]
fn default_profile_applies_and_release_restores_every_byte() {
    let f = Fake::new(8);
    let before = f.snapshot();
    let e = f.plain();
    let r = e
        .reconcile(&[holder("vm", "2-5", Profile::Default)])
        .unwrap();

    assert_eq!(f.get("proc/sys/vm/stat_interval"), "120");
    assert_eq!(f.get("proc/sys/kernel/timer_migration"), "0");
    assert_eq!(f.get("proc/sys/kernel/watchdog_cpumask"), "0-1,6-7");
    assert_eq!(f.get("proc/irq/default_smp_affinity"), "c3");
    for n in [0, 1, 8, 9, 24, 25] {
        assert_eq!(
            f.get(&format!("proc/irq/{n}/smp_affinity_list")),
            "0-1,6-7",
            "IRQ {n}"
        );
    }
    assert_eq!(
        f.get("proc/irq/30/smp_affinity_list"),
        "0\n",
        "an IRQ off the isolated CPUs is left alone"
    );
    assert_eq!(f.get("sys/devices/virtual/workqueue/cpumask"), "c3");
    assert_eq!(f.get("sys/bus/workqueue/devices/writeback/cpumask"), "c3");
    // RT throttling is not in the default profile.
    assert_eq!(f.get("proc/sys/kernel/sched_rt_runtime_us"), "950000\n");

    assert_eq!(
        report(&r, Tuning::VmstatInterval).state,
        TuningState::Applied
    );
    assert_eq!(report(&r, Tuning::VmstatInterval).original, "1");
    assert_eq!(report(&r, Tuning::VmstatInterval).current, "120");
    let gov = report(&r, Tuning::CpuGovernor);
    assert_eq!(gov.state, TuningState::Skipped);
    assert!(
        gov.reason.contains("no CPU frequency scaling"),
        "{}",
        gov.reason
    );
    let irqb = report(&r, Tuning::Irqbalance);
    assert_eq!(
        (irqb.state, irqb.reason.as_str()),
        (TuningState::Skipped, "irqbalance is not running")
    );
    let irq = report(&r, Tuning::IrqAffinity);
    assert!(
        irq.original.contains("IRQ 24 virtio0-config=0-7"),
        "{}",
        irq.original
    );

    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
    assert!(
        !f.path("run/kvmisolate/tunings.json").exists(),
        "an empty journal is removed"
    );
}

#[test]
fn host_wide_values_follow_the_union_and_come_back_in_order() {
    let f = Fake::new(8);
    let before = f.snapshot();
    let e = f.plain();
    let a = holder("a", "2-3", Profile::Default);
    let b = holder("b", "4-5", Profile::Default);
    e.reconcile(std::slice::from_ref(&a)).unwrap();
    assert_eq!(f.get("proc/sys/kernel/watchdog_cpumask"), "0-1,4-7");
    e.reconcile(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(f.get("proc/sys/kernel/watchdog_cpumask"), "0-1,6-7");
    assert_eq!(f.get("proc/irq/24/smp_affinity_list"), "0-1,6-7");
    assert_eq!(f.get("proc/sys/vm/stat_interval"), "120");
    // a goes: b's CPUs only, and the originals are still the journalled ones.
    e.reconcile(std::slice::from_ref(&b)).unwrap();
    assert_eq!(f.get("proc/sys/kernel/watchdog_cpumask"), "0-3,6-7");
    assert_eq!(f.get("proc/irq/24/smp_affinity_list"), "0-3,6-7");
    assert_eq!(f.get("sys/devices/virtual/workqueue/cpumask"), "cf");
    assert_eq!(f.get("proc/sys/vm/stat_interval"), "120");
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn an_isolation_without_tunings_still_counts_as_isolated_for_the_others() {
    let f = Fake::new(8);
    let e = f.plain();
    let quiet = holder("quiet", "6", Profile::None);
    let tuned = holder("tuned", "2-3", Profile::Default);
    e.reconcile(&[quiet, tuned]).unwrap();
    // Only the tuned isolation's CPUs leave the masks...
    assert_eq!(f.get("proc/sys/kernel/watchdog_cpumask"), "0-1,4-7");
}

#[test]
fn wide_masks_and_gaps() {
    // 40 CPUs: masks with a comma between 32-bit words.
    let f = Fake::new(40);
    assert_eq!(f.get("proc/irq/default_smp_affinity"), "ff,ffffffff\n");
    let before = f.snapshot();
    let e = f.plain();
    e.reconcile(&[holder("vm", "2-5,33-35", Profile::Default)])
        .unwrap();
    let got = CpuSet::from_hex_mask(&f.get("proc/irq/default_smp_affinity")).unwrap();
    assert_eq!(got.to_string(), "0-1,6-32,36-39");
    assert_eq!(f.get("proc/irq/9/smp_affinity_list"), "0-1,6-32,36-39");
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn irqs_matching_the_exclusion_list_stay() {
    let f = Fake::new(8);
    let settings = Settings {
        irq_exclude: vec![glob::Pattern::new("virtio0-*").unwrap()],
        ..Settings::default()
    };
    let e = f.engine(
        settings,
        Box::new(NoServices {
            proc: f.path("proc"),
        }),
    );
    let r = e
        .reconcile(&[holder("vm", "2-5", Profile::Default)])
        .unwrap();
    assert_eq!(f.get("proc/irq/24/smp_affinity_list"), "0-7\n");
    assert_eq!(f.get("proc/irq/25/smp_affinity_list"), "0-7\n");
    assert_eq!(f.get("proc/irq/8/smp_affinity_list"), "0-1,6-7");
    let reason = &report(&r, Tuning::IrqAffinity).reason;
    assert!(
        reason.contains("24 (virtio0-config), 25 (virtio0-input.0)"),
        "{reason}"
    );
}

#[test]
fn a_crash_leaves_a_journal_that_a_restart_restores_or_completes() {
    let f = Fake::new(8);
    let before = f.snapshot();
    let h = holder("vm", "2-5", Profile::Realtime);
    f.plain().reconcile(std::slice::from_ref(&h)).unwrap();
    let applied = f.snapshot();
    // Half-way states: take a journal and files as a crash after the first writes leaves them.
    let journal = std::fs::read_to_string(f.path("run/kvmisolate/tunings.json")).unwrap();
    assert!(journal.contains("\"original\": \"950000\""), "{journal}");

    // A new daemon that adopts the isolation completes (nothing changes)...
    let e = f.plain();
    assert_eq!(e.journalled_holders().unwrap(), vec![h.clone()]);
    e.reconcile(&[h]).unwrap();
    assert_eq!(f.snapshot(), applied);
    // ...one that does not adopt it restores everything.
    f.plain().reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn journal_is_written_before_each_file() {
    // Stop after every number of writes, as SIGKILL would: the journal must already hold the
    // file just written, and a restart that does not adopt the isolation brings back all.
    let order = [
        "proc/irq/default_smp_affinity",
        "proc/irq/0/smp_affinity_list",
        "proc/irq/1/smp_affinity_list",
        "proc/irq/8/smp_affinity_list",
        "proc/irq/9/smp_affinity_list",
        "proc/irq/24/smp_affinity_list",
        "proc/irq/25/smp_affinity_list",
        "sys/devices/virtual/workqueue/cpumask",
        "sys/bus/workqueue/devices/writeback/cpumask",
        "proc/sys/vm/stat_interval",
        "proc/sys/kernel/timer_migration",
        "proc/sys/kernel/watchdog_cpumask",
        "proc/sys/kernel/sched_rt_runtime_us",
    ];
    for (i, file) in order.iter().enumerate() {
        let f = Fake::new(8);
        let before = f.snapshot();
        let h = holder("vm", "2-5", Profile::Realtime);
        let mut e = f.plain();
        e.set_test_hooks(crate::test_hooks::TestHooks::simulated_crash_after_tuning(
            i + 1,
        ));
        let err = e.reconcile(std::slice::from_ref(&h)).unwrap_err();
        assert!(err.to_string().contains("simulated crash"), "{err}");
        assert_ne!(f.snapshot(), before, "write {} changed nothing", i + 1);
        let journal = std::fs::read_to_string(f.path("run/kvmisolate/tunings.json")).unwrap();
        assert!(
            journal.contains(file),
            "write {}: {file} not journalled",
            i + 1
        );
        // Adopting completes...
        f.plain().reconcile(std::slice::from_ref(&h)).unwrap();
        // ...and not adopting restores.
        f.plain().reconcile(&[]).unwrap();
        assert_eq!(f.snapshot(), before, "after a crash at write {}", i + 1);
    }
}

#[test]
fn hugepages_add_up_per_pool_and_go_back() {
    let f = Fake::new(8);
    let before = f.snapshot();
    let e = f.plain();
    let mut a = holder("a", "2-3", Profile::None);
    a.hugepages = Some("1G".parse().unwrap());
    let mut b = holder("b", "4-5", Profile::None);
    b.hugepages = Some("256M".parse().unwrap());
    let mut c = holder("c", "6", Profile::None);
    c.hugepages = Some("2G:1G".parse().unwrap());
    let mut d = holder("d", "7", Profile::None);
    d.hugepages = Some("8M@0".parse().unwrap());
    let r = e
        .reconcile(&[a.clone(), b.clone(), c.clone(), d.clone()])
        .unwrap();
    assert_eq!(
        f.get("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
        "640"
    );
    assert_eq!(
        f.get("sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"),
        "2"
    );
    assert_eq!(
        f.get("sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"),
        "8"
    );
    assert_eq!(report(&r, Tuning::Hugepages).state, TuningState::Applied);
    e.reconcile(&[b, c, d]).unwrap();
    assert_eq!(
        f.get("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
        "128"
    );
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn a_missing_hugepage_size_or_node_fails_cleanly() {
    let f = Fake::new(8);
    let before = f.snapshot();
    let e = f.plain();
    let mut a = holder("a", "2-3", Profile::Default);
    a.hugepages = Some("2G:1G@3".parse().unwrap());
    let err = e.reconcile(&[a]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("page size or NUMA node is not available"),
        "{text}"
    );
    assert!(matches!(err, Error::TuningFailed(_)));
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn more_hugepages_than_memory_is_refused_before_touching_the_pool() {
    let f = Fake::new(8);
    f.put(
        "proc/meminfo",
        "MemTotal:        2014848 kB\nMemFree:  1000 kB\n",
    );
    f.put(
        "sys/devices/system/node/node0/meminfo",
        "Node 0 MemTotal:       1000000 kB\n",
    );
    let before = f.snapshot();
    let e = f.plain();
    let mut a = holder("a", "2-3", Profile::None);
    a.hugepages = Some("4G".parse().unwrap());
    let text = e
        .reconcile(std::slice::from_ref(&a))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("2048 2M pages (4096 MiB) asked for, but this host has only 1967 MiB"),
        "{text}"
    );
    a.hugepages = Some("1G@0".parse().unwrap());
    let text = e
        .reconcile(std::slice::from_ref(&a))
        .unwrap_err()
        .to_string();
    assert!(text.contains("the NUMA node has only 976 MiB"), "{text}");
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn a_pool_grows_by_at_most_mem_available_minus_the_margin() {
    let f = Fake::new(8);
    // 2 GiB in all, 1 GiB available: 768 MiB may be taken (256 MiB margin).
    f.put(
        "proc/meminfo",
        "MemTotal:        2097152 kB\nMemFree:  1000 kB\nMemAvailable:    1048576 kB\n",
    );
    let before = f.snapshot();
    let e = f.plain();
    let mut a = holder("a", "2-3", Profile::None);
    a.hugepages = Some("800M".parse().unwrap());
    let text = e
        .reconcile(std::slice::from_ref(&a))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("would take 800 MiB more from the host, but only 768 MiB can be taken now: MemAvailable 1024 MiB minus a margin of 256 MiB"),
        "{text}"
    );
    assert_eq!(f.snapshot(), before);
    // Within the cap it is applied; the pages already in the pool do not count again when
    // another isolation comes (the pool grows only by the newcomer's pages).
    a.hugepages = Some("512M".parse().unwrap());
    e.reconcile(std::slice::from_ref(&a)).unwrap();
    let mut b = holder("b", "4-5", Profile::None);
    b.hugepages = Some("256M".parse().unwrap());
    e.reconcile(&[a.clone(), b]).unwrap();
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn governor_follows_the_policies_that_cover_isolated_cpus() {
    let f = Fake::new(4);
    for (p, cpus) in [(0, "0 1"), (2, "2 3")] {
        f.put(
            &format!("sys/devices/system/cpu/cpufreq/policy{p}/affected_cpus"),
            &format!("{cpus}\n"),
        );
        f.put(
            &format!("sys/devices/system/cpu/cpufreq/policy{p}/scaling_governor"),
            "schedutil\n",
        );
        f.put(
            &format!("sys/devices/system/cpu/cpufreq/policy{p}/scaling_available_governors"),
            "performance schedutil powersave\n",
        );
    }
    let before = f.snapshot();
    let e = f.plain();
    e.reconcile(&[holder("vm", "3", Profile::Default)]).unwrap();
    assert_eq!(
        f.get("sys/devices/system/cpu/cpufreq/policy0/scaling_governor"),
        "schedutil\n"
    );
    assert_eq!(
        f.get("sys/devices/system/cpu/cpufreq/policy2/scaling_governor"),
        "performance"
    );
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn fair_server_needs_debugfs_and_the_6_12_files() {
    let f = Fake::new(4);
    let e = f.plain();
    let h = holder("vm", "2-3", Profile::Realtime);
    let r = e.reconcile(std::slice::from_ref(&h)).unwrap();
    assert!(
        report(&r, Tuning::FairServer)
            .reason
            .contains("debugfs is not mounted")
    );
    e.reconcile(&[]).unwrap();
    f.put("sys/kernel/debug/sched/debug", "x\n");
    let r = e.reconcile(std::slice::from_ref(&h)).unwrap();
    assert!(
        report(&r, Tuning::FairServer)
            .reason
            .contains("no fair server")
    );
    e.reconcile(&[]).unwrap();
    for c in 0..4 {
        f.put(
            &format!("sys/kernel/debug/sched/fair_server/cpu{c}/runtime"),
            "50000000\n",
        );
    }
    let before = f.snapshot();
    e.reconcile(std::slice::from_ref(&h)).unwrap();
    assert_eq!(
        f.get("sys/kernel/debug/sched/fair_server/cpu1/runtime"),
        "50000000\n"
    );
    assert_eq!(
        f.get("sys/kernel/debug/sched/fair_server/cpu2/runtime"),
        "0"
    );
    assert_eq!(f.get("proc/sys/kernel/sched_rt_runtime_us"), "-1");
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn timer_migration_left_to_kernels_that_exclude_isolated_partitions() {
    let f = Fake::new(4);
    let e = f.plain();
    let iso = holder("vm", "2-3", Profile::Default).with_isolated_partition(true);
    let root = holder("other", "1", Profile::Default);
    let orig = f.get("proc/sys/kernel/timer_migration");
    std::fs::write(
        f.path("proc/sys/kernel/osrelease"),
        "6.12.57+deb13-cloud-amd64\n",
    )
    .unwrap();
    let r = e.reconcile(std::slice::from_ref(&iso)).unwrap();
    assert_eq!(
        report(&r, Tuning::TimerMigration).state,
        TuningState::Applied
    );
    assert_eq!(f.get("proc/sys/kernel/timer_migration"), "0");
    e.reconcile(&[]).unwrap();
    std::fs::write(
        f.path("proc/sys/kernel/osrelease"),
        "7.3.4+deb13-cloud-amd64\n",
    )
    .unwrap();
    let before = f.get("proc/sys/kernel/timer_migration");
    let r = e.reconcile(std::slice::from_ref(&iso)).unwrap();
    let rep = report(&r, Tuning::TimerMigration);
    assert_eq!(rep.state, TuningState::Skipped);
    assert!(rep.reason.contains("6.19+"), "{}", rep.reason);
    assert_eq!(f.get("proc/sys/kernel/timer_migration"), before);
    // a root partition among the holders: the sysctl is still needed
    let r = e.reconcile(&[iso, root]).unwrap();
    assert_eq!(
        report(&r, Tuning::TimerMigration).state,
        TuningState::Applied
    );
    assert_eq!(f.get("proc/sys/kernel/timer_migration"), "0");
    e.reconcile(&[]).unwrap();
    // procfs always reads back with a newline; the fake file keeps what was written
    assert_eq!(f.get("proc/sys/kernel/timer_migration").trim(), orig.trim());
}

#[test]
fn missing_knobs_are_skipped_with_a_reason() {
    let f = Fake::new(4);
    std::fs::remove_file(f.path("proc/sys/kernel/timer_migration")).unwrap();
    std::fs::remove_file(f.path("proc/sys/kernel/watchdog_cpumask")).unwrap();
    std::fs::remove_dir_all(f.path("sys/bus/workqueue")).unwrap();
    let e = f.plain();
    let r = e
        .reconcile(&[holder("vm", "2-3", Profile::Default)])
        .unwrap();
    assert_eq!(
        report(&r, Tuning::TimerMigration).state,
        TuningState::Skipped
    );
    assert!(
        report(&r, Tuning::TimerMigration)
            .reason
            .contains("kernel.timer_migration")
    );
    assert!(
        report(&r, Tuning::WatchdogCpumask)
            .reason
            .contains("no lockup watchdog")
    );
    assert!(
        report(&r, Tuning::WorkqueueWriteback)
            .reason
            .contains("writeback workqueue mask")
    );
    assert_eq!(
        report(&r, Tuning::VmstatInterval).state,
        TuningState::Applied
    );
}

struct MockSystemd {
    restarts: Arc<AtomicUsize>,
}

impl Services for MockSystemd {
    fn irqbalance(&self) -> Irqbalance {
        Irqbalance::SystemdUnit
    }
    fn restart_irqbalance(&self) -> Result<(), String> {
        self.restarts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn irqbalance_gets_a_drop_in_banning_every_isolated_cpu() {
    let f = Fake::new(8);
    let before = f.snapshot();
    let restarts = Arc::new(AtomicUsize::new(0));
    let e = f.engine(
        Settings::default(),
        Box::new(MockSystemd {
            restarts: restarts.clone(),
        }),
    );
    let dropin = "run/systemd/system/irqbalance.service.d/50-kvmisolate.conf";
    let a = holder("a", "2-3", Profile::Default);
    let b = holder("b", "5", Profile::Default);
    e.reconcile(std::slice::from_ref(&a)).unwrap();
    assert!(
        f.get(dropin)
            .contains("Environment=IRQBALANCE_BANNED_CPULIST=2-3\n")
    );
    assert_eq!(restarts.load(Ordering::SeqCst), 1);
    // Same content: no restart.
    e.reconcile(std::slice::from_ref(&a)).unwrap();
    assert_eq!(restarts.load(Ordering::SeqCst), 1);
    e.reconcile(&[a, b.clone()]).unwrap();
    assert!(f.get(dropin).contains("IRQBALANCE_BANNED_CPULIST=2-3,5\n"));
    assert_eq!(restarts.load(Ordering::SeqCst), 2);
    e.reconcile(&[]).unwrap();
    assert_eq!(restarts.load(Ordering::SeqCst), 3);
    assert!(!f.path("run/systemd/system/irqbalance.service.d").exists());
    assert_eq!(f.snapshot(), before);
}

#[test]
fn irqbalance_without_systemd_is_reported_not_touched() {
    let f = Fake::new(4);
    f.put("proc/4242/comm", "irqbalance\n");
    let e = f.plain();
    let r = e
        .reconcile(&[holder("vm", "2-3", Profile::Default)])
        .unwrap();
    let ib = report(&r, Tuning::Irqbalance);
    assert_eq!(ib.state, TuningState::Skipped);
    assert!(
        ib.reason.contains("IRQBALANCE_BANNED_CPULIST=2-3"),
        "{}",
        ib.reason
    );
}

#[test]
fn reports_per_holder_list_only_its_tunings() {
    let f = Fake::new(8);
    let e = f.plain();
    let mut a = holder("a", "2-3", Profile::None);
    a.tunings.insert(Tuning::VmstatInterval);
    a.hugepages = Some("4M".parse().unwrap());
    e.reconcile(std::slice::from_ref(&a)).unwrap();
    let names: Vec<Tuning> = e.reports_for(&a).iter().map(|r| r.tuning).collect();
    assert_eq!(names, vec![Tuning::Hugepages, Tuning::VmstatInterval]);
    let hp = &e.reports_for(&a)[0];
    assert_eq!((hp.original.as_str(), hp.current.as_str()), ("0", "2"));
}

#[test]
fn compacting_before_growing_a_pool_is_optional() {
    let f = Fake::new(4);
    f.put("proc/sys/vm/drop_caches", "0\n");
    f.put("proc/sys/vm/compact_memory", "0\n");
    let mut a = holder("a", "2", Profile::None);
    a.hugepages = Some("4M".parse().unwrap());
    f.plain().reconcile(std::slice::from_ref(&a)).unwrap();
    assert_eq!(f.get("proc/sys/vm/drop_caches"), "0\n", "not asked for");
    f.plain().reconcile(&[]).unwrap();
    let settings = Settings {
        hugepages_compact: true,
        ..Settings::default()
    };
    let e = f.engine(
        settings,
        Box::new(NoServices {
            proc: f.path("proc"),
        }),
    );
    e.reconcile(std::slice::from_ref(&a)).unwrap();
    assert_eq!(f.get("proc/sys/vm/drop_caches"), "3");
    assert_eq!(f.get("proc/sys/vm/compact_memory"), "1");
    assert_eq!(
        f.get("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
        "2"
    );
}

#[test]
fn only_the_files_of_the_tunings_may_be_touched() {
    let f = Fake::new(8);
    let p = f.paths();
    let ok = |rel: &str, codec| p.may_touch(&f.path(rel), codec);
    assert!(ok("proc/sys/vm/stat_interval", Codec::Text).is_ok());
    assert!(ok("proc/irq/24/smp_affinity_list", Codec::CpuList).is_ok());
    assert!(
        ok(
            "sys/devices/virtual/workqueue/cpumask",
            Codec::WorkqueueMask
        )
        .is_ok()
    );
    assert!(
        ok(
            "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
            Codec::Count
        )
        .is_ok()
    );
    assert!(
        ok(
            "sys/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages",
            Codec::Count
        )
        .is_ok()
    );
    assert!(
        ok(
            "sys/kernel/debug/sched/fair_server/cpu3/runtime",
            Codec::Text
        )
        .is_ok()
    );
    assert!(
        ok(
            "run/systemd/system/irqbalance.service.d/50-kvmisolate.conf",
            Codec::OwnFile
        )
        .is_ok()
    );
    for (rel, codec) in [
        ("proc/sys/../../etc/shadow", Codec::Text),
        ("etc/passwd", Codec::Text),
        (
            "sys/kernel/mm/transparent_hugepage/khugepaged/defrag",
            Codec::Selected,
        ),
        ("sys/devices/system/cpu/cpu3/online", Codec::Text),
        (
            "sys/kernel/debug/sched/fair_server/cpu3/../../x",
            Codec::Text,
        ),
        (
            "run/systemd/system/sshd.service.d/50-kvmisolate.conf",
            Codec::OwnFile,
        ),
        ("proc/sys/kernel/x", Codec::OwnFile),
        (
            "run/systemd/system/irqbalance.service.d/50-kvmisolate.conf",
            Codec::Text,
        ),
    ] {
        let e = ok(rel, codec).expect_err(rel);
        assert!(e.contains("the tunings touch only"), "{e}");
    }
}

/// Edits the tunings journal as JSON.
fn edit_journal(f: &Fake, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = f.path("run/kvmisolate/tunings.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn a_journal_naming_another_file_is_refused_before_any_write() {
    let f = Fake::new(8);
    let before = f.snapshot();
    let e = f.plain();
    e.reconcile(&[holder("vm", "2-5", Profile::Default)])
        .unwrap();
    f.put("etc/passwd", "root:x:0:0\n");
    let applied = f.snapshot();
    let victim = f.path("etc/passwd").to_string_lossy().into_owned();
    edit_journal(&f, |v| {
        let files = v["files"].as_object_mut().unwrap();
        let entry = files.values().next().unwrap().clone();
        let mut entry = entry;
        entry["original"] = serde_json::json!("pwned");
        files.insert(victim.clone(), entry);
    });
    // The journal is read when the engine starts (the next start of the service).
    let e = f.plain();
    for attempt in [
        e.reconcile(&[]),
        e.reconcile(&[holder("vm", "2-5", Profile::Default)]),
    ] {
        let err = attempt.unwrap_err().to_string();
        assert!(
            err.contains(&victim) && err.contains("nothing was written"),
            "{err}"
        );
        assert_eq!(f.snapshot(), applied, "nothing written or removed");
    }
    // The drop-in path under another name is refused the same way.
    edit_journal(&f, |v| {
        let files = v["files"].as_object_mut().unwrap();
        files.remove(&victim);
        let mut own = files.values().next().unwrap().clone();
        own["codec"] = serde_json::json!("own-file");
        own["original"] = serde_json::Value::Null;
        files.insert(
            f.path("run/systemd/system/x.service.d/50-kvmisolate.conf")
                .to_string_lossy()
                .into_owned(),
            own,
        );
    });
    assert!(f.plain().reconcile(&[]).is_err());
    assert_eq!(f.snapshot(), applied);
    // Fixed by hand: restored.
    edit_journal(&f, |v| {
        let files = v["files"].as_object_mut().unwrap();
        files.retain(|k, _| !k.contains("x.service.d"));
    });
    f.plain().reconcile(&[]).unwrap();
    std::fs::remove_file(f.path("etc/passwd")).unwrap();
    std::fs::remove_dir(f.path("etc")).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn a_journal_of_another_version_is_restored_not_set_aside() {
    let f = Fake::new(8);
    let before = f.snapshot();
    let h = holder("vm", "2-5", Profile::Realtime);
    f.plain().reconcile(std::slice::from_ref(&h)).unwrap();
    let applied = f.snapshot();
    // A newer kvmisolated wrote it: another version number and fields this one does not know.
    edit_journal(&f, |v| {
        v["version"] = serde_json::json!(7);
        v["generation"] = serde_json::json!({"some": "thing"});
        for entry in v["files"].as_object_mut().unwrap().values_mut() {
            entry["checksum"] = serde_json::json!(42);
        }
    });
    let e = f.plain();
    assert_eq!(e.journalled_holders().unwrap(), vec![h.clone()]);
    // Adopted again: completes, nothing changes; the journal is this version's again.
    e.reconcile(std::slice::from_ref(&h)).unwrap();
    assert_eq!(f.snapshot(), applied);
    let again: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(f.path("run/kvmisolate/tunings.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(again["version"], serde_json::json!(STATE_VERSION));
    // Released: every original back.
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
    // One it cannot read at all says which version wrote it, and changes nothing.
    f.plain().reconcile(std::slice::from_ref(&h)).unwrap();
    edit_journal(&f, |v| {
        v["version"] = serde_json::json!(9);
        v["files"] = serde_json::json!(["a list now"]);
    });
    let err = f.plain().reconcile(&[]).unwrap_err().to_string();
    assert!(
        err.contains("version 9") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(f.snapshot(), applied);
}

#[test]
fn an_irq_want_names_its_irq() {
    let want = |tuning, path: &str| wants::Want {
        tuning,
        path: path.into(),
        codec: Codec::CpuList,
        value: String::new(),
        label: String::new(),
    };
    assert_eq!(
        want(Tuning::IrqAffinity, "/proc/irq/24/smp_affinity_list").irq(),
        Some(24)
    );
    assert_eq!(
        want(Tuning::IrqAffinity, "/proc/irq/default_smp_affinity").irq(),
        None
    );
    assert_eq!(
        want(Tuning::WatchdogCpumask, "/proc/irq/24/smp_affinity_list").irq(),
        None
    );
}

/// Copies a fixture tree from `service/tests/fixtures/` into the fake tree at `to`.
fn copy_fixture(f: &Fake, fixture: &str, to: &str) {
    fn walk(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, &to.join(e.file_name()));
            } else if p.extension().is_none_or(|x| x != "md") {
                std::fs::copy(&p, to.join(e.file_name())).unwrap();
            }
        }
    }
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    walk(&from, &f.path(to));
}

fn holder_with(name: &str, cpus: &str, tunings: &[Tuning]) -> Holder {
    Holder {
        tunings: tunings.iter().copied().collect(),
        ..holder(name, cpus, Profile::None)
    }
}

#[test]
fn split_lock_and_numa_balancing_follow_the_realtime_isolations() {
    let f = Fake::new(8);
    f.put("proc/sys/kernel/split_lock_mitigate", "1\n");
    f.put("proc/sys/kernel/numa_balancing", "1\n");
    let before = f.snapshot();
    let e = f.plain();
    // Not in the default profile: a default isolation leaves both alone.
    e.reconcile(&[holder("d", "6", Profile::Default)]).unwrap();
    assert_eq!(f.get("proc/sys/kernel/split_lock_mitigate"), "1\n");
    assert_eq!(f.get("proc/sys/kernel/numa_balancing"), "1\n");
    let a = holder("a", "2-3", Profile::Realtime);
    let b = holder("b", "4", Profile::Realtime);
    let r = e.reconcile(&[a.clone(), b.clone()]).unwrap();
    for (file, t) in [
        ("split_lock_mitigate", Tuning::SplitLock),
        ("numa_balancing", Tuning::NumaBalancing),
    ] {
        assert_eq!(f.get(&format!("proc/sys/kernel/{file}")), "0", "{file}");
        let rep = report(&r, t);
        assert_eq!(
            (rep.state, rep.original.as_str(), rep.current.as_str()),
            (TuningState::Applied, "1", "0"),
            "{t}"
        );
    }
    // One of the two goes: the other still holds them.
    e.reconcile(std::slice::from_ref(&b)).unwrap();
    assert_eq!(f.get("proc/sys/kernel/split_lock_mitigate"), "0");
    assert_eq!(f.get("proc/sys/kernel/numa_balancing"), "0");
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
    // NUMA balancing in memory-tiering mode (2) comes back as 2, not as 1.
    f.put("proc/sys/kernel/numa_balancing", "2\n");
    e.reconcile(std::slice::from_ref(&a)).unwrap();
    assert_eq!(f.get("proc/sys/kernel/numa_balancing"), "0");
    e.reconcile(&[]).unwrap();
    assert_eq!(f.get("proc/sys/kernel/numa_balancing"), "2");
}

#[test]
fn split_lock_and_numa_balancing_are_skipped_where_the_kernel_lacks_them() {
    let f = Fake::new(4);
    let before = f.snapshot();
    let e = f.plain();
    let r = e
        .reconcile(&[holder_with(
            "vm",
            "2-3",
            &[Tuning::SplitLock, Tuning::NumaBalancing],
        )])
        .unwrap();
    let split = report(&r, Tuning::SplitLock);
    assert_eq!(split.state, TuningState::Skipped);
    assert!(
        split.reason.contains("kernel.split_lock_mitigate") && split.reason.contains("6.2+"),
        "{}",
        split.reason
    );
    let numa = report(&r, Tuning::NumaBalancing);
    assert_eq!(numa.state, TuningState::Skipped);
    assert!(
        numa.reason.contains("kernel.numa_balancing"),
        "{}",
        numa.reason
    );
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

/// `pm_qos_resume_latency_us` of each CPU, as the kernel prints it without a limit
/// (Documentation/ABI/testing/sysfs-devices-power: "0" means no restriction, "n/a" no
/// latency accepted at all; drivers/base/power/sysfs.c prints either with a newline).
fn put_pm_qos(f: &Fake, cpus: u32) {
    for c in 0..cpus {
        f.put(
            &format!("sys/devices/system/cpu/cpu{c}/power/pm_qos_resume_latency_us"),
            "0\n",
        );
    }
}

fn pm_qos(f: &Fake, cpu: u32) -> String {
    f.get(&format!(
        "sys/devices/system/cpu/cpu{cpu}/power/pm_qos_resume_latency_us"
    ))
}

#[test]
fn cpu_idle_limits_the_isolated_cpus_only_and_restores_them() {
    let f = Fake::new(8);
    put_pm_qos(&f, 8);
    // One CPU had a limit of its own before: it comes back as it was.
    f.put(
        "sys/devices/system/cpu/cpu4/power/pm_qos_resume_latency_us",
        "n/a\n",
    );
    let before = f.snapshot();
    let e = f.plain();
    let a = holder("a", "2-3", Profile::Realtime);
    let b = holder_with("b", "4-5", &[Tuning::CpuIdle]);
    e.reconcile(std::slice::from_ref(&a)).unwrap();
    assert_eq!(pm_qos(&f, 2), "20");
    assert_eq!(pm_qos(&f, 3), "20");
    assert_eq!(pm_qos(&f, 4), "n/a\n");
    let r = e.reconcile(&[a.clone(), b.clone()]).unwrap();
    for c in 2..=5 {
        assert_eq!(pm_qos(&f, c), "20", "CPU {c}");
    }
    for c in [0, 1, 6, 7] {
        assert_eq!(pm_qos(&f, c), "0\n", "CPU {c} is not isolated");
    }
    let rep = report(&r, Tuning::CpuIdle);
    assert_eq!(rep.state, TuningState::Applied);
    assert!(rep.original.contains("cpu4=n/a"), "{}", rep.original);
    // a goes: its CPUs come back, b's stay limited.
    e.reconcile(std::slice::from_ref(&b)).unwrap();
    assert_eq!(pm_qos(&f, 2), "0");
    assert_eq!(pm_qos(&f, 4), "20");
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn cpu_idle_takes_the_configured_limit_and_skips_without_the_files() {
    let f = Fake::new(4);
    let e = f.engine(
        Settings {
            cpu_idle_latency: "n/a".into(),
            ..Settings::default()
        },
        Box::new(NoServices {
            proc: f.path("proc"),
        }),
    );
    let h = holder_with("vm", "2-3", &[Tuning::CpuIdle]);
    let r = e.reconcile(std::slice::from_ref(&h)).unwrap();
    let rep = report(&r, Tuning::CpuIdle);
    assert_eq!(rep.state, TuningState::Skipped);
    assert!(
        rep.reason.contains("pm_qos_resume_latency_us") && rep.reason.contains("CPUs 2-3"),
        "{}",
        rep.reason
    );
    e.reconcile(&[]).unwrap();
    put_pm_qos(&f, 4);
    let before = f.snapshot();
    e.reconcile(std::slice::from_ref(&h)).unwrap();
    assert_eq!(pm_qos(&f, 2), "n/a");
    assert_eq!(pm_qos(&f, 1), "0\n");
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

fn epp(f: &Fake, policy: u32) -> String {
    f.get(&format!(
        "sys/devices/system/cpu/cpufreq/policy{policy}/energy_performance_preference"
    ))
}

#[test]
fn energy_perf_sets_the_policies_of_isolated_cpus_with_the_governor() {
    let f = Fake::new(4);
    copy_fixture(&f, "sysfs/cpufreq-epp", "sys/devices/system/cpu/cpufreq");
    let before = f.snapshot();
    let e = f.plain();
    let a = holder("a", "3", Profile::Default);
    let r = e.reconcile(std::slice::from_ref(&a)).unwrap();
    assert_eq!(epp(&f, 2), "performance");
    assert_eq!(
        f.get("sys/devices/system/cpu/cpufreq/policy2/scaling_governor"),
        "performance"
    );
    assert_eq!(
        epp(&f, 0),
        "balance_performance\n",
        "policy0 has no isolated CPU"
    );
    let rep = report(&r, Tuning::EnergyPerf);
    assert_eq!(
        (rep.state, rep.original.as_str(), rep.current.as_str()),
        (TuningState::Applied, "balance_performance", "performance")
    );
    // With the performance governor, intel_pstate and amd-pstate force the preference to
    // `performance` and refuse other writes: the preference is applied (its original read)
    // before the governor, and restored after it (files are restored in reverse path order,
    // and `energy_performance_preference` sorts before `scaling_governor`).
    let at = |t| Tuning::ALL.iter().position(|x| *x == t).unwrap();
    assert!(at(Tuning::EnergyPerf) < at(Tuning::CpuGovernor));
    assert!(
        Path::new("policy2/energy_performance_preference") < Path::new("policy2/scaling_governor")
    );
    // A second isolation on policy0's CPUs: the union.
    let b = holder("b", "1", Profile::Default);
    e.reconcile(&[a, b.clone()]).unwrap();
    assert_eq!(epp(&f, 0), "performance");
    e.reconcile(std::slice::from_ref(&b)).unwrap();
    assert_eq!(epp(&f, 2), "balance_performance");
    assert_eq!(epp(&f, 0), "performance");
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn energy_perf_skips_drivers_without_a_preference() {
    let f = Fake::new(4);
    let e = f.plain();
    let h = holder_with("vm", "2-3", &[Tuning::EnergyPerf]);
    // No cpufreq at all (a VM).
    let r = e.reconcile(std::slice::from_ref(&h)).unwrap();
    let rep = report(&r, Tuning::EnergyPerf);
    assert_eq!(rep.state, TuningState::Skipped);
    assert!(
        rep.reason.contains("energy_performance_preference"),
        "{}",
        rep.reason
    );
    e.reconcile(&[]).unwrap();
    // acpi-cpufreq: policies, but no preference file.
    f.put(
        "sys/devices/system/cpu/cpufreq/policy2/affected_cpus",
        "2 3\n",
    );
    f.put(
        "sys/devices/system/cpu/cpufreq/policy2/scaling_driver",
        "acpi-cpufreq\n",
    );
    let r = e.reconcile(std::slice::from_ref(&h)).unwrap();
    assert_eq!(report(&r, Tuning::EnergyPerf).state, TuningState::Skipped);
    e.reconcile(&[]).unwrap();
    // A preference file without `performance` offered: noted, left alone.
    copy_fixture(&f, "sysfs/cpufreq-epp", "sys/devices/system/cpu/cpufreq");
    f.put(
        "sys/devices/system/cpu/cpufreq/policy2/energy_performance_available_preferences",
        "default balance_performance \n",
    );
    let r = e.reconcile(std::slice::from_ref(&h)).unwrap();
    let rep = report(&r, Tuning::EnergyPerf);
    assert!(
        rep.reason.contains("policy2") && rep.reason.contains("not offered"),
        "{}",
        rep.reason
    );
    assert_eq!(epp(&f, 2), "balance_performance\n");
}

#[test]
fn the_new_tunings_files_may_be_touched() {
    let f = Fake::new(4);
    let p = f.paths();
    for rel in [
        "sys/devices/system/cpu/cpu3/power/pm_qos_resume_latency_us",
        "sys/devices/system/cpu/cpufreq/policy2/energy_performance_preference",
        "proc/sys/kernel/split_lock_mitigate",
        "proc/sys/kernel/numa_balancing",
    ] {
        assert!(p.may_touch(&f.path(rel), Codec::Text).is_ok(), "{rel}");
    }
    for rel in [
        "sys/devices/system/cpu/cpu3/power/control",
        "sys/devices/system/cpu/cpu3/cpuidle/state2/disable",
        "sys/devices/system/cpu/cpufreq/policy2/scaling_max_freq",
    ] {
        assert!(p.may_touch(&f.path(rel), Codec::Text).is_err(), "{rel}");
    }
}

#[test]
fn a_crash_between_cpu_idle_writes_is_adopted_or_restored() {
    // The journal test above for the per-CPU files: SIGKILL after each write.
    for n in 1..=3 {
        let f = Fake::new(4);
        put_pm_qos(&f, 4);
        f.put("proc/sys/kernel/split_lock_mitigate", "1\n");
        let before = f.snapshot();
        let h = holder_with("vm", "2-3", &[Tuning::SplitLock, Tuning::CpuIdle]);
        let mut e = f.plain();
        e.set_test_hooks(crate::test_hooks::TestHooks::simulated_crash_after_tuning(
            n,
        ));
        assert!(e.reconcile(std::slice::from_ref(&h)).is_err());
        f.plain().reconcile(std::slice::from_ref(&h)).unwrap();
        assert_eq!(
            (pm_qos(&f, 2), pm_qos(&f, 3)),
            ("20".into(), "20".into()),
            "crash after write {n}"
        );
        assert_eq!(f.get("proc/sys/kernel/split_lock_mitigate"), "0");
        f.plain().reconcile(&[]).unwrap();
        assert_eq!(f.snapshot(), before, "crash after write {n}");
    }
}

/// The fake tree with `fixtures/vfio` overlaid (see its README): domain `win11` with two MSI-X
/// vectors (146, 147), an INTx line (17) and a device that enabled nothing; every IRQ on 0-7.
fn vfio_fixture() -> Fake {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        for entry in std::fs::read_dir(from).unwrap().flatten() {
            let target = to.join(entry.file_name());
            if entry.path().is_dir() {
                std::fs::create_dir_all(&target).unwrap();
                copy(&entry.path(), &target);
            } else if entry.file_name() != ".keep" {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let f = Fake::new(8);
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tunings/fixtures/vfio");
    copy(&fixture, f.dir.path());
    let extra = f.get("proc/interrupts.vfio");
    std::fs::remove_file(f.path("proc/interrupts.vfio")).unwrap();
    let interrupts = f.get("proc/interrupts");
    let (head, tail) = interrupts.split_once("NMI:").unwrap();
    f.put("proc/interrupts", &format!("{head}{extra}NMI:{tail}"));
    for n in [17, 18, 146, 147] {
        f.put(&format!("proc/irq/{n}/smp_affinity_list"), "0-7\n");
    }
    f
}

fn vfio_holder(domain: &str, placement: VfioIrqPlacement, tunings: &[Tuning]) -> Holder {
    holder_with("libvirt-win11", "2-5", tunings).with_vfio(
        domain,
        placement,
        CpuSet::parse("3-5").unwrap(),
    )
}

#[test]
fn hostdev_addresses_of_a_live_domain_xml() {
    let xml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/tunings/fixtures/vfio/run/libvirt/qemu/win11.xml"),
    )
    .unwrap();
    // The host's addresses, not the guest's; the USB hostdev is not a PCI one.
    assert_eq!(
        super::vfio::hostdev_addresses(&xml).unwrap(),
        vec!["0000:01:00.0", "0000:01:00.1", "0000:02:00.0"]
    );
    let bad = "<domain><devices><hostdev mode='subsystem' type='pci'><source>\
               <address domain='0x0000' bus='0x100' slot='0x00' function='0x0'/>\
               </source></hostdev></devices></domain>";
    let e = super::vfio::hostdev_addresses(bad).unwrap_err();
    assert!(e.contains("bus=\"0x100\""), "{e}");
    assert!(super::vfio::hostdev_addresses("<domain>").is_err());
}

#[test]
fn vfio_irqs_vcpu_puts_the_devices_irqs_on_the_vcpus_and_irq_affinity_agrees() {
    let f = vfio_fixture();
    let before = f.snapshot();
    let e = f.plain();
    let h = vfio_holder(
        "win11",
        VfioIrqPlacement::Vcpu,
        &[Tuning::IrqAffinity, Tuning::VfioIrqs],
    );
    let r = e.reconcile(std::slice::from_ref(&h)).unwrap();
    // MSI-X vectors and the vfio INTx line on the vCPUs' CPUs, not back to housekeeping.
    for n in [146, 147, 17] {
        assert_eq!(
            f.get(&format!("proc/irq/{n}/smp_affinity_list")),
            "3-5",
            "IRQ {n}"
        );
    }
    // Everything else (line 18 too: another driver's) off the isolated CPUs.
    for n in [18, 24] {
        assert_eq!(
            f.get(&format!("proc/irq/{n}/smp_affinity_list")),
            "0-1,6-7",
            "IRQ {n}"
        );
    }
    let vfio = report(&r, Tuning::VfioIrqs);
    assert_eq!(vfio.state, TuningState::Applied);
    assert!(
        vfio.reason.contains("0000:02:00.0: no IRQ allocated yet"),
        "{}",
        vfio.reason
    );
    assert!(
        vfio.current
            .contains("IRQ 146 vfio-msix[0](0000:01:00.0)=3-5"),
        "{}",
        vfio.current
    );
    let irq = &report(&r, Tuning::IrqAffinity).reason;
    assert!(
        irq.contains("placed by vfio-irqs") && irq.contains("17, 146, 147"),
        "{irq}"
    );
    // Reconciling again (adoption, another isolation) changes nothing.
    let applied = f.snapshot();
    e.reconcile(std::slice::from_ref(&h)).unwrap();
    assert_eq!(f.snapshot(), applied);
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn vfio_irqs_placed_when_the_guest_enables_msi_after_the_isolation() {
    let f = vfio_fixture();
    let before = f.snapshot();
    let e = f.plain();
    let h = vfio_holder("win11", VfioIrqPlacement::Vcpu, &[Tuning::VfioIrqs]);
    let holders = std::slice::from_ref(&h);
    assert!(HostTunings::follows_vfio(holders));
    assert!(!HostTunings::follows_vfio(&[holder_with(
        "x",
        "2-3",
        &[Tuning::IrqAffinity]
    )]));
    e.reconcile(holders).unwrap();
    assert!(
        !e.vfio_irqs_moved(holders),
        "nothing changed since the reconcile"
    );

    // The guest's driver loads: vfio-pci allocates a vector for 0000:02:00.0 (on every CPU).
    f.put("sys/bus/pci/devices/0000:02:00.0/msi_irqs/160", "msi\n");
    f.put("proc/irq/160/smp_affinity_list", "0-7\n");
    let interrupts = f.get("proc/interrupts").replace(
        "NMI:",
        "160:          0          0          0          0          0          0          0          0  IR-PCI-MSI-0000:02:00.0    0-edge      vfio-msi[0](0000:02:00.0)\nNMI:",
    );
    f.put("proc/interrupts", &interrupts);
    assert!(e.vfio_irqs_moved(holders));
    let r = e.reconcile(holders).unwrap();
    assert_eq!(f.get("proc/irq/160/smp_affinity_list"), "3-5");
    assert_eq!(f.get("proc/irq/146/smp_affinity_list"), "3-5");
    assert!(
        !report(&r, Tuning::VfioIrqs)
            .reason
            .contains("no IRQ allocated yet"),
        "{}",
        report(&r, Tuning::VfioIrqs).reason
    );
    assert!(!e.vfio_irqs_moved(holders));

    // The guest drops the vector again (driver unloaded): its IRQ is gone with it.
    std::fs::remove_file(f.path("sys/bus/pci/devices/0000:02:00.0/msi_irqs/160")).unwrap();
    std::fs::remove_dir_all(f.path("proc/irq/160")).unwrap();
    f.put(
        "proc/interrupts",
        &interrupts
            .lines()
            .filter(|l| !l.starts_with("160:"))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    );
    assert!(e.vfio_irqs_moved(holders));
    let r = e.reconcile(holders).unwrap();
    assert!(
        r.warnings.iter().any(|w| w.contains("disappeared")),
        "{:?}",
        r.warnings
    );
    assert!(!e.vfio_irqs_moved(holders));
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn vfio_irqs_housekeeping_keeps_them_off_the_isolated_cpus() {
    let f = vfio_fixture();
    let before = f.snapshot();
    let e = f.plain();
    // Alone (no irq-affinity): only the domain's IRQs move.
    let h = vfio_holder("win11", VfioIrqPlacement::Housekeeping, &[Tuning::VfioIrqs]);
    e.reconcile(std::slice::from_ref(&h)).unwrap();
    for n in [146, 147, 17] {
        assert_eq!(
            f.get(&format!("proc/irq/{n}/smp_affinity_list")),
            "0-1,6-7",
            "IRQ {n}"
        );
    }
    assert_eq!(f.get("proc/irq/18/smp_affinity_list"), "0-7\n");
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn without_vfio_irqs_irq_affinity_moves_the_vfio_irqs_as_before() {
    let f = vfio_fixture();
    let e = f.plain();
    let h = vfio_holder("win11", VfioIrqPlacement::Vcpu, &[Tuning::IrqAffinity]);
    e.reconcile(std::slice::from_ref(&h)).unwrap();
    assert_eq!(f.get("proc/irq/146/smp_affinity_list"), "0-1,6-7");
}

#[test]
fn vfio_irqs_union_with_another_isolation_and_release_in_order() {
    let f = vfio_fixture();
    let before = f.snapshot();
    let e = f.plain();
    let vm = vfio_holder(
        "win11",
        VfioIrqPlacement::Vcpu,
        &[Tuning::IrqAffinity, Tuning::VfioIrqs],
    );
    let other = holder_with("other", "6", &[Tuning::IrqAffinity]);
    e.reconcile(&[vm.clone(), other.clone()]).unwrap();
    assert_eq!(f.get("proc/irq/146/smp_affinity_list"), "3-5");
    assert_eq!(f.get("proc/irq/24/smp_affinity_list"), "0-1,7");
    // The domain goes: its IRQs pass to irq-affinity (off CPU 6, from the same original).
    let r = e.reconcile(std::slice::from_ref(&other)).unwrap();
    assert_eq!(f.get("proc/irq/146/smp_affinity_list"), "0-5,7");
    assert!(
        report(&r, Tuning::IrqAffinity)
            .current
            .contains("vfio-msix[0]")
    );
    e.reconcile(&[]).unwrap();
    assert_eq!(f.snapshot(), before);
}

#[test]
fn vfio_irqs_skips_with_the_reason() {
    let f = vfio_fixture();
    f.put(
        "run/libvirt/qemu/plain.xml",
        "<domstatus><domain type='kvm'><name>plain</name><devices/></domain></domstatus>",
    );
    let e = f.plain();
    let cases = [
        (
            "plain",
            "has no assigned PCI device (<hostdev mode='subsystem' type='pci'>)",
        ),
        ("gone", "its live XML"),
    ];
    for (domain, why) in cases {
        let h = vfio_holder(domain, VfioIrqPlacement::Vcpu, &[Tuning::VfioIrqs]);
        let r = e.reconcile(std::slice::from_ref(&h)).unwrap();
        let rep = report(&r, Tuning::VfioIrqs);
        assert_eq!(rep.state, TuningState::Skipped, "{domain}");
        assert!(rep.reason.contains(why), "{domain}: {}", rep.reason);
    }
    // Not a libvirt domain.
    let h = holder_with("pids", "2-5", &[Tuning::VfioIrqs]);
    let r = e.reconcile(std::slice::from_ref(&h)).unwrap();
    assert!(
        report(&r, Tuning::VfioIrqs)
            .reason
            .contains("not a libvirt domain")
    );
    // A device that has not enabled its interrupts yet.
    std::fs::remove_dir_all(f.path("sys/bus/pci/devices/0000:01:00.0/msi_irqs")).unwrap();
    f.put(
        "proc/interrupts",
        &f.get("proc/interrupts").replace("vfio-intx", "other"),
    );
    let h = vfio_holder("win11", VfioIrqPlacement::Vcpu, &[Tuning::VfioIrqs]);
    let r = e.reconcile(std::slice::from_ref(&h)).unwrap();
    let rep = report(&r, Tuning::VfioIrqs);
    assert_eq!(rep.state, TuningState::Skipped);
    assert!(
        rep.reason.contains("0000:01:00.0: no IRQ allocated yet")
            && rep
                .reason
                .contains("places them when the guest's driver enables them"),
        "{}",
        rep.reason
    );
    e.reconcile(&[]).unwrap();
}
