//! The host's CPU topology as sysfs describes it: online CPUs, physical cores and their SMT
//! siblings, L3 caches, NUMA nodes, hybrid core types and maximum frequencies.
//!
//! Everything is read below an injectable root (normally `/sys`), so tests point it at a
//! fixture tree. Reading needs no privileges. Only online CPUs are described: the kernel
//! removes the `topology/` and `cache/` directories of offline CPUs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kvmisolate_dbus::cpulist::CpuSet;

/// The usual sysfs mount point.
pub const DEFAULT_ROOT: &str = "/sys";

/// Why the topology could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A file that must exist could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: io::Error,
    },
    /// A file holds something other than what the kernel writes there.
    #[error("{}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No CPU is online (the root is probably not a sysfs tree).
    #[error("{} lists no online CPU (is {} a sysfs tree?)", path.display(), root.display())]
    NoCpus {
        /// The `online` file.
        path: PathBuf,
        /// The sysfs root.
        root: PathBuf,
    },
}

/// The kind of a core on a hybrid CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CoreKind {
    /// Not a hybrid CPU: every core is alike.
    Uniform,
    /// A performance core (Intel `cpu_core`).
    Performance,
    /// An efficiency core (Intel `cpu_atom`).
    Efficiency,
}

/// One physical core: its online SMT threads and where it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// The online threads (`thread_siblings_list`, restricted to online CPUs).
    pub cpus: CpuSet,
    /// `physical_package_id` (the socket).
    pub package: u32,
    /// `die_id` (0 where the kernel has none).
    pub die: u32,
    /// `core_id` (unique within a package and die only).
    pub core_id: u32,
    /// The NUMA node, when the kernel has nodes.
    pub node: Option<u32>,
    /// The index of its L3 cache in [`Topology::l3`], when it has one.
    pub l3: Option<usize>,
    /// Performance or efficiency core on hybrid CPUs.
    pub kind: CoreKind,
    /// `cpufreq/cpuinfo_max_freq` of its first thread, in kHz, when cpufreq is there.
    pub max_freq_khz: Option<u64>,
}

impl Core {
    /// The lowest-numbered thread (cores are ordered by it).
    pub fn first_cpu(&self) -> u32 {
        self.cpus.first().unwrap_or(u32::MAX)
    }
}

/// One L3 cache and the online CPUs sharing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// The online CPUs sharing it (`shared_cpu_list`).
    pub cpus: CpuSet,
    /// Its size in KiB, when sysfs tells.
    pub size_kib: Option<u64>,
}

/// One NUMA node and its online CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node number.
    pub id: u32,
    /// Its online CPUs (`cpulist`).
    pub cpus: CpuSet,
}

/// The CPU topology of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Online CPUs.
    pub online: CpuSet,
    /// Present but offline CPUs.
    pub offline: CpuSet,
    /// Physical cores, ordered by their first thread.
    pub cores: Vec<Core>,
    /// L3 caches, ordered by their first CPU.
    pub l3: Vec<Cache>,
    /// NUMA nodes with online CPUs, ordered by number (empty without NUMA support).
    pub nodes: Vec<Node>,
    /// Whether this is a hybrid CPU (both `cpu_core` and `cpu_atom` PMUs exist).
    pub hybrid: bool,
    /// The CPU's feature flags from `cpuinfo` ([`Topology::read_cpu_flags`]).
    pub cpu_flags: CpuFlags,
}

/// The CPU's feature flags (the `flags` line of the first processor in `/proc/cpuinfo`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CpuFlags {
    /// Not read (only [`Topology::read`] ran).
    #[default]
    NotRead,
    /// `cpuinfo` could not be read or has no `flags` line: why.
    Unknown(String),
    /// The flags, as the kernel names them (`tsc_deadline_timer`).
    Known(Vec<String>),
}

impl CpuFlags {
    /// Reads them from `PROC_ROOT/cpuinfo` (normally `/proc/cpuinfo`).
    pub fn read(proc_root: &Path) -> Self {
        let path = proc_root.join("cpuinfo");
        match fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).unwrap_or_else(|| {
                Self::Unknown(format!("{} has no \"flags\" line", path.display()))
            }),
            Err(e) => Self::Unknown(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// The flags of the first `flags : ...` line of a cpuinfo text (x86).
    pub fn parse(text: &str) -> Option<Self> {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "flags")
                .then(|| Self::Known(value.split_whitespace().map(str::to_owned).collect()))
        })
    }

    /// Whether the flag is known to be there.
    pub fn has(&self, flag: &str) -> bool {
        matches!(self, Self::Known(flags) if flags.iter().any(|f| f == flag))
    }
}

/// The online CPUs below `root` (normally [`DEFAULT_ROOT`]): `devices/system/cpu/online`.
pub fn online_cpus(root: &Path) -> Result<CpuSet, TopologyError> {
    read_cpulist(&root.join("devices/system/cpu/online"))
}

impl Topology {
    /// Reads the topology below `root` (normally [`DEFAULT_ROOT`]).
    pub fn read(root: &Path) -> Result<Self, TopologyError> {
        let cpu_dir = root.join("devices/system/cpu");
        let online_path = cpu_dir.join("online");
        let online = online_cpus(root)?;
        if online.is_empty() {
            return Err(TopologyError::NoCpus {
                path: online_path,
                root: root.to_owned(),
            });
        }
        let present = read_optional(&cpu_dir.join("present"))?
            .map(|(path, text)| parse_cpulist(&path, &text))
            .transpose()?
            .unwrap_or_else(|| online.clone());
        let offline = present.difference(&online);

        let nodes = read_nodes(&root.join("devices/system/node"), &online)?;
        let performance = read_optional_cpulist(&root.join("devices/cpu_core/cpus"))?;
        let efficiency = read_optional_cpulist(&root.join("devices/cpu_atom/cpus"))?;
        let hybrid = performance.is_some() && efficiency.is_some();

        let mut cores: Vec<Core> = Vec::new();
        let mut l3: Vec<Cache> = Vec::new();
        for cpu in online.iter() {
            if cores.iter().any(|c| c.cpus.contains(cpu)) {
                continue;
            }
            let dir = cpu_dir.join(format!("cpu{cpu}"));
            let topo = dir.join("topology");
            let siblings = read_siblings(&topo)?.intersection(&online);
            let mut cpus = siblings;
            cpus.insert(cpu);
            let kind = match (&performance, &efficiency) {
                (Some(p), Some(_)) if p.contains(cpu) => CoreKind::Performance,
                (Some(_), Some(e)) if e.contains(cpu) => CoreKind::Efficiency,
                _ => CoreKind::Uniform,
            };
            let cache = read_l3(&dir.join("cache"))?.map(|mut c| {
                c.cpus = c.cpus.intersection(&online);
                c
            });
            let l3_index = cache.map(|c| match l3.iter().position(|k| k.cpus == c.cpus) {
                Some(i) => i,
                None => {
                    l3.push(c);
                    l3.len() - 1
                }
            });
            cores.push(Core {
                package: read_id(&topo.join("physical_package_id"))?,
                die: read_optional_id(&topo.join("die_id"))?.unwrap_or(0),
                core_id: read_id(&topo.join("core_id"))?,
                node: nodes.iter().find(|n| n.cpus.contains(cpu)).map(|n| n.id),
                l3: l3_index,
                kind,
                max_freq_khz: read_optional_number(&dir.join("cpufreq/cpuinfo_max_freq"))?,
                cpus,
            });
        }
        // Caches in CPU order, so that their indexes do not depend on the reading order.
        let mut order: Vec<usize> = (0..l3.len()).collect();
        order.sort_by_key(|&i| l3[i].cpus.first());
        let remap = |old: usize| order.iter().position(|&i| i == old);
        for core in &mut cores {
            core.l3 = core.l3.and_then(remap);
        }
        let l3 = order.iter().map(|&i| l3[i].clone()).collect();
        cores.sort_by_key(Core::first_cpu);
        Ok(Self {
            online,
            offline,
            cores,
            l3,
            nodes,
            hybrid,
            cpu_flags: CpuFlags::NotRead,
        })
    }

    /// Adds the CPU's feature flags from `PROC_ROOT/cpuinfo` (normally `/proc`); a cpuinfo
    /// that cannot be read leaves them [`CpuFlags::Unknown`] with the reason.
    pub fn read_cpu_flags(&mut self, proc_root: &Path) {
        self.cpu_flags = CpuFlags::read(proc_root);
    }

    /// The core holding `cpu`, if it is online.
    pub fn core_of(&self, cpu: u32) -> Option<&Core> {
        self.cores.iter().find(|c| c.cpus.contains(cpu))
    }

    /// The largest number of online threads in one core (1 without SMT).
    pub fn threads_per_core(&self) -> usize {
        self.cores.iter().map(|c| c.cpus.len()).max().unwrap_or(1)
    }
}

fn read_text(path: &Path) -> Result<String, TopologyError> {
    fs::read_to_string(path).map_err(|source| TopologyError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a file that may be missing: `None` then.
fn read_optional(path: &Path) -> Result<Option<(PathBuf, String)>, TopologyError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some((path.to_owned(), text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TopologyError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse_cpulist(path: &Path, text: &str) -> Result<CpuSet, TopologyError> {
    CpuSet::parse(text).map_err(|e| TopologyError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn read_cpulist(path: &Path) -> Result<CpuSet, TopologyError> {
    parse_cpulist(path, &read_text(path)?)
}

fn read_optional_cpulist(path: &Path) -> Result<Option<CpuSet>, TopologyError> {
    read_optional(path)?
        .map(|(p, text)| parse_cpulist(&p, &text))
        .transpose()
}

fn parse_number(path: &Path, text: &str) -> Result<u64, TopologyError> {
    text.trim().parse().map_err(|_| TopologyError::Parse {
        path: path.to_owned(),
        reason: format!("{:?} is not a number", text.trim()),
    })
}

fn read_optional_number(path: &Path) -> Result<Option<u64>, TopologyError> {
    read_optional(path)?
        .map(|(p, text)| parse_number(&p, &text))
        .transpose()
}

/// Reads a topology id; the kernel writes -1 where it does not know one, read as 0.
fn parse_id(path: &Path, text: &str) -> Result<u32, TopologyError> {
    if text.trim() == "-1" {
        return Ok(0);
    }
    let n = parse_number(path, text)?;
    u32::try_from(n).map_err(|_| TopologyError::Parse {
        path: path.to_owned(),
        reason: format!("{n} is out of range"),
    })
}

fn read_id(path: &Path) -> Result<u32, TopologyError> {
    parse_id(path, &read_text(path)?)
}

fn read_optional_id(path: &Path) -> Result<Option<u32>, TopologyError> {
    read_optional(path)?
        .map(|(p, text)| parse_id(&p, &text))
        .transpose()
}

/// The SMT siblings of a CPU (`thread_siblings_list`, or `core_cpus_list` on kernels that
/// dropped the former).
fn read_siblings(topology: &Path) -> Result<CpuSet, TopologyError> {
    match read_optional_cpulist(&topology.join("thread_siblings_list"))? {
        Some(set) => Ok(set),
        None => read_cpulist(&topology.join("core_cpus_list")),
    }
}

/// Parses a cache size as sysfs prints it (`32768K`; `M` and plain bytes accepted too).
fn parse_size_kib(path: &Path, text: &str) -> Result<u64, TopologyError> {
    let t = text.trim();
    let (digits, factor_kib, bytes) = if let Some(d) = t.strip_suffix('K') {
        (d, 1, false)
    } else if let Some(d) = t.strip_suffix('M') {
        (d, 1024, false)
    } else {
        (t, 1, true)
    };
    let n = parse_number(path, digits)?;
    Ok(if bytes { n / 1024 } else { n * factor_kib })
}

/// The unified level-3 cache of a CPU, from `cache/index*/`.
fn read_l3(cache_dir: &Path) -> Result<Option<Cache>, TopologyError> {
    let entries = match fs::read_dir(cache_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TopologyError::Read {
                path: cache_dir.to_owned(),
                source,
            });
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("index"))
        })
        .collect();
    dirs.sort();
    for dir in dirs {
        let Some(level) = read_optional_number(&dir.join("level"))? else {
            continue;
        };
        let kind = read_optional(&dir.join("type"))?;
        let unified = kind.is_none_or(|(_, t)| t.trim() == "Unified");
        if level != 3 || !unified {
            continue;
        }
        let cpus = read_cpulist(&dir.join("shared_cpu_list"))?;
        let size_kib = read_optional(&dir.join("size"))?
            .map(|(p, t)| parse_size_kib(&p, &t))
            .transpose()?;
        return Ok(Some(Cache { cpus, size_kib }));
    }
    Ok(None)
}

/// The NUMA nodes with online CPUs (none when the kernel has no node directory).
fn read_nodes(node_dir: &Path, online: &CpuSet) -> Result<Vec<Node>, TopologyError> {
    let entries = match fs::read_dir(node_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TopologyError::Read {
                path: node_dir.to_owned(),
                source,
            });
        }
    };
    let mut nodes = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("node"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cpus = read_cpulist(&entry.path().join("cpulist"))?.intersection(online);
        if !cpus.is_empty() {
            nodes.push(Node { id, cpus });
        }
    }
    nodes.sort_by_key(|n| n.id);
    Ok(nodes)
}

/// Fixture sysfs trees from compact descriptions (shared with the integration tests).
#[cfg(test)]
#[path = "../tests/support/sysfs_fixture.rs"]
pub(crate) mod fixture;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_flags_from_cpuinfo() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc/xeon-tsc-deadline");
        let flags = CpuFlags::read(&fixture);
        assert!(
            flags.has("tsc_deadline_timer") && flags.has("fpu"),
            "{flags:?}"
        );
        assert!(!flags.has("tsc_deadline"), "{flags:?}");
        let dir = tempfile::tempdir().unwrap();
        let missing = CpuFlags::read(dir.path());
        assert!(
            matches!(&missing, CpuFlags::Unknown(why) if why.contains("cpuinfo")),
            "{missing:?}"
        );
        assert!(!missing.has("tsc_deadline_timer"));
        std::fs::write(
            dir.path().join("cpuinfo"),
            "processor\t: 0\nFeatures\t: fp asimd\n",
        )
        .unwrap();
        let arm = CpuFlags::read(dir.path());
        assert!(
            matches!(&arm, CpuFlags::Unknown(why) if why.contains("no \"flags\" line")),
            "{arm:?}"
        );
        assert_eq!(CpuFlags::default(), CpuFlags::NotRead);
    }

    fn read(name: &str) -> Topology {
        let dir = fixture::tree(name);
        Topology::read(dir.path()).unwrap()
    }

    fn set(text: &str) -> CpuSet {
        CpuSet::parse(text).unwrap()
    }

    #[test]
    fn six_cores_without_smt() {
        let t = read("recipe-6c");
        assert_eq!(t.online, set("0-5"));
        assert!(t.offline.is_empty());
        assert_eq!(t.cores.len(), 6);
        assert_eq!(t.threads_per_core(), 1);
        assert_eq!(
            t.l3,
            [Cache {
                cpus: set("0-5"),
                size_kib: Some(32768)
            }]
        );
        assert_eq!(
            t.nodes,
            [Node {
                id: 0,
                cpus: set("0-5")
            }]
        );
        assert!(!t.hybrid);
        assert!(t.cores.iter().all(|c| c.kind == CoreKind::Uniform));
        assert_eq!(t.cores[3].max_freq_khz, Some(4_600_000));
    }

    #[test]
    fn siblings_numbered_apart() {
        let t = read("desktop-8c16t");
        assert_eq!(t.cores.len(), 8);
        assert_eq!(t.cores[0].cpus, set("0,8"));
        assert_eq!(t.cores[7].cpus, set("7,15"));
        assert_eq!(t.core_of(11).map(|c| c.core_id), Some(3));
        assert_eq!(t.threads_per_core(), 2);
    }

    #[test]
    fn asymmetric_caches() {
        let t = read("x3d-16c32t");
        assert_eq!(t.l3.len(), 2);
        assert_eq!(t.l3[0].cpus, set("0-7,16-23"));
        assert_eq!(t.l3[0].size_kib, Some(98304));
        assert_eq!(t.l3[1].size_kib, Some(32768));
        assert_eq!(t.core_of(9).and_then(|c| c.l3), Some(1));
        assert_eq!(t.core_of(9).and_then(|c| c.max_freq_khz), Some(5_750_000));
    }

    #[test]
    fn hybrid_core_kinds() {
        let t = read("hybrid-8p16e");
        assert!(t.hybrid);
        assert_eq!(t.cores.len(), 24);
        assert_eq!(
            t.core_of(1).map(|c| (c.kind, c.cpus.clone())),
            Some((CoreKind::Performance, set("0-1")))
        );
        assert_eq!(
            t.core_of(20).map(|c| (c.kind, c.cpus.len())),
            Some((CoreKind::Efficiency, 1))
        );
    }

    #[test]
    fn numa_nodes_and_packages() {
        let t = read("numa-2s");
        assert_eq!(t.nodes.len(), 2);
        let c = t.core_of(50).unwrap();
        assert_eq!(
            (c.package, c.node, c.cpus.clone()),
            (1, Some(1), set("18,50"))
        );
        assert_eq!(t.core_of(0).map(|c| c.node), Some(Some(0)));
    }

    #[test]
    fn offline_cpus_are_left_out() {
        let t = read("offline-adjacent");
        assert_eq!(t.online, set("0-4,6-9"));
        assert_eq!(t.offline, set("5,10-11"));
        assert_eq!(t.core_of(4).map(|c| c.cpus.clone()), Some(set("4")));
        assert_eq!(t.core_of(5), None);
        assert_eq!(t.l3[0].cpus, set("0-4,6-9"));
        assert_eq!(t.nodes[0].cpus, set("0-4,6-9"));
    }

    #[test]
    fn minimal_trees_still_read() {
        // No caches, nodes, cpufreq or die ids: an old kernel or a small VM.
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("devices/system/cpu");
        for n in 0..2 {
            let topo = cpu.join(format!("cpu{n}/topology"));
            fs::create_dir_all(&topo).unwrap();
            fs::write(topo.join("physical_package_id"), "-1\n").unwrap();
            fs::write(topo.join("core_id"), format!("{n}\n")).unwrap();
            fs::write(topo.join("core_cpus_list"), format!("{n}\n")).unwrap();
        }
        fs::write(cpu.join("online"), "0-1\n").unwrap();
        let t = Topology::read(dir.path()).unwrap();
        assert_eq!(t.cores.len(), 2);
        assert!(t.l3.is_empty() && t.nodes.is_empty());
        assert_eq!(
            (t.cores[1].package, t.cores[1].die, t.cores[1].l3),
            (0, 0, None)
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = Topology::read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("devices/system/cpu/online"), "{e}");

        let cpu = dir.path().join("devices/system/cpu");
        fs::create_dir_all(&cpu).unwrap();
        fs::write(cpu.join("online"), "\n").unwrap();
        let e = Topology::read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("no online CPU"), "{e}");

        fs::write(cpu.join("online"), "0-x\n").unwrap();
        let e = Topology::read(dir.path()).unwrap_err();
        assert!(matches!(e, TopologyError::Parse { .. }), "{e}");

        fs::write(cpu.join("online"), "0\n").unwrap();
        let e = Topology::read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("cpu0/topology"), "{e}");

        let topo = cpu.join("cpu0/topology");
        fs::create_dir_all(&topo).unwrap();
        fs::write(topo.join("thread_siblings_list"), "0\n").unwrap();
        fs::write(topo.join("physical_package_id"), "0\n").unwrap();
        fs::write(topo.join("core_id"), "zero\n").unwrap();
        let e = Topology::read(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("core_id") && e.to_string().contains("\"zero\""),
            "{e}"
        );
    }

    #[test]
    fn cache_sizes() {
        let p = Path::new("size");
        assert_eq!(parse_size_kib(p, "32768K\n").unwrap(), 32768);
        assert_eq!(parse_size_kib(p, "96M").unwrap(), 98304);
        assert_eq!(parse_size_kib(p, "1048576").unwrap(), 1024);
        assert!(parse_size_kib(p, "big").is_err());
    }
}
