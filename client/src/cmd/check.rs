//! `kvmisolate check`: the audit itself is in `crate::check`; this asks kvmisolated for its
//! view first (unless `--no-daemon`).

use crate::bus::Context;
use crate::check::args::{CheckArgs, cmd_check};
use crate::check::daemon::Daemon;
use crate::failure::Failure;

/// Runs `kvmisolate check`.
pub async fn cmd(ctx: &Context<'_>, args: CheckArgs) -> Result<(), Failure> {
    let daemon = if args.no_daemon {
        Daemon::NotAsked
    } else {
        daemon(ctx).await
    };
    cmd_check(args, daemon, ctx.quiet)
}

/// How long `check` waits for kvmisolated's `Status()`.
const CHECK_DAEMON_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// kvmisolated's `Status()` for `check`, or why it could not be had (never a failure).
async fn daemon(ctx: &Context<'_>) -> Daemon {
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
