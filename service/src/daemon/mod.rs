//! The service between the bus and the engine: the [`orchestrator`] (target resolution, the
//! engine and the tunings driven for an Isolate or a Release, health), the lease
//! [`registry`], whose target it is ([`ownership`]), systemd ([`systemd`], [`systemd_effects`],
//! [`keeper`]), the event sources ([`watch`], [`hotplug`]) and the kernel threads kept off
//! isolated CPUs ([`kthreads`], [`kthread_ledger`]).

pub mod hotplug;
pub mod keeper;
pub mod kthread_ledger;
pub mod kthreads;
pub mod orchestrator;
pub mod ownership;
pub mod presets;
pub mod registry;
pub mod systemd;
pub mod systemd_effects;
pub mod watch;
