//! A plan for people (a short table and the reasons) and as stable JSON.

use std::fmt::Write as _;

use kvmisolate_dbus::cpulist::CpuSet;
use serde::Serialize;

use super::words::topology_text;
use super::{
    CacheInfo, EmulatorMode, GuestSide, GuestTopology, Hugepages, IothreadPin, Plan, VcpuPin,
};
use crate::topology::Topology;
use crate::words::plural;

/// The version of the JSON document; bumped only on incompatible changes.
pub const JSON_VERSION: u32 = 1;

fn host_text(topo: &Topology) -> String {
    let mut s = format!(
        "{} online ({}), {}, {} per core",
        plural(topo.online.len(), "CPU", "CPUs"),
        topo.online,
        plural(topo.cores.len(), "core", "cores"),
        plural(topo.threads_per_core(), "thread", "threads")
    );
    if !topo.offline.is_empty() {
        let _ = write!(s, ", offline {}", topo.offline);
    }
    let _ = write!(
        s,
        ", {}, {}",
        plural(topo.l3.len(), "L3 cache", "L3 caches"),
        plural(topo.nodes.len().max(1), "NUMA node", "NUMA nodes")
    );
    if topo.hybrid {
        s.push_str(", hybrid");
    }
    s
}

/// `0→3 1→4 2→5`.
fn pins_text(pins: &[VcpuPin]) -> String {
    pins.iter()
        .map(|p| format!("{}→{}", p.vcpu, p.cpu))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plan for people.
pub fn human(topo: &Topology, plan: &Plan) -> String {
    let mut s = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "{k:<16}{v}");
    };
    row("Host:", host_text(topo));
    row("Housekeeping:", plan.housekeeping.to_string());
    row("Isolate:", plan.isolate.to_string());
    let emulator_note = match plan.emulator_mode {
        EmulatorMode::Separate => "its own core",
        EmulatorMode::Shared => "shared with the host",
    };
    row("Emulator:", format!("{} ({emulator_note})", plan.emulator));
    row(
        "vCPUs:",
        format!(
            "{} on {} (vCPU→CPU {})",
            plan.vcpus.len(),
            plan.vcpu_cpus(),
            pins_text(&plan.vcpus)
        ),
    );
    if let Some(io) = plan.iothreads.first() {
        row(
            "I/O threads:",
            format!("{} on {}", plan.iothreads.len(), io.cpus),
        );
    }
    row("Guest topology:", topology_text(&plan.guest));
    if let Some(n) = plan.numa_node {
        row("NUMA node:", n.to_string());
    }
    if let Some(h) = &plan.hugepages {
        row(
            "Hugepages:",
            format!("{} pages from {}", h.page_size, h.pool),
        );
    }
    let _ = writeln!(s, "\nWhy:");
    for r in &plan.reasons {
        let _ = writeln!(s, "- {r}");
    }
    let _ = writeln!(
        s,
        "\nNext: kvmisolate plan --libvirt (the domain XML), or --apply DOMAIN.xml; or isolate by \
         hand with kvmisolate isolate --cpus {}",
        plan.isolate
    );
    s
}

/// The JSON document (`"version": 1`; see docs/ARCHITECTURE.md).
#[derive(Debug, Serialize)]
pub struct JsonPlan<'a> {
    /// [`JSON_VERSION`].
    pub version: u32,
    /// The host as read.
    pub host: JsonHost,
    /// CPUs left to the host.
    pub housekeeping: &'a CpuSet,
    /// CPUs to isolate.
    pub isolate: &'a CpuSet,
    /// The emulator.
    pub emulator: JsonEmulator<'a>,
    /// vCPU pins.
    pub vcpus: &'a [VcpuPin],
    /// I/O thread pins.
    pub iothreads: &'a [IothreadPin],
    /// The guest topology.
    pub guest_topology: &'a GuestTopology,
    /// The guest's NUMA node.
    pub numa_node: Option<u32>,
    /// The guest's L3 cache, if one holds it all.
    pub l3: Option<&'a CacheInfo>,
    /// The hugepages backing the guest's memory (only with `--hugepages`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<&'a Hugepages>,
    /// The guest-side settings (`os`, `tsc_deadline`, `disk_iothreads`).
    pub guest_side: &'a GuestSide,
    /// One line per choice.
    pub reasons: &'a [String],
}

/// The host part of the JSON document.
#[derive(Debug, Serialize)]
pub struct JsonHost {
    /// Online CPUs.
    pub online: CpuSet,
    /// Present but offline CPUs.
    pub offline: CpuSet,
    /// Physical cores.
    pub cores: usize,
    /// Most threads per core.
    pub threads_per_core: usize,
    /// Whether hybrid.
    pub hybrid: bool,
    /// L3 caches.
    pub l3: Vec<CacheInfo>,
    /// NUMA nodes.
    pub nodes: Vec<JsonNode>,
}

/// A NUMA node in the JSON document.
#[derive(Debug, Serialize)]
pub struct JsonNode {
    /// Its number.
    pub node: u32,
    /// Its online CPUs.
    pub cpus: CpuSet,
}

/// The emulator in the JSON document.
#[derive(Debug, Serialize)]
pub struct JsonEmulator<'a> {
    /// `separate` or `shared`.
    pub mode: EmulatorMode,
    /// Its CPUs.
    pub cpus: &'a CpuSet,
}

/// The plan as pretty JSON, with a final newline.
pub fn json(topo: &Topology, plan: &Plan) -> String {
    let doc = JsonPlan {
        version: JSON_VERSION,
        host: JsonHost {
            online: topo.online.clone(),
            offline: topo.offline.clone(),
            cores: topo.cores.len(),
            threads_per_core: topo.threads_per_core(),
            hybrid: topo.hybrid,
            l3: topo
                .l3
                .iter()
                .map(|c| CacheInfo {
                    cpus: c.cpus.clone(),
                    size_kib: c.size_kib,
                })
                .collect(),
            nodes: topo
                .nodes
                .iter()
                .map(|n| JsonNode {
                    node: n.id,
                    cpus: n.cpus.clone(),
                })
                .collect(),
        },
        housekeeping: &plan.housekeeping,
        isolate: &plan.isolate,
        emulator: JsonEmulator {
            mode: plan.emulator_mode,
            cpus: &plan.emulator,
        },
        vcpus: &plan.vcpus,
        iothreads: &plan.iothreads,
        guest_topology: &plan.guest,
        numa_node: plan.numa_node,
        l3: plan.l3.as_ref(),
        hugepages: plan.hugepages.as_ref(),
        guest_side: &plan.guest_side,
        reasons: &plan.reasons,
    };
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}
