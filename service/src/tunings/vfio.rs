//! `vfio-irqs`: the host IRQs of a libvirt domain's assigned PCI devices.
//!
//! The devices are the `<hostdev mode='subsystem' type='pci'>` of the domain's live XML
//! (`/run/libvirt/qemu/DOMAIN.xml`, which libvirt keeps while the domain runs); a device's
//! IRQs are the entries of `/sys/bus/pci/devices/DDDD:BB:SS.F/msi_irqs/` (present once the
//! guest has enabled MSI/MSI-X and QEMU asked vfio-pci for the vectors) and its INTx line
//! (`irq`) when `/proc/interrupts` names it `vfio-intx(DDDD:BB:SS.F)` (a legacy line is
//! otherwise shared or unused). They go on the domain's vCPU CPUs (`vcpu`) or off the isolated
//! CPUs (`housekeeping`); `irq-affinity` leaves them to this tuning.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::tunings::{Tuning, VfioIrqPlacement};
use serde::{Deserialize, Serialize};

use super::files::{Codec, FileError};
use super::wants::{Ctx, Outcome, Want, absent, irq_names, list_of};
use super::{Holder, Paths};

/// What `vfio-irqs` needs to know of a libvirt isolation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioHolder {
    /// The domain's name.
    pub domain: String,
    /// Where its devices' IRQs go.
    pub placement: VfioIrqPlacement,
    /// The CPUs of its vCPUs (the isolation's CPUs minus the emulator's when known).
    pub vcpu_cpus: CpuSet,
}

/// The PCI addresses (`DDDD:BB:SS.F`) of a domain XML's `<hostdev mode='subsystem'
/// type='pci'>` sources, or why they cannot be read.
pub fn hostdev_addresses(xml: &str) -> Result<Vec<String>, String> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, options)
        .map_err(|e| format!("the domain XML is not well-formed: {e}"))?;
    let mut out = Vec::new();
    for hostdev in doc.descendants().filter(|n| n.has_tag_name("hostdev")) {
        if hostdev.attribute("mode") != Some("subsystem")
            || hostdev.attribute("type") != Some("pci")
        {
            continue;
        }
        let Some(address) = hostdev
            .children()
            .find(|n| n.has_tag_name("source"))
            .and_then(|s| s.children().find(|n| n.has_tag_name("address")))
        else {
            return Err("a PCI <hostdev> has no <source><address .../></source>".into());
        };
        let field = |name: &str, max: u32| -> Result<u32, String> {
            let text = address.attribute(name).unwrap_or("0");
            let digits = text.strip_prefix("0x").unwrap_or(text);
            let radix = if text.starts_with("0x") { 16 } else { 10 };
            u32::from_str_radix(digits, radix)
                .ok()
                .filter(|v| *v <= max)
                .ok_or_else(|| {
                    format!("a PCI <hostdev> source address has {name}={text:?}, not a number up to {max:#x}")
                })
        };
        out.push(format!(
            "{:04x}:{:02x}:{:02x}.{:x}",
            field("domain", 0xffff)?,
            field("bus", 0xff)?,
            field("slot", 0x1f)?,
            field("function", 7)?
        ));
    }
    Ok(out)
}

/// The domain's assigned PCI devices, from its live XML.
fn domain_devices(paths: &Paths, domain: &str) -> Result<Vec<String>, String> {
    let path = paths.libvirt_run.join(format!("{domain}.xml"));
    let xml = fs::read_to_string(&path).map_err(|e| {
        format!(
            "domain {domain:?}: its live XML {} cannot be read ({e}): the domain's devices are \
             unknown, no VFIO IRQ was moved",
            path.display()
        )
    })?;
    hostdev_addresses(&xml).map_err(|e| format!("domain {domain:?}: {} {e}", path.display()))
}

/// The IRQs of PCI device `addr` that vfio-pci holds: its `msi_irqs` entries and its INTx
/// line when `/proc/interrupts` names it `vfio-intx(ADDR)`. `None`: no such device.
pub fn device_irqs(sys: &Path, names: &BTreeMap<u32, String>, addr: &str) -> Option<Vec<u32>> {
    let dir = sys.join("bus/pci/devices").join(addr);
    if !dir.is_dir() {
        return None;
    }
    let mut irqs: BTreeSet<u32> = fs::read_dir(dir.join("msi_irqs"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(intx) = fs::read_to_string(dir.join("irq"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|n| *n != 0)
        && names
            .get(&intx)
            .is_some_and(|name| name.contains(&format!("vfio-intx({addr})")))
    {
        irqs.insert(intx);
    }
    Some(irqs.into_iter().collect())
}

/// The PCI addresses of the devices assigned to the domains of `holders` that select
/// `vfio-irqs` (a domain whose live XML cannot be read has none here; `wants` says why).
fn followed_devices<'a>(
    paths: &'a Paths,
    holders: &'a [Holder],
) -> impl Iterator<Item = String> + 'a {
    holders
        .iter()
        .filter(|h| h.tunings.contains(&Tuning::VfioIrqs))
        .filter_map(|h| h.vfio.as_ref())
        .filter_map(|v| domain_devices(paths, &v.domain).ok())
        .flatten()
}

/// The IRQs `vfio-irqs` places for `holders` (those that selected it): `irq-affinity`
/// leaves these alone, so the two never write the same file.
pub fn owned(paths: &Paths, holders: &[Holder]) -> BTreeSet<u32> {
    let names = irq_names(&paths.proc);
    followed_devices(paths, holders)
        .filter_map(|addr| device_irqs(&paths.sys, &names, &addr))
        .flatten()
        .collect()
}

/// What the daemon compares to notice that a guest enabled (or dropped) MSI vectors after
/// the isolation: each followed domain's PCI devices and their `msi_irqs` entries. Cheaper
/// than [`owned`] (no `/proc/interrupts`), so it can be read every few seconds; an INTx line
/// is fixed per device and placed at every reconcile.
pub fn msi_signature(paths: &Paths, holders: &[Holder]) -> BTreeSet<(String, u32)> {
    let empty = BTreeMap::new();
    followed_devices(paths, holders)
        .flat_map(|addr| {
            device_irqs(&paths.sys, &empty, &addr)
                .unwrap_or_default()
                .into_iter()
                .map(move |n| (addr.clone(), n))
        })
        .collect()
}

/// The wants of `vfio-irqs` for `holders`.
pub fn wants(holders: &[&Holder], ctx: &Ctx<'_>) -> Result<Outcome, FileError> {
    let names = irq_names(&ctx.paths.proc);
    let mut wants = Vec::new();
    let mut notes = Vec::new();
    let mut claimed: BTreeMap<u32, &str> = BTreeMap::new();
    for h in holders {
        let Some(v) = &h.vfio else {
            notes.push(format!(
                "{}: not a libvirt domain (vfio-irqs places the IRQs of a domain's PCI \
                 <hostdev> devices; irq-affinity moves every other IRQ)",
                h.name
            ));
            continue;
        };
        let devices = match domain_devices(ctx.paths, &v.domain) {
            Ok(d) => d,
            Err(why) => {
                notes.push(why);
                continue;
            }
        };
        if devices.is_empty() {
            notes.push(format!(
                "domain {:?} has no assigned PCI device (<hostdev mode='subsystem' type='pci'>): \
                 no VFIO IRQ to place",
                v.domain
            ));
            continue;
        }
        for addr in devices {
            let Some(irqs) = device_irqs(&ctx.paths.sys, &names, &addr) else {
                notes.push(format!(
                    "{addr}: no such PCI device on this host ({} is missing)",
                    ctx.paths.sys.join("bus/pci/devices").join(&addr).display()
                ));
                continue;
            };
            if irqs.is_empty() {
                notes.push(format!(
                    "{addr}: no IRQ allocated yet (the guest has not enabled MSI/MSI-X or INTx): \
                     kvmisolated lists the device's vectors every 2 s and places them when the \
                     guest's driver enables them"
                ));
                continue;
            }
            for n in irqs {
                let path = ctx.paths.proc.join(format!("irq/{n}/smp_affinity_list"));
                let Some(orig) = ctx.orig(&path, Codec::CpuList).or_else(absent)? else {
                    continue;
                };
                if let Some(other) = claimed.get(&n) {
                    notes.push(format!(
                        "IRQ {n} ({addr}) is claimed by {other} too: placed for {other}"
                    ));
                    continue;
                }
                claimed.insert(n, &h.name);
                let orig_set = list_of(&path, &orig)?;
                let value = match v.placement {
                    VfioIrqPlacement::Vcpu if !v.vcpu_cpus.is_empty() => v.vcpu_cpus.clone(),
                    VfioIrqPlacement::Vcpu => h.cpus.clone(),
                    VfioIrqPlacement::Housekeeping if orig_set.is_disjoint(&ctx.isolated) => {
                        continue;
                    }
                    VfioIrqPlacement::Housekeeping => ctx.off_isolated(&orig_set, &ctx.isolated),
                };
                let name = names.get(&n).cloned().unwrap_or_default();
                wants.push(Want {
                    tuning: Tuning::VfioIrqs,
                    path,
                    codec: Codec::CpuList,
                    value: value.to_string(),
                    label: if name.is_empty() {
                        format!("IRQ {n} ({addr})")
                    } else {
                        format!("IRQ {n} {name}")
                    },
                });
            }
        }
    }
    if wants.is_empty() && !notes.is_empty() {
        return Ok(Outcome::Skip(notes.join("; ")));
    }
    Ok(Outcome::Wants(wants, notes))
}
