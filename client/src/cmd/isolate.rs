//! `kvmisolate isolate`: one `Isolate`; with `--until disconnect`, held until the command
//! ends (then released) or the service ends it.

use std::io::Write as _;

use futures_util::StreamExt as _;
use kvmisolate_dbus::names;
use tokio::signal::unix::{SignalKind, signal};
use zbus::{MatchRule, MessageStream};

use super::signal_failure;
use crate::bus::Context;
use crate::cli::{IsolateArgs, UntilArg};
use crate::failure::{ExitCode, Failure};
use crate::monitor;
use crate::request::{IsolateRequest, Target};

/// Runs `kvmisolate isolate`.
pub async fn cmd(ctx: &Context<'_>, args: IsolateArgs) -> Result<(), Failure> {
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
    )?
    .with_vfio_irqs_arg(args.vfio_irqs.map(Into::into))?;
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
