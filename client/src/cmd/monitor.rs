//! `kvmisolate monitor`: the service's signals, one line each, until Ctrl-C (decoding and
//! wording in `crate::monitor`).

use futures_util::StreamExt as _;
use kvmisolate_dbus::names;
use tokio::signal::unix::{SignalKind, signal};
use zbus::{MatchRule, MessageStream};

use super::{now_micros, signal_failure};
use crate::bus::Context;
use crate::failure::{ExitCode, Failure};
use crate::{monitor, output};

/// Runs `kvmisolate monitor`.
pub async fn cmd(ctx: &Context<'_>) -> Result<(), Failure> {
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
