//! `check --vm NAME`: a libvirt domain's audit, from its XML (parsed by the hook's parser) and,
//! when it runs, its cgroup leaves: whether it opts in, its pins (by the shared rule
//! [`kvmisolate_dbus::libvirt::place`]), SMT siblings left to the host, FIFO vCPUs with RT
//! throttling on, hugepages against the pool, `<numatune>` against the pinned CPUs' nodes, and
//! whether the running domain's leaves are the `isolated` partitions kvmisolate makes.

use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::libvirt::machine::{MACHINE_DIR, MACHINE_SLICE, is_scope_of};
use kvmisolate_dbus::libvirt::{LeafKind, Placed, Placement, partitioned_cpus, place};
use serde::{Deserialize, Serialize};

use super::host::Host;
use super::knobs::split_cores;
use super::{Finding, Severity, shorten};
use crate::libvirt::domain::Domain;
use crate::libvirt::optin::{DEFAULT_PAGE_KIB, Settings};
use crate::topology::Topology;

/// The domain to audit, as found.
#[derive(Debug, Clone)]
pub struct VmInput {
    /// Its parsed XML (the live XML of a running domain carries its `id`).
    pub domain: Domain,
    /// Where the XML came from (`virsh dumpxml`, a file...).
    pub source: String,
    /// Whether and how it opts in (`Err`: its opt-in is invalid, the message says why).
    pub settings: Result<Option<Settings>, String>,
    /// The XML as read (for what the parsed [`Domain`] does not hold).
    pub xml: String,
}

/// The domain part of the `--json` report (`vm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSummary {
    /// The domain's name.
    pub name: String,
    /// Where its XML came from.
    pub source: String,
    /// Whether it runs (its XML has an id).
    pub running: bool,
    /// Whether it opts in to kvmisolate's hook.
    #[serde(rename = "opted-in")]
    pub opted_in: bool,
    /// The CPUs its pins isolate (by the rule the service applies).
    #[serde(rename = "pinned-cpus")]
    pub pinned_cpus: CpuSet,
    /// The CPUs of its leaves that are valid `isolated` partitions now (running only).
    #[serde(rename = "isolated-cpus")]
    pub isolated_cpus: CpuSet,
}

/// The findings and what the rest of the audit needs.
pub struct VmAudit {
    /// The findings, in check order.
    pub findings: Vec<Finding>,
    /// The summary for the report.
    pub summary: VmSummary,
}

/// What the rest of the audit knows that a stopped domain's start depends on.
#[derive(Debug, Clone, Default)]
pub struct StartContext {
    /// Whether the kernel has remote partitions (from the cgroupfs scan).
    pub remote_partitions: bool,
    /// kvmisolated's isolations (name, CPUs); empty when it was not reachable.
    pub held: Vec<(String, CpuSet)>,
}

/// Audits the domain of `input` on `host`.
pub fn audit(
    host: &Host,
    input: &VmInput,
    start: &StartContext,
    topo: Option<&Topology>,
) -> VmAudit {
    let d = &input.domain;
    let running = d.id.is_some();
    let online = host.online_cpus().unwrap_or_default();
    let settings = input.settings.as_ref().ok().and_then(Option::as_ref);
    let mut out = Vec::new();

    out.push(Finding::new(
        "vm-domain",
        Severity::Info,
        format!(
            "domain {:?} ({}): {}; {} vCPU(s), {} MiB of memory",
            d.name,
            input.source,
            match d.id {
                Some(id) => format!("running (id {id})"),
                None => "not running (its pins are audited as they will be at start)".to_owned(),
            },
            d.vcpus,
            d.memory_kib / 1024
        ),
    ));
    out.push(optin_finding(d, &input.settings));

    let placed = place(&d.pin_groups(), &online, None);
    let pinned = partitioned_cpus(&placed);
    out.extend(pin_findings(&placed));
    if let Some(t) = topo {
        out.push(smt_finding(t, &pinned));
        out.extend(numa_finding(d, t, &placed));
    }
    out.extend(rt_finding(host, d, running, settings));
    out.extend(hugepage_finding(host, d, running, settings));
    out.extend(super::guest_side::finding(host, &d.name, &input.xml));
    out.extend(super::vfio::finding(
        host,
        d,
        settings.and_then(|s| s.vfio_irqs),
        &pinned,
    ));

    let mut isolated = CpuSet::new();
    if running {
        let (f, cpus) = leaf_findings(host, d, &online, settings.is_some());
        out.push(f);
        isolated = cpus;
    } else if let Some(s) = settings {
        out.push(start_finding(host, d, s, &online, start));
    }
    VmAudit {
        findings: out,
        summary: VmSummary {
            name: d.name.clone(),
            source: input.source.clone(),
            running,
            opted_in: settings.is_some(),
            pinned_cpus: pinned,
            isolated_cpus: isolated,
        },
    }
}

/// For a stopped domain that opts in: whether the hook's `prepare` would let it start, by the
/// same checks (CPUs held by other isolations, the host left no CPU, the kernel's support, pins
/// the service refuses).
fn start_finding(
    host: &Host,
    d: &Domain,
    settings: &Settings,
    online: &CpuSet,
    start: &StartContext,
) -> Finding {
    let view = crate::hook::check::HostView {
        online: online.clone(),
        remote_partitions: start.remote_partitions,
        held: start
            .held
            .iter()
            .filter(|(name, _)| {
                *name != crate::request::vm_name(&d.name).as_str()
                    && *name != crate::request::reservation_name(&d.name).as_str()
            })
            .cloned()
            .collect(),
        rt_throttling_off: host
            .read(&host.proc("sys/kernel/sched_rt_runtime_us"))
            .is_some_and(|v| v.trim() == "-1"),
        kernel: host
            .read(&host.proc("sys/kernel/osrelease"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default(),
    };
    let verdict = crate::hook::check::check(d, settings, &view);
    if verdict.conflicts.is_empty() {
        return Finding::ok(
            "vm-start",
            format!(
                "virsh start would isolate {} (the hook's checks pass{})",
                verdict.cpus.phrase(),
                if start.held.is_empty() {
                    "; kvmisolated's isolations unknown or none"
                } else {
                    ""
                }
            ),
        );
    }
    Finding::new(
        "vm-start",
        Severity::Error,
        format!(
            "virsh start of {:?} would be refused by kvmisolate's hook: {}",
            d.name,
            verdict.conflicts.join("; ")
        ),
    )
    .why("the hook stops a start it cannot isolate (unless on-conflict = \"warn\"), so the domain would not run, or would run unisolated")
    .fix("pin the domain to CPUs no isolation holds, leaving the host at least one CPU (virsh edit), or release what holds them")
    .details(verdict.conflicts)
}

fn optin_finding(d: &Domain, settings: &Result<Option<Settings>, String>) -> Finding {
    match settings {
        Err(e) => Finding::new("vm-optin", Severity::Error, format!("the opt-in of domain {:?} is invalid: {e}", d.name))
            .why("the libvirt hook refuses to start a domain whose kvmisolate settings it cannot read")
            .fix("correct the <kvmisolate:isolate> element of its XML (virsh edit) or its [vm.NAME] section in /etc/kvmisolate/kvmisolate.toml"),
        Ok(None) => Finding::new(
            "vm-optin",
            Severity::Info,
            format!("domain {:?} does not opt in: kvmisolate's libvirt hook leaves it alone", d.name),
        )
        .why("only domains that opt in are isolated when they start and released when they stop")
        .fix(format!(
            "add <kvmisolate:isolate xmlns:kvmisolate=\"{}\" profile=\"realtime\"/> to its <metadata> (virsh edit {}), or a [vm.{}] section to /etc/kvmisolate/kvmisolate.toml",
            kvmisolate_dbus::libvirt::METADATA_NS, d.name, d.name
        )),
        Ok(Some(s)) => {
            let how = match (&s.tunings, s.profile) {
                (Some(list), _) => format!(
                    "tunings {}",
                    list.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(",")
                ),
                (None, Some(p)) => format!("profile {}", p.as_str()),
                (None, None) => "the service's default profile".to_owned(),
            };
            Finding::ok(
                "vm-optin",
                format!("domain {:?} opts in ({how}, hugepages {})", d.name, s.hugepages),
            )
        }
    }
}

fn pin_findings(placed: &[Placed]) -> Vec<Finding> {
    let mut pins = Vec::new();
    let mut shared = Vec::new();
    let mut shared_error = false;
    let mut layout = Vec::new();
    for p in placed {
        let what = match &p.placement {
            Placement::Partition => "isolated",
            Placement::Housekeeping => "housekeeping",
            _ => "not isolated",
        };
        layout.push(if p.pins.is_empty() {
            format!("{}: no pin ({what})", p.kind)
        } else {
            format!("{} -> {} ({what})", p.kind, p.pins)
        });
        match (&p.placement, p.kind) {
            (Placement::Unpinned, LeafKind::Vcpu(_)) => pins.push(format!(
                "{}: not pinned (runs on any CPU), so it is not isolated",
                p.kind
            )),
            (Placement::Partition, LeafKind::Vcpu(_)) if p.pins.len() > 1 => pins.push(format!(
                "{}: pinned to {}, not to one CPU (the scheduler does not balance load inside an isolated partition)",
                p.kind,
                p.pins.phrase()
            )),
            (Placement::SharesVcpu { with, cpus }, _) => {
                shared_error = true;
                shared.push(format!(
                    "{} shares {} with {with}: kvmisolated refuses to isolate the domain",
                    p.kind,
                    cpus.phrase()
                ));
            }
            (Placement::EmulatorOnVcpu(cpus), _) => shared.push(format!(
                "emulator shares {} with a vCPU: it is left out of the isolation and runs on the host's CPUs",
                cpus.phrase()
            )),
            _ => {}
        }
    }
    let mut out = Vec::new();
    out.push(if pins.is_empty() {
        Finding::ok(
            "vm-vcpu-pins",
            "every vCPU is pinned, each to a single CPU",
        )
        .details(layout.clone())
    } else {
        Finding::new(
            "vm-vcpu-pins",
            Severity::Warning,
            format!("{} vCPU pin(s) keep vCPUs from being isolated one per CPU", pins.len()),
        )
        .why("an unpinned vCPU runs wherever the scheduler puts it, next to host work; a vCPU pinned to several CPUs wanders between them, and inside an isolated partition nothing balances the load")
        .fix("pin each vCPU to one CPU of its own: virsh vcpupin NAME VCPU CPU --config, or <vcpupin vcpu='N' cpuset='CPU'/> in <cputune>")
        .details(pins.into_iter().chain(layout.clone()).collect())
    });
    out.push(if shared.is_empty() {
        Finding::ok(
            "vm-shared-cpus",
            "no vCPU shares a CPU with the emulator or another vCPU",
        )
    } else {
        Finding::new(
            "vm-shared-cpus",
            if shared_error { Severity::Error } else { Severity::Warning },
            format!("{} pin(s) share CPUs between the domain's threads", shared.len()),
        )
        .why("two vCPUs on one CPU take turns (each sees the other's run time as latency); the emulator on a vCPU's CPU preempts it for device emulation")
        .fix("give every vCPU and the emulator CPUs of their own (<vcpupin>, <emulatorpin> in <cputune>)")
        .details(shared.into_iter().chain(layout).collect())
    });
    out
}

fn smt_finding(topo: &Topology, pinned: &CpuSet) -> Finding {
    let (left, details) = split_cores(topo, pinned, "left to the host");
    if details.is_empty() {
        Finding::ok(
            "vm-smt-siblings",
            if pinned.is_empty() {
                "no CPU is isolated by the domain's pins".to_owned()
            } else {
                format!("the domain's {} hold whole cores", pinned.phrase())
            },
        )
    } else {
        Finding::new(
            "vm-smt-siblings",
            Severity::Warning,
            format!(
                "{} left to the host {} SMT siblings of the domain's CPUs",
                left.phrase(),
                if left.len() == 1 { "is an" } else { "are" }
            ),
        )
        .why("SMT siblings share the core's execution units and caches: host load on the sibling slows the vCPU and adds jitter")
        .fix(format!(
            "pin the domain to whole cores (give it {} too, or move its pins), or leave the siblings idle",
            left
        ))
        .details(details)
    }
}

fn numa_finding(d: &Domain, topo: &Topology, placed: &[Placed]) -> Option<Finding> {
    if topo.nodes.len() < 2 {
        return None;
    }
    let vcpu_cpus = placed
        .iter()
        .filter(|p| matches!(p.kind, LeafKind::Vcpu(_)) && p.placement == Placement::Partition)
        .fold(CpuSet::new(), |acc, p| acc.union(&p.pins));
    if vcpu_cpus.is_empty() {
        return None;
    }
    let mut cpu_nodes = CpuSet::new();
    for n in &topo.nodes {
        if !n.cpus.is_disjoint(&vcpu_cpus) {
            cpu_nodes.insert(n.id);
        }
    }
    Some(match &d.numa_nodes {
        Some(mem) if cpu_nodes.is_subset(mem) => Finding::ok(
            "vm-numa",
            format!("memory on node(s) {mem}, the vCPUs' CPUs on node(s) {cpu_nodes}"),
        ),
        Some(mem) => Finding::new(
            "vm-numa",
            Severity::Warning,
            format!(
                "<numatune> puts the memory on node(s) {mem}, but the vCPUs run on node(s) {cpu_nodes}"
            ),
        )
        .why("every guest memory access from a vCPU on another node crosses the interconnect: slower and less predictable")
        .fix(format!("<numatune><memory mode='strict' nodeset='{cpu_nodes}'/></numatune>, or pin the vCPUs to CPUs of node(s) {mem}")),
        None => Finding::new(
            "vm-numa",
            Severity::Info,
            format!(
                "no <numatune>: the guest's memory may come from any node, its vCPUs run on node(s) {cpu_nodes}"
            ),
        )
        .why("memory on another node than the vCPUs makes every access slower and less predictable")
        .fix(format!("<numatune><memory mode='strict' nodeset='{cpu_nodes}'/></numatune>")),
    })
}

fn rt_finding(
    host: &Host,
    d: &Domain,
    running: bool,
    settings: Option<&Settings>,
) -> Option<Finding> {
    if !d.realtime_vcpus {
        return None;
    }
    let runtime = host.read_i64(&host.proc("sys/kernel/sched_rt_runtime_us"))?;
    Some(if runtime == -1 {
        Finding::ok(
            "vm-rt-throttling",
            "FIFO vCPUs (<vcpusched>) with RT throttling off",
        )
    } else if !running && settings.is_some_and(Settings::disables_rt_throttling) {
        Finding::ok(
            "vm-rt-throttling",
            "FIFO vCPUs (<vcpusched>): RT throttling is on now, its isolation turns it off at start (rt-throttling tuning)",
        )
    } else {
        Finding::new(
            "vm-rt-throttling",
            Severity::Warning,
            format!("<vcpusched scheduler='fifo'> with RT throttling on (kernel.sched_rt_runtime_us = {runtime})"),
        )
        .why("the kernel stops real-time vCPUs for the rest of each period once they used their share (50 ms every second by default): a guaranteed stall")
        .fix("opt in with profile \"realtime\" (or the rt-throttling tuning), or sysctl kernel.sched_rt_runtime_us=-1")
    })
}

/// The default hugepage size of the host in KiB (`Hugepagesize:` of /proc/meminfo).
fn default_page_kib(host: &Host) -> u64 {
    host.read(&host.proc("meminfo"))
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("Hugepagesize:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(DEFAULT_PAGE_KIB)
}

fn hugepage_finding(
    host: &Host,
    d: &Domain,
    running: bool,
    settings: Option<&Settings>,
) -> Option<Finding> {
    let Some(backing) = &d.hugepages else {
        return Some(
            Finding::new(
                "vm-hugepages",
                Severity::Info,
                "the domain's memory is not backed by hugepages",
            )
            .why("hugepages mean fewer TLB misses and no THP compaction stalls in the guest's memory")
            .fix("add <memoryBacking><hugepages/></memoryBacking> and opt in with hugepages = \"auto\" (the hook reserves the pool at start)"),
        );
    };
    let page_kib = backing.page_kib.unwrap_or_else(|| default_page_kib(host));
    // The host nodes come from <numatune> (a <page nodeset> names *guest* NUMA nodes).
    let nodes = d.numa_nodes.clone();
    let need = d.memory_kib.div_ceil(page_kib);
    let pool = |dir: std::path::PathBuf| {
        let nr = host.read_i64(&dir.join("nr_hugepages"))?;
        let free = host.read_i64(&dir.join("free_hugepages"))?;
        Some((nr.max(0) as u64, free.max(0) as u64))
    };
    let sub = format!("hugepages/hugepages-{page_kib}kB");
    let (where_, found) = match &nodes {
        Some(ns) => {
            let mut sum = Some((0, 0));
            for n in ns.iter() {
                sum = match (
                    sum,
                    pool(host.sys(&format!("devices/system/node/node{n}/{sub}"))),
                ) {
                    (Some((a, b)), Some((x, y))) => Some((a + x, b + y)),
                    _ => None,
                };
            }
            (format!("node(s) {ns}"), sum)
        }
        None => (
            "the host".to_owned(),
            pool(host.sys(&format!("kernel/mm/{sub}"))),
        ),
    };
    let size = if page_kib >= 1 << 20 {
        format!("{} GiB", page_kib >> 20)
    } else if page_kib >= 1024 {
        format!("{} MiB", page_kib >> 10)
    } else {
        format!("{page_kib} KiB")
    };
    let Some((nr, free)) = found else {
        return Some(
            Finding::new(
                "vm-hugepages",
                Severity::Error,
                format!("the domain wants {size} hugepages, which {where_} does not have"),
            )
            .why("QEMU cannot map the guest's memory and the domain fails to start")
            .fix("use a page size the kernel offers (ls /sys/kernel/mm/hugepages), or boot with hugepagesz= for it"),
        );
    };
    let reserves = settings.and_then(|s| s.hugepage_spec(d).ok().flatten());
    Some(if running {
        Finding::ok(
            "vm-hugepages",
            format!(
                "the guest's {} MiB are backed by {need} page(s) of {size} from {where_}; the pool has {nr}, {free} free",
                d.memory_kib / 1024
            ),
        )
    } else if free >= need {
        Finding::ok(
            "vm-hugepages",
            format!(
                "the domain needs {need} page(s) of {size}; {where_} has {free} free (of {nr})"
            ),
        )
    } else if let Some(spec) = reserves {
        Finding::new(
            "vm-hugepages",
            Severity::Info,
            format!(
                "the domain needs {need} page(s) of {size}, {where_} has {free} free: its isolation reserves {spec} at start"
            ),
        )
        .why("the hook grows the pool before QEMU maps the memory; the start fails if the kernel cannot find that many free pages")
    } else {
        Finding::new(
            "vm-hugepages",
            Severity::Error,
            format!(
                "the domain needs {need} page(s) of {size} but {where_} has only {free} free (of {nr}): it would fail to start"
            ),
        )
        .why("QEMU cannot map the guest's memory from a pool that is too small, and the start fails")
        .fix(format!(
            "grow the pool (echo {} > /sys/kernel/mm/{sub}/nr_hugepages), or opt in with hugepages = \"auto\" so that the hook reserves it at start",
            nr + need - free
        ))
    })
}

/// The running domain's leaves: are those the rule picks valid `isolated` partitions? Returns
/// the finding and the CPUs of the leaves that are.
fn leaf_findings(host: &Host, d: &Domain, online: &CpuSet, opted_in: bool) -> (Finding, CpuSet) {
    let mut scopes = Vec::new();
    for parent in [MACHINE_SLICE, MACHINE_DIR] {
        for child in host.list(&host.cgroup(parent)) {
            if is_scope_of(&child, &d.name) {
                scopes.push(format!("{parent}/{child}"));
            }
        }
    }
    let Some(scope) = scopes.first() else {
        return (
            Finding::new(
                "vm-partitions",
                Severity::Warning,
                format!(
                    "domain {:?} runs but no cgroup of it was found under /{MACHINE_SLICE} or /{MACHINE_DIR}",
                    d.name
                ),
            )
            .why("without its cgroups its isolation cannot be audited (or libvirt runs it elsewhere)")
            .fix("check that libvirt uses cgroup v2 (virsh dominfo, systemd-cgls)"),
            CpuSet::new(),
        );
    };
    let libvirt = format!("{scope}/libvirt");
    let mut groups = Vec::new();
    let mut states = std::collections::BTreeMap::new();
    for name in host.list(&host.cgroup(&libvirt)) {
        let Some(kind) = LeafKind::parse(&name) else {
            continue;
        };
        let dir = host.cgroup(&format!("{libvirt}/{name}"));
        let pins = host
            .read_cpulist(&dir.join("cpuset.cpus"))
            .unwrap_or_default();
        let state = host
            .read_trim(&dir.join("cpuset.cpus.partition"))
            .unwrap_or_else(|| "?".to_owned());
        groups.push((kind, pins));
        states.insert(kind, state);
    }
    let placed = place(&groups, online, None);
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut cpus = CpuSet::new();
    for p in placed
        .iter()
        .filter(|p| p.placement == Placement::Partition)
    {
        let state = states.get(&p.kind).map_or("?", String::as_str);
        if state == "isolated" {
            cpus = cpus.union(&p.pins);
            good.push(format!("{} on {}: isolated", p.kind, p.pins));
        } else {
            bad.push(format!("{} on {}: {state}", p.kind, p.pins));
        }
    }
    let finding = if good.is_empty() && bad.is_empty() {
        Finding::new(
            "vm-partitions",
            Severity::Warning,
            format!("no leaf of {scope} is pinned to CPUs of its own"),
        )
        .why("kvmisolate isolates a domain's pinned vCPU and emulator leaves; with none there is nothing to isolate")
        .fix("pin the vCPUs (<vcpupin>) and restart the domain")
    } else if bad.is_empty() {
        Finding::ok(
            "vm-partitions",
            format!(
                "{} of the running domain {} isolated partitions ({})",
                shorten(
                    &placed
                        .iter()
                        .filter(|p| p.placement == Placement::Partition)
                        .map(|p| p.kind.to_string())
                        .collect::<Vec<_>>(),
                    6
                ),
                if good.len() == 1 { "is an" } else { "are" },
                cpus.phrase()
            ),
        )
        .details(good)
    } else {
        Finding::new(
            "vm-partitions",
            if opted_in { Severity::Error } else { Severity::Warning },
            format!(
                "{} leaf(s) of the running domain {} not isolated partitions",
                bad.len(),
                if bad.len() == 1 { "is" } else { "are" }
            ),
        )
        .why("host tasks, kernel threads and IRQs may still run on the vCPUs' CPUs")
        .fix(if opted_in {
            format!("see kvmisolate status (the isolation's state and reason) and journalctl -u kvmisolated; kvmisolate isolate --vm {} isolates it by hand", d.name)
        } else {
            format!("opt the domain in (see vm-optin) and restart it, or kvmisolate isolate --vm {}", d.name)
        })
        .details(bad.into_iter().chain(good).collect())
    };
    (finding, cpus)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::host::fake::FakeHost;
    use super::super::knobs::read_topology;
    use super::*;
    use crate::libvirt::optin::settings;

    const META: &str = "<metadata><k:isolate xmlns:k='https://kvmisolate.org/xmlns/libvirt/1' profile='realtime' hugepages='none'/></metadata>";

    /// A domain with two vCPUs on `v0`, `v1`, the emulator on `emu`, iothread 1 on 0.
    fn xml(id: Option<u32>, optin: bool, v0: &str, v1: &str, emu: &str, extra: &str) -> String {
        format!(
            "<domain type='kvm'{}><name>vm</name>{}<memory unit='MiB'>64</memory><vcpu>2</vcpu>\
             <cputune><vcpupin vcpu='0' cpuset='{v0}'/><vcpupin vcpu='1' cpuset='{v1}'/>\
             <emulatorpin cpuset='{emu}'/><iothreadpin iothread='1' cpuset='0'/></cputune>{extra}</domain>",
            id.map_or(String::new(), |i| format!(" id='{i}'")),
            if optin { META } else { "" }
        )
    }

    /// The audit on a kernel with remote partitions and no other isolation.
    fn audit(host: &Host, input: &VmInput) -> VmAudit {
        super::audit(
            host,
            input,
            &StartContext {
                remote_partitions: true,
                held: Vec::new(),
            },
            read_topology(host).as_ref(),
        )
    }

    fn input(xml: &str) -> VmInput {
        let domain = Domain::parse(xml).unwrap();
        let settings = settings(&domain, None);
        VmInput {
            domain,
            source: "test".into(),
            settings,
            xml: xml.to_owned(),
        }
    }

    /// A 6-CPU host without SMT.
    fn host6() -> FakeHost {
        let f = FakeHost::basic();
        f.write("sys/devices/system/cpu/online", "0-5\n");
        for c in 0..6 {
            let t = format!("sys/devices/system/cpu/cpu{c}/topology");
            f.write(&format!("{t}/thread_siblings_list"), &format!("{c}\n"))
                .write(&format!("{t}/core_id"), &format!("{c}\n"))
                .write(&format!("{t}/physical_package_id"), "0\n");
        }
        f
    }

    fn sev(a: &VmAudit, id: &str) -> Severity {
        match a.findings.iter().find(|f| f.id == id) {
            Some(f) => f.severity,
            None => panic!("no {id} in {:#?}", a.findings),
        }
    }

    fn get<'a>(a: &'a VmAudit, id: &str) -> &'a Finding {
        a.findings.iter().find(|f| f.id == id).unwrap()
    }

    #[test]
    fn vfio_irqs_against_the_choice() {
        let hostdev = "<devices><hostdev mode='subsystem' type='pci' managed='yes'><source>\
                       <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source>\
                       <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>\
                       </hostdev></devices>";
        let f = host6();
        f.write("sys/bus/pci/devices/0000:01:00.0/msi_irqs/146", "msix\n")
            .write("sys/bus/pci/devices/0000:01:00.0/irq", "0\n")
            .write(
                "proc/interrupts",
                "           CPU0       CPU1\n146:  1894  0  IR-PCI-MSIX-0000:01:00.0    0-edge      vfio-msix[0](0000:01:00.0)\n",
            )
            .write("proc/irq/146/smp_affinity_list", "0-1,5\n");
        // Housekeeping (no choice): off the domain's CPUs 2-4 is right.
        let a = audit(
            &f.host(),
            &input(&xml(Some(1), true, "3", "4", "2", hostdev)),
        );
        let v = get(&a, "vm-vfio-irqs");
        assert_eq!(v.severity, Severity::Ok, "{v:#?}");
        assert!(
            v.details[0].contains("IRQ 146 vfio-msix[0](0000:01:00.0) on CPUs 0-1,5"),
            "{v:#?}"
        );
        // vcpu: the same placement contradicts it.
        let vcpu = xml(Some(1), false, "3", "4", "2", hostdev).replace(
            "<memory",
            "<metadata><k:isolate xmlns:k='https://kvmisolate.org/xmlns/libvirt/1' vfio-irqs='vcpu'/></metadata><memory",
        );
        let a = audit(&f.host(), &input(&vcpu));
        let v = get(&a, "vm-vfio-irqs");
        assert_eq!(v.severity, Severity::Warning, "{v:#?}");
        assert!(
            v.found.contains("IRQ 146") && v.found.contains("vfio-irqs=vcpu"),
            "{}",
            v.found
        );
        f.write("proc/irq/146/smp_affinity_list", "3-4\n");
        let a = audit(&f.host(), &input(&vcpu));
        assert_eq!(sev(&a, "vm-vfio-irqs"), Severity::Ok);
        // Without a hostdev: no finding at all.
        let a = audit(&f.host(), &input(&xml(Some(1), true, "3", "4", "2", "")));
        assert!(a.findings.iter().all(|f| f.id != "vm-vfio-irqs"));
    }

    #[test]
    fn recipe_not_running_is_fine() {
        let f = host6();
        let a = audit(&f.host(), &input(&xml(None, true, "3", "4", "2", "")));
        assert!(!a.summary.running && a.summary.opted_in);
        assert_eq!(a.summary.pinned_cpus.to_string(), "2-4");
        assert!(get(&a, "vm-domain").found.contains("not running"));
        for id in [
            "vm-optin",
            "vm-vcpu-pins",
            "vm-shared-cpus",
            "vm-smt-siblings",
        ] {
            assert_eq!(sev(&a, id), Severity::Ok, "{id}: {:?}", get(&a, id));
        }
        assert!(a.findings.iter().all(|f| f.id != "vm-partitions"));
        assert!(a.findings.iter().all(|f| f.id != "vm-numa"), "one node");
        assert!(a.findings.iter().all(|f| f.id != "vm-rt-throttling"));
        assert_eq!(sev(&a, "vm-hugepages"), Severity::Info);
        assert_eq!(sev(&a, "vm-start"), Severity::Ok);
        assert!(get(&a, "vm-start").found.contains("would isolate CPUs 2-4"));
    }

    #[test]
    fn an_unreadable_topology_is_reported_once() {
        let f = host6();
        f.remove("sys/devices/system/cpu/cpu0/topology/core_id");
        let r = super::super::audit_with(
            f.roots(),
            super::super::AuditInput {
                cpus: Some(CpuSet::parse("2-4").unwrap()),
                vm: Some(input(&xml(None, true, "3", "4", "2", ""))),
                daemon: super::super::daemon::Daemon::NotAsked,
            },
        );
        let topo: Vec<_> = r
            .unreadable
            .iter()
            .filter(|u| u.path.ends_with("devices/system/cpu"))
            .collect();
        assert_eq!(topo.len(), 1, "{:?}", r.unreadable);
        // Neither SMT check can run without it.
        assert!(
            r.findings
                .iter()
                .all(|f| f.id != "smt-siblings" && f.id != "vm-smt-siblings")
        );
    }

    #[test]
    fn a_start_the_hook_would_refuse() {
        let f = host6();
        f.write("proc/sys/kernel/osrelease", "6.1.0-50-cloud-amd64\n");
        let vm = input(&xml(None, true, "3", "4", "2", ""));
        // Another isolation holds CPU 4; the domain's own (left over) ones do not count.
        let held = vec![
            ("libvirt-other".to_owned(), CpuSet::parse("4-5").unwrap()),
            ("libvirt-vm".to_owned(), CpuSet::parse("2-4").unwrap()),
        ];
        let a = super::audit(
            &f.host(),
            &vm,
            &StartContext {
                remote_partitions: true,
                held,
            },
            None,
        );
        assert_eq!(sev(&a, "vm-start"), Severity::Error);
        let d = &get(&a, "vm-start").details;
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].starts_with("CPU 4 is already held by isolation 'libvirt-other'"),
            "{d:?}"
        );
        // A kernel without remote partitions.
        let a = super::audit(&f.host(), &vm, &StartContext::default(), None);
        assert!(get(&a, "vm-start").details[0].starts_with(
            "this kernel (6.1.0-50-cloud-amd64) cannot isolate a libvirt domain in place"
        ));
        // Two vCPUs on one CPU.
        let a = audit(&f.host(), &input(&xml(None, true, "3", "3", "2", "")));
        assert!(
            get(&a, "vm-start").details[0].contains("vcpu0 and vcpu1 are both pinned to CPU 3")
        );
        // Not opted in, or running: no start to predict.
        let a = audit(&f.host(), &input(&xml(None, false, "3", "3", "2", "")));
        assert!(a.findings.iter().all(|f| f.id != "vm-start"));
    }

    #[test]
    fn opt_in_missing_or_invalid() {
        let f = host6();
        let a = audit(&f.host(), &input(&xml(None, false, "3", "4", "2", "")));
        assert_eq!(sev(&a, "vm-optin"), Severity::Info);
        assert!(!a.summary.opted_in);
        let bad = xml(None, true, "3", "4", "2", "").replace("realtime", "fastest");
        let a = audit(&f.host(), &input(&bad));
        assert_eq!(sev(&a, "vm-optin"), Severity::Error);
        assert!(get(&a, "vm-optin").found.contains("fastest"));
    }

    #[test]
    fn bad_pins() {
        let f = host6();
        // vcpu1 on two CPUs; the emulator on vcpu0's CPU.
        let a = audit(&f.host(), &input(&xml(None, true, "3", "4-5", "3", "")));
        assert_eq!(sev(&a, "vm-vcpu-pins"), Severity::Warning);
        assert!(get(&a, "vm-vcpu-pins").details[0].starts_with("vcpu1: pinned to CPUs 4-5"));
        assert_eq!(sev(&a, "vm-shared-cpus"), Severity::Warning);
        assert!(get(&a, "vm-shared-cpus").details[0].starts_with("emulator shares CPU 3"));
        // Two vCPUs on one CPU: the service refuses.
        let a = audit(&f.host(), &input(&xml(None, true, "3", "3", "2", "")));
        assert_eq!(sev(&a, "vm-shared-cpus"), Severity::Error);
        assert!(get(&a, "vm-shared-cpus").details[0].contains("vcpu1 shares CPU 3 with vcpu0"));
        // Unpinned vCPU (every CPU).
        let a = audit(&f.host(), &input(&xml(None, true, "3", "0-5", "2", "")));
        assert!(get(&a, "vm-vcpu-pins").details[0].starts_with("vcpu1: not pinned"));
    }

    #[test]
    fn smt_siblings_left_to_the_host() {
        let f = host6();
        // Cores {3,4} and {2,5}.
        for (c, s) in [(2, "2,5"), (5, "2,5"), (3, "3-4"), (4, "3-4")] {
            f.write(
                &format!("sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list"),
                &format!("{s}\n"),
            );
        }
        let a = audit(&f.host(), &input(&xml(None, true, "3", "4", "2", "")));
        assert_eq!(sev(&a, "vm-smt-siblings"), Severity::Warning);
        assert!(
            get(&a, "vm-smt-siblings")
                .found
                .starts_with("CPU 5 left to the host is an SMT sibling")
        );
    }

    #[test]
    fn fifo_vcpus_and_rt_throttling() {
        let f = host6();
        f.write("proc/sys/kernel/sched_rt_runtime_us", "950000\n");
        let fifo = xml(None, false, "3", "4", "2", "").replace(
            "</cputune>",
            "<vcpusched vcpus='0-1' scheduler='fifo' priority='1'/></cputune>",
        );
        let a = audit(&f.host(), &input(&fifo));
        assert_eq!(sev(&a, "vm-rt-throttling"), Severity::Warning);
        // Opted in with the realtime profile: turned off at start.
        let fifo_in = xml(None, true, "3", "4", "2", "").replace(
            "</cputune>",
            "<vcpusched vcpus='0-1' scheduler='fifo' priority='1'/></cputune>",
        );
        assert_eq!(
            sev(&audit(&f.host(), &input(&fifo_in)), "vm-rt-throttling"),
            Severity::Ok
        );
        f.write("proc/sys/kernel/sched_rt_runtime_us", "-1\n");
        assert_eq!(
            sev(&audit(&f.host(), &input(&fifo)), "vm-rt-throttling"),
            Severity::Ok
        );
    }

    #[test]
    fn hugepages_against_the_pool() {
        let f = host6();
        let pool = "sys/kernel/mm/hugepages/hugepages-2048kB";
        f.write(&format!("{pool}/nr_hugepages"), "40\n")
            .write(&format!("{pool}/free_hugepages"), "40\n");
        let hp = "<memoryBacking><hugepages/></memoryBacking>";
        // 64 MiB = 32 pages of 2 MiB.
        let a = audit(&f.host(), &input(&xml(None, true, "3", "4", "2", hp)));
        assert_eq!(
            sev(&a, "vm-hugepages"),
            Severity::Ok,
            "{:?}",
            get(&a, "vm-hugepages")
        );
        f.write(&format!("{pool}/free_hugepages"), "10\n");
        let a = audit(&f.host(), &input(&xml(None, true, "3", "4", "2", hp)));
        assert_eq!(sev(&a, "vm-hugepages"), Severity::Error);
        assert!(
            get(&a, "vm-hugepages")
                .found
                .contains("needs 32 page(s) of 2 MiB but the host has only 10 free")
        );
        // hugepages="auto": the hook reserves them.
        let auto =
            xml(None, true, "3", "4", "2", hp).replace("hugepages='none'", "hugepages='auto'");
        assert_eq!(
            sev(&audit(&f.host(), &input(&auto)), "vm-hugepages"),
            Severity::Info
        );
        // Running: what it uses.
        let a = audit(&f.host(), &input(&xml(Some(1), true, "3", "4", "2", hp)));
        assert_eq!(sev(&a, "vm-hugepages"), Severity::Ok);
        assert!(
            get(&a, "vm-hugepages")
                .found
                .contains("backed by 32 page(s)")
        );
        // 1G pages the kernel does not have.
        let big = "<memoryBacking><hugepages><page size='1' unit='G'/></hugepages></memoryBacking>";
        let a = audit(&f.host(), &input(&xml(None, true, "3", "4", "2", big)));
        assert_eq!(sev(&a, "vm-hugepages"), Severity::Error);
        // Per-node pool with <numatune>.
        let node = "sys/devices/system/node/node1/hugepages/hugepages-2048kB";
        f.write(&format!("{node}/nr_hugepages"), "32\n")
            .write(&format!("{node}/free_hugepages"), "32\n");
        let numa = format!("{hp}<numatune><memory mode='strict' nodeset='1'/></numatune>");
        let a = audit(&f.host(), &input(&xml(None, true, "3", "4", "2", &numa)));
        assert_eq!(
            sev(&a, "vm-hugepages"),
            Severity::Ok,
            "{:?}",
            get(&a, "vm-hugepages")
        );
        assert!(
            get(&a, "vm-hugepages")
                .found
                .contains("node(s) 1 has 32 free")
        );
    }

    #[test]
    fn numatune_against_the_pinned_nodes() {
        let f = host6();
        f.write("sys/devices/system/node/node0/cpulist", "0-2\n")
            .write("sys/devices/system/node/node1/cpulist", "3-5\n");
        let a = audit(&f.host(), &input(&xml(None, true, "3", "4", "2", "")));
        assert_eq!(sev(&a, "vm-numa"), Severity::Info);
        let wrong = "<numatune><memory mode='strict' nodeset='0'/></numatune>";
        let a = audit(&f.host(), &input(&xml(None, true, "3", "4", "2", wrong)));
        assert_eq!(sev(&a, "vm-numa"), Severity::Warning);
        assert!(get(&a, "vm-numa").fix.contains("nodeset='1'"));
        let right = "<numatune><memory mode='strict' nodeset='1'/></numatune>";
        let a = audit(&f.host(), &input(&xml(None, true, "3", "4", "2", right)));
        assert_eq!(sev(&a, "vm-numa"), Severity::Ok);
    }

    fn leaves(f: &FakeHost, states: &[(&str, &str, &str)]) {
        let base = r"cgroup/machine.slice/machine-qemu\x2d1\x2dvm.scope/libvirt";
        for (leaf, cpus, part) in states {
            f.write(&format!("{base}/{leaf}/cpuset.cpus"), &format!("{cpus}\n"))
                .write(
                    &format!("{base}/{leaf}/cpuset.cpus.partition"),
                    &format!("{part}\n"),
                );
        }
    }

    #[test]
    fn running_leaves_are_partitions() {
        let f = host6();
        leaves(
            &f,
            &[
                ("vcpu0", "3", "isolated"),
                ("vcpu1", "4", "isolated"),
                ("emulator", "2", "isolated"),
                ("iothread1", "0", "member"),
            ],
        );
        let a = audit(&f.host(), &input(&xml(Some(1), true, "3", "4", "2", "")));
        assert_eq!(
            sev(&a, "vm-partitions"),
            Severity::Ok,
            "{:?}",
            get(&a, "vm-partitions")
        );
        assert_eq!(a.summary.isolated_cpus.to_string(), "2-4");
        // One leaf invalid, one member.
        leaves(
            &f,
            &[
                ("vcpu1", "4", "isolated invalid (cpus not exclusive)"),
                ("emulator", "2", "member"),
            ],
        );
        let a = audit(&f.host(), &input(&xml(Some(1), true, "3", "4", "2", "")));
        assert_eq!(sev(&a, "vm-partitions"), Severity::Error);
        assert_eq!(a.summary.isolated_cpus.to_string(), "3");
        let d = &get(&a, "vm-partitions").details;
        assert!(
            d.contains(&"vcpu1 on 4: isolated invalid (cpus not exclusive)".to_owned()),
            "{d:?}"
        );
        assert!(d.contains(&"emulator on 2: member".to_owned()), "{d:?}");
        // Not opted in: a warning.
        let a = audit(&f.host(), &input(&xml(Some(1), false, "3", "4", "2", "")));
        assert_eq!(sev(&a, "vm-partitions"), Severity::Warning);
        // Another domain's scope does not count.
        let g = host6();
        g.write(
            r"cgroup/machine.slice/machine-qemu\x2d2\x2dvm2.scope/libvirt/vcpu0/cpuset.cpus",
            "3\n",
        );
        let a = audit(&g.host(), &input(&xml(Some(1), true, "3", "4", "2", "")));
        assert_eq!(sev(&a, "vm-partitions"), Severity::Warning);
        assert!(get(&a, "vm-partitions").found.contains("no cgroup"));
    }
}
