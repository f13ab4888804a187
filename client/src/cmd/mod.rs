//! The commands that talk to kvmisolated, one module each (`main.rs` only dispatches). The
//! libvirt hook's bus side is in `crate::hook::run`; `plan`, `check`, `bench` and `top` keep
//! their own directories.

pub mod check;
pub mod isolate;
pub mod monitor;
pub mod release;
pub mod run;
pub mod status;
pub mod top;

use crate::failure::Failure;

/// A signal handler that could not be installed, as a failure.
pub(crate) fn signal_failure(e: std::io::Error) -> Failure {
    Failure::other(format!("cannot install signal handlers: {e}"))
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
