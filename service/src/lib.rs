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
//!   [`timing`]: per-phase timing events.
//!
//! Data flow: D-Bus request → authorization → [`plan::plan`] → [`apply`] → report.

pub mod bus;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod host;
pub mod libvirt;
pub mod test_hooks;
pub mod timing;
pub mod tunings;

// The modules' paths from before the layers, so that code reads the same across the move.
pub use bus::{authz, isolator, polkit, request};
pub use daemon::{
    hotplug, keeper, kthread_ledger, kthreads, ownership, presets, registry, systemd,
    systemd_effects, watch,
};
pub use engine::{apply, journal, plan};
pub use host::{cgroupfs, kernel, meminfo};

#[cfg(test)]
pub(crate) mod testutil;
