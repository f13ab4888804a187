//! The command line of `check` (and the host roots every reader of procfs, sysfs and cgroupfs
//! takes) and its glue to the `check` module.

use std::path::PathBuf;

use clap::Args;
use kvmisolate_dbus::cpulist::CpuSet;

use crate::check::{self, host::Roots};
use crate::failure::Failure;
use crate::output::print;

/// Where procfs, sysfs and cgroupfs are read (hidden: for tests against fake trees).
#[derive(Debug, Clone, Args)]
pub struct RootArgs {
    /// procfs root (tests).
    #[arg(
        long,
        hide = true,
        value_name = "DIR",
        env = "KVMISOLATE_PROC_ROOT",
        default_value = "/proc"
    )]
    pub proc_root: PathBuf,
    /// sysfs root (tests).
    #[arg(
        long,
        hide = true,
        value_name = "DIR",
        env = "KVMISOLATE_SYSFS_ROOT",
        default_value = "/sys"
    )]
    pub sysfs_root: PathBuf,
    /// cgroup2 mount (tests).
    #[arg(
        long,
        hide = true,
        value_name = "DIR",
        env = "KVMISOLATE_CGROUP_ROOT",
        default_value = "/sys/fs/cgroup"
    )]
    pub cgroup_root: PathBuf,
}

impl RootArgs {
    pub(crate) fn roots(&self) -> Roots {
        Roots {
            proc: self.proc_root.clone(),
            sys: self.sysfs_root.clone(),
            cgroup: self.cgroup_root.clone(),
        }
    }
}

/// `kvmisolate check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The CPUs to audit, as a cpulist. Default: the CPUs of the root/isolated partitions
    /// found in cgroupfs (none: only host-wide checks run).
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    pub cpus: Option<CpuSet>,

    /// Also audit this libvirt domain: its opt-in, pins, SMT siblings, RT scheduling,
    /// hugepages, NUMA placement and, when it runs, its isolated leaves (whose CPUs are then
    /// the audited ones by default). Its XML comes from `virsh --readonly dumpxml`, else
    /// /run/libvirt/qemu/NAME.xml or /etc/libvirt/qemu/NAME.xml.
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,

    /// The domain XML to audit instead of asking libvirt (tests).
    #[arg(long, hide = true, value_name = "FILE", requires = "vm")]
    pub domain_xml: Option<PathBuf>,

    /// The configuration file with the [vm.NAME] sections (tests).
    #[arg(
        long,
        hide = true,
        value_name = "FILE",
        env = "KVMISOLATE_CONFIG",
        default_value = "/etc/kvmisolate/kvmisolate.toml"
    )]
    pub config: PathBuf,

    /// Do not ask kvmisolated for its status (tests).
    #[arg(long, hide = true)]
    pub no_daemon: bool,

    /// Print the findings as JSON (stable, "version": 1; see docs/ARCHITECTURE.md).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub roots: RootArgs,
}

pub(crate) fn parse_cpus(s: &str) -> Result<CpuSet, String> {
    let c = CpuSet::parse(s).map_err(|e| e.to_string())?;
    if c.is_empty() {
        return Err("the CPU list is empty".to_owned());
    }
    Ok(c)
}

/// `kvmisolate check` (`quiet`: print nothing, only the exit status tells). `daemon`: what
/// kvmisolated said, if asked.
pub fn cmd_check(a: CheckArgs, daemon: check::daemon::Daemon, quiet: bool) -> Result<(), Failure> {
    let vm = match &a.vm {
        Some(name) => Some(check::domain_source::load_domain(
            name,
            a.domain_xml.as_ref(),
            &a.config,
        )?),
        None => None,
    };
    let mut report = check::audit_with(
        a.roots.roots(),
        check::AuditInput {
            cpus: a.cpus,
            vm,
            daemon,
        },
    );
    crate::top::check::add_sample(&mut report, &a.roots);
    let text = if a.json {
        let mut t = check::format_json(&report);
        t.push('\n');
        t
    } else if quiet {
        String::new()
    } else {
        check::format_human(&report)
    };
    print(&text)?;
    match report.exit_code() {
        None => Ok(()),
        Some(code) => Err(Failure::new(code, "")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use crate::cli::{Command, parse_test_args as parse};

    #[test]
    fn check_args() {
        let Command::Check(c) = parse(&["check", "--cpus", "2-3", "--json"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(c.cpus.unwrap().to_string(), "2-3");
        assert!(c.json && c.vm.is_none());
        assert!(
            parse(&["check", "--domain-xml", "x.xml"]).is_err(),
            "needs --vm"
        );
        let Command::Check(c) = parse(&["check", "--vm", "win10", "--domain-xml", "x.xml"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(c.vm.as_deref(), Some("win10"));
        assert_eq!(c.roots.proc_root, std::path::Path::new("/proc"));
        let Command::Check(c) = parse(&["check", "--proc-root", "/tmp/p"]).unwrap().command else {
            panic!()
        };
        assert_eq!(c.roots.proc_root, std::path::Path::new("/tmp/p"));
        let e = parse(&["check", "--cpus", "5-2"]).unwrap_err();
        assert!(e.to_string().contains("backwards"), "{e}");
        assert!(parse(&["check", "--cpus", ""]).is_err());
    }
}
