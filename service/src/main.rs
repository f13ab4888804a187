//! `kvmisolated`: the kvmisolate system service. See the crate docs in `lib.rs`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use kvmisolate_dbus::names;
use kvmisolated::bus::isolator::Shared;
use kvmisolated::daemon::orchestrator::{Config, Orchestrator};
use kvmisolated::test_hooks::TestHooks;
use tracing_subscriber::prelude::*;

/// kvmisolate's service: isolates CPUs for VMs with cgroup v2 cpuset partitions, on the D-Bus
/// system bus, authorized by polkit, and restores everything when an isolation ends.
#[derive(Parser, Debug)]
#[command(name = "kvmisolated", version, about, long_about = None, after_help = AFTER_HELP)]
struct Args {
    /// Connect to this D-Bus address instead of the system bus (tests, debugging).
    #[arg(long, value_name = "ADDRESS", conflicts_with = "session")]
    address: Option<String>,
    /// Use the session bus (debugging only).
    #[arg(long)]
    session: bool,
    /// Where cgroup v2 is mounted.
    #[arg(long, default_value = "/sys/fs/cgroup", value_name = "DIR")]
    cgroup_root: PathBuf,
    /// Where sysfs is mounted.
    #[arg(long, default_value = "/sys", value_name = "DIR")]
    sysfs_root: PathBuf,
    /// Where procfs is mounted.
    #[arg(long, default_value = "/proc", value_name = "DIR")]
    proc_root: PathBuf,
    /// The journal of what to restore (must be on a tmpfs that a reboot clears).
    #[arg(long, default_value = "/run/kvmisolate", value_name = "DIR")]
    run_dir: PathBuf,
    /// Exit after this many seconds without any isolation and without calls (0: never).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    idle_timeout: u64,
    /// The fewest online CPUs the host must keep [default: the configuration's, else 1].
    #[arg(long, value_name = "N")]
    min_housekeeping: Option<usize>,
    /// Allow isolating CPU 0 (many IRQs and timers can only run there).
    #[arg(long)]
    allow_cpu0: bool,
    /// The configuration file (defaults, tuning values, per-isolation settings). A missing
    /// file means built-in defaults; a malformed one stops the service.
    #[arg(long, default_value = kvmisolated::config::DEFAULT_PATH, value_name = "FILE")]
    config: PathBuf,
    /// Where systemd reads runtime drop-ins (for irqbalance).
    #[arg(
        long,
        default_value = "/run/systemd/system",
        value_name = "DIR",
        hide = true
    )]
    systemd_runtime_dir: PathBuf,
    /// Don't use systemd even if it runs (own cgroups under the cgroup root instead).
    #[arg(long)]
    no_systemd: bool,
    /// Testing only: the cgroup root is a plain directory in which kernel behaviour is emulated
    /// (one of the test hooks, `kvmisolated::test_hooks`).
    #[arg(long, hide = true)]
    test_fake_kernel: bool,
    /// Write the man page kvmisolated.8 into DIR and exit.
    #[arg(long, value_name = "DIR", hide = true)]
    generate_man: Option<PathBuf>,
}

const AFTER_HELP: &str = "\
Environment:
  KVMISOLATED_LOG               log filter (e.g. debug, kvmisolated=trace)
  KVMISOLATED_CRASH_AFTER_STEP  testing only: SIGKILL itself after the N-th journalled step
  KVMISOLATED_CRASH_AFTER_TUNING  testing only: SIGKILL itself after the N-th tuning write

The service is normally started by D-Bus activation (kvmisolated.service). Without systemd,
start it as root after dbus-daemon and polkitd, e.g. from an OpenRC/runit service script.";

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KVMISOLATED_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    if under_systemd && let Ok(journald) = tracing_journald::layer() {
        tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .init();
        return;
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.generate_man {
        let man = clap_mangen::Man::new(Args::command()).section("8");
        let mut out = Vec::new();
        man.render(&mut out)?;
        std::fs::write(dir.join("kvmisolated.8"), out)
            .with_context(|| format!("writing {}", dir.display()))?;
        return Ok(());
    }
    init_logging();
    // Before anything else: a configuration mistake must stop the service with its line.
    let file = kvmisolated::config::Config::load(&args.config)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the configuration is invalid; fix it or move it away")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args, file))
}

async fn run(args: Args, file: kvmisolated::config::Config) -> anyhow::Result<()> {
    let builder = if let Some(addr) = &args.address {
        zbus::connection::Builder::address(addr.as_str())
    } else if args.session {
        zbus::connection::Builder::session()
    } else {
        zbus::connection::Builder::system()
    };
    let conn = builder.build().await.context("connecting to D-Bus")?;
    let config = Config {
        cgroup_root: args.cgroup_root,
        sysfs_root: args.sysfs_root,
        proc_root: args.proc_root,
        run_dir: args.run_dir,
        min_housekeeping: args.min_housekeeping.or(file.min_housekeeping).unwrap_or(1),
        allow_cpu0: args.allow_cpu0 || file.allow_cpu0.unwrap_or(false),
        use_systemd: !args.no_systemd,
        systemd_runtime_dir: args.systemd_runtime_dir,
        hooks: TestHooks::from_env(args.test_fake_kernel),
        file,
    };
    let orchestrator = Orchestrator::new(config, conn.clone()).await?;
    let shared = Shared::start(conn.clone(), orchestrator).await?;
    // The name last: activation waits for it, and by now the journal has been replayed.
    conn.request_name(names::BUS_NAME).await.with_context(|| {
        format!(
            "owning {} (is another kvmisolated running?)",
            names::BUS_NAME
        )
    })?;
    tracing::info!("ready on {}", names::BUS_NAME);

    let idle = Duration::from_secs(args.idle_timeout);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let idle_wait = async {
            if idle.is_zero() || !shared.is_idle().await {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(idle).await;
        };
        tokio::select! {
            _ = shared.activity.notified() => continue,
            _ = idle_wait => {
                if shared.is_idle().await {
                    tracing::info!("idle for {} s with no isolation; exiting", idle.as_secs());
                    shared.settle().await;
                    return Ok(());
                }
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: finishing the operations in progress, then exiting; active isolations stay and are adopted on the next start");
                let _held = shared.stop().await;
                shared.settle().await;
                return Ok(());
            }
            _ = tokio::signal::ctrl_c() => {
                let _held = shared.stop().await;
                shared.settle().await;
                return Ok(());
            }
        }
    }
}
