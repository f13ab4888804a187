//! `kvmisolate run --cpus LIST -- COMMAND`: isolate our own process, then exec the command in
//! place (the isolation ends when it exits).

use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;

use crate::bus::Context;
use crate::cli::RunArgs;
use crate::failure::{ExitCode, Failure};
use crate::request::{IsolateRequest, Target};

/// Runs `kvmisolate run`.
pub async fn cmd(ctx: &Context<'_>, args: RunArgs) -> Result<(), Failure> {
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
