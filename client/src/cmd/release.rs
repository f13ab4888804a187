//! `kvmisolate release NAME | --all`.

use crate::bus::Context;
use crate::cli::ReleaseArgs;
use crate::failure::{ExitCode, Failure};

/// Runs `kvmisolate release`.
pub async fn cmd(ctx: &Context<'_>, args: ReleaseArgs) -> Result<(), Failure> {
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
