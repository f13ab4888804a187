//! Where an operation's time goes: one debug event per phase, of target `kvmisolated::timing`,
//! when the phase ends: `TIMING <op> <phase> <µs>` (and `COUNT <op> <what> <n>` for counts).
//! Off unless asked for (`KVMISOLATED_LOG=info,kvmisolated::timing=debug`); the VM benchmark
//! (`tests/vm/run --bench`) turns them on and prints the median of each phase.

use std::borrow::Cow;
use std::time::Instant;

/// The target of the timing events.
pub const TARGET: &str = "kvmisolated::timing";

/// One phase of the operation `op` in progress; its duration is logged when dropped.
#[must_use = "a phase is timed until it is dropped"]
pub struct Phase {
    op: &'static str,
    name: Cow<'static, str>,
    start: Option<Instant>,
}

/// Starts timing the phase `name` of `op` (nothing is measured when the events are off).
pub fn phase(op: &'static str, name: impl Into<Cow<'static, str>>) -> Phase {
    Phase {
        op,
        name: name.into(),
        start: tracing::enabled!(target: TARGET, tracing::Level::DEBUG).then(Instant::now),
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let us = start.elapsed().as_micros();
            tracing::debug!(target: TARGET, "TIMING {} {} {us}", self.op, self.name);
        }
    }
}

/// Logs a count for `op` (e.g. the journal files an Isolate read).
pub fn count(op: &'static str, what: &'static str, n: usize) {
    tracing::debug!(target: TARGET, "COUNT {op} {what} {n}");
}

/// Times the future `f` as the phase `name` of `op`.
pub async fn time_async<T>(
    op: &'static str,
    name: impl Into<Cow<'static, str>>,
    f: impl std::future::Future<Output = T>,
) -> T {
    let _p = phase(op, name);
    f.await
}

/// Times `f` as the phase `name` of `op`.
pub fn time<T>(op: &'static str, name: impl Into<Cow<'static, str>>, f: impl FnOnce() -> T) -> T {
    let _p = phase(op, name);
    f()
}
