//! Client proxies for `org.kvmisolate.Isolator1` and `org.kvmisolate.Isolation1`.

use std::collections::HashMap;

use zbus::{OwnedObjectPath, OwnedVariant, Variant, proxy};

/// The manager object: create, release and list isolations.
#[proxy(
    interface = "org.kvmisolate.Isolator1",
    default_service = "org.kvmisolate.Isolator1",
    default_path = "/org/kvmisolate/Isolator1"
)]
pub trait Isolator1 {
    /// Creates an isolation of `cpus` named `name`; see the crate's `options` module.
    fn isolate(
        &self,
        name: &str,
        cpus: &str,
        options: HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;

    /// Starts the configuration's preset `name` (`[isolation.NAME]` with a unit or
    /// libvirt domain), authorized like `Isolate` of that target.
    fn start_preset(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// Releases the isolation `name`, restoring everything it changed.
    fn release(&self, name: &str) -> zbus::Result<()>;

    /// Releases every isolation.
    fn release_all(&self) -> zbus::Result<()>;

    /// Everything in one dictionary; see the crate's `status` module for keys.
    fn status(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;

    /// Emitted when an isolation ends, with why (`released`, `target-exited`,
    /// `caller-disconnected`, `restored-after-restart`...).
    #[zbus(signal)]
    fn released(&self, name: &str, path: zbus::ObjectPath<'_>, reason: &str) -> zbus::Result<()>;

    /// CPUs held by active isolations (cpulist).
    #[zbus(property)]
    fn isolated_cpus(&self) -> zbus::Result<String>;

    /// Online CPUs left to the host (cpulist).
    #[zbus(property)]
    fn housekeeping_cpus(&self) -> zbus::Result<String>;

    /// The isolation objects.
    #[zbus(property)]
    fn isolations(&self) -> zbus::Result<Vec<OwnedObjectPath>>;

    /// The configured presets: (name, CPUs, target, profile, can start now, why not).
    #[zbus(property)]
    fn presets(&self) -> zbus::Result<Vec<(String, String, String, String, bool, String)>>;

    /// What the kernel supports (see the `status` module's `K_*` keys).
    #[zbus(property)]
    fn kernel_support(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
}

/// One isolation (a lease).
#[proxy(
    interface = "org.kvmisolate.Isolation1",
    default_service = "org.kvmisolate.Isolator1"
)]
pub trait Isolation1 {
    /// Releases this isolation.
    fn release(&self) -> zbus::Result<()>;

    /// The isolation's name.
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;

    /// The isolated CPUs (cpulist).
    #[zbus(property)]
    fn cpus(&self) -> zbus::Result<String>;

    /// What was isolated: `unit:NAME` or `pids:N,N...` (scope `kvmisolate-NAME.scope`).
    #[zbus(property)]
    fn target(&self) -> zbus::Result<String>;

    /// `isolated` or `root`.
    #[zbus(property)]
    fn partition(&self) -> zbus::Result<String>;

    /// `active` or `degraded`.
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;

    /// Why the state is what it is (the kernel's reason when degraded); empty when active.
    #[zbus(property)]
    fn state_reason(&self) -> zbus::Result<String>;

    /// The uid of the caller that created it.
    #[zbus(property)]
    fn owner_uid(&self) -> zbus::Result<u32>;

    /// Creation time, microseconds since the Unix epoch.
    #[zbus(property)]
    fn created(&self) -> zbus::Result<u64>;

    /// When it ends by itself: `target-exits`, `caller-disconnects` or `released`.
    #[zbus(property)]
    fn release_when(&self) -> zbus::Result<String>;

    /// The tuning profile: `none`, `default`, `realtime` or `custom`.
    #[zbus(property)]
    fn profile(&self) -> zbus::Result<String>;

    /// Each selected host tuning: (name, state, reason, original, current).
    #[zbus(property)]
    fn tunings(&self) -> zbus::Result<Vec<(String, String, String, String, String)>>;
}
