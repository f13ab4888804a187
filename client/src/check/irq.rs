//! IRQs allowed or delivered on the isolated CPUs, the default affinity of new IRQs, and
//! irqbalance.

use std::collections::BTreeMap;

use kvmisolate_dbus::cpulist::CpuSet;

use super::host::Host;
use super::{Ctx, Finding, Severity, shorten};

/// One line of `/proc/interrupts` (or `/proc/softirqs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterLine {
    /// The source: an IRQ number (`24`) or a name (`LOC`, `TIMER`).
    pub source: String,
    /// The count per CPU, keyed by CPU number (from the header).
    pub counts: BTreeMap<u32, u64>,
    /// What follows the counts (chip, hwirq, handler names), white space squashed.
    pub desc: String,
}

/// Parses `/proc/interrupts` or `/proc/softirqs`: a header of `CPUn` columns, then one line per
/// source (`NAME: count count ... description`).
pub fn parse_counters(text: &str) -> Vec<CounterLine> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let cpus: Vec<u32> = header
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("CPU").and_then(|n| n.parse().ok()))
        .collect();
    let mut out = Vec::new();
    for line in lines {
        let Some((source, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace().peekable();
        let mut counts = BTreeMap::new();
        for &cpu in &cpus {
            match words.peek().and_then(|w| w.parse::<u64>().ok()) {
                Some(n) => {
                    counts.insert(cpu, n);
                    words.next();
                }
                None => break,
            }
        }
        let desc: Vec<&str> = words.collect();
        out.push(CounterLine {
            source: source.trim().to_owned(),
            counts,
            desc: desc.join(" "),
        });
    }
    out
}

/// IRQ number → description from `/proc/interrupts` (`None` if unreadable).
fn irq_names(host: &Host) -> Option<BTreeMap<u32, String>> {
    let text = host.read(&host.proc("interrupts"))?;
    Some(
        parse_counters(&text)
            .into_iter()
            .filter_map(|l| l.source.parse().ok().map(|n| (n, l.desc)))
            .collect(),
    )
}

/// Whether an IRQ's handler name looks like one queue of a multi-queue device (`nvme0q3`,
/// `virtio1-req.2`, `virtio0-input.1`, `eth0-TxRx-3`): the kind the kernel spreads over CPUs as
/// managed IRQs.
pub fn looks_like_queue(desc: &str) -> bool {
    let Some(name) = desc.split_whitespace().last() else {
        return false;
    };
    let lower = name.to_ascii_lowercase();
    let nvme_queue = lower.starts_with("nvme")
        && lower
            .rsplit_once('q')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    nvme_queue
        || [
            "-input.",
            "-output.",
            "-req.",
            "-request.",
            "-txrx-",
            "-rx-",
            "-tx-",
            "queue",
        ]
        .iter()
        .any(|p| lower.contains(p))
}

/// IRQ affinities, the default affinity and irqbalance.
///
/// An IRQ counts against the isolation (`irq-affinity`, a warning) when it is allowed on or
/// delivered to the audited CPUs, except two cases that are only worth an info:
/// - `irq-move-pending`: its affinity already excludes them but its effective affinity does
///   not yet (x86 moves an IO-APIC interrupt when it next fires; an idle device's stays put);
/// - `irq-unmovable`: kvmisolated found the kernel would not move it (the x86 timer, IRQ 0) and
///   it is delivered on other CPUs.
pub fn findings(ctx: &Ctx<'_>) -> Vec<Finding> {
    let host = ctx.host;
    let mut out = Vec::new();
    let names = irq_names(host);
    let mut hits = Vec::new();
    let mut pending = Vec::new();
    let mut unmovable = Vec::new();
    let mut effective_hits = 0usize;
    let mut managed = Vec::new();
    let irq_dir = host.proc("irq");
    for n in host.list_numeric(&irq_dir) {
        let name = match &names {
            Some(m) => match m.get(&n) {
                Some(d) => d.clone(),
                None => continue, // no handler: it cannot fire
            },
            None => String::new(),
        };
        let d = irq_dir.join(n.to_string());
        let Some(aff) = host.read_cpulist(&d.join("smp_affinity_list")) else {
            continue;
        };
        let eff = host.read_cpulist(&d.join("effective_affinity_list"));
        let eff_hit = eff.as_ref().is_some_and(|e| !e.is_disjoint(ctx.cpus));
        let aff_hit = !aff.is_disjoint(ctx.cpus);
        if !eff_hit && !aff_hit {
            continue;
        }
        let label = if name.is_empty() {
            format!("IRQ {n}")
        } else {
            format!("IRQ {n} ({name})")
        };
        let eff_text = eff.as_ref().map_or("unknown".to_owned(), |e| e.to_string());
        if eff_hit && !aff_hit {
            pending.push(format!(
                "{label}: allowed on {aff}, still delivered on {eff_text} until its next interrupt"
            ));
            continue;
        }
        if !eff_hit && eff.is_some() && ctx.irqs_left.contains(&n) {
            unmovable.push(format!(
                "{label}: allowed on {aff}, delivered on {eff_text}; the kernel refused to move it"
            ));
            continue;
        }
        let maybe_managed = aff.is_subset(ctx.cpus) && looks_like_queue(&name);
        let mut line = if eff_hit {
            effective_hits += 1;
            format!("{label}: delivered on {eff_text} (allowed on {aff})")
        } else {
            format!("{label}: allowed on {aff} (delivered on {eff_text})")
        };
        if maybe_managed {
            line.push_str(
                ": may be a managed IRQ (affinity only on isolated CPUs; writes fail with EIO)",
            );
            managed.push(label.clone());
        }
        hits.push(line);
    }
    if hits.is_empty() {
        out.push(Finding::ok(
            "irq-affinity",
            format!("no IRQ with a handler is allowed on CPUs {}", ctx.cpus),
        ));
    } else {
        let mut fix = format!(
            "move them to the housekeeping CPUs: echo {} > /proc/irq/N/smp_affinity_list for each (and stop or ban irqbalance, which moves them back)",
            ctx.hk
        );
        if !managed.is_empty() {
            fix.push_str(&format!(
                "; managed IRQs ({}) cannot be moved at run time: boot with isolcpus=managed_irq,{}",
                shorten(&managed, 3),
                ctx.cpus
            ));
        }
        out.push(
            Finding::new(
                "irq-affinity",
                Severity::Warning,
                format!(
                    "{} IRQ(s) are allowed on CPUs {} ({} delivered there now)",
                    hits.len(),
                    ctx.cpus,
                    effective_hits
                ),
            )
            .why("an interrupt on an isolated CPU stops the vCPU for the handler and its softirq: a few to hundreds of µs")
            .fix(fix)
            .details(hits),
        );
    }
    if !pending.is_empty() {
        out.push(
            Finding::new(
                "irq-move-pending",
                Severity::Info,
                format!(
                    "{} IRQ(s) already moved off CPUs {} are still delivered there until they next fire",
                    pending.len(),
                    ctx.cpus
                ),
            )
            .why("x86 moves an IO-APIC interrupt in its next interrupt: at most one more lands on the isolated CPU; an idle device's never does")
            .details(pending),
        );
    }
    if !unmovable.is_empty() {
        out.push(
            Finding::new(
                "irq-unmovable",
                Severity::Info,
                format!(
                    "{} IRQ(s) the kernel would not move are allowed on CPUs {} but delivered elsewhere",
                    unmovable.len(),
                    ctx.cpus
                ),
            )
            .why("the kernel delivers an interrupt on its effective affinity only; it re-targets it within the allowed CPUs only on an affinity change or CPU hot-unplug")
            .fix(format!(
                "such IRQs (the x86 timer, IRQ 0) take their affinity at boot: irqaffinity={} on the kernel command line",
                ctx.hk
            ))
            .details(unmovable),
        );
    }
    let dflt = host.read_mask(&host.proc("irq/default_smp_affinity"));
    match dflt {
        Some(m) if !m.is_disjoint(ctx.cpus) => out.push(
            Finding::new(
                "irq-default-affinity",
                Severity::Warning,
                format!(
                    "new IRQs will be allowed on CPUs {} (default_smp_affinity {})",
                    m.intersection(ctx.cpus),
                    m
                ),
            )
            .why("an IRQ set up later (a hot-plugged device, a NIC queue) may fire on an isolated CPU")
            .fix(format!("echo {} > /proc/irq/default_smp_affinity (or boot with irqaffinity={})", ctx.hk_mask, ctx.hk)),
        ),
        Some(m) => out.push(Finding::ok(
            "irq-default-affinity",
            format!("new IRQs go to CPUs {m} only"),
        )),
        None => {}
    }
    out.push(irqbalance_finding(host, ctx.cpus));
    out
}

fn irqbalance_finding(host: &Host, cpus: &CpuSet) -> Finding {
    let pids: Vec<u32> = host
        .list_numeric(&host.roots.proc)
        .into_iter()
        .filter(|p| {
            host.read_quiet(&host.proc(&format!("{p}/comm")))
                .is_some_and(|c| c.trim() == "irqbalance")
        })
        .collect();
    let Some(&pid) = pids.first() else {
        return Finding::ok("irqbalance", "irqbalance is not running");
    };
    let env_path = host.proc(&format!("{pid}/environ"));
    let env = match std::fs::read(&env_path) {
        Ok(b) => b,
        Err(e) => {
            return Finding::new(
                "irqbalance",
                Severity::Warning,
                format!(
                    "irqbalance (PID {pid}) is running; its environment could not be read ({e}) to see whether it avoids CPUs {cpus}"
                ),
            )
            .why("irqbalance does not know cpuset partitions and moves IRQs onto isolated CPUs")
            .fix("run kvmisolate check as root to verify, or see the fix below: IRQBALANCE_BANNED_CPULIST")
            .details(vec![format!("{}: {e}", env_path.display())]);
        }
    };
    let mut banned = CpuSet::new();
    for var in env.split(|b| *b == 0) {
        let var = String::from_utf8_lossy(var);
        if let Some(v) = var.strip_prefix("IRQBALANCE_BANNED_CPULIST=") {
            banned = banned.union(&CpuSet::parse(v.trim()).unwrap_or_default());
        } else if let Some(v) = var.strip_prefix("IRQBALANCE_BANNED_CPUS=") {
            banned = banned.union(&CpuSet::from_hex_mask(v.trim()).unwrap_or_default());
        }
    }
    let missing = cpus.difference(&banned);
    if missing.is_empty() {
        Finding::ok(
            "irqbalance",
            format!("irqbalance (PID {pid}) is running with CPUs {banned} banned"),
        )
    } else {
        Finding::new(
            "irqbalance",
            Severity::Warning,
            format!("irqbalance (PID {pid}) is running and may move IRQs onto CPUs {missing}"),
        )
        .why("irqbalance does not know cpuset partitions: it rebalances IRQs onto isolated CPUs every 10 s")
        .fix(format!(
            "set IRQBALANCE_BANNED_CPULIST={cpus} in /etc/default/irqbalance and restart it (systemctl restart irqbalance), or stop it while the VM runs"
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::host::fake::FakeHost;
    use super::super::tests::{cpus, find, sev};
    use super::super::{Severity, audit};
    use super::*;

    const INTERRUPTS: &str = "           CPU0       CPU1       CPU2       CPU3\n  \
        1:          9          0          0          0   IO-APIC   1-edge      i8042\n \
        24:        100          0          5          0   PCI-MSI 512000-edge      nvme0q1\n \
        25:         10          0          0          0   PCI-MSI 512001-edge      virtio0-input.0\n\
        LOC:       1000       1001       1002       1003   Local timer interrupts\n\
        ERR:          0\n";

    #[test]
    fn parses_interrupts() {
        let l = parse_counters(INTERRUPTS);
        assert_eq!(l.len(), 5);
        assert_eq!(l[1].source, "24");
        assert_eq!(l[1].counts[&2], 5);
        assert_eq!(l[1].desc, "PCI-MSI 512000-edge nvme0q1");
        assert_eq!(l[3].desc, "Local timer interrupts");
        assert_eq!(l[4].counts.len(), 1);
    }

    #[test]
    fn queue_names() {
        for q in [
            "PCI-MSI 1-edge nvme0q1",
            "virtio1-req.0",
            "virtio0-input.2",
            "eth0-TxRx-3",
        ] {
            assert!(looks_like_queue(q), "{q}");
        }
        for n in ["IO-APIC 1-edge i8042", "ttyS0", "nvme0", "acpi", ""] {
            assert!(!looks_like_queue(n), "{n}");
        }
    }

    fn host_with_irqs() -> FakeHost {
        let f = FakeHost::basic();
        f.partition("vm.scope", "isolated", "2-3")
            .write("proc/interrupts", INTERRUPTS)
            .write("proc/irq/default_smp_affinity", "3\n");
        for (n, aff, eff) in [
            (1, "0-1", "0"),
            (24, "0-1", "0"),
            (25, "0-1", "1"),
            (30, "2", "2"),
        ] {
            f.write(
                &format!("proc/irq/{n}/smp_affinity_list"),
                &format!("{aff}\n"),
            )
            .write(
                &format!("proc/irq/{n}/effective_affinity_list"),
                &format!("{eff}\n"),
            );
        }
        f
    }

    #[test]
    fn irqs_clean() {
        let r = audit(host_with_irqs().roots(), None);
        // IRQ 30 has no handler: ignored.
        assert_eq!(sev(&r, "irq-affinity"), Severity::Ok);
        assert_eq!(sev(&r, "irq-default-affinity"), Severity::Ok);
        assert_eq!(sev(&r, "irqbalance"), Severity::Ok);
    }

    #[test]
    fn irqs_on_isolated_cpus() {
        let f = host_with_irqs();
        f.write("proc/irq/24/smp_affinity_list", "2\n")
            .write("proc/irq/24/effective_affinity_list", "2\n")
            .write("proc/irq/25/smp_affinity_list", "0-3\n")
            .write("proc/irq/1/smp_affinity_list", "3\n")
            .write("proc/irq/default_smp_affinity", "f\n");
        let r = audit(f.roots(), None);
        let i = find(&r, "irq-affinity").unwrap();
        assert_eq!(i.severity, Severity::Warning);
        assert_eq!(i.details.len(), 3);
        assert!(i.details[0].starts_with("IRQ 1 (IO-APIC 1-edge i8042): allowed on 3"));
        assert!(!i.details[0].contains("managed"));
        assert!(i.details[1].contains("nvme0q1") && i.details[1].contains("managed"));
        assert!(i.details[2].contains("allowed on 0-3 (delivered on 1)"));
        assert!(i.fix.contains("isolcpus=managed_irq"));
        assert_eq!(sev(&r, "irq-default-affinity"), Severity::Warning);
    }

    /// The audit of `f` with kvmisolated saying its irq-affinity tuning left IRQ `irq` as it
    /// was, and why (`left`).
    fn audit_saying(f: &FakeHost, irq: u32, left: &str) -> super::super::Report {
        use crate::status::tests::{entry, row, status_of};
        let mut vm = entry("vm", "2-3");
        vm.irqs_left = Some(vec![irq]);
        vm.tunings = vec![row(
            "irq-affinity",
            "applied",
            &format!("left as they are: {left}"),
            "",
            "",
        )];
        let daemon = super::super::daemon::Daemon::Status(Box::new(status_of(vec![vm])));
        super::super::audit_with(
            f.roots(),
            super::super::AuditInput {
                cpus: None,
                vm: None,
                daemon,
            },
        )
    }

    #[test]
    fn pending_and_unmovable_irqs_are_infos() {
        let f = host_with_irqs();
        // IRQ 1 moved off 2-3, still delivered on 3 (idle IO-APIC IRQ); IRQ 24 allowed on
        // every CPU but delivered on 0.
        f.write("proc/irq/1/effective_affinity_list", "3\n")
            .write("proc/irq/24/smp_affinity_list", "0-3\n");
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "irq-move-pending"), Severity::Info);
        let p = find(&r, "irq-move-pending").unwrap();
        assert_eq!(
            p.details,
            [
                "IRQ 1 (IO-APIC 1-edge i8042): allowed on 0-1, still delivered on 3 until its next interrupt"
            ]
        );
        // Without the daemon's word, IRQ 24 could be moved: a warning.
        let i = find(&r, "irq-affinity").unwrap();
        assert_eq!(i.severity, Severity::Warning);
        assert_eq!(i.details.len(), 1, "{:?}", i.details);
        assert!(find(&r, "irq-unmovable").is_none());
        // kvmisolated found the kernel would not move IRQ 24: an info.
        let r = audit_saying(
            &f,
            24,
            "IRQ 24 nvme0q1 (the kernel does not move it: EPERM)",
        );
        assert_eq!(sev(&r, "irq-affinity"), Severity::Ok);
        assert_eq!(sev(&r, "irq-unmovable"), Severity::Info);
        assert!(
            find(&r, "irq-unmovable")
                .unwrap()
                .fix
                .contains("irqaffinity=0-1")
        );
        // Delivered on an isolated CPU: a warning, whatever the daemon says.
        f.write("proc/irq/24/effective_affinity_list", "2\n");
        let r = audit_saying(&f, 24, "IRQ 24 nvme0q1 (managed by the kernel)");
        assert_eq!(sev(&r, "irq-affinity"), Severity::Warning);
    }

    #[test]
    fn irqbalance_banned_or_not() {
        let f = host_with_irqs();
        f.write("proc/77/comm", "irqbalance\n").write(
            "proc/77/environ",
            "PATH=/bin\0IRQBALANCE_BANNED_CPULIST=2-3\0",
        );
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "irqbalance"), Severity::Ok);
        f.write("proc/77/environ", "PATH=/bin\0");
        let r = audit(f.roots(), None);
        assert_eq!(sev(&r, "irqbalance"), Severity::Warning);
        f.write("proc/77/environ", "IRQBALANCE_BANNED_CPUS=4\0");
        let r = audit(f.roots(), cpus("2"));
        assert_eq!(sev(&r, "irqbalance"), Severity::Ok);
        // Unreadable environment (not root): said so.
        f.remove("proc/77/environ");
        std::fs::create_dir_all(f.dir.path().join("proc/77/environ")).unwrap();
        let r = audit(f.roots(), cpus("2"));
        let i = find(&r, "irqbalance").unwrap();
        assert_eq!(i.severity, Severity::Warning);
        assert!(i.found.contains("could not be read"), "{}", i.found);
    }
}
