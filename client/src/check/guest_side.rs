//! `check --vm`: the guest-side half of the guide that a domain lacks (what `kvmisolate plan
//! --apply` writes: `<pmu state='off'/>`, the `tsc-deadline` CPU feature where the host has
//! it, `<locked/>` and `<nosharepages/>`, virtio disks on an I/O thread, and for a Windows
//! guest the Hyper-V enlightenments and its clock). Information only: each costs latency, none
//! stops the isolation.

use super::host::Host;
use super::{Finding, Severity};
use crate::plan::guest::{self, Want};
use crate::plan::xml_spans::{self, Element};
use crate::plan::{GuestOs, GuestSide};
use crate::topology::CpuFlags;

/// The finding `vm-guest-side` for the domain XML `xml` named `name`, or None when the XML
/// cannot be read as a tree (the domain parser has reported it already).
pub fn finding(host: &Host, name: &str, xml: &str) -> Option<Finding> {
    let root = xml_spans::parse(xml).ok()?;
    let flags = host
        .read(&host.proc("cpuinfo"))
        .and_then(|t| CpuFlags::parse(&t))
        .unwrap_or_else(|| CpuFlags::Unknown("cpuinfo unreadable".to_owned()));
    let windows = guest::looks_like_windows(&root);
    let lacks = lacking(&root, flags.has(guest::TSC_DEADLINE_FLAG), windows);
    let guest_arg = if windows { " --guest windows" } else { "" };
    if lacks.is_empty() {
        return Some(Finding::ok(
            "vm-guest-side",
            format!(
                "domain {name:?} has the guest-side settings kvmisolate plans (PMU off, memory locked and unshared, disks on I/O threads{}{})",
                if flags.has(guest::TSC_DEADLINE_FLAG) {
                    ", TSC deadline required"
                } else {
                    ""
                },
                if windows {
                    ", Hyper-V enlightenments and clock"
                } else {
                    ""
                }
            ),
        ));
    }
    Some(
        Finding::new(
            "vm-guest-side",
            Severity::Info,
            format!(
                "domain {name:?} lacks {} of the guest-side settings kvmisolate plans",
                lacks.len()
            ),
        )
        .why("a vPMU, swapped or KSM-merged guest memory, disk I/O on the emulator thread, the APIC timer instead of the TSC deadline one and, for Windows, missing Hyper-V enlightenments each add exits or stalls to the guest's timer and interrupt latency")
        .fix(format!(
            "virsh dumpxml --inactive {name} > {name}.xml; kvmisolate plan{guest_arg} --apply {name}.xml; virsh define {name}.xml (or add the listed elements with virsh edit {name})"
        ))
        .details(lacks),
    )
}

/// What the domain lacks, one line each (the enclosing elements, then what is missing).
pub fn lacking(root: &Element, tsc_deadline: bool, windows: bool) -> Vec<String> {
    let side = GuestSide {
        os: if windows {
            GuestOs::Windows
        } else {
            GuestOs::Any
        },
        tsc_deadline,
        disk_iothreads: 1,
    };
    let mut wants = guest::wants(&side, None);
    if tsc_deadline {
        wants.push(guest::tsc_deadline_want());
    }
    let mut out = Vec::new();
    for want in &wants {
        let old = root.elements().filter(|e| want.matches(e)).last();
        guest::unmet(old, want, "", &mut out);
    }
    let disk: Want = guest::disk_want(1);
    for d in guest::iothread_disks(root) {
        let mut lacks = Vec::new();
        for w in &disk.children {
            let old = d.elements().filter(|e| w.matches(e)).last();
            guest::unmet(old, w, "", &mut lacks);
        }
        if !lacks.is_empty() {
            out.push(format!(
                "<disk> {}: {} (on an I/O thread, as <iothreads> defines)",
                guest::disk_name(d),
                lacks.join(" ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIN11: &str = include_str!("../../tests/fixtures/domains/win11.xml");
    const DEBIAN: &str = include_str!("../../tests/fixtures/libvirt/virt-manager-default.xml");

    #[test]
    fn a_windows_domain_lacks_what_the_plan_adds() {
        let root = xml_spans::parse(WIN11).unwrap();
        assert!(guest::looks_like_windows(&root));
        let lacks = lacking(&root, true, true);
        for want in [
            "<memoryBacking><nosharepages/>",
            "<features><pmu state='off'/>",
            "<features><hyperv><stimer state='on'><direct state='on'/></stimer>",
            "<features><hyperv><ipi state='on'/>",
            "<cpu><feature policy='require' name='tsc-deadline'/>",
            "<disk> vda: <driver io='threads' iothread='1'> (on an I/O thread, as <iothreads> defines)",
        ] {
            assert!(lacks.iter().any(|l| l == want), "{want} not in {lacks:#?}");
        }
        // What it has is not listed: <locked/>, relaxed, the clock's timers.
        assert!(
            !lacks
                .iter()
                .any(|l| l.contains("locked") || l.contains("relaxed") || l.contains("<timer")),
            "{lacks:#?}"
        );
    }

    #[test]
    fn a_linux_domain_is_not_asked_for_hyperv() {
        let root = xml_spans::parse(DEBIAN).unwrap();
        assert!(!guest::looks_like_windows(&root));
        let lacks = lacking(&root, false, false);
        assert!(
            !lacks
                .iter()
                .any(|l| l.contains("hyperv") || l.contains("tsc")),
            "{lacks:#?}"
        );
        assert!(
            lacks
                .iter()
                .any(|l| l == "<memoryBacking nosharepages/>" || l.starts_with("<memoryBacking>")),
            "{lacks:#?}"
        );
        assert!(
            lacks
                .iter()
                .any(|l| l.starts_with("<disk> vda: <driver io='threads' iothread='1'>")),
            "{lacks:#?}"
        );
    }
}
