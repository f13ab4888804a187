//! `kvmisolate top`: the tracing itself is in `crate::top`; this asks kvmisolated for the
//! cgroups of `--name`.

use crate::bus::Context;
use crate::failure::{ExitCode, Failure};
use crate::top::TopArgs;

/// Runs `kvmisolate top`.
pub async fn cmd(ctx: &Context<'_>, args: TopArgs) -> Result<(), Failure> {
    let cgroups = match &args.name {
        Some(n) => Some(isolation_cgroups(ctx, n).await?),
        None => None,
    };
    crate::top::cmd(args, cgroups, ctx.quiet).await
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
