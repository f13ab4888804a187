//! Well-known names and paths of the kvmisolate D-Bus API.

/// The well-known bus name the service owns on the system bus.
pub const BUS_NAME: &str = "org.kvmisolate.Isolator1";
/// The object path of the manager object.
pub const OBJECT_PATH: &str = "/org/kvmisolate/Isolator1";
/// The interface of the manager object.
pub const INTERFACE: &str = "org.kvmisolate.Isolator1";
/// The interface of each isolation object.
pub const ISOLATION_INTERFACE: &str = "org.kvmisolate.Isolation1";
/// The prefix of every isolation object's path; the encoded name follows.
pub const ISOLATION_PATH_PREFIX: &str = "/org/kvmisolate/Isolator1/isolation";
/// The prefix of every error name the service returns.
pub const ERROR_PREFIX: &str = "org.kvmisolate.Error";
/// The polkit action that guards `Isolate`.
pub const ACTION_ISOLATE: &str = "org.kvmisolate.isolate";
/// The polkit action that guards releasing another user's isolation.
pub const ACTION_RELEASE: &str = "org.kvmisolate.release";
/// The polkit action that guards `Isolate` of what is not the caller's own (another user's or
/// root's processes, system units, libvirt domains). Asked instead of [`ACTION_ISOLATE`].
pub const ACTION_ISOLATE_ANY: &str = "org.kvmisolate.isolate-any";
/// The polkit action that guards host-wide risk, asked in addition: RT throttling off and
/// hugepage pools beyond what the host can spare.
pub const ACTION_TUNE_HOST: &str = "org.kvmisolate.tune-host";
/// Isolation name prefixes only uid 0 may use (the libvirt hook's names).
pub const RESERVED_NAME_PREFIXES: &[&str] = &["libvirt-", "hugepages-"];
