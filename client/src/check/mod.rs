//! `kvmisolate check`: an audit of the host's isolation, read straight from procfs, sysfs and
//! cgroupfs (no daemon needed), as findings with a severity, what was found, why it matters
//! for latency and the fix.
//!
//! One file per group of checks: `cgroup` (cgroup v2, kernel features, partitions, which CPUs
//! to audit), `tasks` (threads allowed on isolated CPUs, RT throttling), `irq` (IRQ affinities,
//! irqbalance), `knobs` (workqueue masks, sysctls, boot parameters, SMT, THP, governor,
//! hugepages), `power` (idle states, energy/performance preference, split-lock mitigation,
//! NUMA balancing), `vm` (`--vm NAME`: a libvirt domain's pins, memory and leaves; its XML found by
//! `domain_source`), `daemon` (kvmisolated's `Status()`, when it is on the bus). Every path
//! goes through [`host::Host`], whose roots tests point at fake trees.

pub mod args;
pub mod cgroup;
pub mod daemon;
pub mod domain_source;
pub mod guest_side;
pub mod host;
pub mod irq;
pub mod knobs;
pub mod power;
pub mod tasks;
pub mod vfio;
pub mod vm;

use std::fmt::Write as _;

use kvmisolate_dbus::cpulist::CpuSet;
use serde::{Deserialize, Serialize};

use crate::failure::ExitCode;
use host::{Host, Roots, Unreadable};

/// The `version` of the `--json` output; bumped on incompatible changes.
pub const JSON_VERSION: u32 = 1;

/// How bad a finding is. Ordered: `Ok < Info < Warning < Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// As it should be.
    Ok,
    /// Worth knowing; nothing to fix, or advice that needs a reboot.
    Info,
    /// Costs latency; should be fixed.
    Warning,
    /// The isolation does not work (or cannot) as asked.
    Error,
}

impl Severity {
    /// The word used in human output.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// A stable identifier (`irq-affinity`, `partition-state`...).
    pub id: String,
    /// How bad it is.
    pub severity: Severity,
    /// What was found, in one sentence.
    pub found: String,
    /// Why it matters for latency (empty for `ok`).
    pub why: String,
    /// What to do about it (empty when there is nothing to do).
    pub fix: String,
    /// The items behind the finding (tasks, IRQs, CPUs...), one per entry.
    pub details: Vec<String>,
}

impl Finding {
    /// A finding with no explanation yet.
    pub fn new(id: &str, severity: Severity, found: impl Into<String>) -> Self {
        Self {
            id: id.to_owned(),
            severity,
            found: found.into(),
            why: String::new(),
            fix: String::new(),
            details: Vec::new(),
        }
    }

    /// An `ok` finding.
    pub fn ok(id: &str, found: impl Into<String>) -> Self {
        Self::new(id, Severity::Ok, found)
    }

    /// Sets why it matters.
    pub fn why(mut self, why: impl Into<String>) -> Self {
        self.why = why.into();
        self
    }

    /// Sets the fix.
    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = fix.into();
        self
    }

    /// Sets the details.
    pub fn details(mut self, details: Vec<String>) -> Self {
        self.details = details;
        self
    }
}

/// Where the audited CPUs came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuSource {
    /// `--cpus`.
    Option,
    /// The partitions found in cgroupfs (and the root's `cpuset.cpus.isolated`), with the
    /// CPUs of kvmisolated's isolations when it answered.
    Partitions,
    /// `--vm`: the CPUs of the running domain's leaves that are isolated partitions.
    Vm,
    /// Nothing isolated, no `--cpus`: only host-wide checks ran.
    None,
}

/// The whole audit, as printed by `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// [`JSON_VERSION`].
    pub version: u32,
    /// The audited CPUs (cpulist, may be empty).
    pub cpus: CpuSet,
    /// Where they came from.
    #[serde(rename = "cpus-source")]
    pub cpus_source: CpuSource,
    /// The worst severity among the findings.
    pub worst: Severity,
    /// The findings, in check order.
    pub findings: Vec<Finding>,
    /// Files that exist but could not be read (the findings may be incomplete).
    pub unreadable: Vec<Unreadable>,
    /// `--vm`: the domain audited (absent without `--vm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<vm::VmSummary>,
}

impl Report {
    /// The exit code for this report: 0 if the worst is ok/info, 8 for warnings, 9 for errors.
    pub fn exit_code(&self) -> Option<ExitCode> {
        match self.worst {
            Severity::Ok | Severity::Info => None,
            Severity::Warning => Some(ExitCode::CheckWarnings),
            Severity::Error => Some(ExitCode::CheckErrors),
        }
    }
}

/// What every CPU-related check needs.
pub struct Ctx<'a> {
    /// The reader.
    pub host: &'a Host,
    /// The CPUs to audit (non-empty).
    pub cpus: &'a CpuSet,
    /// The partitions found in cgroupfs.
    pub partitions: &'a [cgroup::Partition],
    /// The housekeeping CPUs for fixes: online minus audited (`HOUSEKEEPING` if unknown).
    pub hk: String,
    /// The same as a hex mask (`HOUSEKEEPING_MASK` if unknown).
    pub hk_mask: String,
    /// IRQs kvmisolated found the kernel would not move (from its `irq-affinity` tunings).
    pub irqs_left: &'a std::collections::BTreeSet<u32>,
    /// The CPU topology, when sysfs gives it.
    pub topology: Option<&'a crate::topology::Topology>,
}

/// What to audit besides the host.
#[derive(Debug)]
pub struct AuditInput {
    /// `--cpus`, if given.
    pub cpus: Option<CpuSet>,
    /// `--vm`: the domain, if given.
    pub vm: Option<vm::VmInput>,
    /// kvmisolated's view.
    pub daemon: daemon::Daemon,
}

/// Runs every check against the host under `roots`. `cpus`: `--cpus`, if given.
#[cfg(test)]
pub fn audit(roots: Roots, cpus: Option<CpuSet>) -> Report {
    audit_with(
        roots,
        AuditInput {
            cpus,
            vm: None,
            daemon: daemon::Daemon::NotAsked,
        },
    )
}

/// Runs every check against the host under `roots`, the domain and the daemon's view of
/// `input`.
pub fn audit_with(roots: Roots, input: AuditInput) -> Report {
    let host = Host::new(roots);
    let mut findings = daemon::findings(&input.daemon);
    let scan = cgroup::scan(&host);
    findings.extend(cgroup::base_findings(&host, &scan));
    let partitions = scan.partitions;
    findings.extend(cgroup::partition_findings(&partitions));
    let start = vm::StartContext {
        remote_partitions: scan.exclusive_file || host.cgroup("cpuset.cpus.isolated").exists(),
        held: daemon::isolations_held(&input.daemon),
    };
    // Read once: a failure is recorded among the unreadable files.
    let topology = knobs::read_topology(&host);
    let vm = input
        .vm
        .as_ref()
        .map(|v| vm::audit(&host, v, &start, topology.as_ref()));
    if let Some(v) = &vm {
        findings.extend(v.findings.iter().cloned());
    }
    let vm_cpus = vm
        .as_ref()
        .map(|v| v.summary.isolated_cpus.clone())
        .filter(|c| !c.is_empty());
    let (cpus, source) = match (input.cpus, vm_cpus) {
        (Some(c), _) => (c, CpuSource::Option),
        (None, Some(c)) => (c, CpuSource::Vm),
        (None, None) => {
            let found = cgroup::isolated_cpus(&host, &partitions)
                .union(&daemon::isolated_cpus(&input.daemon));
            if found.is_empty() {
                findings.push(
                    Finding::new(
                        "no-isolation",
                        Severity::Info,
                        "no CPUs are isolated (no root or isolated partition in cgroupfs) and no --cpus given: only host-wide checks ran",
                    )
                    .why("without exclusive CPUs every host task, kernel thread and IRQ can preempt the guest's vCPUs")
                    .fix("isolate CPUs for the VM (kvmisolate isolate --cpus LIST ...), or audit planned CPUs with kvmisolate check --cpus LIST"),
                );
                (CpuSet::new(), CpuSource::None)
            } else {
                (found, CpuSource::Partitions)
            }
        }
    };
    if !cpus.is_empty() {
        let hk = host
            .online_cpus()
            .map(|o| o.difference(&cpus))
            .filter(|h| !h.is_empty());
        let irqs_left = daemon::irqs_left(&input.daemon);
        let ctx = Ctx {
            irqs_left: &irqs_left,
            topology: topology.as_ref(),
            host: &host,
            cpus: &cpus,
            partitions: &partitions,
            hk: hk
                .as_ref()
                .map_or("HOUSEKEEPING".to_owned(), |h| h.to_string()),
            hk_mask: hk
                .as_ref()
                .map_or("HOUSEKEEPING_MASK".to_owned(), |h| h.to_hex_mask()),
        };
        findings.extend(cgroup::coverage_findings(&ctx));
        findings.extend(tasks::findings(&ctx));
        findings.extend(irq::findings(&ctx));
        findings.extend(knobs::cpu_findings(&ctx));
        findings.extend(power::cpu_findings(&ctx));
    }
    findings.extend(knobs::host_findings(&host, &cpus));
    findings.extend(power::host_findings(&host));
    let unreadable = host.unreadable();
    if !unreadable.is_empty() {
        findings.push(
            Finding::new(
                "unreadable",
                Severity::Info,
                format!(
                    "{} file(s) could not be read: the findings above may be incomplete",
                    unreadable.len()
                ),
            )
            .fix("run kvmisolate check as root to read everything")
            .details(
                unreadable
                    .iter()
                    .map(|u| format!("{}: {}", u.path, u.error))
                    .collect(),
            ),
        );
    }
    let worst = findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::Ok);
    Report {
        version: JSON_VERSION,
        cpus,
        cpus_source: source,
        worst,
        findings,
        unreadable,
        vm: vm.map(|v| v.summary),
    }
}

/// How many details the human output shows per finding (JSON has all of them).
const HUMAN_DETAILS: usize = 25;

/// The human report: a summary (one line per problem), then the details, then what was fine.
pub fn format_human(r: &Report) -> String {
    let mut s = String::new();
    let what = match r.cpus_source {
        CpuSource::Option => format!("CPUs {} (from --cpus)", r.cpus),
        CpuSource::Partitions => format!("CPUs {} (isolated by the partitions found)", r.cpus),
        CpuSource::Vm => format!(
            "CPUs {} (isolated for domain {})",
            r.cpus,
            r.vm.as_ref().map_or("?", |v| v.name.as_str())
        ),
        CpuSource::None => "no isolated CPUs (host-wide checks only)".to_owned(),
    };
    let _ = writeln!(s, "kvmisolate check: {what}");
    let count = |sev| r.findings.iter().filter(|f| f.severity == sev).count();
    let _ = writeln!(
        s,
        "{} error(s), {} warning(s), {} info, {} ok",
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info),
        count(Severity::Ok)
    );
    let width = r.findings.iter().map(|f| f.id.len()).max().unwrap_or(0);
    let mut problems: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| f.severity >= Severity::Warning)
        .collect();
    problems.sort_by_key(|f| std::cmp::Reverse(f.severity));
    for f in &problems {
        let _ = writeln!(
            s,
            "  {:<7}  {:<width$}  {}",
            f.severity.label(),
            f.id,
            f.found
        );
    }
    if problems.is_empty() {
        let _ = writeln!(s, "  no problems found");
    }
    let mut rest: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| f.severity > Severity::Ok)
        .collect();
    rest.sort_by_key(|f| std::cmp::Reverse(f.severity));
    if !rest.is_empty() {
        let _ = writeln!(s, "\nDetails:");
    }
    for f in rest {
        let _ = writeln!(s, "\n[{}] {}: {}", f.severity.label(), f.id, f.found);
        if !f.why.is_empty() {
            let _ = writeln!(s, "  why: {}", f.why);
        }
        if !f.fix.is_empty() {
            let _ = writeln!(s, "  fix: {}", f.fix);
        }
        for d in f.details.iter().take(HUMAN_DETAILS) {
            let _ = writeln!(s, "    {d}");
        }
        if f.details.len() > HUMAN_DETAILS {
            let _ = writeln!(
                s,
                "    ... and {} more (--json lists all)",
                f.details.len() - HUMAN_DETAILS
            );
        }
    }
    let oks: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Ok)
        .collect();
    if !oks.is_empty() {
        let _ = writeln!(s, "\nFine:");
        for f in oks {
            let _ = writeln!(s, "  ok  {:<width$}  {}", f.id, f.found);
        }
    }
    s
}

/// The `--json` text.
pub fn format_json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Shortens a list for a one-line summary: `a, b, c and 4 more`.
pub fn shorten(items: &[String], n: usize) -> String {
    if items.len() <= n {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..n].join(", "), items.len() - n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::host::fake::FakeHost;
    use super::*;

    /// The finding with `id` in `r`, if any.
    pub fn find<'a>(r: &'a Report, id: &str) -> Option<&'a Finding> {
        r.findings.iter().find(|f| f.id == id)
    }

    /// The severity of finding `id` (panics with the report if absent).
    pub fn sev(r: &Report, id: &str) -> Severity {
        match find(r, id) {
            Some(f) => f.severity,
            None => panic!("no finding {id} in {:#?}", r.findings),
        }
    }

    pub fn cpus(s: &str) -> Option<CpuSet> {
        Some(CpuSet::parse(s).unwrap())
    }

    #[test]
    fn unisolated_host_says_so_and_skips_cpu_checks() {
        let f = FakeHost::basic();
        let r = audit(f.roots(), None);
        assert_eq!(r.cpus_source, CpuSource::None);
        assert_eq!(sev(&r, "no-isolation"), Severity::Info);
        assert!(find(&r, "irq-affinity").is_none());
        assert!(find(&r, "threads-on-isolated-cpus").is_none());
        assert_eq!(r.exit_code(), None, "{:#?}", r.findings);
    }

    #[test]
    fn partitions_choose_the_cpus() {
        let f = FakeHost::basic();
        f.partition("vm.scope", "isolated", "2-3")
            .write("cgroup/cpuset.cpus.isolated", "2-3\n");
        let r = audit(f.roots(), None);
        assert_eq!(r.cpus_source, CpuSource::Partitions);
        assert_eq!(r.cpus.to_string(), "2-3");
        assert!(find(&r, "no-isolation").is_none());
    }

    #[test]
    fn json_round_trip_and_exit_codes() {
        let f = FakeHost::basic();
        let r = audit(f.roots(), cpus("2-3"));
        let text = format_json(&r);
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["cpus"], "2-3");
        assert_eq!(v["cpus-source"], "option");
        for k in ["id", "severity", "found", "why", "fix", "details"] {
            assert!(v["findings"][0].get(k).is_some(), "{k}");
        }
        // 2-3 are in no partition: an error.
        assert_eq!(r.worst, Severity::Error);
        assert_eq!(r.exit_code(), Some(ExitCode::CheckErrors));
        let mut w = r.clone();
        w.worst = Severity::Warning;
        assert_eq!(w.exit_code(), Some(ExitCode::CheckWarnings));
    }

    #[test]
    fn human_output_summary_first() {
        let f = FakeHost::basic();
        let r = audit(f.roots(), cpus("2-3"));
        let text = format_human(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("CPUs 2-3 (from --cpus)"), "{text}");
        assert!(lines[2].trim_start().starts_with("ERROR"), "{text}");
        assert!(text.contains("\nDetails:\n"), "{text}");
        assert!(text.contains("  fix: "), "{text}");
        let summary_end = text.find("Details:").unwrap();
        assert!(text[..summary_end].contains("cpus-not-partitioned"));
    }

    #[test]
    fn unreadable_files_are_listed() {
        let f = FakeHost::basic();
        let r = audit(f.roots(), cpus("2-3"));
        assert!(find(&r, "unreadable").is_none());
        // A directory where a file should be: EISDIR even for root (permissions would not
        // stop root).
        std::fs::create_dir_all(f.dir.path().join("proc/sys/vm/stat_interval")).unwrap();
        let r = audit(f.roots(), cpus("2-3"));
        assert_eq!(sev(&r, "unreadable"), Severity::Info);
        assert!(
            r.unreadable
                .iter()
                .any(|u| u.path.ends_with("stat_interval"))
        );
        assert!(find(&r, "vm-stat-interval").is_none());
    }

    #[test]
    fn shorten_lists() {
        let v: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(shorten(&v, 5), "a, b, c");
        assert_eq!(shorten(&v, 2), "a, b and 1 more");
    }
}
