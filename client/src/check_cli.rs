//! The command lines of `check` and `bench` and their glue to the `check` and `bench` modules.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kvmisolate_dbus::cpulist::CpuSet;

use crate::bench;
use crate::check::{self, host::Roots};
use crate::failure::{ExitCode, Failure};

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
    fn roots(&self) -> Roots {
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

/// `kvmisolate bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The CPUs to measure, as a cpulist. Default: the isolated CPUs found in cgroupfs.
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    pub cpus: Option<CpuSet>,

    /// How long to measure: a number with a unit (30s, 1m, 1m30s, 500ms; a bare number is
    /// seconds).
    #[arg(long, value_name = "TIME", default_value = "60s", value_parser = parse_duration_arg)]
    pub duration: Duration,

    /// The wake-up period of each measuring thread (200us, 1ms; a bare number is µs, as
    /// cyclictest's -i).
    #[arg(long, value_name = "TIME", default_value = "200us", value_parser = parse_interval_arg)]
    pub interval: Duration,

    /// SCHED_FIFO priority of the measuring threads.
    #[arg(long, value_name = "PRIO", default_value_t = 95,
          value_parser = clap::value_parser!(u8).range(1..=99))]
    pub priority: u8,

    /// Load the housekeeping CPUs meanwhile (a CPU spinner per CPU, memory and disk
    /// writers), as the guides advise.
    #[arg(long)]
    pub load: bool,

    /// Print the result as JSON (the input of --compare).
    #[arg(long)]
    pub json: bool,

    /// Also write the histograms as an SVG picture (one line per CPU, log-scaled counts).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Print the difference between two saved --json runs (A before, B after) and exit.
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"],
          conflicts_with_all = ["cpus", "load", "plot", "json"])]
    pub compare: Option<Vec<PathBuf>>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub roots: RootArgs,
}

/// `kvmisolate bench-load` (hidden): the load of a confined `bench --load`.
#[derive(Debug, Args)]
pub struct BenchLoadArgs {
    /// The CPUs to load.
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    pub cpus: CpuSet,
    /// The disk writer's file (removed at the end).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
}

/// `kvmisolate bench-load`.
pub fn cmd_bench_load(a: BenchLoadArgs) -> Result<(), Failure> {
    bench::load::serve(&a.cpus.iter().collect::<Vec<_>>(), &a.file)
        .map_err(|e| Failure::other(format!("bench load: {e}")))
}

fn parse_cpus(s: &str) -> Result<CpuSet, String> {
    let c = CpuSet::parse(s).map_err(|e| e.to_string())?;
    if c.is_empty() {
        return Err("the CPU list is empty".to_owned());
    }
    Ok(c)
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    let d = bench::parse_duration(s, bench::Unit::Seconds)?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?} is too short: measure at least 100ms"));
    }
    Ok(d)
}

fn parse_interval_arg(s: &str) -> Result<Duration, String> {
    let d = bench::parse_duration(s, bench::Unit::Micros)?;
    if d < Duration::from_micros(10) || d > Duration::from_secs(1) {
        return Err(format!("interval {s:?} must be between 10us and 1s"));
    }
    Ok(d)
}

fn print(text: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::other(format!("cannot write to stdout: {e}"))),
    }
}

/// How long `virsh dumpxml` may take.
const VIRSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The `<domain>` element of a libvirt status file (`<domstatus>` wrapping it), or the text
/// as it is.
fn unwrap_domstatus(text: &str) -> &str {
    if !text.contains("<domstatus") {
        return text;
    }
    let start = text
        .match_indices("<domain")
        .find(|(i, _)| {
            matches!(
                text.as_bytes().get(i + 7),
                Some(b' ' | b'>' | b'\n' | b'\t')
            )
        })
        .map(|(i, _)| i);
    match (start, text.rfind("</domain>")) {
        (Some(a), Some(b)) if a < b => &text[a..b + "</domain>".len()],
        _ => text,
    }
}

/// Runs `virsh --readonly -c qemu:///system dumpxml NAME` (libvirt's read-only socket works
/// unprivileged): the XML, or why not.
fn virsh_dumpxml(name: &str) -> Result<String, String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("virsh")
        .args(["--readonly", "-c", "qemu:///system", "dumpxml", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run virsh: {e}"))?;
    let start = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > VIRSH_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "virsh did not answer in {}s",
                    VIRSH_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for virsh: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot read virsh's output: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Err(format!("virsh dumpxml failed: {msg}"))
    }
}

/// The domain to audit: its XML (from `file`, virsh, or libvirt's files) parsed by the hook's
/// parser, and its opt-in.
fn load_domain(
    name: &str,
    file: Option<&PathBuf>,
    config: &std::path::Path,
) -> Result<check::vm::VmInput, Failure> {
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(Failure::new(
            ExitCode::Usage,
            format!("--vm {name:?}: not a libvirt domain name"),
        ));
    }
    let (text, source) = match file {
        Some(f) => (
            std::fs::read_to_string(f).map_err(|e| {
                Failure::new(
                    ExitCode::BadRequest,
                    format!("cannot read {}: {e}", f.display()),
                )
            })?,
            f.display().to_string(),
        ),
        None => {
            let mut tried = Vec::new();
            let mut found = None;
            match virsh_dumpxml(name) {
                Ok(x) => found = Some((x, "virsh dumpxml".to_owned())),
                Err(e) => tried.push(e),
            }
            for path in [
                format!("/run/libvirt/qemu/{name}.xml"),
                format!("/etc/libvirt/qemu/{name}.xml"),
            ] {
                if found.is_some() {
                    break;
                }
                match std::fs::read_to_string(&path) {
                    Ok(x) => found = Some((x, path)),
                    Err(e) => tried.push(format!("{path}: {e}")),
                }
            }
            found.ok_or_else(|| {
                Failure::new(
                    ExitCode::NotFound,
                    format!(
                        "libvirt domain {name:?} not found (is it defined? virsh list --all shows the domains); tried: {}",
                        tried.join("; ")
                    ),
                )
            })?
        }
    };
    let domain = crate::hook::domain::Domain::parse(unwrap_domstatus(&text)).map_err(|e| {
        Failure::new(
            ExitCode::BadRequest,
            format!("domain {name:?} ({source}): {e}"),
        )
    })?;
    if domain.name != name {
        return Err(Failure::new(
            ExitCode::BadRequest,
            format!("{source} holds domain {:?}, not {name:?}", domain.name),
        ));
    }
    let settings = crate::hook::optin::read_vm_sections(config)
        .and_then(|sections| crate::hook::optin::settings(&domain, sections.get(name)));
    Ok(check::vm::VmInput {
        domain,
        source,
        settings,
    })
}

/// `kvmisolate check` (`quiet`: print nothing, only the exit status tells). `daemon`: what
/// kvmisolated said, if asked.
pub fn cmd_check(a: CheckArgs, daemon: check::daemon::Daemon, quiet: bool) -> Result<(), Failure> {
    let vm = match &a.vm {
        Some(name) => Some(load_domain(name, a.domain_xml.as_ref(), &a.config)?),
        None => None,
    };
    let report = check::audit_with(
        a.roots.roots(),
        check::AuditInput {
            cpus: a.cpus,
            vm,
            daemon,
        },
    );
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

/// `kvmisolate bench`.
pub fn cmd_bench(a: BenchArgs, quiet: bool) -> Result<(), Failure> {
    if let Some(files) = &a.compare {
        let [x, y] = files.as_slice() else {
            return Err(Failure::new(ExitCode::Usage, "--compare needs two files"));
        };
        let load = |p: &PathBuf| {
            bench::report::load(p).map_err(|e| Failure::new(ExitCode::BadRequest, e.to_string()))
        };
        return print(&bench::report::format_compare(&load(x)?, &load(y)?, x, y));
    }
    let opts = bench::Options {
        cpus: a.cpus,
        duration: a.duration,
        interval: a.interval,
        priority: a.priority,
        load: a.load,
        progress: !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = bench::run(&opts, &a.roots.roots()).map_err(|e| {
        let code = match e {
            bench::BenchError::NotPermitted(_) => ExitCode::NotAuthorized,
            bench::BenchError::BadCpus(_) => ExitCode::BadRequest,
            _ => ExitCode::Other,
        };
        Failure::new(code, e.to_string())
    })?;
    if let Some(path) = &a.plot {
        std::fs::write(path, bench::report::svg(&report)).map_err(|e| {
            Failure::other(format!("cannot write the plot to {}: {e}", path.display()))
        })?;
    }
    if a.json {
        let mut t = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::other(format!("cannot serialize the result: {e}")))?;
        t.push('\n');
        print(&t)
    } else if quiet {
        Ok(())
    } else {
        print(&bench::report::format_human(&report))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    #[test]
    fn domstatus_is_unwrapped() {
        let st = "<domstatus state='running'>\n  <domainname>x</domainname>\n  <domain type='kvm' id='1'><name>x</name></domain>\n</domstatus>";
        assert_eq!(
            super::unwrap_domstatus(st),
            "<domain type='kvm' id='1'><name>x</name></domain>"
        );
        assert_eq!(super::unwrap_domstatus("<domain/>"), "<domain/>");
    }

    #[test]
    fn domain_xml_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vm.xml");
        std::fs::write(
            &f,
            "<domstatus state='running'><domain type='kvm' id='4'><name>vm</name><vcpu>1</vcpu>\
             <cputune><vcpupin vcpu='0' cpuset='3'/></cputune></domain></domstatus>",
        )
        .unwrap();
        let conf = dir.path().join("kvmisolate.toml");
        std::fs::write(&conf, "[vm.vm]\nprofile = \"realtime\"\n").unwrap();
        let v = super::load_domain("vm", Some(&f), &conf).unwrap();
        assert_eq!(v.domain.id, Some(4));
        assert_eq!(v.domain.vcpupins[&0].to_string(), "3");
        assert!(matches!(v.settings, Ok(Some(_))), "[vm.vm] opts in");
        let e = super::load_domain("other", Some(&f), &conf).unwrap_err();
        assert!(
            e.message.contains("holds domain \"vm\", not \"other\""),
            "{}",
            e.message
        );
        std::fs::write(&conf, "[vm.vm]\nprofile = \"fastest\"\n").unwrap();
        let v = super::load_domain("vm", Some(&f), &conf).unwrap();
        assert!(v.settings.unwrap_err().contains("fastest"));
        std::fs::write(&f, "<domain><name>vm</name>").unwrap();
        let e = super::load_domain("vm", Some(&f), &conf).unwrap_err();
        assert!(e.message.starts_with("domain \"vm\""), "{}", e.message);
    }

    #[test]
    fn domains_that_cannot_be_found_are_named() {
        let e = super::load_domain("a/b", None, std::path::Path::new("/nonexistent")).unwrap_err();
        assert!(
            e.message.contains("not a libvirt domain name"),
            "{}",
            e.message
        );
        let e = super::load_domain(
            "kvmisolate-no-such-domain",
            None,
            std::path::Path::new("/nonexistent"),
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("\"kvmisolate-no-such-domain\" not found")
                && e.message
                    .contains("/etc/libvirt/qemu/kvmisolate-no-such-domain.xml"),
            "{}",
            e.message
        );
    }

    use crate::cli::{Cli, Command};
    use clap::Parser as _;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kvmisolate").chain(args.iter().copied()))
    }

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

    #[test]
    fn bench_args() {
        let Command::Bench(b) = parse(&["bench"]).unwrap().command else {
            panic!()
        };
        assert_eq!(b.duration, Duration::from_secs(60));
        assert_eq!(b.interval, Duration::from_micros(200));
        assert_eq!(b.priority, 95);
        let Command::Bench(b) = parse(&[
            "bench",
            "--cpus",
            "2",
            "--duration",
            "1m",
            "--interval",
            "1ms",
            "--load",
            "--plot",
            "/tmp/x.svg",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(b.duration, Duration::from_secs(60));
        assert_eq!(b.interval, Duration::from_millis(1));
        assert!(b.load);
        let Command::Bench(b) = parse(&["bench", "--interval", "500", "--duration", "20"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(b.interval, Duration::from_micros(500));
        assert_eq!(b.duration, Duration::from_secs(20));
        let Command::Bench(b) = parse(&["bench", "--compare", "a.json", "b.json"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(b.compare.unwrap().len(), 2);
        for bad in [
            &["bench", "--duration", "10x"][..],
            &["bench", "--duration", "1ms"],
            &["bench", "--interval", "1us"],
            &["bench", "--priority", "0"],
            &["bench", "--compare", "a.json"],
            &["bench", "--compare", "a", "b", "--load"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let e = parse(&["bench", "--duration", "10x"]).unwrap_err();
        assert!(e.to_string().contains("unit"), "{e}");
    }
}
