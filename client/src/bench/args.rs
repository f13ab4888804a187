//! The command lines of `bench` and `bench-load` and their glue to the `bench` module.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kvmisolate_dbus::cpulist::CpuSet;

use crate::bench;
use crate::check::args::{RootArgs, parse_cpus};
use crate::failure::{ExitCode, Failure};
use crate::output::print;

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
    /// The directory of the disk writer's file (an unnamed file: nothing to remove after).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// `kvmisolate bench-load`.
pub fn cmd_bench_load(a: BenchLoadArgs) -> Result<(), Failure> {
    bench::load::serve(&a.cpus.iter().collect::<Vec<_>>(), &a.dir)
        .map_err(|e| Failure::other(format!("bench load: {e}")))
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
    use crate::cli::{Command, parse_test_args as parse};
    use std::time::Duration;

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
