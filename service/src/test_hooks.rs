//! Test hooks: the one place the test suites may bend the service's behaviour.
//!
//! A [`TestHooks`] is built once at start-up by [`TestHooks::from_env`] (in `main.rs`) from
//! the variables and the flag below, and handed to who acts on it (the orchestrator, the
//! engine's `apply`, the tunings). Its fields are private: production code cannot enable a
//! hook any other way, and [`TestHooks::none`] (the default) enables none. They are harmless
//! in production because only root sets a system service's environment and command line.
//!
//! | Variable / flag | Effect |
//! |---|---|
//! | `KVMISOLATED_CRASH_AFTER_STEP=N` | SIGKILL right after performing the N-th journalled step of an `Isolate` (1-based), before it is marked done |
//! | `KVMISOLATED_CRASH_AFTER_TUNING=N` | SIGKILL right after the N-th tuning file write |
//! | `--test-fake-kernel` | the cgroup root is a plain directory in which kernel behaviour is emulated; kernel threads are not followed and process ownership skips pidfds |
//! | `KVMISOLATED_TEST_FAKE_REJECT=REASON` | with `--test-fake-kernel` only: the emulated kernel makes every new partition invalid for REASON |
//! | `KVMISOLATED_TEST_LIBVIRT_RUN_DIR=DIR` | with `--test-fake-kernel` only: libvirt's QEMU pid files are read from DIR |

use std::path::{Path, PathBuf};

/// The test hooks in effect (none in production); see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    crash_after_step: Option<usize>,
    crash_after_tuning: Option<usize>,
    fake_kernel: bool,
    fake_reject: Option<String>,
    libvirt_run_dir: Option<PathBuf>,
    /// Unit tests: return an error where a crash would happen instead of killing the process.
    #[cfg(test)]
    simulate_crash: bool,
}

impl TestHooks {
    /// No hook.
    pub fn none() -> Self {
        Self::default()
    }

    /// The hooks the environment names (and `--test-fake-kernel`, given as `fake_kernel`);
    /// the `KVMISOLATED_TEST_*` variables count only with the fake kernel. A number that does
    /// not parse enables nothing.
    pub fn from_env(fake_kernel: bool) -> Self {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        Self {
            crash_after_step: number("KVMISOLATED_CRASH_AFTER_STEP"),
            crash_after_tuning: number("KVMISOLATED_CRASH_AFTER_TUNING"),
            fake_kernel,
            fake_reject: fake_kernel
                .then(|| std::env::var("KVMISOLATED_TEST_FAKE_REJECT").ok())
                .flatten(),
            libvirt_run_dir: fake_kernel
                .then(|| std::env::var_os("KVMISOLATED_TEST_LIBVIRT_RUN_DIR").map(PathBuf::from))
                .flatten(),
            #[cfg(test)]
            simulate_crash: false,
        }
    }

    /// Whether the cgroup root is an emulated kernel (`--test-fake-kernel`).
    pub fn fake_kernel(&self) -> bool {
        self.fake_kernel
    }

    /// The reason the emulated kernel gives every new partition (`KVMISOLATED_TEST_FAKE_REJECT`).
    pub fn fake_reject(&self) -> Option<&str> {
        self.fake_reject.as_deref()
    }

    /// Where libvirt's QEMU pid files are, in the emulated mode (`KVMISOLATED_TEST_LIBVIRT_RUN_DIR`).
    pub fn libvirt_run_dir(&self) -> Option<&Path> {
        self.libvirt_run_dir.as_deref()
    }

    /// Called after the n-th step of an `Isolate` is performed (1-based).
    pub(crate) fn step_performed(&self, n: usize) {
        if self.crash_after_step == Some(n) {
            tracing::warn!(step = n, "KVMISOLATED_CRASH_AFTER_STEP: killing myself");
            kill_myself();
        }
    }

    /// Called after the n-th tuning file write (1-based); `Err` is a simulated crash (unit
    /// tests only).
    pub(crate) fn tuning_written(&self, n: usize) -> Result<(), String> {
        if self.crash_after_tuning == Some(n) {
            #[cfg(test)]
            if self.simulate_crash {
                return Err(format!("simulated crash after write {n}"));
            }
            tracing::warn!(write = n, "KVMISOLATED_CRASH_AFTER_TUNING: killing myself");
            kill_myself();
        }
        Ok(())
    }

    /// Unit tests: a simulated crash (an error, not a kill) after the n-th tuning write.
    #[cfg(test)]
    pub(crate) fn simulated_crash_after_tuning(n: usize) -> Self {
        Self {
            crash_after_tuning: Some(n),
            simulate_crash: true,
            ..Self::default()
        }
    }
}

fn kill_myself() {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
}
