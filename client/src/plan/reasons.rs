//! One line per choice the planner made, for people (`Why:` in the text form, `reasons` in
//! JSON).

use kvmisolate_dbus::cpulist::CpuSet;

use super::words::topology_text;
use super::{EmulatorMode, GuestOs, Plan, PlanOptions, Prefer, Size};
use crate::topology::{CoreKind, CpuFlags, Topology};
use crate::words::plural;

/// What the reasons are made from.
pub struct Why<'a> {
    /// The host.
    pub topo: &'a Topology,
    /// What was asked.
    pub opts: &'a PlanOptions,
    /// The plan (reasons not filled yet).
    pub plan: &'a Plan,
    /// The core that always stays with the host.
    pub host_core: &'a CpuSet,
    /// Cores with an offline sibling, left to the host.
    pub partial: &'a CpuSet,
    /// How many L3 caches (or nodes) could hold the guest.
    pub fitting: usize,
    /// Whether another of them was as large and as fast.
    pub tied: bool,
    /// Whether the guest spans several L3 caches of its node.
    pub spans_caches: bool,
    /// The chosen domain's highest maximum frequency (0: unknown).
    pub freq_khz: u64,
}

/// `32768` KiB as `32 MiB`.
pub fn size_text(kib: u64) -> String {
    if kib >= 1024 && kib.is_multiple_of(1024) {
        format!("{} MiB", kib / 1024)
    } else {
        format!("{kib} KiB")
    }
}

fn freq_text(khz: u64) -> String {
    let ghz = format!("{:.2}", khz as f64 / 1_000_000.0);
    let ghz = ghz.trim_end_matches('0').trim_end_matches('.');
    format!("{ghz} GHz")
}

/// One line per choice the planner made.
pub fn reasons(w: &Why<'_>) -> Vec<String> {
    let p = w.plan;
    let t = p.guest.threads;
    let mut out = Vec::new();
    let minimum = match w.opts.host_cpus {
        Some(n) => format!(
            "at least {} (--host-cpus)",
            plural(n as usize, "CPU", "CPUs")
        ),
        None => "at least one core (the default; --host-cpus to change)".to_owned(),
    };
    out.push(format!(
        "host: keeps {}: the core of CPU {} ({}) always, {minimum}, and every CPU not given to \
         the guest",
        p.housekeeping,
        w.host_core.first().unwrap_or(0),
        w.host_core
    ));
    if t > 1 {
        out.push(format!(
            "SMT: whole cores only: each guest core brings its {t} sibling threads, so no core is \
             shared between host and guest"
        ));
    } else {
        out.push("SMT: none on the chosen cores, one vCPU per core".to_owned());
    }
    if !w.partial.is_empty() {
        out.push(format!(
            "offline siblings: {} stay with the host (their cores lack a thread, the guest needs \
             {t} per core)",
            w.partial
        ));
    }
    if !w.topo.offline.is_empty() {
        out.push(format!(
            "offline CPUs: {} are not planned (bring them online and plan again to use them)",
            w.topo.offline
        ));
    }
    if w.topo.hybrid {
        let e: CpuSet = w
            .topo
            .cores
            .iter()
            .filter(|c| c.kind == CoreKind::Efficiency)
            .flat_map(|c| c.cpus.iter())
            .collect();
        let who = if e.contains(p.emulator.first().unwrap_or(u32::MAX)) {
            "the host and the emulator"
        } else {
            "the host"
        };
        out.push(format!(
            "hybrid CPU: vCPUs on P-cores only; the E-cores ({e}) are for {who}"
        ));
    }
    out.push(cache_reason(w));
    let pool = |n: u32| {
        p.hugepages.as_ref().map_or_else(
            || format!("/sys/devices/system/node/node{n}/hugepages/"),
            |h| h.pool.clone(),
        )
    };
    out.push(match (p.numa_node, w.topo.nodes.len()) {
        (Some(n), count) if count > 1 => format!(
            "NUMA: all guest CPUs on node {n} of {count}; memory strict there (numatune) and \
             hugepages from {}",
            pool(n)
        ),
        (Some(n), _) => format!(
            "NUMA: one node ({n}); memory strict there (numatune), hugepages from {}",
            pool(n)
        ),
        (None, _) => "NUMA: the kernel shows no nodes, so no numatune".to_owned(),
    });
    if let Some(h) = &p.hugepages {
        out.push(format!(
            "hugepages: the guest's memory in {} pages (<memoryBacking>), fewer TLB misses and no \
             THP compaction in it; kvmisolate's hook reserves exactly its memory at each start \
             (hugepages=\"auto\") and returns the pages when it stops",
            h.page_size
        ));
    }
    let cores = plural(p.guest.cores as usize, "core", "cores");
    out.push(match w.opts.size {
        Size::Fill => format!(
            "size: {} on {cores}, all the chosen cache holds after the host and the emulator \
             (--vcpus or --cores to choose)",
            plural(p.vcpus.len(), "vCPU", "vCPUs")
        ),
        Size::Vcpus(n) => format!("size: {n} vCPUs as asked, on {cores}"),
        Size::Cores(_) => format!(
            "size: {cores} as asked, {}",
            plural(p.vcpus.len(), "vCPU", "vCPUs")
        ),
    });
    out.push(format!(
        "vCPUs: the highest-numbered free cores, vCPU numbers in core order{}",
        if t > 1 {
            format!(" ({t} consecutive vCPUs per core, as the guest topology says)")
        } else {
            String::new()
        }
    ));
    let on_e_core = p
        .emulator
        .first()
        .and_then(|c| w.topo.core_of(c))
        .is_some_and(|c| c.kind == CoreKind::Efficiency);
    out.push(match p.emulator_mode {
        EmulatorMode::Separate if on_e_core => format!(
            "emulator: E-core {} to itself, isolated with the vCPUs, so that every free P-core \
             runs a vCPU (--emulator separate)",
            p.emulator
        ),
        EmulatorMode::Separate => format!(
            "emulator: core {} to itself, next to the vCPUs and isolated with them \
             (--emulator separate)",
            p.emulator
        ),
        EmulatorMode::Shared => format!(
            "emulator: on housekeeping CPUs {} (--emulator shared: one more core for vCPUs, a \
             little more jitter)",
            p.emulator
        ),
    });
    out.push(match p.iothreads.first() {
        Some(io) => format!(
            "I/O threads: {} on housekeeping CPUs {} near the guest (not latency-critical)",
            p.iothreads.len(),
            io.cpus
        ),
        None => "I/O threads: none (--iothreads 0)".to_owned(),
    });
    out.extend(guest_reasons(w));
    out.push(format!(
        "guest topology: {}, matching the host's SMT so the guest's scheduler sees real siblings",
        topology_text(&p.guest)
    ));
    out
}

/// The reasons of the guest-side half (features, memory, disks, Windows).
fn guest_reasons(w: &Why<'_>) -> Vec<String> {
    let side = &w.plan.guest_side;
    let mut out = Vec::new();
    out.push(match side.disk_iothreads {
        0 => "disks: on the emulator thread (no I/O thread to bind them to)".to_owned(),
        1 => "disks: each virtio disk's <driver io='threads' iothread='1'/>: its I/O runs on the \
              I/O thread, off the emulator and the vCPUs"
            .to_owned(),
        n => format!(
            "disks: the virtio disks' <driver io='threads' iothread='N'/> on I/O threads 1-{n} in \
             turn: their I/O runs there, off the emulator and the vCPUs"
        ),
    });
    out.push(
        "PMU: <pmu state='off'/>: no virtual performance counters, whose MSR exits and NMIs \
         interrupt the vCPUs (turn it on to profile inside the guest)"
            .to_owned(),
    );
    out.push(match (&w.topo.cpu_flags, side.tsc_deadline) {
        (_, true) => "TSC deadline: the host CPU has tsc_deadline_timer, so the guest's timer is \
                      required to be the TSC deadline one (<feature policy='require' \
                      name='tsc-deadline'/>): one MSR write per timer, no APIC timer counting"
            .to_owned(),
        (CpuFlags::Known(_), false) => "TSC deadline: the host CPU has no tsc_deadline_timer \
                                        (/proc/cpuinfo), so the guest cannot be given it"
            .to_owned(),
        (CpuFlags::Unknown(why), false) => {
            format!("TSC deadline: not required, the host's CPU flags are unknown ({why})")
        }
        (CpuFlags::NotRead, false) => {
            "TSC deadline: not required, the host's CPU flags were not read".to_owned()
        }
    });
    out.push(
        "memory: <locked/> keeps the guest's memory in RAM (never swapped out or reclaimed \
         under it), <nosharepages/> keeps KSM from merging its pages (no scanning, no copy-on-write \
         faults)"
            .to_owned(),
    );
    if side.os == GuestOs::Windows {
        out.push(
            "Windows (--guest windows): Hyper-V enlightenments (relaxed, vapic, spinlocks, \
             vpindex, synic, stimer in direct mode, frequencies, tlbflush, ipi) replace timer, \
             APIC and TLB-flush exits with cheaper paravirtual ones; <timer name='hypervclock' \
             present='yes'/> gives it a stable clock and <timer name='hpet' present='no'/> \
             keeps it off the slow emulated HPET"
                .to_owned(),
        );
    }
    out
}

fn cache_reason(w: &Why<'_>) -> String {
    let p = w.plan;
    let count = w.topo.l3.len();
    if w.spans_caches {
        return format!(
            "L3: no single L3 cache has room for this guest; it spans the caches of {}",
            p.numa_node
                .map_or_else(|| "the host".to_owned(), |n| format!("NUMA node {n}"))
        );
    }
    let Some(l3) = &p.l3 else {
        return "L3: the kernel shows no L3 cache".to_owned();
    };
    let size = l3.size_kib.map(size_text).unwrap_or_default();
    let size = if size.is_empty() {
        size
    } else {
        format!("{size} ")
    };
    if count == 1 {
        return format!("L3: the guest shares the host's one {size}L3 cache");
    }
    let why = match w.opts.prefer {
        _ if w.fitting == 1 => format!("the only one of {count} with room for this guest"),
        _ if w.tied => format!(
            "{count} caches tie on size and frequency; this one leaves the guest the most free \
             cores"
        ),
        Prefer::Cache => format!("the largest that fits, of {count} (--prefer cache)"),
        Prefer::Frequency if w.freq_khz > 0 => format!(
            "its cores reach {}, the fastest that fits, of {count} (--prefer frequency)",
            freq_text(w.freq_khz)
        ),
        Prefer::Frequency => {
            format!("cpufreq shows no frequencies; the largest that fits, of {count}")
        }
    };
    format!(
        "L3: the guest stays inside the {size}L3 of CPUs {}: {why}",
        l3.cpus
    )
}
