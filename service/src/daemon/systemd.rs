//! systemd over D-Bus: the transient scope of a `pids` target, a unit's cgroup, moving
//! processes back to their unit, and runtime unit properties.
//!
//! kvmisolate respects systemd's single-writer rule: it creates its own delegated scope rather
//! than cgroups under systemd's tree, and it asks systemd (not cgroupfs) to move processes
//! between units.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use zbus::{Connection, OwnedObjectPath, Variant, proxy};

/// The slice holding kvmisolate's own scopes.
pub const SLICE: &str = "kvmisolate.slice";
/// How long to wait for systemd to run a start/stop job.
const JOB_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors from talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// A D-Bus call failed.
    #[error("systemd: {0}")]
    Bus(#[from] zbus::Error),
    /// A standard-interface call failed.
    #[error("systemd: {0}")]
    Fdo(#[from] zbus::fdo::Error),
    /// systemd has no such unit loaded.
    #[error("no systemd unit {0:?} is loaded")]
    NoSuchUnit(String),
    /// A job did not finish in time or failed.
    #[error("systemd job for {unit} ended with {result:?}")]
    Job {
        /// The unit.
        unit: String,
        /// systemd's result word (`done`, `failed`, `timeout`...).
        result: String,
    },
}

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Variant<'_>)],
        aux: &[(&str, &[(&str, Variant<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn attach_processes_to_unit(
        &self,
        unit: &str,
        subcgroup: &str,
        pids: &[u32],
    ) -> zbus::Result<()>;
    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, Variant<'_>)],
    ) -> zbus::Result<()>;
    #[zbus(name = "GetUnitByPID")]
    fn get_unit_by_pid(&self, pid: u32) -> zbus::Result<OwnedObjectPath>;
    fn reload(&self) -> zbus::Result<()>;
    fn try_restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: zbus::ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn fragment_path(&self) -> zbus::Result<String>;
}

/// systemd's manager, reached over `conn` (the system bus).
#[derive(Clone)]
pub struct Systemd {
    conn: Connection,
    /// Whether `Subscribe` was answered: systemd keeps a subscription for as long as the
    /// connection lives, so it is asked once, not before every job.
    subscribed: Arc<AtomicBool>,
}

impl Systemd {
    /// Wraps a connection to the bus systemd is on.
    pub fn new(conn: Connection) -> Self {
        Self {
            conn,
            subscribed: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn manager(&self) -> zbus::Result<ManagerProxy<'static>> {
        ManagerProxy::new(&self.conn).await
    }

    /// The manager, subscribed to its job signals, and a stream of `JobRemoved` opened before
    /// any job is queued (so its end cannot be missed).
    async fn manager_for_jobs(&self) -> zbus::Result<(ManagerProxy<'static>, JobRemovedStream)> {
        let manager = self.manager().await?;
        if !self.subscribed.load(Ordering::Relaxed) && manager.subscribe().await.is_ok() {
            self.subscribed.store(true, Ordering::Relaxed);
        }
        let removed = manager.receive_job_removed().await?;
        Ok((manager, removed))
    }

    /// The unit object at `path`, read one property at a time: a cached proxy would first
    /// fetch every property of the unit (`GetAll`, over a hundred, each computed by systemd)
    /// and add a match rule for their changes, for the one or two read here.
    async fn unit_proxy(&self, path: OwnedObjectPath) -> zbus::Result<UnitProxy<'static>> {
        UnitProxy::builder(&self.conn)
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
    }

    /// A property of a loaded unit's type-specific interface (`...systemd1.Service` etc.).
    async fn unit_property(
        &self,
        unit: &str,
        name: &str,
    ) -> Result<zbus::OwnedVariant, SystemdError> {
        let manager = self.manager().await?;
        let path = manager
            .get_unit(unit)
            .await
            .map_err(|e| no_such_unit(e, unit))?;
        let iface =
            unit_type_interface(unit).ok_or_else(|| SystemdError::NoSuchUnit(unit.to_owned()))?;
        let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination("org.freedesktop.systemd1")
            .path(path)
            .build()
            .await?;
        let iface_name = zbus::names::InterfaceName::try_from(iface)?;
        Ok(props.get(iface_name, name).await?)
    }

    /// The cgroup (relative to the cgroup root, without a leading `/`) of a loaded unit.
    pub async fn unit_cgroup(&self, unit: &str) -> Result<String, SystemdError> {
        let value = self.unit_property(unit, "ControlGroup").await?;
        let cgroup: String = String::try_from(value)?;
        if cgroup.is_empty() {
            return Err(SystemdError::NoSuchUnit(unit.to_owned()));
        }
        Ok(cgroup.trim_start_matches('/').to_owned())
    }

    /// The slice a loaded unit belongs to (`system.slice`; empty for the root slice).
    pub async fn unit_slice(&self, unit: &str) -> Result<String, SystemdError> {
        let value = self.unit_property(unit, "Slice").await?;
        Ok(String::try_from(value)?)
    }

    /// Whether a loaded unit is delegated with the cpuset controller (`Delegate=yes`, or a
    /// `DelegateControllers=` list naming cpuset): then systemd keeps `+cpuset` above it.
    pub async fn unit_delegates_cpuset(&self, unit: &str) -> Result<bool, SystemdError> {
        let delegate = self.unit_property(unit, "Delegate").await?;
        if !bool::try_from(delegate).unwrap_or(false) {
            return Ok(false);
        }
        let controllers = self.unit_property(unit, "DelegateControllers").await?;
        let controllers: Vec<String> = Vec::try_from(controllers).unwrap_or_default();
        Ok(controllers.iter().any(|c| c == "cpuset"))
    }

    /// The unit's `CPUSetPartition=` (systemd 261+): `Some(value)` when the unit sets it
    /// (then systemd writes its `cpuset.cpus.partition` on every realize, reload and
    /// set-property), `None` when it does not or when systemd has no such property (older
    /// systemd never writes the file).
    pub async fn unit_cpuset_partition(&self, unit: &str) -> Result<Option<String>, SystemdError> {
        let value = match self.unit_property(unit, "CPUSetPartition").await {
            Ok(v) => v,
            Err(SystemdError::NoSuchUnit(u)) => return Err(SystemdError::NoSuchUnit(u)),
            Err(_) => return Ok(None),
        };
        Ok(String::try_from(value).ok().filter(|v| !v.is_empty()))
    }

    /// Starts the transient slice `unit` with `AllowedMemoryNodes=` set to the nodes in
    /// `nodes_mask` (a keeper, see [`crate::daemon::keeper`]), and waits for the job.
    pub async fn start_keeper_slice(
        &self,
        unit: &str,
        description: &str,
        nodes_mask: &[u8],
    ) -> Result<(), SystemdError> {
        let (manager, mut removed) = self.manager_for_jobs().await?;
        let props: Vec<(&str, Variant<'_>)> = vec![
            ("Description", Variant::from(description)),
            ("AllowedMemoryNodes", Variant::from(nodes_mask.to_vec())),
        ];
        let job = manager
            .start_transient_unit(unit, "fail", &props, &[])
            .await?;
        wait_job(&mut removed, &job, unit).await
    }

    /// Starts the delegated transient scope `unit` in [`SLICE`] holding `pids`, and waits for
    /// the job. Returns the scope's cgroup (relative).
    pub async fn start_scope(
        &self,
        unit: &str,
        description: &str,
        pids: &[u32],
    ) -> Result<String, SystemdError> {
        let (manager, mut removed) = self.manager_for_jobs().await?;
        let props: Vec<(&str, Variant<'_>)> = vec![
            ("Description", Variant::from(description)),
            ("Slice", Variant::from(SLICE)),
            ("Delegate", Variant::from(true)),
            ("PIDs", Variant::from(pids.to_vec())),
            ("CollectMode", Variant::from("inactive-or-failed")),
        ];
        let job = manager
            .start_transient_unit(unit, "fail", &props, &[])
            .await?;
        wait_job(&mut removed, &job, unit).await?;
        Ok(format!("{}/{unit}", SLICE))
    }

    /// Stops `unit` (ignoring a unit that is already gone) and waits for the job.
    pub async fn stop_unit(&self, unit: &str) -> Result<(), SystemdError> {
        let (manager, mut removed) = self.manager_for_jobs().await?;
        match manager.stop_unit(unit, "replace").await {
            Ok(job) => wait_job(&mut removed, &job, unit).await,
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str().ends_with("NoSuchUnit") => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves `pids` into `unit`'s cgroup (or its `subcgroup`), the way systemd allows.
    pub async fn attach_processes(
        &self,
        unit: &str,
        subcgroup: &str,
        pids: &[u32],
    ) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .attach_processes_to_unit(unit, subcgroup, pids)
            .await?;
        Ok(())
    }

    /// Whether `unit` is loaded and active (or reloading/activating).
    pub async fn unit_active(&self, unit: &str) -> bool {
        let Ok(manager) = self.manager().await else {
            return false;
        };
        let Ok(path) = manager.get_unit(unit).await else {
            return false;
        };
        let Ok(proxy) = self.unit_proxy(path).await else {
            return false;
        };
        matches!(
            proxy.active_state().await.as_deref(),
            Ok("active" | "reloading" | "activating")
        )
    }

    /// The unit file defining a loaded unit (`Some("")` for one systemd made up, such as a
    /// slice a transient scope named; `None` when the unit is not loaded).
    pub async fn unit_fragment(&self, unit: &str) -> Result<Option<String>, SystemdError> {
        let manager = self.manager().await?;
        let path = match manager.get_unit(unit).await {
            Ok(p) => p,
            Err(e) => {
                return match no_such_unit(e, unit) {
                    SystemdError::NoSuchUnit(_) => Ok(None),
                    other => Err(other),
                };
            }
        };
        let proxy = self.unit_proxy(path).await?;
        Ok(Some(proxy.fragment_path().await?))
    }

    /// `systemctl daemon-reload`, then `systemctl try-restart unit` (waiting for the job): a
    /// changed drop-in takes effect.
    pub async fn reload_and_restart(&self, unit: &str) -> Result<(), SystemdError> {
        let (manager, mut removed) = self.manager_for_jobs().await?;
        manager.reload().await?;
        let job = manager.try_restart_unit(unit, "replace").await?;
        wait_job(&mut removed, &job, unit).await
    }

    /// The unit a process belongs to.
    pub async fn unit_of_pid(&self, pid: u32) -> Result<String, SystemdError> {
        let manager = self.manager().await?;
        let path = manager.get_unit_by_pid(pid).await?;
        let unit = self.unit_proxy(path).await?;
        Ok(unit.id().await?)
    }
}

async fn wait_job(
    removed: &mut JobRemovedStream,
    job: &OwnedObjectPath,
    unit: &str,
) -> Result<(), SystemdError> {
    let wait = async {
        while let Some(signal) = removed.next().await {
            let Ok(args) = signal.args() else { continue };
            if args.job().as_str() == job.as_str() {
                return if *args.result() == "done" {
                    Ok(())
                } else {
                    Err(SystemdError::Job {
                        unit: unit.to_owned(),
                        result: args.result().to_string(),
                    })
                };
            }
        }
        Err(SystemdError::Job {
            unit: unit.to_owned(),
            result: "connection closed".into(),
        })
    };
    tokio::time::timeout(JOB_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| {
            Err(SystemdError::Job {
                unit: unit.to_owned(),
                result: "timeout".into(),
            })
        })
}

fn no_such_unit(e: zbus::Error, unit: &str) -> SystemdError {
    match e {
        zbus::Error::MethodError(ref name, _, _) if name.as_str().ends_with("NoSuchUnit") => {
            SystemdError::NoSuchUnit(unit.to_owned())
        }
        other => SystemdError::Bus(other),
    }
}

/// The type-specific interface that carries `ControlGroup` for a unit name.
fn unit_type_interface(unit: &str) -> Option<&'static str> {
    let suffix = unit.rsplit_once('.')?.1;
    Some(match suffix {
        "service" => "org.freedesktop.systemd1.Service",
        "scope" => "org.freedesktop.systemd1.Scope",
        "slice" => "org.freedesktop.systemd1.Slice",
        "socket" => "org.freedesktop.systemd1.Socket",
        "mount" => "org.freedesktop.systemd1.Mount",
        "swap" => "org.freedesktop.systemd1.Swap",
        _ => return None,
    })
}

/// Whether the host runs systemd as its init (the check sd_booted() makes).
pub fn booted(root: &std::path::Path) -> bool {
    root.join("run/systemd/system").is_dir()
}

/// Validates a unit name given by a caller: systemd's characters, a known type, at most 255
/// bytes. Returns a sentence naming the problem.
pub fn validate_unit_name(unit: &str) -> Result<(), String> {
    if unit.is_empty() || unit.len() > kvmisolate_dbus::options::MAX_UNIT_LEN {
        return Err(format!(
            "unit name must be 1-{} characters",
            kvmisolate_dbus::options::MAX_UNIT_LEN
        ));
    }
    if !unit
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
    {
        return Err(format!("{unit:?} is not a valid systemd unit name"));
    }
    if unit_type_interface(unit).is_none() {
        return Err(format!(
            "{unit:?} has no cgroup of its own; give a .service, .scope or .slice unit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        assert!(validate_unit_name("machine-qemu\\x2d1\\x2dwin10.scope").is_ok());
        assert!(validate_unit_name("vm.service").is_ok());
        assert!(validate_unit_name("vm").is_err());
        assert!(validate_unit_name("../x.service").is_err());
        assert!(validate_unit_name("a b.service").is_err());
        assert!(validate_unit_name(&"a".repeat(300)).is_err());
        assert!(validate_unit_name("x.timer").is_err());
    }
}
