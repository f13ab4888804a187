//! `kvmisolate plan`: a topology-aware split of the host's CPUs between the host and one
//! guest, and the libvirt XML for it.
//!
//! [`choose`] is pure (a [`Topology`](crate::topology::Topology) and [`PlanOptions`] give a
//! [`Plan`]); [`render`] prints it for people and as JSON, [`libvirt`] as domain XML elements,
//! [`apply`] splices those into an existing domain XML, and [`run`] is the command.

pub mod apply;
pub mod args;
pub mod choose;
pub mod guest;
pub mod libvirt;
pub mod reasons;
pub mod render;
pub mod run;
mod words;
pub(crate) mod xml_spans;

use kvmisolate_dbus::cpulist::CpuSet;
use kvmisolate_dbus::tunings::PageSize;

pub use choose::plan;

/// How big the guest should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// This many vCPUs (a whole number of cores).
    Vcpus(u32),
    /// This many physical cores (all their threads).
    Cores(u32),
    /// As many cores as fit in the best domain while leaving the host its minimum.
    Fill,
}

/// What to favour when several L3 domains could hold the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// The largest L3 cache (X3D CCDs).
    Cache,
    /// The highest maximum frequency.
    Frequency,
}

/// Where the QEMU emulator thread(s) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmulatorMode {
    /// On a core of their own, isolated with the vCPUs.
    Separate,
    /// On the housekeeping CPUs.
    Shared,
}

/// The guest's operating system, for what only it uses (Hyper-V enlightenments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestOs {
    /// Any guest: only what every guest benefits from.
    #[default]
    Any,
    /// Windows: also the Hyper-V enlightenments and its clock.
    Windows,
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// The guest's size.
    pub size: Size,
    /// The fewest CPUs the host keeps (default: one core, the one holding the first CPU).
    pub host_cpus: Option<u32>,
    /// What to favour between L3 domains.
    pub prefer: Prefer,
    /// Where the emulator runs.
    pub emulator: EmulatorMode,
    /// How many I/O threads to define and pin.
    pub iothreads: u32,
    /// Hugepages of this size back the guest's memory.
    pub hugepages: Option<PageSize>,
    /// The guest's operating system.
    pub guest: GuestOs,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            size: Size::Fill,
            host_cpus: None,
            prefer: Prefer::Cache,
            emulator: EmulatorMode::Separate,
            iothreads: 1,
            hugepages: None,
            guest: GuestOs::Any,
        }
    }
}

/// One vCPU and the host CPU it is pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VcpuPin {
    /// The vCPU number (libvirt's `vcpu`).
    pub vcpu: u32,
    /// The host CPU.
    pub cpu: u32,
}

/// One I/O thread and the host CPUs it may run on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IothreadPin {
    /// The I/O thread id (libvirt counts from 1).
    pub iothread: u32,
    /// The host CPUs.
    pub cpus: CpuSet,
}

/// The guest's CPU topology (libvirt's `<topology>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GuestTopology {
    /// Sockets (always 1: the guest stays in one NUMA node).
    pub sockets: u32,
    /// Dies per socket (1).
    pub dies: u32,
    /// Cores per die.
    pub cores: u32,
    /// Threads per core: the host's SMT width on the chosen cores.
    pub threads: u32,
}

/// The L3 cache the guest sits in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheInfo {
    /// The CPUs sharing it.
    pub cpus: CpuSet,
    /// Its size in KiB, when known.
    pub size_kib: Option<u64>,
}

/// Hugepages for the guest's memory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hugepages {
    /// The page size (`2M`, `1G`).
    pub page_size: &'static str,
    /// The page size in KiB (libvirt's `<page size=... unit='KiB'>`).
    pub page_kib: u64,
    /// The sysfs pool they come from (the guest's node's, when the host has nodes).
    pub pool: String,
}

impl Hugepages {
    /// Pages of `size` from `node`'s pool (the host's without a node).
    pub fn new(size: PageSize, node: Option<u32>) -> Self {
        let dir = format!("hugepages-{}kB", size.kib());
        Self {
            page_size: size.as_str(),
            page_kib: size.kib(),
            pool: match node {
                Some(n) => format!("/sys/devices/system/node/node{n}/hugepages/{dir}"),
                None => format!("/sys/kernel/mm/hugepages/{dir}"),
            },
        }
    }
}

/// The guest-side half of a plan: what the domain XML asks of QEMU besides the CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GuestSide {
    /// The guest's operating system (`windows`: Hyper-V enlightenments, `hypervclock`, no HPET).
    pub os: GuestOs,
    /// Whether the guest must get the TSC deadline timer (the host CPU has it).
    pub tsc_deadline: bool,
    /// The I/O threads the domain's virtio disks are bound to, in turn (0: none).
    pub disk_iothreads: u32,
}

/// A proposed split of the host's CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// CPUs left to the host (everything not isolated).
    pub housekeeping: CpuSet,
    /// The emulator's CPUs.
    pub emulator: CpuSet,
    /// Where the emulator runs.
    pub emulator_mode: EmulatorMode,
    /// The CPUs to isolate: the vCPUs' and, when separate, the emulator's.
    pub isolate: CpuSet,
    /// vCPU pins, in vCPU order.
    pub vcpus: Vec<VcpuPin>,
    /// I/O thread pins.
    pub iothreads: Vec<IothreadPin>,
    /// The guest topology.
    pub guest: GuestTopology,
    /// The NUMA node holding the guest (memory and hugepages go there), if the host has nodes.
    pub numa_node: Option<u32>,
    /// The L3 cache holding the whole guest, if one does.
    pub l3: Option<CacheInfo>,
    /// The hugepages backing the guest's memory, if asked for.
    pub hugepages: Option<Hugepages>,
    /// The guest-side settings of the domain (features, clock, memory, disks).
    pub guest_side: GuestSide,
    /// One line per choice, saying why.
    pub reasons: Vec<String>,
}

impl Plan {
    /// The CPUs of the vCPUs.
    pub fn vcpu_cpus(&self) -> CpuSet {
        self.vcpus.iter().map(|p| p.cpu).collect()
    }
}
