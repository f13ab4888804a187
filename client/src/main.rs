//! `kvmisolate`: the command line of kvmisolate, a thin layer over the D-Bus proxies of
//! `kvmisolate-dbus`. See `kvmisolate --help` and docs/ARCHITECTURE.md (the CLI contract).

mod agent;
mod bench;
mod bus;
mod check;
mod cli;
mod failure;
mod generate;
mod hook;
mod monitor;
mod output;
mod plan;
mod request;
mod status;
mod top;
mod topology;

use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;

use futures_util::StreamExt as _;
use kvmisolate_dbus::names;
use tokio::signal::unix::{SignalKind, signal};
use zbus::{MatchRule, MessageStream};

use crate::bus::Context;
use crate::cli::{Cli, Command, Invocation, IsolateArgs, ReleaseArgs, RunArgs, UntilArg};
use crate::failure::{ExitCode, Failure};
use crate::request::{IsolateRequest, Target};

async fn cmd_isolate(ctx: &Context<'_>, args: IsolateArgs) -> Result<(), Failure> {
    let target = match (args.unit, args.vm, args.pids.is_empty()) {
        (Some(u), _, _) => Target::Unit(u),
        (None, Some(vm), _) => Target::Libvirt(vm),
        (None, None, false) => Target::Pids(args.pids),
        (None, None, true) => {
            return Err(Failure::new(
                ExitCode::Usage,
                "isolate needs a target: --unit UNIT (a running systemd unit), --vm DOMAIN (a \
                 running libvirt domain) or --pid PID...; to start a program on isolated CPUs, \
                 use: kvmisolate run --cpus LIST -- COMMAND",
            ));
        }
    };
    let req = IsolateRequest::new(
        &args.cpus,
        args.name.as_deref(),
        target,
        args.partition.map(Into::into),
        args.until.map(Into::into),
    )?
    .with_tunings(
        args.tunings.as_deref(),
        args.hugepages.as_deref(),
        args.hugepages_best_effort,
    )?;
    let conn = ctx.connect().await?;
    if args.until != Some(UntilArg::Disconnect) {
        let (_path, line) = ctx.isolate(&conn, &req).await?;
        ctx.say(&line);
        return Ok(());
    }

    // --until disconnect: subscribe to our own Released first, so nothing is missed.
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(names::BUS_NAME)
        .interface(names::INTERFACE)
        .member("Released")
        .path(names::OBJECT_PATH)
        .arg(0, req.name.as_str())
        .build();
    let mut released = match rule {
        Ok(rule) => MessageStream::for_match_rule(rule, &conn, None)
            .await
            .map_err(|e| ctx.failure(&e))?,
        Err(e) => return Err(Failure::other(format!("bad match rule: {e}"))),
    };
    let (_path, line) = ctx.isolate(&conn, &req).await?;
    // Handlers only now: a Ctrl-C at the password prompt simply ends the command.
    let (mut sigint, mut sigterm, mut sighup) = (
        signal(SignalKind::interrupt()).map_err(signal_failure)?,
        signal(SignalKind::terminate()).map_err(signal_failure)?,
        signal(SignalKind::hangup()).map_err(signal_failure)?,
    );
    ctx.say(&format!("{line}; until this command ends (Ctrl-C)"));
    let _ = std::io::stdout().flush();
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
        _ = sighup.recv() => {}
        msg = released.next() => {
            let reason = msg
                .and_then(Result::ok)
                .and_then(|m| monitor::event_of(&m))
                .and_then(|e| match e {
                    monitor::Event::Released { reason, .. } => Some(reason),
                    _ => None,
                })
                .unwrap_or_else(|| "connection closed".to_owned());
            if !ctx.quiet {
                eprintln!("kvmisolate: the isolation \"{}\" ended ({reason})", req.name);
            }
            return Ok(());
        }
    }
    // End the lease now rather than on disconnect, so that the CPUs are back when we exit.
    // Our own isolation needs no authorization; if this fails, the disconnect still ends it.
    let proxy = ctx.isolator(&conn).await?;
    let own = ctx.never_asking();
    let call = own.release(&proxy, req.name.as_str());
    match tokio::time::timeout(std::time::Duration::from_secs(10), call).await {
        Ok(Ok(())) => ctx.say(&format!("Released \"{}\"", req.name)),
        Ok(Err(f)) => {
            if f.code != ExitCode::NotFound {
                eprintln!("kvmisolate: {f} (disconnecting ends the isolation anyway)");
            }
        }
        Err(_) => eprintln!("kvmisolate: no answer to Release; disconnecting ends the isolation"),
    }
    Ok(())
}

fn signal_failure(e: std::io::Error) -> Failure {
    Failure::other(format!("cannot install signal handlers: {e}"))
}

async fn cmd_release(ctx: &Context<'_>, args: ReleaseArgs) -> Result<(), Failure> {
    let conn = ctx.connect().await?;
    let proxy = ctx.isolator(&conn).await?;
    if args.all {
        let () = ctx.call_authorized(&proxy, "ReleaseAll", &()).await?;
        ctx.say("Released all isolations");
        return Ok(());
    }
    let Some(name) = args.name else {
        return Err(Failure::new(ExitCode::Usage, "pass NAME or --all"));
    };
    kvmisolate_dbus::IsolationName::new(&name)
        .map_err(|e| Failure::new(ExitCode::BadRequest, e.to_string()))?;
    ctx.release(&proxy, &name).await?;
    ctx.say(&format!("Released \"{name}\""));
    Ok(())
}

/// How long the libvirt hook may take.
const HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The largest domain XML the hook reads.
const HOOK_MAX_XML: u64 = 16 << 20;

async fn cmd_libvirt_hook(ctx: &Context<'_>, args: cli::LibvirtHookArgs) -> Result<(), Failure> {
    use std::io::Read as _;
    // Read the XML whatever the operation: libvirt writes it to every hook.
    let mut xml = String::new();
    std::io::stdin()
        .take(HOOK_MAX_XML)
        .read_to_string(&mut xml)
        .map_err(|e| Failure::other(format!("cannot read the domain XML on stdin: {e}")))?;
    let op = args.operation.as_str();
    if !matches!(op, "prepare" | "started" | "release") {
        return Ok(());
    }
    let dom = &args.domain;
    let bad = |m: String| Failure::new(ExitCode::BadRequest, format!("domain {dom:?}: {m}"));
    // Opt-in first: what is broken stops only a domain that opted in.
    let section = match hook::optin::decide(&xml, &args.config, dom) {
        hook::optin::OptIn::No { broken } => {
            if let Some(e) = broken {
                eprintln!(
                    "kvmisolate: warning: {e}; domain {dom:?} does not opt in and starts unisolated (fix the file: domains that opt in cannot start until it is)"
                );
            }
            return Ok(());
        }
        hook::optin::OptIn::Maybe(section) => section.map_err(bad)?,
    };
    let domain = hook::domain::Domain::parse(&xml).map_err(|e| bad(e.to_string()))?;
    let Some(settings) = hook::optin::settings(&domain, section.as_ref()).map_err(bad)? else {
        return Ok(());
    };
    let warn_only = settings.on_conflict == kvmisolate_dbus::libvirt::OnConflict::Warn;
    let result = hook_operation(ctx, op, &args, &domain, &settings).await;
    match result {
        // on-conflict = "warn": the domain starts (unisolated) whatever went wrong.
        Err(f) if warn_only && op != "release" => {
            eprintln!(
                "kvmisolate: warning: {} (on-conflict = \"warn\": the domain starts unisolated)",
                f.message
            );
            Ok(())
        }
        other => other,
    }
}

/// One hook operation on a domain that opted in.
async fn hook_operation(
    ctx: &Context<'_>,
    op: &str,
    args: &cli::LibvirtHookArgs,
    domain: &hook::domain::Domain,
    settings: &hook::optin::Settings,
) -> Result<(), Failure> {
    let dom = &args.domain;
    let name = request::vm_name(dom);
    let conn = ctx.connect().await?;
    let proxy = ctx.isolator(&conn).await?;
    match op {
        "prepare" => {
            let st = ctx.status(&proxy).await?;
            let reserve_name = request::reservation_name(dom);
            let host = hook_host_view(args, &st, &[name.as_str(), reserve_name.as_str()]);
            let verdict = hook::check::check(domain, settings, &host);
            for w in &verdict.warnings {
                eprintln!("kvmisolate: domain {dom:?}: warning: {w}");
            }
            let mut conflicts = verdict.conflicts;
            if conflicts.is_empty() {
                // Hugepages: reserved now, before QEMU maps its memory; a left-over reservation
                // of an earlier start that never reached release goes first.
                let Ok(Some(spec)) = settings.hugepage_spec(domain) else {
                    return Ok(());
                };
                for n in hook::leases::releasable(&st, dom, hook::leases::Which::Reservation) {
                    let _ = ctx.release(&proxy, &n).await;
                }
                let req =
                    IsolateRequest::new("", None, Target::Reservation(dom.clone()), None, None)?
                        .with_tunings(None, Some(&spec.to_string()), false)?;
                match ctx.isolate(&conn, &req).await {
                    Ok(_) => {
                        ctx.say(&format!(
                            "Reserved {spec} of hugepages for domain {dom:?} as \"{reserve_name}\""
                        ));
                        return Ok(());
                    }
                    Err(f) => conflicts.push(format!("hugepages: {}", f.message)),
                }
            }
            let verdict = hook::check::Verdict {
                conflicts,
                ..verdict
            };
            let msg = format!(
                "domain {dom:?} cannot be isolated on {}: {}",
                if verdict.cpus.is_empty() {
                    "its pins".to_owned()
                } else {
                    verdict.cpus.to_string()
                },
                verdict.conflicts.join("; ")
            );
            Err(Failure::new(ExitCode::BadRequest, msg))
        }
        "started" => {
            let tunings = match (&settings.tunings, settings.profile) {
                (Some(list), _) => Some(
                    list.iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                (None, Some(p)) => Some(p.as_str().to_owned()),
                (None, None) => None,
            };
            let req = IsolateRequest::new(
                "",
                Some(name.as_str()),
                Target::Libvirt(dom.clone()),
                None,
                None,
            )?
            .with_tunings(tunings.as_deref(), None, false)?;
            let (_, line) = ctx.isolate(&conn, &req).await?;
            ctx.say(&line);
            Ok(())
        }
        _ => {
            let mut result = Ok(());
            let st = ctx.status(&proxy).await?;
            for n in hook::leases::releasable(&st, dom, hook::leases::Which::Both) {
                match ctx.release(&proxy, &n).await {
                    // Released by the service already (the domain's cgroup emptied), or never
                    // made.
                    Err(f) if f.code == ExitCode::NotFound => {}
                    Err(f) => result = Err(f),
                    Ok(()) => {}
                }
            }
            result
        }
    }
}

/// What `prepare` reads of the host: sysfs, procfs and the service's `Status()`.
fn hook_host_view(
    args: &cli::LibvirtHookArgs,
    status: &kvmisolate_dbus::status::Status,
    own: &[&str],
) -> hook::check::HostView {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let online = kvmisolate_dbus::CpuSet::parse(
        read(args.sysfs_root.join("devices/system/cpu/online")).trim(),
    )
    .unwrap_or_default();
    let held = check::daemon::held_in(status)
        .into_iter()
        .filter(|(name, _)| !own.contains(&name.as_str()))
        .collect();
    let remote_partitions = status.kernel_support.remote_partitions;
    let rt_throttling_off =
        read(args.proc_root.join("sys/kernel/sched_rt_runtime_us")).trim() == "-1";
    let kernel = read(args.proc_root.join("sys/kernel/osrelease"))
        .trim()
        .to_owned();
    hook::check::HostView {
        online,
        remote_partitions,
        held,
        rt_throttling_off,
        kernel,
    }
}

/// How long `check` waits for kvmisolated's `Status()`.
const CHECK_DAEMON_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// kvmisolated's `Status()` for `check`, or why it could not be had (never a failure).
async fn check_daemon(ctx: &Context<'_>) -> check::daemon::Daemon {
    use check::daemon::Daemon;
    let ask = async {
        let conn = ctx.connect().await.map_err(|f| f.message)?;
        let proxy = ctx.isolator(&conn).await.map_err(|f| f.message)?;
        ctx.status(&proxy).await.map_err(|f| f.message)
    };
    match tokio::time::timeout(CHECK_DAEMON_TIMEOUT, ask).await {
        Ok(Ok(st)) => Daemon::Status(Box::new(st)),
        Ok(Err(why)) => Daemon::Unreachable(why),
        Err(_) => Daemon::Unreachable(format!("no answer in {}s", CHECK_DAEMON_TIMEOUT.as_secs())),
    }
}

async fn cmd_status(ctx: &Context<'_>, json: bool) -> Result<(), Failure> {
    let conn = ctx.connect().await?;
    let proxy = ctx.isolator(&conn).await?;
    if json {
        // Every key the service sent, as it sent it.
        let st = proxy.status().await.map_err(|e| ctx.failure(&e))?;
        let text = serde_json::to_string_pretty(&status::status_to_json(&st))
            .map_err(|e| Failure::other(format!("cannot write JSON: {e}")))?;
        output::emit(&format!("{text}\n"));
    } else {
        let st = ctx.status(&proxy).await?;
        output::emit(&status::format_status(&st, now_micros()));
    }
    Ok(())
}

/// The cgroups of isolation `name` (for `top --name`).
async fn isolation_cgroups(ctx: &Context<'_>, name: &str) -> Result<Vec<String>, Failure> {
    let conn = ctx.connect().await?;
    let st = ctx.status(&ctx.isolator(&conn).await?).await?;
    st.isolations
        .into_iter()
        .find(|i| i.name == name)
        .map(|i| i.cgroups)
        .ok_or_else(|| {
            Failure::new(
                ExitCode::NotFound,
                format!("no isolation named {name:?} (kvmisolate status lists them)"),
            )
        })
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

async fn cmd_run(ctx: &Context<'_>, args: RunArgs) -> Result<(), Failure> {
    let argv: Vec<CString> = args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| Failure::new(ExitCode::Usage, "the command contains a NUL byte"))?;
    let Some(program) = argv.first().cloned() else {
        return Err(Failure::new(
            ExitCode::Usage,
            "run needs a COMMAND after --",
        ));
    };
    let req = IsolateRequest::new(
        &args.cpus,
        args.name.as_deref(),
        Target::Pids(vec![std::process::id()]),
        args.partition.map(Into::into),
        Some(kvmisolate_dbus::options::ReleaseWhen::TargetExits),
    )?;
    let conn = ctx.connect().await?;
    let (_path, line) = ctx.isolate(&conn, &req).await?;
    if !ctx.quiet {
        // stderr: the command's stdout is its own.
        eprintln!("{line}");
    }
    let _ = std::io::stdout().flush();
    let err = match nix::unistd::execvp(&program, &argv) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // Still here: the command did not start. Give the CPUs back, then report.
    let proxy = ctx.isolator(&conn).await?;
    let released = ctx.never_asking().release(&proxy, req.name.as_str()).await;
    let cmd = args.command[0].to_string_lossy();
    let mut msg = format!("cannot run {cmd}: {}", err.desc());
    if let Err(f) = released {
        msg.push_str(&format!(
            "; releasing \"{}\" failed too: {f} (run: kvmisolate release {})",
            req.name, req.name
        ));
    }
    Err(Failure::other(msg))
}

async fn cmd_monitor(ctx: &Context<'_>) -> Result<(), Failure> {
    let conn = ctx.connect().await?;
    let service_rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(names::BUS_NAME)
        .path_namespace(names::OBJECT_PATH)
        .build();
    let owner_rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.DBus")
        .interface("org.freedesktop.DBus")
        .member("NameOwnerChanged")
        .arg(0, names::BUS_NAME)
        .build();
    let (Ok(service_rule), Ok(owner_rule)) = (service_rule, owner_rule) else {
        return Err(Failure::other("cannot build the match rules"));
    };
    let service = MessageStream::for_match_rule(service_rule, &conn, None)
        .await
        .map_err(|e| ctx.failure(&e))?;
    let owner = MessageStream::for_match_rule(owner_rule, &conn, None)
        .await
        .map_err(|e| ctx.failure(&e))?;
    let mut messages = futures_util::stream::select(service, owner);
    let (mut sigint, mut sigterm) = (
        signal(SignalKind::interrupt()).map_err(signal_failure)?,
        signal(SignalKind::terminate()).map_err(signal_failure)?,
    );
    if !ctx.quiet {
        eprintln!("Watching {} (Ctrl-C to stop)", names::BUS_NAME);
    }
    loop {
        tokio::select! {
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            msg = messages.next() => match msg {
                None => return Err(Failure::new(ExitCode::Unreachable, "the bus connection closed")),
                Some(Err(e)) => return Err(ctx.failure(&e)),
                Some(Ok(m)) => {
                    if let Some(event) = monitor::event_of(&m) {
                        let line = format!("{} {}\n", monitor::timestamp(now_micros()), monitor::describe(&event));
                        if output::write_stdout(&line).is_err() {
                            // The reader is gone (`kvmisolate monitor | head`): done.
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Context {
        address: cli.address.as_deref(),
        interactive: !cli.no_ask_password,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Isolate(a) => cmd_isolate(&ctx, a).await,
        Command::Release(a) => cmd_release(&ctx, a).await,
        Command::Status(a) => cmd_status(&ctx, a.json).await,
        Command::Run(a) => cmd_run(&ctx, a).await,
        Command::Monitor => cmd_monitor(&ctx).await,
        Command::Plan(a) => plan::run::run(&a, cli.quiet).map(|out| output::emit(&out)),
        Command::Check(a) => {
            let daemon = if a.no_daemon {
                check::daemon::Daemon::NotAsked
            } else {
                check_daemon(&ctx).await
            };
            check::args::cmd_check(a, daemon, ctx.quiet)
        }
        Command::Bench(a) => bench::args::cmd_bench(a, ctx.quiet),
        Command::BenchLoad(a) => bench::args::cmd_bench_load(a),
        Command::Top(a) => {
            let cgroups = match &a.name {
                Some(n) => Some(isolation_cgroups(&ctx, n).await?),
                None => None,
            };
            top::cmd(*a, cgroups, ctx.quiet).await
        }
        Command::LibvirtHook(a) => {
            // A hook never prompts, and libvirtd waits for it: bound the whole call.
            let ctx = ctx.never_asking();
            match tokio::time::timeout(HOOK_TIMEOUT, cmd_libvirt_hook(&ctx, a)).await {
                Ok(r) => r,
                Err(_) => Err(Failure::other(format!(
                    "the libvirt hook gave up after {} s waiting for kvmisolated",
                    HOOK_TIMEOUT.as_secs()
                ))),
            }
        }
    }
}

/// The hidden build-time generators (no bus needed).
fn run_generator(invocation: Invocation) -> Result<(), Failure> {
    let (what, dir, result) = match invocation {
        Invocation::GenerateMan(dir) => {
            let r = generate::man_pages(&dir);
            ("man pages", dir, r)
        }
        Invocation::GenerateCompletions(dir) => {
            let r = generate::completions(&dir);
            ("completions", dir, r)
        }
        Invocation::Cli(_) => return Ok(()),
    };
    result
        .map(|_files| ())
        .map_err(|e| Failure::other(format!("cannot write {what} to {}: {e}", dir.display())))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let result = match cli::parse() {
        Invocation::Cli(cli) => run(cli).await,
        other => run_generator(other),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            // An empty message: the command has said everything (check's exit status 8/9).
            if !f.message.is_empty() {
                eprintln!("kvmisolate: {}", f.message);
            }
            std::process::ExitCode::from(f.code as u8)
        }
    }
}
