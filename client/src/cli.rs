//! The command line, as clap definitions.
//!
//! Everything the man pages and shell completions say comes from here (`kvmisolate
//! generate-man DIR`, `kvmisolate generate-completions DIR`), so help texts are written for
//! both `--help` and `man kvmisolate`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kvmisolate_dbus::options::{PartitionType, ReleaseWhen};

/// The exit codes, shown after `--help` and in the man page (`EXTRA` section).
pub const EXIT_CODES_HELP: &str = "\
Exit status:
  0  success
  1  other failure (the service failed, a command could not be started...)
  2  usage error (unknown option, missing argument)
  3  bad request: invalid CPU list or name, unknown option, CPUs busy or reserved, too few
     housekeeping CPUs left, an isolation of that name exists already
  4  not authorized (polkit refused, or authentication needed with --no-ask-password)
  5  not found: no such isolation, or the unit or process to isolate does not exist
  6  this host cannot do it: unsupported host (cgroup v1, no cpuset partitions), or the
     kernel rejected the partition (its reason is printed)
  7  the service is unreachable (kvmisolated not installed or not running, no D-Bus)
  8  check: the worst finding is a warning
  9  check: the worst finding is an error

Authorization:
  Isolate and release go through polkit; root needs nothing. What an isolation acts on decides
  the action: org.kvmisolate.isolate for your own target (processes whose uids are all yours,
  a unit in your user-UID.slice whose processes all are yours), org.kvmisolate.isolate-any for
  anything else (root's or other users' processes, system units, libvirt domains), and
  org.kvmisolate.tune-host as well for RT throttling off (rt-throttling, fair-server, the
  realtime profile), the split-lock mitigation off (split-lock) or a hugepage pool larger than
  half of what the host can spare.
  org.kvmisolate.release ends another user's isolation. Names starting with libvirt- or
  hugepages- are the libvirt hook's (root only). On a terminal kvmisolate starts pkttyagent so
  that a password can be asked for. To let groups do it without a password, install
  /usr/share/doc/kvmisolate/50-kvmisolate.rules.example in /etc/polkit-1/rules.d/.

Environment:
  KVMISOLATE_BUS_ADDRESS  the D-Bus address to use instead of the system bus (like --address)";

/// Isolate host CPUs for a VM or a program with cgroup v2 cpuset partitions.
///
/// kvmisolate asks the kvmisolated service (org.kvmisolate.Isolator1 on the system bus) to
/// give CPUs exclusively to a systemd unit, a set of processes or a command: the kernel moves
/// every other task, including unbound kernel threads, off them. Each isolation is a named
/// lease that ends when its target exits, when the caller disconnects, or when it is released.
#[derive(Debug, Parser)]
#[command(
    name = "kvmisolate",
    version,
    propagate_version = true,
    after_help = EXIT_CODES_HELP,
    max_term_width = 100
)]
pub struct Cli {
    /// Never ask for a password: fail with exit status 4 if polkit would need one.
    #[arg(long, global = true)]
    pub no_ask_password: bool,

    /// Talk to the service on this D-Bus address instead of the system bus
    /// (e.g. unix:path=/run/test/bus).
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        env = "KVMISOLATE_BUS_ADDRESS"
    )]
    pub address: Option<String>,

    /// Print nothing on success (errors are still printed).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Isolate CPUs for a running systemd unit or for processes.
    #[command(after_help = EXIT_CODES_HELP)]
    Isolate(IsolateArgs),

    /// Release an isolation (or all of them): give the CPUs back to the host.
    #[command(after_help = EXIT_CODES_HELP)]
    Release(ReleaseArgs),

    /// Show isolated and housekeeping CPUs, every isolation, warnings and kernel support.
    #[command(after_help = EXIT_CODES_HELP)]
    Status(StatusArgs),

    /// Run a command on isolated CPUs; the isolation ends when the command exits.
    ///
    /// kvmisolate joins a new isolation itself, then executes COMMAND in its place, so COMMAND
    /// and all its children run in the isolated cgroup.
    #[command(after_help = EXIT_CODES_HELP)]
    Run(RunArgs),

    /// Print one line per change (isolations created, released or degraded; CPUs) until
    /// interrupted.
    #[command(after_help = EXIT_CODES_HELP)]
    Monitor,

    /// Propose a host/guest CPU split from this host's topology, and the libvirt XML for it.
    ///
    /// Reads /sys only: needs neither kvmisolated nor root. Keeps SMT siblings together, the
    /// guest inside one L3 cache and one NUMA node, on P-cores of hybrid CPUs, and explains
    /// every choice.
    #[command(after_help = EXIT_CODES_HELP)]
    Plan(crate::plan::args::PlanArgs),
    /// Audit the host's isolation (no service needed): partitions, threads, IRQs, knobs.
    ///
    /// Reads procfs, sysfs and cgroupfs directly; run as root to read everything (what could
    /// not be read is listed). Each finding has a severity, what was found, why it matters
    /// for latency and the fix. Exit status 0 if nothing worse than info was found, 8 for
    /// warnings, 9 for errors.
    #[command(after_help = EXIT_CODES_HELP)]
    Check(crate::check::args::CheckArgs),

    /// Measure wake-up latency on CPUs (cyclictest-style), with the interference seen there.
    ///
    /// One SCHED_FIFO thread per CPU sleeps until absolute deadlines (clock_nanosleep,
    /// CLOCK_MONOTONIC, TIMER_ABSTIME) and records how late it wakes. Needs root (or
    /// CAP_SYS_NICE) for SCHED_FIFO: without it the command fails with exit status 4.
    #[command(after_help = EXIT_CODES_HELP)]
    Bench(crate::bench::args::BenchArgs),

    /// Watch a running VM from the host: vCPU wake-up delay, preemptions, and who caused them.
    ///
    /// Traces the scheduler and interrupts on the vCPUs' CPUs through a tracefs instance of
    /// its own (removed on exit), and names the offenders with the fix for each. Needs root.
    #[command(after_help = EXIT_CODES_HELP)]
    Top(Box<crate::top::TopArgs>),

    /// The libvirt hook: /etc/libvirt/hooks/qemu.d/kvmisolate runs it with libvirt's
    /// arguments and the domain XML on stdin.
    #[command(name = "libvirt-hook", hide = true)]
    LibvirtHook(LibvirtHookArgs),

    /// `bench --load`'s load, run as a process of its own when the bench is confined to the
    /// measured CPUs (inside their isolation): starts when "go" arrives on stdin, stops at EOF.
    #[command(name = "bench-load", hide = true)]
    BenchLoad(crate::bench::args::BenchLoadArgs),
}

/// `kvmisolate libvirt-hook DOMAIN OPERATION SUB-OPERATION EXTRA` (libvirt's hook arguments).
#[derive(Debug, Args)]
pub struct LibvirtHookArgs {
    /// The domain's name.
    pub domain: String,
    /// prepare, start, started, stopped, release, migrate, restore, reconnect, attach...
    pub operation: String,
    /// libvirt's sub-operation (begin, end, -).
    pub sub_operation: Option<String>,
    /// libvirt's extra argument.
    pub extra: Option<String>,
    /// The configuration file with the [vm.NAME] sections.
    #[arg(
        long,
        value_name = "FILE",
        env = "KVMISOLATE_CONFIG",
        default_value = "/etc/kvmisolate/kvmisolate.toml"
    )]
    pub config: std::path::PathBuf,
    /// sysfs (tests).
    #[arg(
        long,
        value_name = "DIR",
        env = "KVMISOLATE_SYSFS_ROOT",
        default_value = "/sys"
    )]
    pub sysfs_root: std::path::PathBuf,
    /// procfs (tests).
    #[arg(
        long,
        value_name = "DIR",
        env = "KVMISOLATE_PROC_ROOT",
        default_value = "/proc"
    )]
    pub proc_root: std::path::PathBuf,
}

/// The partition type, as a command line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PartitionArg {
    /// Exclusive CPUs; the scheduler still balances load between them.
    Root,
    /// Exclusive CPUs without load balancing: pin every thread to its own CPU.
    Isolated,
}

impl From<PartitionArg> for PartitionType {
    fn from(p: PartitionArg) -> Self {
        match p {
            PartitionArg::Root => PartitionType::Root,
            PartitionArg::Isolated => PartitionType::Isolated,
        }
    }
}

/// Where a libvirt domain's VFIO device IRQs go, as a command line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VfioIrqsArg {
    /// Off the isolated CPUs, as irq-affinity does with every IRQ.
    Housekeeping,
    /// On the CPUs of the domain's vCPUs.
    Vcpu,
}

impl From<VfioIrqsArg> for kvmisolate_dbus::tunings::VfioIrqPlacement {
    fn from(v: VfioIrqsArg) -> Self {
        match v {
            VfioIrqsArg::Housekeeping => Self::Housekeeping,
            VfioIrqsArg::Vcpu => Self::Vcpu,
        }
    }
}

/// When an isolation ends, as a command line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UntilArg {
    /// When the unit's or processes' last task exits (the service's default).
    Exit,
    /// When this kvmisolate command ends: it keeps running until interrupted (Ctrl-C).
    Disconnect,
    /// Only when released with `kvmisolate release NAME`.
    Release,
}

impl From<UntilArg> for ReleaseWhen {
    fn from(u: UntilArg) -> Self {
        match u {
            UntilArg::Exit => ReleaseWhen::TargetExits,
            UntilArg::Disconnect => ReleaseWhen::CallerDisconnects,
            UntilArg::Release => ReleaseWhen::Released,
        }
    }
}

/// `kvmisolate isolate`.
#[derive(Debug, Args)]
pub struct IsolateArgs {
    /// The CPUs to isolate, as a kernel cpulist (2-5, 3,5,7-9). May be left out with --name
    /// when the service's configuration has [isolation.NAME] cpus, and with --vm (the CPUs
    /// are then those the domain's vCPUs and emulator are pinned to).
    #[arg(
        long,
        value_name = "LIST",
        required_unless_present_any = ["name", "vm"],
        default_value = ""
    )]
    pub cpus: String,

    /// The isolation's name (1-64 characters of A-Z a-z 0-9 _ . -).
    /// Default: cpus- and the list with ',' written as '_' (cpus-2-5, cpus-3_5_7-9).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Partition the cgroup of this running systemd unit in place (e.g. a VM's scope).
    #[arg(long, value_name = "UNIT", conflicts_with = "pids")]
    pub unit: Option<String>,

    /// Isolate this running libvirt domain in place: its pinned vCPUs and emulator become
    /// isolated partitions on the cgroups libvirt made (Linux 6.7+). Needs
    /// org.kvmisolate.isolate-any (a system domain is not yours). Default name: libvirt-DOMAIN
    /// as root, vm-DOMAIN otherwise (a domain name with other characters than A-Z a-z 0-9 _ .
    /// -, or too long, is written with _ and cut, and ends with -HASH).
    #[arg(long, value_name = "DOMAIN", conflicts_with_all = ["pids", "unit"])]
    pub vm: Option<String>,

    /// Move these processes into a new cgroup and isolate that (repeat the option or separate
    /// PIDs with commas).
    #[arg(
        long = "pid",
        value_name = "PID",
        num_args = 1..,
        value_delimiter = ',',
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub pids: Vec<u32>,

    /// The partition type. Default: chosen by the service (root for a multi-CPU target).
    #[arg(long, value_enum, value_name = "TYPE")]
    pub partition: Option<PartitionArg>,

    /// When the isolation ends. Default: exit.
    #[arg(long, value_enum, value_name = "WHEN")]
    pub until: Option<UntilArg>,

    /// Host tunings: a profile (none, default, realtime) or a comma-separated list of tuning
    /// names (irq-affinity, irqbalance, workqueue-unbound, workqueue-writeback,
    /// vmstat-interval, timer-migration, watchdog-cpumask, rt-throttling, fair-server,
    /// energy-perf, cpu-governor, split-lock, numa-balancing, cpu-idle, thp, vfio-irqs). Default: the service's configuration (profile default).
    #[arg(long, value_name = "PROFILE|LIST")]
    pub tunings: Option<String>,

    /// Reserve hugepages for the guest: SIZE[:2M|1G][@NODE], e.g. 16G, 16G:1G, 8G@0.
    /// Fewer pages than asked fail the isolation unless --hugepages-best-effort.
    #[arg(long, value_name = "SPEC")]
    pub hugepages: Option<String>,

    /// Keep the isolation when the kernel allocates fewer hugepages than asked.
    #[arg(long)]
    pub hugepages_best_effort: bool,

    /// With --vm: where the host IRQs of the domain's assigned PCI devices (<hostdev>, VFIO)
    /// go: housekeeping (off the isolated CPUs, as irq-affinity does with every IRQ) or vcpu
    /// (on the CPUs of the domain's vCPUs). Selects the vfio-irqs tuning.
    #[arg(long, value_enum, value_name = "WHERE", requires = "vm")]
    pub vfio_irqs: Option<VfioIrqsArg>,
}

/// `kvmisolate release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The isolation to release.
    #[arg(
        value_name = "NAME",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub name: Option<String>,

    /// Release every isolation.
    #[arg(long)]
    pub all: bool,
}

/// `kvmisolate status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the service's Status() dictionary as a JSON object (stable keys, for scripts).
    #[arg(long)]
    pub json: bool,
}

/// `kvmisolate run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The CPUs to isolate, as a kernel cpulist (2-5, 3,5,7-9).
    #[arg(long, value_name = "LIST")]
    pub cpus: String,

    /// The isolation's name. Default: cpus- and the list with ',' written as '_'.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// The partition type. Default: chosen by the service.
    #[arg(long, value_enum, value_name = "TYPE")]
    pub partition: Option<PartitionArg>,

    /// The command to run, and its arguments (after --).
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        last = true,
        value_hint = clap::ValueHint::CommandWithArguments
    )]
    pub command: Vec<std::ffi::OsString>,
}

/// The documented command line, for the man pages and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// What the binary parses: the documented command line plus the hidden build-time generators
/// (`generate-man DIR`, `generate-completions DIR`), kept out of [`Cli`] so that no completion
/// script or man page mentions them.
pub fn command_with_generators() -> clap::Command {
    let dir = || {
        clap::Arg::new("dir")
            .value_name("DIR")
            .required(true)
            .value_parser(clap::value_parser!(PathBuf))
            .help("The directory to write to (created if missing)")
    };
    command()
        .subcommand(
            clap::Command::new(GENERATE_MAN)
                .hide(true)
                .about("Write man pages (kvmisolate.1, kvmisolate-SUBCOMMAND.1) into DIR")
                .arg(dir()),
        )
        .subcommand(
            clap::Command::new(GENERATE_COMPLETIONS)
                .hide(true)
                .about("Write kvmisolate.bash, _kvmisolate (zsh) and kvmisolate.fish into DIR")
                .arg(dir()),
        )
}

/// The hidden subcommand that writes man pages.
pub const GENERATE_MAN: &str = "generate-man";
/// The hidden subcommand that writes shell completions.
pub const GENERATE_COMPLETIONS: &str = "generate-completions";

/// What to do, after parsing.
#[derive(Debug)]
pub enum Invocation {
    /// A documented command.
    Cli(Cli),
    /// `generate-man DIR`.
    GenerateMan(PathBuf),
    /// `generate-completions DIR`.
    GenerateCompletions(PathBuf),
}

/// Parses `args` (the program name first).
pub fn try_parse_from<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command_with_generators().try_get_matches_from(args)?;
    let dir = |m: &clap::ArgMatches| m.get_one::<PathBuf>("dir").cloned().unwrap_or_default();
    Ok(match matches.subcommand() {
        Some((GENERATE_MAN, m)) => Invocation::GenerateMan(dir(m)),
        Some((GENERATE_COMPLETIONS, m)) => Invocation::GenerateCompletions(dir(m)),
        _ => Invocation::Cli(<Cli as clap::FromArgMatches>::from_arg_matches(&matches)?),
    })
}

/// Parses the process's arguments; on error, prints it and exits (status 2 for usage errors).
pub fn parse() -> Invocation {
    try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// `kvmisolate ARGS...` parsed as the process's arguments would be (the commands' tests).
#[cfg(test)]
pub(crate) fn parse_test_args(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("kvmisolate").chain(args.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    use super::parse_test_args as parse;

    #[test]
    fn definition_is_consistent() {
        command().debug_assert();
        command_with_generators().debug_assert();
    }

    #[test]
    fn isolate_full() {
        let cli = parse(&[
            "isolate",
            "--cpus",
            "2-3",
            "--name",
            "win10",
            "--pid",
            "1234",
            "--pid",
            "5,6",
            "--partition",
            "isolated",
            "--until",
            "disconnect",
            "-q",
        ])
        .unwrap();
        assert!(cli.quiet);
        let Command::Isolate(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.cpus, "2-3");
        assert_eq!(a.name.as_deref(), Some("win10"));
        assert_eq!(a.pids, vec![1234, 5, 6]);
        assert_eq!(a.partition, Some(PartitionArg::Isolated));
        assert_eq!(a.until, Some(UntilArg::Disconnect));
        assert_eq!(a.unit, None);
    }

    #[test]
    fn isolate_several_pids_after_one_flag() {
        let cli = parse(&["isolate", "--cpus", "2", "--pid", "10", "11"]).unwrap();
        let Command::Isolate(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.pids, vec![10, 11]);
    }

    #[test]
    fn isolate_rejects_bad_usage() {
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(
            kind(&["isolate", "--cpus", "2", "--unit", "a.scope", "--pid", "1"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&["isolate", "--unit", "a.scope"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["isolate", "--cpus", "2", "--pid", "0"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["isolate", "--cpus", "2", "--pid", "x"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["isolate", "--cpus", "2", "--partition", "x"]),
            ErrorKind::InvalidValue
        );
        assert_eq!(
            kind(&["isolate", "--cpus", "2", "--until", "never"]),
            ErrorKind::InvalidValue
        );
        // clap's usage errors exit with 2, as the contract wants.
        assert_eq!(parse(&["isolate"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn globals_anywhere() {
        let cli = parse(&[
            "--address",
            "unix:path=/x",
            "status",
            "--json",
            "--no-ask-password",
        ])
        .unwrap();
        assert_eq!(cli.address.as_deref(), Some("unix:path=/x"));
        assert!(cli.no_ask_password);
        let Command::Status(s) = cli.command else {
            panic!()
        };
        assert!(s.json);
    }

    #[test]
    fn release_forms() {
        let Command::Release(r) = parse(&["release", "win10"]).unwrap().command else {
            panic!()
        };
        assert_eq!(r.name.as_deref(), Some("win10"));
        let Command::Release(r) = parse(&["release", "--all"]).unwrap().command else {
            panic!()
        };
        assert!(r.all && r.name.is_none());
        assert!(parse(&["release"]).is_err());
        assert!(parse(&["release", "a", "--all"]).is_err());
    }

    #[test]
    fn run_takes_command_after_dashes() {
        let Command::Run(r) = parse(&[
            "run", "--cpus", "2-3", "--", "qemu", "-m", "4G", "--name", "x",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(r.cpus, "2-3");
        assert_eq!(r.name, None);
        assert_eq!(r.command, ["qemu", "-m", "4G", "--name", "x"]);
        assert!(parse(&["run", "--cpus", "2"]).is_err());
    }

    #[test]
    fn generators_are_hidden() {
        assert!(command().find_subcommand(GENERATE_MAN).is_none());
        let cmd = command_with_generators();
        for hidden in [GENERATE_MAN, GENERATE_COMPLETIONS] {
            assert!(cmd.find_subcommand(hidden).unwrap().is_hide_set());
        }
        let inv = |args: &[&str]| {
            try_parse_from(std::iter::once("kvmisolate").chain(args.iter().copied()))
        };
        assert!(matches!(
            inv(&["generate-man", "/tmp/m"]).unwrap(),
            Invocation::GenerateMan(d) if d == std::path::Path::new("/tmp/m")
        ));
        assert!(matches!(
            inv(&["-q", "generate-completions", "/tmp/c"]).unwrap(),
            Invocation::GenerateCompletions(d) if d == std::path::Path::new("/tmp/c")
        ));
        assert!(inv(&["generate-man"]).is_err());
        assert!(matches!(inv(&["status"]).unwrap(), Invocation::Cli(_)));
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = command().render_long_help().to_string();
        assert!(help.contains("7  the service is unreachable"), "{help}");
    }
}
