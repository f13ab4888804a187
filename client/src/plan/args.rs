//! `kvmisolate plan`'s command line (kept here so that cli.rs only names it).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{EmulatorMode, Prefer};

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
