//! `kvmisolate status [--json]`.

use super::now_micros;
use crate::bus::Context;
use crate::failure::Failure;
use crate::{output, status};

/// Runs `kvmisolate status`: every key the service sent as JSON, or the text for people.
pub async fn cmd(ctx: &Context<'_>, json: bool) -> Result<(), Failure> {
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
