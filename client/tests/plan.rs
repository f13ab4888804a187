//! `kvmisolate plan` end to end: the built binary against fixture sysfs trees (expanded from
//! the compact descriptions in `tests/fixtures/sysfs/`), compared with golden outputs in
//! `tests/golden/`. `UPDATE_GOLDEN=1 cargo test -p kvmisolate --test plan` rewrites them.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/sysfs_fixture.rs"]
mod sysfs_fixture;

use std::path::{Path, PathBuf};
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_kvmisolate");

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// The fixture `name` expanded into a fresh directory.
fn sysfs(name: &str) -> tempfile::TempDir {
    sysfs_fixture::tree(name)
}

/// The procfs fixture with a `cpuinfo` whose CPU has `tsc_deadline_timer`.
fn proc_root() -> PathBuf {
    tests_dir().join("fixtures/proc/xeon-tsc-deadline")
}

fn plan(root: &Path, args: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .arg("plan")
        .args(args)
        .env("KVMISOLATE_SYSFS_ROOT", root)
        .env("KVMISOLATE_PROC_ROOT", proc_root())
        .env_remove("KVMISOLATE_BUS_ADDRESS")
        .output()
        .unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Compares `actual` with the golden file `file`, or rewrites it with UPDATE_GOLDEN=1.
fn golden(file: &str, actual: &str) {
    let path = tests_dir().join("golden").join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run UPDATE_GOLDEN=1 cargo test -p kvmisolate --test plan)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{file} differs from its golden file (UPDATE_GOLDEN=1 to accept):\n{}",
        similar::TextDiff::from_lines(expected.as_str(), actual)
            .unified_diff()
            .header("golden", "actual")
    );
}

/// The page sizes the kernel lists in `root` (`kernel/mm/hugepages/hugepages-<KiB>kB`).
fn with_page_sizes(root: &Path, kib: &[u64]) {
    for k in kib {
        std::fs::create_dir_all(root.join(format!("kernel/mm/hugepages/hugepages-{k}kB"))).unwrap();
    }
}

/// Checks the human, JSON and libvirt forms of one case against their golden files.
fn case(name: &str, fixture: &str, args: &[&str]) {
    case_at(name, &sysfs(fixture), args);
}

/// [`case`] on an expanded tree.
fn case_at(name: &str, root: &tempfile::TempDir, args: &[&str]) {
    for (ext, extra) in [
        ("txt", None),
        ("json", Some("--json")),
        ("xml", Some("--libvirt")),
    ] {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(extra);
        let out = stdout_ok(&plan(root.path(), &all));
        golden(&format!("{name}.{ext}"), &out);
        if ext == "json" {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["version"], 1);
        }
    }
}

#[test]
fn recipe_six_cores_without_smt() {
    case("recipe-6c", "recipe-6c", &["--host-cpus", "2"]);
    // Asking for the recipe's 3 vCPUs gives the same split.
    let root = sysfs("recipe-6c");
    let a = stdout_ok(&plan(root.path(), &["--host-cpus", "2", "--json"]));
    let b = stdout_ok(&plan(root.path(), &["--vcpus", "3", "--json"]));
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&a).unwrap(),
        serde_json::from_str(&b).unwrap(),
    );
    for key in [
        "housekeeping",
        "isolate",
        "emulator",
        "vcpus",
        "guest_topology",
    ] {
        assert_eq!(a[key], b[key], "{key}");
    }
    assert_eq!(a["housekeeping"], "0-1");
    assert_eq!(a["emulator"]["cpus"], "2");
    assert_eq!(a["isolate"], "2-5");
}

#[test]
fn desktop_eight_cores_sixteen_threads() {
    case("desktop-8c16t", "desktop-8c16t", &[]);
}

#[test]
fn x3d_prefers_the_big_cache() {
    case("x3d-cache", "x3d-16c32t", &[]);
}

#[test]
fn x3d_prefers_the_fast_ccd() {
    case(
        "x3d-frequency",
        "x3d-16c32t",
        &["--prefer", "frequency", "--cores", "4"],
    );
}

#[test]
fn hybrid_uses_p_cores() {
    case("hybrid-8p16e", "hybrid-8p16e", &[]);
}

#[test]
fn numa_server_stays_in_one_node() {
    case("numa-2s", "numa-2s", &[]);
    case(
        "numa-2s-shared",
        "numa-2s",
        &[
            "--vcpus",
            "8",
            "--emulator",
            "shared",
            "--iothreads",
            "2",
            "--fifo",
        ],
    );
    // 1G hugepages from the guest's node.
    let root = sysfs("numa-2s");
    with_page_sizes(root.path(), &[2048, 1 << 20]);
    case_at("numa-2s-hugepages", &root, &["--hugepages", "1G"]);
    let j: serde_json::Value =
        serde_json::from_str(&stdout_ok(&plan(root.path(), &["--hugepages", "--json"]))).unwrap();
    assert_eq!(
        j["hugepages"],
        serde_json::json!({"page_size": "2M", "page_kib": 2048,
            "pool": "/sys/devices/system/node/node1/hugepages/hugepages-2048kB"})
    );
}

#[test]
fn offline_cpus_and_adjacent_siblings() {
    case("offline-adjacent", "offline-adjacent", &[]);
}

#[test]
fn works_unprivileged_without_the_service() {
    // No service on a bogus system bus, and (when the tests run as root) as user nobody: plan
    // only reads sysfs.
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    let root = sysfs("recipe-6c");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["plan", "--json", "--sysfs-root"])
        .arg(root.path())
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
        .env_remove("KVMISOLATE_BUS_ADDRESS");
    if nix::unistd::geteuid().is_root() {
        cmd.uid(65534).gid(65534);
    }
    let out = match cmd.output() {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("skipped: user nobody cannot run {BIN} here: {e}");
            return;
        }
        other => other.unwrap(),
    };
    let v: serde_json::Value = serde_json::from_str(&stdout_ok(&out)).unwrap();
    assert_eq!(v["isolate"], "1-5");
}

#[test]
fn errors_name_the_problem() {
    let root = sysfs("desktop-8c16t");
    let fail = |args: &[&str]| {
        let out = plan(root.path(), args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, msg) = fail(&["--vcpus", "5"]);
    assert_eq!(code, Some(3));
    assert!(
        msg.contains("--vcpus 5 would split a core") && msg.contains("4 or 6"),
        "{msg}"
    );
    let (code, msg) = fail(&["--vcpus", "16"]);
    assert_eq!(code, Some(3));
    assert!(
        msg.contains("--vcpus 16 does not fit") && msg.contains("at most 12 vCPUs"),
        "{msg}"
    );
    let (code, msg) = fail(&["--host-cpus", "15"]);
    assert_eq!(code, Some(3));
    assert!(msg.contains("--host-cpus 15"), "{msg}");
    // Usage errors are clap's (exit 2).
    assert_eq!(fail(&["--vcpus", "2", "--cores", "1"]).0, Some(2));
    assert_eq!(fail(&["--dry-run"]).0, Some(2));
    assert_eq!(fail(&["--json", "--libvirt"]).0, Some(2));
    assert_eq!(fail(&["--prefer", "size"]).0, Some(2));
    assert_eq!(fail(&["--hugepages", "3M"]).0, Some(2));
    // A page size the kernel does not offer.
    with_page_sizes(root.path(), &[2048]);
    let (code, msg) = fail(&["--hugepages", "1G"]);
    assert_eq!(code, Some(3));
    assert!(
        msg.contains("--hugepages 1G: this host has no 1G pages") && msg.contains("hugepagesz=1G"),
        "{msg}"
    );
    assert_eq!(fail(&["--hugepages", "2M"]).0, Some(0));
    // A directory that is no sysfs.
    let empty = tempfile::tempdir().unwrap();
    let out = plan(empty.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("cannot read the CPU topology") && msg.contains("online"),
        "{msg}"
    );
}

fn domain_copy(dir: &Path) -> PathBuf {
    let path = dir.join("win11.xml");
    std::fs::copy(tests_dir().join("fixtures/domains/win11.xml"), &path).unwrap();
    path
}

#[test]
fn apply_dry_run_prints_a_diff_and_changes_nothing() {
    let root = sysfs("x3d-16c32t");
    let dir = tempfile::tempdir().unwrap();
    let path = domain_copy(dir.path());
    let original = std::fs::read_to_string(&path).unwrap();
    let out = std::process::Command::new(BIN)
        .current_dir(dir.path())
        .args(["plan", "--vcpus", "8", "--apply", "win11.xml", "--dry-run"])
        .env("KVMISOLATE_SYSFS_ROOT", root.path())
        .env("KVMISOLATE_PROC_ROOT", proc_root())
        .output()
        .unwrap();
    let diff = stdout_ok(&out);
    golden("win11-x3d.diff", &diff);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    assert!(!dir.path().join("win11.xml.bak").exists());
}

#[test]
fn apply_writes_a_backup_and_only_cpu_elements() {
    let root = sysfs("x3d-16c32t");
    let dir = tempfile::tempdir().unwrap();
    let path = domain_copy(dir.path());
    let original = std::fs::read_to_string(&path).unwrap();
    let arg = path.to_str().unwrap();
    let msg = stdout_ok(&plan(root.path(), &["--vcpus", "8", "--apply", arg]));
    assert!(msg.contains("win11.xml.bak"), "{msg}");
    let applied = std::fs::read_to_string(&path).unwrap();
    golden("win11-x3d.applied.xml", &applied);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("win11.xml.bak")).unwrap(),
        original
    );
    // Every changed line is a CPU-related element.
    let cpu_related = [
        "<vcpu",
        "<iothreads>",
        "<cputune>",
        "</cputune>",
        "<vcpupin",
        "<emulatorpin",
        "<iothreadpin",
        "<numatune>",
        "</numatune>",
        "<memory mode=",
        "<cpu ",
        "</cpu>",
        "<topology",
        "<cache mode",
        "<model fallback",
        "<kvmisolate:isolate",
        // The guest-side half.
        "<nosharepages/>",
        "<pmu state='off'/>",
        "<feature policy='require' name='tsc-deadline'/>",
        "<driver ",
    ];
    assert_changes_only(&original, &applied, &cpu_related, "the domain XML");
    // Applying again changes nothing.
    let msg = stdout_ok(&plan(root.path(), &["--vcpus", "8", "--apply", arg]));
    assert!(msg.contains("already matches"), "{msg}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), applied);

    // --hugepages 1G: the <hugepages/> of its <memoryBacking> gets the page size, <locked/>
    // and <nosharepages/> stay, nothing else changes.
    with_page_sizes(root.path(), &[2048, 1 << 20]);
    stdout_ok(&plan(
        root.path(),
        &["--vcpus", "8", "--hugepages", "1G", "--apply", arg],
    ));
    let huge = std::fs::read_to_string(&path).unwrap();
    assert!(
        huge.contains(
            "  <memoryBacking>\n    <hugepages><page size='1048576' unit='KiB'/></hugepages>\n    <locked/>\n    <nosharepages/>\n  </memoryBacking>\n"
        ),
        "{huge}"
    );
    let changed: Vec<String> = similar::TextDiff::from_lines(&applied, &huge)
        .iter_all_changes()
        .filter(|c| c.tag() != similar::ChangeTag::Equal)
        .map(|c| format!("{}{}", c.tag(), c.value().trim()))
        .collect();
    assert_eq!(
        changed,
        [
            "-<hugepages/>",
            "+<hugepages><page size='1048576' unit='KiB'/></hugepages>"
        ]
    );
}

#[test]
fn windows_guest() {
    case(
        "x3d-windows",
        "x3d-16c32t",
        &["--vcpus", "8", "--guest", "windows"],
    );
}

/// A host CPU without `tsc_deadline_timer`: no `tsc-deadline` feature, and the reason says so.
#[test]
fn no_tsc_deadline_on_the_host() {
    let root = sysfs("recipe-6c");
    let proc = tempfile::tempdir().unwrap();
    let cpuinfo = std::fs::read_to_string(proc_root().join("cpuinfo")).unwrap();
    assert!(cpuinfo.contains(" tsc_deadline_timer "));
    std::fs::write(
        proc.path().join("cpuinfo"),
        cpuinfo.replace(" tsc_deadline_timer ", " "),
    )
    .unwrap();
    let run = |proc: &Path, args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("plan")
            .args(args)
            .env("KVMISOLATE_SYSFS_ROOT", root.path())
            .env("KVMISOLATE_PROC_ROOT", proc)
            .output()
            .unwrap();
        stdout_ok(&out)
    };
    let xml = run(proc.path(), &["--libvirt"]);
    assert!(!xml.contains("tsc-deadline"), "{xml}");
    assert!(xml.contains("<pmu state='off'/>"), "{xml}");
    let text = run(proc.path(), &[]);
    assert!(
        text.contains("- TSC deadline: the host CPU has no tsc_deadline_timer (/proc/cpuinfo)"),
        "{text}"
    );
    // No cpuinfo at all: not required, and why.
    let text = run(&proc.path().join("absent"), &[]);
    assert!(
        text.contains(
            "- TSC deadline: not required, the host's CPU flags are unknown (cannot read "
        ) && text.contains("absent/cpuinfo"),
        "{text}"
    );
}

/// `--apply --guest windows` on the virt-manager-style XMLs: every line that changes belongs
/// to an element the plan sets, everything the plan does not set inside `<features>`,
/// `<clock>`, `<memoryBacking>` and the disks' `<driver>` stays, and `check --vm` finds
/// nothing of the guest side missing afterwards.
#[test]
fn apply_windows_on_virt_manager_xml_changes_only_planned_elements() {
    let root = sysfs("x3d-16c32t");
    let dir = tempfile::tempdir().unwrap();
    for fixture in ["domains/win11.xml", "libvirt/virt-manager-default.xml"] {
        let path = dir.path().join("d.xml");
        std::fs::copy(tests_dir().join("fixtures").join(fixture), &path).unwrap();
        let original = std::fs::read_to_string(&path).unwrap();
        let arg = path.to_str().unwrap();
        stdout_ok(&plan(
            root.path(),
            &["--vcpus", "8", "--guest", "windows", "--apply", arg],
        ));
        let applied = std::fs::read_to_string(&path).unwrap();
        if fixture.starts_with("domains/") {
            golden("win11-x3d-windows.applied.xml", &applied);
        }
        let planned = [
            "<metadata",
            "</metadata>",
            "<kvmisolate:isolate",
            "<memoryBacking",
            "</memoryBacking>",
            "<nosharepages/>",
            "<locked/>",
            "<vcpu",
            "<iothreads>",
            "<cputune>",
            "</cputune>",
            "<vcpupin",
            "<emulatorpin",
            "<iothreadpin",
            "<numatune>",
            "</numatune>",
            "<memory mode=",
            "<features",
            "</features>",
            "<pmu ",
            "<hyperv",
            "</hyperv>",
            "<relaxed ",
            "<vapic ",
            "<spinlocks ",
            "<vpindex ",
            "<synic ",
            "<stimer ",
            "<direct ",
            "</stimer>",
            "<frequencies ",
            "<tlbflush ",
            "<ipi ",
            "<cpu ",
            "</cpu>",
            "<topology",
            "<cache mode",
            "<model fallback",
            "<feature policy='require' name='tsc-deadline'/>",
            "<clock",
            "</clock>",
            "<timer name=\"rtc\"",
            "<timer name='hpet'",
            "<timer name='hypervclock'",
            "<driver ",
        ];
        assert_changes_only(&original, &applied, &planned, fixture);
        // Kept inside the merged elements.
        for kept in [
            "<acpi/>",
            "<apic/>",
            "<timer name=\"rtc\" tickpolicy=\"catchup\"/>",
            "discard=",
        ] {
            if original.contains(kept) {
                assert!(applied.contains(kept), "{fixture}: {kept} lost:\n{applied}");
            }
        }
        // check --vm: nothing of the guest side missing.
        let f = guest_side_finding(&path, fixture);
        assert_eq!(f["severity"], "ok", "{fixture}: {f}");
        // And before: information naming what lacks.
        std::fs::write(&path, &original).unwrap();
        let f = guest_side_finding(&path, fixture);
        assert_eq!(f["severity"], "info", "{fixture}: {f}");
        assert!(
            f["fix"].as_str().unwrap().contains("kvmisolate plan"),
            "{f}"
        );
    }
}

#[test]
fn apply_rejects_what_is_not_a_domain() {
    let root = sysfs("recipe-6c");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.xml");
    std::fs::write(&path, "<network><name>default</name></network>\n").unwrap();
    let out = plan(root.path(), &["--apply", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("not a libvirt domain") && msg.contains("<network>"),
        "{msg}"
    );
    std::fs::write(&path, "<domain><name>x</domain>\n").unwrap();
    let out = plan(root.path(), &["--apply", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("not well-formed XML") && msg.contains("line 1"),
        "{msg}"
    );
    let out = plan(root.path(), &["--apply", "/nonexistent/domain.xml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/domain.xml"));
}

/// Every line `applied` changed from `original` starts with one of `planned` (trimmed).
fn assert_changes_only(original: &str, applied: &str, planned: &[&str], what: &str) {
    for change in similar::TextDiff::from_lines(original, applied).iter_all_changes() {
        if change.tag() == similar::ChangeTag::Equal {
            continue;
        }
        let line = change.value().trim();
        assert!(
            planned.iter().any(|p| line.starts_with(p)),
            "{what}: changed line {line:?} is not a planned element"
        );
    }
}

/// `check --vm`'s `vm-guest-side` finding for the domain XML at `path` (a copy of `fixture`).
fn guest_side_finding(path: &std::path::Path, fixture: &str) -> serde_json::Value {
    let out = std::process::Command::new(BIN)
        .args(["check", "--no-daemon", "--json", "--vm"])
        .arg(if fixture.starts_with("domains/") {
            "win11"
        } else {
            "debian12"
        })
        .arg("--domain-xml")
        .arg(path)
        .env("KVMISOLATE_PROC_ROOT", proc_root())
        .env("KVMISOLATE_CONFIG", "/nonexistent")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "vm-guest-side")
        .cloned()
        .unwrap_or_else(|| panic!("no vm-guest-side in {v}"))
}
