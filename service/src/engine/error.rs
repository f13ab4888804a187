//! The engine's errors: what went wrong, by kind, with the sentence a user reads.
//!
//! The service below the D-Bus edge (daemon, engine, tunings, host readers) speaks this type;
//! [`crate::bus::error`] turns each kind into its `org.kvmisolate.Error.*` name, and only there.

/// An error of the service's work, by kind; each carries a human sentence naming the problem
/// and, where there is one, the fix.
///
/// Displayed as it always was on the bus (`org.kvmisolate.Error.Kind: sentence`), so that a
/// message quoting another error reads the same; the reply itself is built in [`crate::bus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The cpulist cannot be parsed.
    #[error("org.kvmisolate.Error.InvalidCpuList: {0}")]
    InvalidCpuList(String),
    /// A CPU does not exist or is offline.
    #[error("org.kvmisolate.Error.CpuNotAvailable: {0}")]
    CpuNotAvailable(String),
    /// A CPU is already held by another isolation.
    #[error("org.kvmisolate.Error.CpusBusy: {0}")]
    CpusBusy(String),
    /// Fewer than the configured minimum of housekeeping CPUs would remain (or none at all).
    #[error("org.kvmisolate.Error.HousekeepingTooSmall: {0}")]
    HousekeepingTooSmall(String),
    /// CPU 0 is reserved for the host by configuration.
    #[error("org.kvmisolate.Error.CpuReserved: {0}")]
    CpuReserved(String),
    /// The name is not 1-64 characters of `[A-Za-z0-9_.-]`.
    #[error("org.kvmisolate.Error.InvalidName: {0}")]
    InvalidName(String),
    /// An isolation of that name exists already.
    #[error("org.kvmisolate.Error.NameExists: {0}")]
    NameExists(String),
    /// No isolation of that name.
    #[error("org.kvmisolate.Error.NoSuchIsolation: {0}")]
    NoSuchIsolation(String),
    /// The unit, process or domain to isolate was not found.
    #[error("org.kvmisolate.Error.TargetNotFound: {0}")]
    TargetNotFound(String),
    /// The host cannot do partitions (cgroup v1 or hybrid, no cpuset controller, too old).
    #[error("org.kvmisolate.Error.UnsupportedHost: {0}")]
    UnsupportedHost(String),
    /// The kernel marked the partition invalid; the message carries its reason.
    #[error("org.kvmisolate.Error.PartitionRejected: {0}")]
    PartitionRejected(String),
    /// An option key is unknown, has the wrong type, or a bad value.
    #[error("org.kvmisolate.Error.InvalidOption: {0}")]
    InvalidOption(String),
    /// A host tuning could not be applied; everything was rolled back.
    #[error("org.kvmisolate.Error.TuningFailed: {0}")]
    TuningFailed(String),
    /// Anything else (an I/O error on cgroupfs, systemd refusing a request...).
    #[error("org.kvmisolate.Error.Failed: {0}")]
    Failed(String),
}

impl Error {
    /// Appends `extra` to the message, keeping the kind.
    pub fn with_context(self, extra: &str) -> Self {
        let add = |m: String| format!("{m}; {extra}");
        match self {
            Self::InvalidCpuList(m) => Self::InvalidCpuList(add(m)),
            Self::CpuNotAvailable(m) => Self::CpuNotAvailable(add(m)),
            Self::CpusBusy(m) => Self::CpusBusy(add(m)),
            Self::HousekeepingTooSmall(m) => Self::HousekeepingTooSmall(add(m)),
            Self::CpuReserved(m) => Self::CpuReserved(add(m)),
            Self::InvalidName(m) => Self::InvalidName(add(m)),
            Self::NameExists(m) => Self::NameExists(add(m)),
            Self::NoSuchIsolation(m) => Self::NoSuchIsolation(add(m)),
            Self::TargetNotFound(m) => Self::TargetNotFound(add(m)),
            Self::UnsupportedHost(m) => Self::UnsupportedHost(add(m)),
            Self::PartitionRejected(m) => Self::PartitionRejected(add(m)),
            Self::InvalidOption(m) => Self::InvalidOption(add(m)),
            Self::TuningFailed(m) => Self::TuningFailed(add(m)),
            Self::Failed(m) => Self::Failed(add(m)),
        }
    }
}

impl From<kvmisolate_dbus::CpuListError> for Error {
    fn from(e: kvmisolate_dbus::CpuListError) -> Self {
        Self::InvalidCpuList(e.to_string())
    }
}

impl From<kvmisolate_dbus::isolation_name::NameError> for Error {
    fn from(e: kvmisolate_dbus::isolation_name::NameError) -> Self {
        Self::InvalidName(e.to_string())
    }
}
