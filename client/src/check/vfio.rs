//! `check --vm`: where the host IRQs of a domain's assigned PCI devices are (`vm-vfio-irqs`),
//! against the placement the domain asks for (its opt-in's `vfio-irqs`; `housekeeping` when
//! it says nothing): on the vCPUs' CPUs for `vcpu`, off the domain's CPUs for `housekeeping`.

use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::tunings::VfioIrqPlacement;

use super::host::Host;
use super::irq::parse_counters;
use super::{Finding, Severity};
use crate::libvirt::domain::Domain;

/// One IRQ of an assigned device: its number, `/proc/interrupts` name and allowed CPUs.
struct DeviceIrq {
    irq: u32,
    name: String,
    cpus: Option<CpuSet>,
}

/// The IRQs vfio-pci holds for PCI device `addr`: its `msi_irqs` entries and its INTx line
/// when `/proc/interrupts` names it `vfio-intx(ADDR)`. `None`: the device is not on the host.
fn device_irqs(host: &Host, names: &[(u32, String)], addr: &str) -> Option<Vec<DeviceIrq>> {
    let dir = host.sys(&format!("bus/pci/devices/{addr}"));
    if !dir.is_dir() {
        return None;
    }
    let mut irqs: Vec<u32> = host.list_numeric(&dir.join("msi_irqs"));
    let intx = format!("vfio-intx({addr})");
    if let Some(line) = host
        .read_quiet(&dir.join("irq"))
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|n| *n != 0 && names.iter().any(|(m, name)| m == n && name.contains(&intx)))
    {
        irqs.push(line);
    }
    irqs.sort_unstable();
    irqs.dedup();
    Some(
        irqs.into_iter()
            .map(|irq| DeviceIrq {
                irq,
                name: names
                    .iter()
                    .find(|(m, _)| *m == irq)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default(),
                cpus: host.read_cpulist(&host.proc(&format!("irq/{irq}/smp_affinity_list"))),
            })
            .collect(),
    )
}

/// The `vm-vfio-irqs` finding of a domain with PCI `<hostdev>`s (`None` without any).
pub fn finding(
    host: &Host,
    d: &Domain,
    placement: Option<VfioIrqPlacement>,
    pinned: &CpuSet,
) -> Option<Finding> {
    if d.hostdevs.is_empty() {
        return None;
    }
    let placement = placement.unwrap_or_default();
    let vcpus = d
        .vcpupins
        .values()
        .fold(CpuSet::new(), |acc, c| acc.union(c));
    let names: Vec<(u32, String)> = host
        .read_quiet(&host.proc("interrupts"))
        .map(|t| {
            parse_counters(&t)
                .into_iter()
                .filter_map(|l| {
                    let n = l.source.parse().ok()?;
                    // The handler's name is the last word (`vfio-msix[0](0000:01:00.0)`).
                    Some((n, l.desc.split_whitespace().last().unwrap_or("").to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut details = Vec::new();
    let mut wrong = Vec::new();
    let mut seen = 0;
    for addr in &d.hostdevs {
        let Some(irqs) = device_irqs(host, &names, addr) else {
            details.push(format!("{addr}: not on this host"));
            continue;
        };
        if irqs.is_empty() {
            details.push(format!(
                "{addr}: no IRQ allocated (the guest has not enabled MSI/MSI-X or INTx, or the domain does not run)"
            ));
            continue;
        }
        for i in irqs {
            seen += 1;
            let Some(cpus) = i.cpus else {
                details.push(format!(
                    "{addr}: IRQ {} {}: affinity unreadable",
                    i.irq, i.name
                ));
                continue;
            };
            let bad = match placement {
                VfioIrqPlacement::Vcpu => !vcpus.is_empty() && !cpus.is_subset(&vcpus),
                VfioIrqPlacement::Housekeeping => !cpus.is_disjoint(pinned),
            };
            details.push(format!(
                "{addr}: IRQ {} {} on CPUs {cpus}{}",
                i.irq,
                i.name,
                if bad { " (against the choice)" } else { "" }
            ));
            if bad {
                wrong.push(i.irq.to_string());
            }
        }
    }
    let want = match placement {
        VfioIrqPlacement::Vcpu => format!("on the vCPUs' CPUs ({vcpus})"),
        VfioIrqPlacement::Housekeeping => format!("off the domain's CPUs ({pinned})"),
    };
    let f = if !wrong.is_empty() {
        Finding::new(
            "vm-vfio-irqs",
            Severity::Warning,
            format!(
                "IRQ {} of the domain's assigned devices not {want}, as vfio-irqs={placement} asks",
                wrong.join(", ")
            ),
        )
        .why("a device interrupt on another CPU than the chosen one either interrupts the isolated vCPUs (housekeeping) or takes a cross-CPU hop before the guest sees it (vcpu)")
        .fix("isolate the domain with the vfio-irqs tuning (the opt-in's vfio-irqs attribute, or kvmisolate isolate --vm NAME --vfio-irqs vcpu|housekeeping); while it holds, a vector the guest enables later is placed within 2 s")
    } else if seen == 0 {
        Finding::new(
            "vm-vfio-irqs",
            Severity::Info,
            format!(
                "{} assigned PCI device(s), no VFIO IRQ allocated now (vfio-irqs={placement})",
                d.hostdevs.len()
            ),
        )
    } else {
        Finding::ok(
            "vm-vfio-irqs",
            format!(
                "{seen} VFIO IRQ(s) of the domain's assigned devices {want} (vfio-irqs={placement})"
            ),
        )
    };
    Some(f.details(details))
}
