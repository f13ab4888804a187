//! The `org.kvmisolate.Error.*` errors.
//!
//! Each variant carries a human sentence that names the problem and, where there is one, the
//! fix. Clients match on the error *name*; the sentence is for people.

use zbus::DBusError;

/// Every error the service returns besides the standard authorization errors
/// (`org.freedesktop.DBus.Error.AccessDenied`, `...InteractiveAuthorizationRequired`).
#[derive(DBusError, Debug, Clone, PartialEq)]
#[zbus(prefix = "org.kvmisolate.Error")]
pub enum Error {
    /// A D-Bus transport or protocol error.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The cpulist cannot be parsed.
    InvalidCpuList(String),
    /// A CPU does not exist or is offline.
    CpuNotAvailable(String),
    /// A CPU is already held by another isolation.
    CpusBusy(String),
    /// Fewer than the configured minimum of housekeeping CPUs would remain (or none at all).
    HousekeepingTooSmall(String),
    /// CPU 0 is reserved for the host by configuration.
    CpuReserved(String),
    /// The name is not 1-64 characters of `[A-Za-z0-9_.-]`.
    InvalidName(String),
    /// An isolation of that name exists already.
    NameExists(String),
    /// No isolation of that name.
    NoSuchIsolation(String),
    /// The unit, process or domain to isolate was not found.
    TargetNotFound(String),
    /// The host cannot do partitions (cgroup v1 or hybrid, no cpuset controller, too old).
    UnsupportedHost(String),
    /// The kernel marked the partition invalid; the message carries its reason.
    PartitionRejected(String),
    /// An option key is unknown, has the wrong type, or a bad value.
    InvalidOption(String),
    /// A host tuning could not be applied (e.g. the kernel allocated fewer hugepages than
    /// asked); everything was rolled back.
    TuningFailed(String),
    /// Anything else (an I/O error on cgroupfs, systemd refusing a request...).
    Failed(String),
}

/// The full D-Bus error names, for clients that match on them.
pub mod name {
    /// `org.kvmisolate.Error.InvalidCpuList`
    pub const INVALID_CPU_LIST: &str = "org.kvmisolate.Error.InvalidCpuList";
    /// `org.kvmisolate.Error.CpuNotAvailable`
    pub const CPU_NOT_AVAILABLE: &str = "org.kvmisolate.Error.CpuNotAvailable";
    /// `org.kvmisolate.Error.CpusBusy`
    pub const CPUS_BUSY: &str = "org.kvmisolate.Error.CpusBusy";
    /// `org.kvmisolate.Error.HousekeepingTooSmall`
    pub const HOUSEKEEPING_TOO_SMALL: &str = "org.kvmisolate.Error.HousekeepingTooSmall";
    /// `org.kvmisolate.Error.CpuReserved`
    pub const CPU_RESERVED: &str = "org.kvmisolate.Error.CpuReserved";
    /// `org.kvmisolate.Error.InvalidName`
    pub const INVALID_NAME: &str = "org.kvmisolate.Error.InvalidName";
    /// `org.kvmisolate.Error.NameExists`
    pub const NAME_EXISTS: &str = "org.kvmisolate.Error.NameExists";
    /// `org.kvmisolate.Error.NoSuchIsolation`
    pub const NO_SUCH_ISOLATION: &str = "org.kvmisolate.Error.NoSuchIsolation";
    /// `org.kvmisolate.Error.TargetNotFound`
    pub const TARGET_NOT_FOUND: &str = "org.kvmisolate.Error.TargetNotFound";
    /// `org.kvmisolate.Error.UnsupportedHost`
    pub const UNSUPPORTED_HOST: &str = "org.kvmisolate.Error.UnsupportedHost";
    /// `org.kvmisolate.Error.PartitionRejected`
    pub const PARTITION_REJECTED: &str = "org.kvmisolate.Error.PartitionRejected";
    /// `org.kvmisolate.Error.InvalidOption`
    pub const INVALID_OPTION: &str = "org.kvmisolate.Error.InvalidOption";
    /// `org.kvmisolate.Error.TuningFailed`
    pub const TUNING_FAILED: &str = "org.kvmisolate.Error.TuningFailed";
    /// `org.kvmisolate.Error.Failed`
    pub const FAILED: &str = "org.kvmisolate.Error.Failed";
    /// The standard error for a caller polkit refused.
    pub const ACCESS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
    /// The standard error for a caller that would need to authenticate but did not allow it.
    pub const INTERACTIVE_AUTHORIZATION_REQUIRED: &str =
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired";
}

impl From<crate::cpulist::CpuListError> for Error {
    fn from(e: crate::cpulist::CpuListError) -> Self {
        Self::InvalidCpuList(e.to_string())
    }
}

impl From<crate::isolation_name::NameError> for Error {
    fn from(e: crate::isolation_name::NameError) -> Self {
        Self::InvalidName(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_constants() {
        assert_eq!(
            Error::InvalidCpuList(String::new()).name().as_str(),
            name::INVALID_CPU_LIST
        );
        assert_eq!(
            Error::PartitionRejected(String::new()).name().as_str(),
            name::PARTITION_REJECTED
        );
        assert_eq!(Error::Failed(String::new()).name().as_str(), name::FAILED);
    }
}
