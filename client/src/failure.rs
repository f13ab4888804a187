//! Failures, their exit codes and the messages that name the problem and the fix.

use std::fmt;

use kvmisolate_dbus::error::name;
use zbus::DBusError as _;

/// The failure exit codes of the CLI contract (docs/ARCHITECTURE.md); success is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// 1: any other failure.
    Other = 1,
    /// 2: usage error.
    Usage = 2,
    /// 3: bad request (cpu list, name, option, CPUs busy, housekeeping, reserved, name exists).
    BadRequest = 3,
    /// 4: not authorized.
    NotAuthorized = 4,
    /// 5: no such isolation, target not found.
    NotFound = 5,
    /// 6: the host cannot do it.
    HostCannot = 6,
    /// 7: the service is unreachable.
    Unreachable = 7,
    /// 8: `check` found warnings (and no errors).
    CheckWarnings = 8,
    /// 9: `check` found errors.
    CheckErrors = 9,
}

/// A failure to report: `kvmisolate: <message>` on stderr and an exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit code.
    pub code: ExitCode,
    /// The message, without the `kvmisolate: ` prefix.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Exit code 1.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Other, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The polkit rule example shipped with kvmisolate.
pub const RULES_EXAMPLE: &str = "/usr/share/doc/kvmisolate/50-kvmisolate.rules.example";

/// The exit code for a D-Bus error name.
pub fn exit_code_for(error_name: &str) -> ExitCode {
    match error_name {
        name::INVALID_CPU_LIST
        | name::CPU_NOT_AVAILABLE
        | name::CPUS_BUSY
        | name::HOUSEKEEPING_TOO_SMALL
        | name::CPU_RESERVED
        | name::INVALID_NAME
        | name::NAME_EXISTS
        | name::INVALID_OPTION => ExitCode::BadRequest,
        name::ACCESS_DENIED | name::INTERACTIVE_AUTHORIZATION_REQUIRED => ExitCode::NotAuthorized,
        name::NO_SUCH_ISOLATION | name::TARGET_NOT_FOUND => ExitCode::NotFound,
        name::UNSUPPORTED_HOST | name::PARTITION_REJECTED | name::TUNING_FAILED => {
            ExitCode::HostCannot
        }
        n if is_unreachable_name(n) => ExitCode::Unreachable,
        _ => ExitCode::Other,
    }
}

/// Whether a D-Bus error name means "nobody answers for the service".
fn is_unreachable_name(error_name: &str) -> bool {
    matches!(
        error_name,
        "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner"
            | "org.freedesktop.DBus.Error.NoServer"
            | "org.freedesktop.DBus.Error.Disconnected"
            | "org.freedesktop.DBus.Error.FileNotFound"
            | "org.freedesktop.systemd1.NoSuchUnit"
    ) || error_name.starts_with("org.freedesktop.DBus.Error.Spawn.")
}

/// Where the CLI talks to, for messages.
#[derive(Debug, Clone, Copy)]
pub struct BusDescription<'a> {
    /// `--address`, if given.
    pub address: Option<&'a str>,
}

impl BusDescription<'_> {
    fn unreachable_hint(&self) -> String {
        match self.address {
            None => "is kvmisolated installed? See: systemctl status kvmisolated".to_owned(),
            Some(a) => format!("is kvmisolated running on {a}?"),
        }
    }

    fn bus(&self) -> String {
        match self.address {
            None => "the system bus".to_owned(),
            Some(a) => a.to_owned(),
        }
    }
}

/// The message (and hint) for a D-Bus error reply.
pub fn message_for(error_name: &str, description: Option<&str>, bus: BusDescription<'_>) -> String {
    let desc = description.filter(|d| !d.is_empty());
    let said = desc.unwrap_or(error_name);
    match error_name {
        name::ACCESS_DENIED => format!(
            "not authorized ({error_name}): {said}. To allow a group without a password, install the polkit \
             rule {RULES_EXAMPLE} in /etc/polkit-1/rules.d/ (or run as root)"
        ),
        name::INTERACTIVE_AUTHORIZATION_REQUIRED => format!(
            "authentication is required ({error_name}: {said}); run without --no-ask-password on a terminal, \
             or install the polkit rule {RULES_EXAMPLE} in /etc/polkit-1/rules.d/"
        ),
        name::NO_SUCH_ISOLATION => format!("{said} (kvmisolate status lists the isolations)"),
        name::CPUS_BUSY => format!("{said} (kvmisolate status shows who holds them)"),
        name::NAME_EXISTS => {
            format!("{said} (choose another --name, or kvmisolate release NAME first)")
        }
        name::UNSUPPORTED_HOST => {
            format!("{said} (kvmisolate status shows what this kernel supports)")
        }
        n if is_unreachable_name(n) => format!(
            "cannot reach kvmisolated (org.kvmisolate.Isolator1 on {}): {said}; {}",
            bus.bus(),
            bus.unreachable_hint()
        ),
        "org.freedesktop.DBus.Error.NoReply" | "org.freedesktop.DBus.Error.Timeout" => {
            format!("kvmisolated did not answer in time: {said}")
        }
        n if n.starts_with(kvmisolate_dbus::names::ERROR_PREFIX) => said.to_owned(),
        n => match desc {
            Some(d) => format!("{n}: {d}"),
            None => n.to_owned(),
        },
    }
}

/// Turns a zbus error from talking to the service into a failure.
pub fn from_zbus(e: &zbus::Error, bus: BusDescription<'_>) -> Failure {
    match e {
        zbus::Error::MethodError(n, desc, _) => reply_failure(n.as_str(), desc.as_deref(), bus),
        zbus::Error::FDO(fdo) => reply_failure(fdo.name().as_str(), fdo.description(), bus),
        zbus::Error::DBus(err) => reply_failure(err.name().as_str(), err.description(), bus),
        zbus::Error::Connection(..)
        | zbus::Error::InputOutput(_)
        | zbus::Error::Handshake(_)
        | zbus::Error::Address(_) => connect_failure(e, bus),
        other => Failure::other(format!("talking to kvmisolated failed: {other}")),
    }
}

/// The failure for a connection that could not be made (or broke).
pub fn connect_failure(e: &zbus::Error, bus: BusDescription<'_>) -> Failure {
    let message = match bus.address {
        None => format!(
            "cannot connect to the D-Bus system bus: {e}; is dbus running? See: systemctl status dbus"
        ),
        Some(a) => format!("cannot connect to D-Bus at {a}: {e}; is a bus listening there?"),
    };
    Failure::new(ExitCode::Unreachable, message)
}

fn reply_failure(error_name: &str, description: Option<&str>, bus: BusDescription<'_>) -> Failure {
    Failure::new(
        exit_code_for(error_name),
        message_for(error_name, description, bus),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_error_has_its_exit_code() {
        use kvmisolate_dbus::Error as E;
        let cases = [
            (E::InvalidCpuList(String::new()), 3),
            (E::CpuNotAvailable(String::new()), 3),
            (E::CpusBusy(String::new()), 3),
            (E::HousekeepingTooSmall(String::new()), 3),
            (E::CpuReserved(String::new()), 3),
            (E::InvalidName(String::new()), 3),
            (E::NameExists(String::new()), 3),
            (E::InvalidOption(String::new()), 3),
            (E::NoSuchIsolation(String::new()), 5),
            (E::TargetNotFound(String::new()), 5),
            (E::UnsupportedHost(String::new()), 6),
            (E::PartitionRejected(String::new()), 6),
            (E::TuningFailed(String::new()), 6),
            (E::Failed(String::new()), 1),
        ];
        for (e, code) in cases {
            assert_eq!(exit_code_for(e.name().as_str()) as u8, code, "{}", e.name());
        }
    }

    #[test]
    fn standard_errors() {
        assert_eq!(exit_code_for(name::ACCESS_DENIED), ExitCode::NotAuthorized);
        assert_eq!(
            exit_code_for(name::INTERACTIVE_AUTHORIZATION_REQUIRED),
            ExitCode::NotAuthorized
        );
        for n in [
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.freedesktop.DBus.Error.NameHasNoOwner",
            "org.freedesktop.DBus.Error.Spawn.ChildExited",
        ] {
            assert_eq!(exit_code_for(n), ExitCode::Unreachable, "{n}");
        }
        assert_eq!(
            exit_code_for("org.freedesktop.DBus.Error.UnknownMethod"),
            ExitCode::Other
        );
        assert_eq!(exit_code_for("com.example.Whatever"), ExitCode::Other);
    }

    #[test]
    fn messages_name_the_fix() {
        let sys = BusDescription { address: None };
        let m = message_for(name::ACCESS_DENIED, Some("Not authorized"), sys);
        assert!(m.contains(RULES_EXAMPLE), "{m}");
        let m = message_for("org.freedesktop.DBus.Error.ServiceUnknown", Some("x"), sys);
        assert!(m.contains("systemctl status kvmisolated"), "{m}");
        let m = message_for(name::CPU_NOT_AVAILABLE, Some("CPU 7 is offline"), sys);
        assert_eq!(m, "CPU 7 is offline");
        let m = message_for(name::FAILED, None, sys);
        assert_eq!(m, name::FAILED);
        let other = BusDescription {
            address: Some("unix:path=/t"),
        };
        let m = message_for("org.freedesktop.DBus.Error.NameHasNoOwner", None, other);
        assert!(m.contains("unix:path=/t"), "{m}");
    }

    #[test]
    fn fdo_errors_from_zbus() {
        let sys = BusDescription { address: None };
        let e = zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied("no".into())));
        assert_eq!(from_zbus(&e, sys).code, ExitCode::NotAuthorized);
        let e = zbus::Error::FDO(Box::new(zbus::fdo::Error::ServiceUnknown("gone".into())));
        assert_eq!(from_zbus(&e, sys).code, ExitCode::Unreachable);
        let e = zbus::Error::Address("bad".into());
        assert_eq!(from_zbus(&e, sys).code, ExitCode::Unreachable);
        let e = zbus::Error::InvalidReply;
        assert_eq!(from_zbus(&e, sys).code, ExitCode::Other);
    }
}
