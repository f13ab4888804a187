//! The D-Bus contract shared by `kvmisolated` (the service) and `kvmisolate` (the CLI).
//!
//! Everything a client needs to talk to the service lives here, so that desktop extensions
//! and scripts can code against one definition:
//!
//! - [`names`]: the bus name, object paths and interface names;
//! - [`cpulist`]: the kernel cpulist format (`2-5`, `3,5,7-9`) as a validated [`CpuSet`];
//! - [`isolation_name`]: validation of isolation names and their object paths;
//! - [`options`]: the keys and values of the `Isolate` options dictionary;
//! - [`status`]: the keys of the `Status()` dictionary;
//! - [`target`]: the text of an isolation's target (`unit:NAME`, `pids:1,2`, ...);
//! - [`tunings`]: host tuning names, profiles and the hugepage request format;
//! - [`error`]: the `org.kvmisolate.Error.*` errors;
//! - [`proxy`]: `#[proxy]` traits for both interfaces;
//! - [`INTROSPECTION_XML`]: the committed introspection data the service must match.

pub mod cpulist;
pub mod error;
pub mod isolation_name;
pub mod libvirt;
pub mod names;
pub mod options;
pub mod proxy;
pub mod status;
pub mod target;
pub mod tunings;

pub use cpulist::{CpuListError, CpuSet};
pub use error::Error;
pub use isolation_name::IsolationName;

/// The introspection XML of both interfaces, as committed in `dbus/org.kvmisolate.Isolator1.xml`.
///
/// The service's tests compare what it serves against this text, so the contract cannot drift
/// silently.
pub const INTROSPECTION_XML: &str = include_str!("../org.kvmisolate.Isolator1.xml");
