//! Expands a compact description of a CPU topology into a sysfs-like tree, for tests.
//!
//! One directive a line (`#` starts a comment):
//!
//! - `cores PKG LIST`: one single-thread core per CPU in LIST, on package PKG;
//! - `smt PKG LIST +K`: one two-thread core per CPU c in LIST, its siblings c and c+K;
//! - `l3 LIST SIZE`: an L3 cache (size as sysfs prints it, `32768K`) shared by LIST;
//! - `node N LIST`: NUMA node N;
//! - `freq LIST KHZ`: `cpufreq/cpuinfo_max_freq` of LIST;
//! - `pcores LIST` / `ecores LIST`: hybrid core types (`devices/cpu_core/cpus`, `cpu_atom`);
//! - `online LIST`: the online CPUs (default: every CPU of every core).
//!
//! Core ids count up per package in the order cores are declared. Offline CPUs get a
//! `cpuN/online` file (0) and nothing else, like the kernel leaves them.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use kvmisolate_dbus::cpulist::CpuSet;

struct FixtureCore {
    package: u32,
    core_id: u32,
    cpus: CpuSet,
}

fn list(text: &str, line: &str) -> CpuSet {
    CpuSet::parse(text).unwrap_or_else(|e| panic!("fixture line {line:?}: {e}"))
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, format!("{text}\n")).unwrap();
}

/// Writes the tree described by `description` below `root` (a fresh directory).
pub fn expand(description: &str, root: &Path) {
    let mut cores: Vec<FixtureCore> = Vec::new();
    let mut next_id: BTreeMap<u32, u32> = BTreeMap::new();
    let mut l3: Vec<(CpuSet, String)> = Vec::new();
    let mut nodes: Vec<(u32, CpuSet)> = Vec::new();
    let mut freq: BTreeMap<u32, String> = BTreeMap::new();
    let mut pcores = None;
    let mut ecores = None;
    let mut online = None;
    for raw in description.lines() {
        let line = raw.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut add_core = |package: u32, cpus: CpuSet| {
            let id = next_id.entry(package).or_insert(0);
            cores.push(FixtureCore {
                package,
                core_id: *id,
                cpus,
            });
            *id += 1;
        };
        match words.as_slice() {
            ["cores", pkg, l] => {
                for c in list(l, line).iter() {
                    add_core(pkg.parse().unwrap(), [c].into_iter().collect());
                }
            }
            ["smt", pkg, l, off] => {
                let k: u32 = off.strip_prefix('+').unwrap().parse().unwrap();
                for c in list(l, line).iter() {
                    add_core(pkg.parse().unwrap(), [c, c + k].into_iter().collect());
                }
            }
            ["l3", l, size] => l3.push((list(l, line), (*size).to_owned())),
            ["node", n, l] => nodes.push((n.parse().unwrap(), list(l, line))),
            ["freq", l, khz] => {
                for c in list(l, line).iter() {
                    freq.insert(c, (*khz).to_owned());
                }
            }
            ["pcores", l] => pcores = Some(list(l, line)),
            ["ecores", l] => ecores = Some(list(l, line)),
            ["online", l] => online = Some(list(l, line)),
            _ => panic!("unknown fixture line {raw:?}"),
        }
    }
    let present: CpuSet = cores.iter().flat_map(|c| c.cpus.iter()).collect();
    let online = online.unwrap_or_else(|| present.clone());
    let cpu_dir = root.join("devices/system/cpu");
    write(&cpu_dir.join("present"), &present.to_string());
    write(&cpu_dir.join("possible"), &present.to_string());
    write(&cpu_dir.join("online"), &online.to_string());
    for core in &cores {
        let siblings = core.cpus.intersection(&online);
        for cpu in core.cpus.iter() {
            let dir = cpu_dir.join(format!("cpu{cpu}"));
            if !online.contains(cpu) {
                write(&dir.join("online"), "0");
                continue;
            }
            if cpu != 0 {
                write(&dir.join("online"), "1");
            }
            let topo = dir.join("topology");
            write(&topo.join("physical_package_id"), &core.package.to_string());
            write(&topo.join("die_id"), "0");
            write(&topo.join("core_id"), &core.core_id.to_string());
            write(&topo.join("thread_siblings_list"), &siblings.to_string());
            write(&topo.join("core_cpus_list"), &siblings.to_string());
            let cache = dir.join("cache");
            for (index, level, kind, shared, size) in [
                (
                    "index0",
                    "1",
                    "Data",
                    siblings.to_string(),
                    "48K".to_owned(),
                ),
                (
                    "index1",
                    "1",
                    "Instruction",
                    siblings.to_string(),
                    "32K".to_owned(),
                ),
                (
                    "index2",
                    "2",
                    "Unified",
                    siblings.to_string(),
                    "1024K".to_owned(),
                ),
            ] {
                write(&cache.join(index).join("level"), level);
                write(&cache.join(index).join("type"), kind);
                write(&cache.join(index).join("shared_cpu_list"), &shared);
                write(&cache.join(index).join("size"), &size);
            }
            if let Some((shared, size)) = l3.iter().find(|(s, _)| s.contains(cpu)) {
                let d = cache.join("index3");
                write(&d.join("level"), "3");
                write(&d.join("type"), "Unified");
                write(
                    &d.join("shared_cpu_list"),
                    &shared.intersection(&online).to_string(),
                );
                write(&d.join("size"), size);
            }
            if let Some(khz) = freq.get(&cpu) {
                write(&dir.join("cpufreq/cpuinfo_max_freq"), khz);
            }
        }
    }
    for (id, cpus) in &nodes {
        let d = root.join(format!("devices/system/node/node{id}"));
        write(&d.join("cpulist"), &cpus.intersection(&online).to_string());
    }
    if let Some(p) = pcores {
        write(&root.join("devices/cpu_core/cpus"), &p.to_string());
    }
    if let Some(e) = ecores {
        write(&root.join("devices/cpu_atom/cpus"), &e.to_string());
    }
}

/// The fixture `tests/fixtures/sysfs/NAME.topo` expanded into a fresh temporary directory.
pub fn tree(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/sysfs/{name}.topo"));
    let description =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    expand(&description, dir.path());
    dir
}

/// A fixture from its description text, expanded into a fresh temporary directory.
pub fn tree_from(description: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    expand(description, dir.path());
    dir
}
