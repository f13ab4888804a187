//! The engine's errors as `org.kvmisolate.Error.*` replies: the one place a kind gets its
//! D-Bus name.

use kvmisolate_dbus::Error as DBus;

use crate::engine::error::Error;

impl From<Error> for DBus {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidCpuList(m) => DBus::InvalidCpuList(m),
            Error::CpuNotAvailable(m) => DBus::CpuNotAvailable(m),
            Error::CpusBusy(m) => DBus::CpusBusy(m),
            Error::HousekeepingTooSmall(m) => DBus::HousekeepingTooSmall(m),
            Error::CpuReserved(m) => DBus::CpuReserved(m),
            Error::InvalidName(m) => DBus::InvalidName(m),
            Error::NameExists(m) => DBus::NameExists(m),
            Error::NoSuchIsolation(m) => DBus::NoSuchIsolation(m),
            Error::TargetNotFound(m) => DBus::TargetNotFound(m),
            Error::UnsupportedHost(m) => DBus::UnsupportedHost(m),
            Error::PartitionRejected(m) => DBus::PartitionRejected(m),
            Error::InvalidOption(m) => DBus::InvalidOption(m),
            Error::TuningFailed(m) => DBus::TuningFailed(m),
            Error::Failed(m) => DBus::Failed(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind(m: &str) -> Vec<Error> {
        let m = m.to_owned();
        vec![
            Error::InvalidCpuList(m.clone()),
            Error::CpuNotAvailable(m.clone()),
            Error::CpusBusy(m.clone()),
            Error::HousekeepingTooSmall(m.clone()),
            Error::CpuReserved(m.clone()),
            Error::InvalidName(m.clone()),
            Error::NameExists(m.clone()),
            Error::NoSuchIsolation(m.clone()),
            Error::TargetNotFound(m.clone()),
            Error::UnsupportedHost(m.clone()),
            Error::PartitionRejected(m.clone()),
            Error::InvalidOption(m.clone()),
            Error::TuningFailed(m.clone()),
            Error::Failed(m),
        ]
    }

    /// Each kind gets the D-Bus name of the same word, the sentence unchanged, and the engine's
    /// text (quoted inside other messages) is the one the D-Bus error always had.
    #[test]
    fn kinds_keep_their_names_and_texts() {
        use zbus::DBusError;
        for e in every_kind("CPU 3 is held by \"vm1\"") {
            let kind = format!("{e:?}");
            let kind = kind.split('(').next().unwrap_or_default().to_owned();
            let text = e.to_string();
            let debug = format!("{e:?}");
            let d = DBus::from(e);
            assert_eq!(d.name().as_str(), format!("org.kvmisolate.Error.{kind}"));
            assert_eq!(d.description(), Some("CPU 3 is held by \"vm1\""));
            assert_eq!(d.to_string(), text);
            assert_eq!(format!("{d:?}"), debug);
        }
    }
}
