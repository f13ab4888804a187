//! Authorization of callers through polkit.
//!
//! Rules (see the issue and hostnamed for the model):
//! - the subject is always the caller's `system-bus-name`, never a PID (PIDs race);
//! - user interaction is allowed only when the caller's message carries
//!   `ALLOW_INTERACTIVE_AUTH`;
//! - the polkit call is bounded by a timeout;
//! - every failure (polkitd missing, timeout, malformed reply) denies: we fail closed;
//! - uid 0 callers are authorized without asking polkit, as systemd's services do for callers
//!   that hold the capability anyway (root can write cgroupfs itself), so libvirt hooks work on
//!   hosts where polkitd is not running.

use std::collections::HashMap;
use std::time::Duration;

use zbus::message::{Flags, Header};
use zbus::names::BusName;
use zbus::{Connection, fdo};
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

/// How long a non-interactive check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a check may wait for a person to type a password.
const INTERACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Who is calling, as far as authorization cares.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's unique bus name.
    pub bus_name: String,
    /// The caller's uid, as the bus daemon reports it.
    pub uid: u32,
    /// Whether the message allowed interactive authorization.
    pub interactive: bool,
}

/// Identifies the sender of a method call through the bus daemon.
pub async fn caller(conn: &Connection, header: &Header<'_>) -> fdo::Result<Caller> {
    let sender = header
        .sender()
        .ok_or_else(|| fdo::Error::AccessDenied("the message has no sender".into()))?;
    let dbus = fdo::DBusProxy::new(conn)
        .await
        .map_err(|e| fdo::Error::AccessDenied(format!("cannot ask the bus who is calling: {e}")))?;
    let uid = dbus
        .get_connection_unix_user(BusName::Unique(sender.clone()))
        .await
        .map_err(|e| fdo::Error::AccessDenied(format!("cannot learn the caller's uid: {e}")))?;
    Ok(Caller {
        bus_name: sender.to_string(),
        uid,
        interactive: header
            .primary()
            .flags()
            .contains(Flags::ALLOW_INTERACTIVE_AUTH),
    })
}

/// Asks polkit whether `header`'s sender may perform `action`. `Ok(())` means yes; the errors
/// are the standard `AccessDenied` and `InteractiveAuthorizationRequired`.
pub async fn authorize(
    conn: &Connection,
    header: &Header<'_>,
    caller: &Caller,
    action: &str,
) -> fdo::Result<()> {
    authorize_with(conn, header, caller, action, &[]).await
}

/// [`authorize`] with polkit details: what the call acts on, for rules
/// (`action.lookup(KEY)`) and for the authentication prompt (`$(KEY)` in the message).
pub async fn authorize_with(
    conn: &Connection,
    header: &Header<'_>,
    caller: &Caller,
    action: &str,
    details: &[(&str, String)],
) -> fdo::Result<()> {
    if caller.uid == 0 {
        return Ok(());
    }
    let subject = Subject::new_for_message_header(header)
        .map_err(|e| fdo::Error::AccessDenied(format!("cannot identify the caller: {e}")))?;
    let flags = if caller.interactive {
        CheckAuthorizationFlags::ALLOW_USER_INTERACTION
    } else {
        CheckAuthorizationFlags::empty()
    };
    let timeout = if caller.interactive {
        INTERACTIVE_TIMEOUT
    } else {
        CHECK_TIMEOUT
    };
    let details: HashMap<&str, &str> = details.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let check = async {
        let authority = AuthorityProxy::new(conn).await?;
        authority
            .check_authorization(&subject, action, &details, flags, "")
            .await
    };
    let result = match tokio::time::timeout(timeout, check).await {
        Err(_) => {
            tracing::warn!(action, caller = %caller.bus_name, "polkit did not answer in time; denying");
            return Err(fdo::Error::AccessDenied(format!(
                "polkit did not answer within {} s; denied",
                timeout.as_secs()
            )));
        }
        Ok(Err(e)) => {
            tracing::warn!(action, caller = %caller.bus_name, error = %e, "polkit check failed; denying");
            return Err(fdo::Error::AccessDenied(format!(
                "cannot check authorization with polkit ({e}); denied. Is polkitd running?"
            )));
        }
        Ok(Ok(result)) => result,
    };
    decide(action, result.is_authorized, result.is_challenge, caller)
}

/// Turns polkit's answer into ours.
fn decide(action: &str, authorized: bool, challenge: bool, caller: &Caller) -> fdo::Result<()> {
    if authorized {
        tracing::info!(action, uid = caller.uid, caller = %caller.bus_name, "authorized");
        return Ok(());
    }
    tracing::info!(action, uid = caller.uid, caller = %caller.bus_name, challenge, "not authorized");
    if challenge && !caller.interactive {
        return Err(fdo::Error::InteractiveAuthorizationRequired(format!(
            "{action} needs authentication; allow it (drop --no-ask-password) or install a polkit rule \
             such as /usr/share/doc/kvmisolate/50-kvmisolate.rules.example"
        )));
    }
    Err(fdo::Error::AccessDenied(format!(
        "polkit denied {action} to uid {}; an administrator can grant it with a polkit rule \
         (see /usr/share/doc/kvmisolate/50-kvmisolate.rules.example)",
        caller.uid
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(interactive: bool) -> Caller {
        Caller {
            bus_name: ":1.5".into(),
            uid: 1000,
            interactive,
        }
    }

    #[test]
    fn decisions() {
        assert!(decide("a", true, false, &caller(false)).is_ok());
        assert!(matches!(
            decide("a", false, true, &caller(false)),
            Err(fdo::Error::InteractiveAuthorizationRequired(_))
        ));
        assert!(matches!(
            decide("a", false, true, &caller(true)),
            Err(fdo::Error::AccessDenied(_))
        ));
        assert!(matches!(
            decide("a", false, false, &caller(false)),
            Err(fdo::Error::AccessDenied(_))
        ));
    }
}
