//! `kvmisolated`: the system service that isolates CPUs with cgroup v2 cpuset partitions.
//!
//! The daemon is a library plus a thin binary. The library holds the partition engine:
//!
//! - [`host`]: the host's CPUs (present, online, possible);
//! - [`cgroupfs`]: cgroup attribute files under an injectable root, every write read back;
//! - [`kernel`]: what the running kernel supports, detected from the files that exist;
//! - [`plan`]: pure planning: a request plus a snapshot of the host becomes a list of steps,
//!   or a contract [`kvmisolate_dbus::Error`] that names the problem and the fix;
//! - [`journal`]: one crash-safe JSON record per isolation under the run directory;
//! - [`apply`]: performs a plan step by step (journal first), rolls back on failure, releases
//!   isolations and replays the journal at start-up;
//! - [`tunings`]: host tunings (IRQs, workqueues, sysctls, THP, hugepages...) reconciled with
//!   the active isolations, journal first, restored exactly.
//!
//! and the D-Bus side:
//!
//! - [`request`]: the validation of `Isolate` arguments;
//! - the [`polkit`] module: authorization;
//! - [`backend`]: glue from requests to the engine, health of isolations;
//! - [`systemd`], [`systemd_effects`]: transient scopes and unit properties;
//! - [`keeper`]: the slice that keeps `+cpuset` on above a unit target that is not delegated;
//! - [`watch`]: inotify on partition and `cgroup.events` files;
//! - [`hotplug`]: CPU hotplug uevents;
//! - [`kthreads`]: unbound kernel threads kept off isolated CPUs, restored exactly after;
//! - [`kthread_ledger`]: what [`kthreads`] narrowed, kept in a file for the restore;
//! - [`isolator`]: the `org.kvmisolate.Isolator1`/`Isolation1` objects.
//!
//! Data flow: D-Bus request → authorization → [`plan::plan`] → [`apply::apply`] → report.

pub mod apply;
pub mod authz;
pub mod backend;
pub mod cgroupfs;
pub mod config;
pub mod host;
pub mod hotplug;
pub mod isolator;
pub mod journal;
pub mod keeper;
pub mod kernel;
pub mod kthread_ledger;
pub mod kthreads;
pub mod libvirt;
pub mod meminfo;
pub mod ownership;
pub mod plan;
pub mod polkit;
pub mod presets;
pub mod request;
pub mod systemd;
pub mod systemd_effects;
pub mod tunings;
pub mod watch;

#[cfg(test)]
pub(crate) mod testutil;
