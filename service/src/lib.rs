//! `kvmisolated`: the system service that isolates CPUs with cgroup v2 cpuset partitions.
//!
//! The daemon is a library plus a thin binary, in layers (a request goes down them in this
//! order):
//!
//! - [`bus`]: the D-Bus edge: objects, request validation, authorization (polkit); the only
//!   place zbus types live;
//! - [`daemon`]: the orchestrator (target resolution, isolate/release with rollback, health),
//!   the lease registry, systemd, event sources, kernel threads;
//! - [`engine`]: the model, the pure plan, the journal, apply/release/replay;
//! - [`tunings`]: host tunings reconciled with the active isolations, journal first;
//! - [`host`]: the host's CPUs, cgroupfs, kernel features, memory;
//! - [`libvirt`]: libvirt domains isolated in place; [`config`]: the configuration file;
//!   [`timing`]: per-phase timing events; [`test_hooks`]: the test hooks, all in one type.
//!
//! Data flow: D-Bus request → authorization → [`engine::plan::plan`] → [`engine::apply`] →
//! report.

pub mod bus;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod host;
pub mod libvirt;
pub mod test_hooks;
pub mod timing;
pub mod tunings;

#[cfg(test)]
pub(crate) mod testutil;
