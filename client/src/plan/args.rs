//! `kvmisolate plan`'s command line (kept here so that cli.rs only names it).

use std::path::PathBuf;

use kvmisolate_dbus::tunings::PageSize;

use clap::{Args, ValueEnum};

use super::{EmulatorMode, GuestOs, Prefer};

/// `kvmisolate plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Give the guest this many vCPUs (a multiple of the threads per core). Default: as many as
    /// fit in one L3 cache after the host and the emulator.
    #[arg(long, value_name = "N", conflicts_with = "cores")]
    pub vcpus: Option<u32>,

    /// Give the guest this many physical cores (all their threads).
    #[arg(long, value_name = "N")]
    pub cores: Option<u32>,

    /// Leave the host at least N CPUs (rounded up to whole cores). Default: one core.
    #[arg(long, value_name = "N")]
    pub host_cpus: Option<u32>,

    /// Between several L3 caches, favour the largest (X3D) or the fastest cores.
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = PreferArg::Cache)]
    pub prefer: PreferArg,

    /// Give the emulator thread a core of its own, or run it on the housekeeping CPUs.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = EmulatorArg::Separate)]
    pub emulator: EmulatorArg,

    /// Define and pin this many I/O threads (on housekeeping CPUs).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub iothreads: u32,

    /// Schedule the vCPUs SCHED_FIFO priority 1 (<vcpusched>) in the libvirt XML.
    #[arg(long)]
    pub fifo: bool,

    /// Back the guest's memory with hugepages of this size (2M, the default, or 1G) from the
    /// guest's NUMA node: <memoryBacking><hugepages> in the libvirt XML; kvmisolate's hook
    /// reserves exactly the domain's memory at each start and returns it after.
    #[arg(long, value_name = "SIZE", num_args = 0..=1, default_missing_value = "2M",
          value_parser = parse_page_size)]
    pub hugepages: Option<PageSize>,

    /// The guest's operating system: `windows` adds the Hyper-V enlightenments and the
    /// hypervclock timer (HPET off) to the libvirt XML.
    #[arg(long, value_enum, value_name = "OS", default_value_t = GuestArg::Any)]
    pub guest: GuestArg,

    /// Print the plan as JSON (stable, "version": 1; see docs/ARCHITECTURE.md).
    #[arg(long, conflicts_with_all = ["libvirt", "apply"])]
    pub json: bool,

    /// Print the libvirt domain XML elements for the plan.
    #[arg(long, conflicts_with = "apply")]
    pub libvirt: bool,

    /// Put the plan into this libvirt domain XML file (a backup is written to FILE.bak first);
    /// only the CPU-related elements change.
    #[arg(long, value_name = "DOMAIN.xml")]
    pub apply: Option<PathBuf>,

    /// With --apply: print a unified diff instead of changing the file.
    #[arg(long, requires = "apply")]
    pub dry_run: bool,

    /// Read cpuinfo below this directory instead of /proc (for tests).
    #[arg(
        long,
        value_name = "DIR",
        hide = true,
        env = "KVMISOLATE_PROC_ROOT",
        default_value = "/proc"
    )]
    pub proc_root: PathBuf,

    /// Read the topology below this directory instead of /sys (for tests).
    #[arg(long, value_name = "DIR", hide = true, env = "KVMISOLATE_SYSFS_ROOT",
          default_value = crate::topology::DEFAULT_ROOT)]
    pub sysfs_root: PathBuf,
}

/// `--prefer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PreferArg {
    /// The largest L3 cache.
    Cache,
    /// The highest maximum frequency.
    Frequency,
}

impl From<PreferArg> for Prefer {
    fn from(p: PreferArg) -> Self {
        match p {
            PreferArg::Cache => Prefer::Cache,
            PreferArg::Frequency => Prefer::Frequency,
        }
    }
}

/// `--guest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GuestArg {
    /// Any guest.
    Any,
    /// A Windows guest.
    Windows,
}

impl From<GuestArg> for GuestOs {
    fn from(g: GuestArg) -> Self {
        match g {
            GuestArg::Any => GuestOs::Any,
            GuestArg::Windows => GuestOs::Windows,
        }
    }
}

/// `--emulator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmulatorArg {
    /// A core of its own, isolated with the vCPUs.
    Separate,
    /// The housekeeping CPUs.
    Shared,
}

impl From<EmulatorArg> for EmulatorMode {
    fn from(e: EmulatorArg) -> Self {
        match e {
            EmulatorArg::Separate => EmulatorMode::Separate,
            EmulatorArg::Shared => EmulatorMode::Shared,
        }
    }
}

fn parse_page_size(s: &str) -> Result<PageSize, String> {
    match s {
        "2M" | "2m" | "2048k" | "2048K" => Ok(PageSize::M2),
        "1G" | "1g" | "1024M" | "1024m" => Ok(PageSize::G1),
        other => Err(format!("{other:?} is not a hugepage size: use 2M or 1G")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use clap::error::ErrorKind;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::plan::{PlanOptions, Size};

    fn parse(args: &[&str]) -> Result<PlanArgs, clap::Error> {
        let cli = Cli::try_parse_from(["kvmisolate", "plan"].iter().chain(args))?;
        match cli.command {
            Command::Plan(a) => Ok(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(crate::plan::run::options(&a), PlanOptions::default());
        assert_eq!(a.sysfs_root, std::path::Path::new("/sys"));
        assert!(!a.json && !a.libvirt && !a.dry_run && !a.fifo && a.apply.is_none());
    }

    #[test]
    fn everything() {
        let a = parse(&[
            "--cores",
            "4",
            "--host-cpus",
            "3",
            "--prefer",
            "frequency",
            "--emulator",
            "shared",
            "--iothreads",
            "2",
            "--fifo",
            "--guest",
            "windows",
            "--apply",
            "d.xml",
            "--dry-run",
            "--sysfs-root",
            "/tmp/s",
        ])
        .unwrap();
        let o = crate::plan::run::options(&a);
        assert_eq!(o.size, Size::Cores(4));
        assert_eq!(o.host_cpus, Some(3));
        assert_eq!(o.prefer, Prefer::Frequency);
        assert_eq!(o.emulator, EmulatorMode::Shared);
        assert_eq!(o.iothreads, 2);
        assert_eq!(o.guest, GuestOs::Windows);
        assert!(a.fifo && a.dry_run);
        assert_eq!(a.sysfs_root, std::path::Path::new("/tmp/s"));
        let a = parse(&["--vcpus", "6"]).unwrap();
        assert_eq!(crate::plan::run::options(&a).size, Size::Vcpus(6));
    }

    #[test]
    fn invalid_combinations() {
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(
            kind(&["--vcpus", "2", "--cores", "1"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(kind(&["--json", "--libvirt"]), ErrorKind::ArgumentConflict);
        assert_eq!(
            kind(&["--json", "--apply", "d.xml"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&["--libvirt", "--apply", "d.xml"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(kind(&["--dry-run"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["--iothreads", "65"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--prefer", "cores"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["--guest", "macos"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["--vcpus", "-1"]), ErrorKind::UnknownArgument);
    }

    #[test]
    fn sysfs_root_is_hidden() {
        let cmd = crate::cli::command();
        let plan = cmd.find_subcommand("plan").unwrap();
        let root = plan
            .get_arguments()
            .find(|a| a.get_id() == "sysfs_root")
            .unwrap();
        assert!(root.is_hide_set());
    }
}
