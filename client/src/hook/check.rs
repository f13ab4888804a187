//! `prepare`'s checks, pure: which CPUs the domain's pins will isolate, whether anything
//! holds them or the host cannot spare them (conflicts: the start is refused unless
//! `on-conflict = "warn"`), and what hurts latency (warnings).
//!
//! The CPUs are chosen by the rule the service applies to the running domain's cgroups
//! ([`kvmisolate_dbus::libvirt::place`]): every pinned vCPU's CPUs, plus the emulator's when
//! its pin is its own (no iothread's, no vCPU's, not CPU 0).

use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::libvirt::{LeafKind, Placement, partitioned_cpus, place};

use crate::libvirt::domain::Domain;
use crate::libvirt::optin::Settings;

/// What `prepare` knows of the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// Online CPUs.
    pub online: CpuSet,
    /// Whether the kernel has remote partitions (needed to isolate a domain in place).
    pub remote_partitions: bool,
    /// Active isolations (name, CPUs), other than this domain's own.
    pub held: Vec<(String, CpuSet)>,
    /// `kernel.sched_rt_runtime_us` is -1 already.
    pub rt_throttling_off: bool,
    /// The running kernel's release (`/proc/sys/kernel/osrelease`; empty when unknown).
    pub kernel: String,
}

/// The outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The CPUs that will be isolated.
    pub cpus: CpuSet,
    /// Reasons not to start.
    pub conflicts: Vec<String>,
    /// Things to tell.
    pub warnings: Vec<String>,
}

fn phrase(set: &CpuSet) -> String {
    if set.len() == 1 {
        format!("CPU {set}")
    } else {
        format!("CPUs {set}")
    }
}

/// What the domain's pins give, by the rule the service applies
/// ([`kvmisolate_dbus::libvirt::place`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chosen {
    /// The CPUs that will be isolated.
    pub cpus: CpuSet,
    /// Pins the service would refuse (two vCPUs on one CPU).
    pub conflicts: Vec<String>,
    /// Pins that hurt latency.
    pub warnings: Vec<String>,
}

/// The CPUs the domain's pins will isolate, the pins the service would refuse and the pin
/// warnings.
pub fn chosen_cpus(d: &Domain, online: &CpuSet) -> Chosen {
    let placed = place(&d.pin_groups(), online, None);
    let mut warnings = Vec::new();
    let mut conflicts = Vec::new();
    for p in &placed {
        match (&p.placement, p.kind) {
            (Placement::Unpinned, LeafKind::Vcpu(v)) if p.pins.is_empty() => warnings.push(format!(
                "vcpu{v}: not pinned (runs on any CPU), so it is not isolated; pin it with <vcpupin vcpu='{v}' cpuset='...'/>"
            )),
            (Placement::Unpinned, LeafKind::Vcpu(v)) => warnings.push(format!(
                "vcpu{v}: pinned to every CPU, so it is not isolated"
            )),
            (Placement::Partition, LeafKind::Vcpu(v)) if p.pins.len() > 1 => {
                warnings.push(format!(
                    "vcpu{v}: pinned to {}, not to one CPU; pin each vCPU to a single CPU",
                    phrase(&p.pins)
                ));
            }
            (Placement::SharesVcpu { with, cpus }, kind) => conflicts.push(format!(
                "{with} and {kind} are both pinned to {}; each vCPU needs CPUs of its own to be \
                 isolated (one <vcpupin> per vCPU, each on a different CPU)",
                phrase(cpus)
            )),
            (Placement::EmulatorOnVcpu(shared), _) => warnings.push(format!(
                "emulator: shares {} with a vCPU; give it a CPU of its own with <emulatorpin>",
                phrase(shared)
            )),
            _ => {}
        }
    }
    Chosen {
        cpus: partitioned_cpus(&placed),
        conflicts,
        warnings,
    }
}

/// Checks `d` with `settings` against `host`.
pub fn check(d: &Domain, settings: &Settings, host: &HostView) -> Verdict {
    let Chosen {
        cpus,
        mut conflicts,
        mut warnings,
    } = chosen_cpus(d, &host.online);
    if !host.remote_partitions {
        let kernel = if host.kernel.is_empty() {
            "this kernel".to_owned()
        } else {
            format!("this kernel ({})", host.kernel)
        };
        conflicts.insert(
            0,
            format!(
                "{kernel} cannot isolate a libvirt domain in place: it needs remote cpuset \
                 partitions (cpuset.cpus.exclusive, Linux 6.7+)"
            ),
        );
    }
    if cpus.is_empty() {
        conflicts.push(format!(
            "domain {:?} has no vCPU pinned to CPUs of its own; add <cputune><vcpupin vcpu='0' \
             cpuset='3'/>...</cputune>",
            d.name
        ));
    }
    let offline = cpus.difference(&host.online);
    if !offline.is_empty() {
        conflicts.push(format!(
            "{} pinned in the domain {} not online (online: {})",
            phrase(&offline),
            if offline.len() == 1 { "is" } else { "are" },
            host.online
        ));
    }
    let mut taken = CpuSet::new();
    for (name, held) in &host.held {
        let busy = cpus.intersection(held);
        if !busy.is_empty() {
            conflicts.push(format!(
                "{} {} already held by isolation '{name}'; stop that domain or release it \
                 (kvmisolate release {name}), or pin this domain elsewhere",
                phrase(&busy),
                if busy.len() == 1 { "is" } else { "are" }
            ));
        }
        taken = taken.union(held);
    }
    if !cpus.is_empty() && host.online.difference(&taken.union(&cpus)).is_empty() {
        conflicts.push(format!(
            "isolating {} would leave the host no CPU",
            phrase(&cpus)
        ));
    }
    if d.realtime_vcpus && !host.rt_throttling_off && !settings.disables_rt_throttling() {
        warnings.push(
            "<vcpusched scheduler='fifo'> without RT throttling disabled: the kernel stops \
             real-time vCPUs for 50 ms every second; use profile \"realtime\" (or the \
             rt-throttling tuning)"
                .to_owned(),
        );
    }
    // The pool itself is grown by the reservation `prepare` makes once the checks pass.
    if let Err(e) = settings.hugepage_spec(d) {
        conflicts.push(format!("hugepages: {e}"));
    }
    Verdict {
        cpus,
        conflicts,
        warnings,
    }
}
