//! The systemd side of an isolation, as journalled external steps
//! ([`crate::engine::model::ExternalStep`]) the engine performs and undoes like any other step:
//!
//! - `start-transient-scope`: kvmisolate's delegated scope for a `pids` target. Undo moves any
//!   process still in it back to the unit it came from, stops the scope, and stops
//!   `kvmisolate.slice` when that was the last cgroup in it and no unit file defines it (then
//!   stopping the slice alone stops both).
//!
//!   The stop runs after the undo returns, so a Release replies once the processes are back
//!   where they were: the emptied scope's stop job is systemd's slowest part of a Release
//!   (≈ 250 ms of 380 in the TCG benchmark) and changes nothing a user can see but an empty
//!   unit going away. The engine waits for it ([`ExternalEffects::settle`]) before its next
//!   read or change, and the daemon before it exits; a stop that fails is logged, and the
//!   next release of a scope stops the leftover empty slice with its own.
//! - `start-keeper-slice`: the keeper slice of a unit target that is not delegated
//!   ([`crate::daemon::keeper`]). Undo stops it (a keeper already gone is fine).
//!
//! The engine is synchronous and runs on a blocking thread; these calls hop back onto the
//! runtime with [`tokio::runtime::Handle::block_on`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::engine::Error;
use kvmisolate_dbus::IsolationName;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use crate::daemon::keeper::{self, KeeperData, START_KEEPER};
use crate::daemon::systemd::{self, Systemd};
use crate::engine::effects::ExternalEffects;
use crate::engine::model::ExternalStep;
use crate::host::cgroupfs::{CgroupFs, CgroupPath, cgroup_of_pid, pid_alive};

const START_SCOPE: &str = "start-transient-scope";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ScopeData {
    unit: String,
    description: String,
    pids: Vec<u32>,
    /// pid → (unit, cgroup) it was in before, filled in by `prepare`.
    #[serde(default)]
    origins: BTreeMap<String, (String, String)>,
}

/// The step that creates kvmisolate's scope `unit` for `pids`.
pub fn start_scope_step(unit: &str, name: &IsolationName, pids: &[u32]) -> ExternalStep {
    let data = ScopeData {
        unit: unit.to_owned(),
        description: format!("kvmisolate isolation {name}"),
        pids: pids.to_vec(),
        origins: BTreeMap::new(),
    };
    ExternalStep {
        kind: START_SCOPE.into(),
        data: serde_json::to_value(data).unwrap_or_default(),
    }
}

/// Performs the systemd steps.
pub struct SystemdEffects {
    systemd: Systemd,
    handle: Handle,
    cgroup_root: PathBuf,
    proc_root: PathBuf,
    /// The unit stops of the last scope undo, still running.
    stopping: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Failed(e.to_string())
}

fn parse<T: for<'de> Deserialize<'de>>(step: &ExternalStep) -> Result<T, Error> {
    serde_json::from_value(step.data.clone())
        .map_err(|e| failed(format!("bad {} step: {e}", step.kind)))
}

fn to_step<T: Serialize>(kind: &str, data: &T) -> Result<ExternalStep, Error> {
    Ok(ExternalStep {
        kind: kind.to_owned(),
        data: serde_json::to_value(data).map_err(failed)?,
    })
}

impl SystemdEffects {
    /// Effects through `systemd`, blocking on `handle`.
    pub fn new(systemd: Systemd, handle: Handle, cgroup_root: PathBuf, proc_root: PathBuf) -> Self {
        Self {
            systemd,
            handle,
            cgroup_root,
            proc_root,
            stopping: std::sync::Mutex::new(None),
        }
    }

    fn undo_scope(&self, data: &ScopeData) -> Result<(), Error> {
        let scope_cg = CgroupPath::new(systemd::SLICE)
            .and_then(|s| s.join(&data.unit))
            .map_err(failed)?;
        // Asked while the scope still holds its processes: once they leave, systemd is busy
        // with the emptied scope and a question to it waits behind that work (189 ms of a
        // 307 ms Release under TCG, measured). Nothing else adds to the slice meanwhile: the
        // engine runs one request at a time.
        let only = crate::timing::time("release", "scope-slice-check", || {
            self.slice_only_holds(&scope_cg)
        })?;
        let fs = CgroupFs::new(&self.cgroup_root);
        let mut stuck = Vec::new();
        for (pid, (unit, cgroup)) in &data.origins {
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if !pid_alive(&self.proc_root, pid) {
                continue;
            }
            // By path components: `vm.scope2/x` is not inside `vm.scope`.
            let in_scope = cgroup_of_pid(&self.proc_root, pid)
                .map(|c| c == scope_cg || scope_cg.is_ancestor_of(&c))
                .unwrap_or(false);
            if !in_scope {
                continue;
            }
            let attached = crate::timing::time("release", "scope-attach-back", || {
                self.handle
                    .block_on(self.systemd.attach_processes(unit, "", &[pid]))
            });
            if let Err(e) = attached {
                tracing::warn!(pid, unit, error = %e, "systemd would not move the process back; writing cgroup.procs");
                let back = CgroupPath::new(cgroup).map_err(failed).and_then(|cg| {
                    fs.write(&cg, "cgroup.procs", &pid.to_string())
                        .map_err(failed)
                });
                if let Err(e) = back {
                    stuck.push(format!("process {pid}: {e:?}"));
                }
            }
        }
        if !stuck.is_empty() {
            return Err(Error::Failed(format!(
                "processes could not leave {}: {}; the scope is kept so they are not killed",
                data.unit,
                stuck.join(", ")
            )));
        }
        let stopper = UnitStopper {
            systemd: self.systemd.clone(),
            handle: self.handle.clone(),
            cgroup_root: self.cgroup_root.clone(),
        };
        let unit = data.unit.clone();
        let task = self.handle.spawn_blocking(move || {
            let stopped = crate::timing::time("release", "scope-stop-after-reply", || {
                stopper.stop(&unit, &scope_cg, only)
            });
            if let Err(e) = stopped {
                tracing::warn!(unit, error = %e, "the emptied scope was left; `systemctl stop kvmisolate.slice` removes it when no isolation is held");
            }
        });
        if let Ok(mut slot) = self.stopping.lock() {
            *slot = Some(task);
        }
        Ok(())
    }

    /// Whether [`systemd::SLICE`] is one systemd made up (no unit file) whose only cgroup is
    /// `scope_cg`: once the scope is stopped, the slice is to be stopped too.
    fn slice_only_holds(&self, scope_cg: &CgroupPath) -> Result<bool, Error> {
        let slice = CgroupPath::new(systemd::SLICE).map_err(failed)?;
        let Ok(entries) = std::fs::read_dir(self.cgroup_root.join(slice.as_str())) else {
            return Ok(false);
        };
        let mut held = false;
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if slice
                .join(&entry.file_name().to_string_lossy())
                .ok()
                .as_ref()
                != Some(scope_cg)
            {
                return Ok(false);
            }
            held = true;
        }
        if !held {
            return Ok(false);
        }
        match self
            .handle
            .block_on(self.systemd.unit_fragment(systemd::SLICE))
        {
            Ok(Some(file)) => Ok(file.is_empty()),
            Ok(None) => Ok(false),
            Err(e) => Err(failed(e)),
        }
    }
}

/// Stops kvmisolate's emptied scope (and its slice when nothing else is in it), off the
/// engine's thread.
struct UnitStopper {
    systemd: Systemd,
    handle: Handle,
    cgroup_root: PathBuf,
}

impl UnitStopper {
    /// Stops `unit` (whose cgroup is `scope_cg`), or the slice alone when `only`: it held
    /// nothing else, and stopping a slice stops the units in it first (one job instead of
    /// two, and no waiting for the scope's cgroup to go in between).
    fn stop(&self, unit: &str, scope_cg: &CgroupPath, only: bool) -> Result<(), Error> {
        if only {
            return self
                .handle
                .block_on(self.systemd.stop_unit(systemd::SLICE))
                .map_err(|e| failed(format!("stopping {} with {unit}: {e}", systemd::SLICE)));
        }
        self.handle
            .block_on(self.systemd.stop_unit(unit))
            .map_err(failed)?;
        let fs = CgroupFs::new(&self.cgroup_root);
        self.stop_slice_if_unused(&fs, scope_cg)
    }

    /// Stops [`systemd::SLICE`] once the last scope in it is gone. systemd keeps the slice it
    /// made up for the first scope active (an empty unit and cgroup) until someone stops it;
    /// left alone are a slice an administrator defined (a unit file) and one that still holds
    /// a cgroup (another isolation's scope, a unit someone else put there).
    fn stop_slice_if_unused(&self, fs: &CgroupFs, scope_cg: &CgroupPath) -> Result<(), Error> {
        let slice = CgroupPath::new(systemd::SLICE).map_err(failed)?;
        let dir = self.cgroup_root.join(slice.as_str());
        // systemd removes the stopped scope's cgroup as the stop job ends; give it a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while fs.exists(scope_cg) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        if let Some(child) = entries
            .flatten()
            .find(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        {
            tracing::debug!(child = ?child.file_name(), "{} still holds a cgroup; kept", systemd::SLICE);
            return Ok(());
        }
        match self
            .handle
            .block_on(self.systemd.unit_fragment(systemd::SLICE))
        {
            Ok(Some(file)) if file.is_empty() => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(failed(e)),
        }
        self.handle
            .block_on(self.systemd.stop_unit(systemd::SLICE))
            .map_err(|e| failed(format!("stopping {} once empty: {e}", systemd::SLICE)))
    }
}

impl ExternalEffects for SystemdEffects {
    fn prepare(&self, step: &ExternalStep) -> Result<ExternalStep, Error> {
        match step.kind.as_str() {
            START_SCOPE => {
                let mut data: ScopeData = parse(step)?;
                for &pid in &data.pids {
                    let cgroup = cgroup_of_pid(&self.proc_root, pid).map_err(|_| {
                        Error::TargetNotFound(format!("process {pid} does not exist"))
                    })?;
                    let unit = crate::timing::time("isolate", "scope-unit-of-pid", || {
                        self.handle.block_on(self.systemd.unit_of_pid(pid))
                    })
                    .map_err(failed)?;
                    data.origins
                        .insert(pid.to_string(), (unit, cgroup.as_str().to_owned()));
                }
                to_step(START_SCOPE, &data)
            }
            START_KEEPER => Ok(step.clone()),
            other => Err(failed(format!("unknown external step {other:?}"))),
        }
    }

    fn perform(&self, step: &ExternalStep) -> Result<(), Error> {
        match step.kind.as_str() {
            START_SCOPE => {
                let data: ScopeData = parse(step)?;
                self.handle
                    .block_on(
                        self.systemd
                            .start_scope(&data.unit, &data.description, &data.pids),
                    )
                    .map(|_| ())
                    .map_err(failed)
            }
            START_KEEPER => {
                let data: KeeperData = parse(step)?;
                let nodes = kvmisolate_dbus::CpuSet::parse(&data.memory_nodes).map_err(failed)?;
                self.handle
                    .block_on(self.systemd.start_keeper_slice(
                        &data.unit,
                        &data.description,
                        &keeper::bitmask(&nodes),
                    ))
                    .map_err(failed)
            }
            other => Err(failed(format!("unknown external step {other:?}"))),
        }
    }

    fn undo(&self, step: &ExternalStep) -> Result<(), Error> {
        match step.kind.as_str() {
            START_SCOPE => self.undo_scope(&parse(step)?),
            START_KEEPER => {
                let data: KeeperData = parse(step)?;
                self.handle
                    .block_on(self.systemd.stop_unit(&data.unit))
                    .map_err(failed)
            }
            other => Err(failed(format!("unknown external step {other:?}"))),
        }
    }

    fn settle(&self) {
        let task = self.stopping.lock().ok().and_then(|mut slot| slot.take());
        if let Some(task) = task
            && let Err(e) = self.handle.block_on(task)
        {
            tracing::warn!(error = %e, "stopping the emptied scope ended abnormally");
        }
    }
}

/// irqbalance under systemd, for the tunings ([`crate::tunings::Services`]).
pub struct SystemdServices {
    systemd: Systemd,
    handle: Handle,
}

impl SystemdServices {
    /// Drives systemd from blocking code through `handle`.
    pub fn new(systemd: Systemd, handle: Handle) -> Self {
        Self { systemd, handle }
    }
}

/// The unit irqbalance runs as.
const IRQBALANCE_UNIT: &str = "irqbalance.service";

impl crate::tunings::Services for SystemdServices {
    fn irqbalance(&self) -> crate::tunings::wants::Irqbalance {
        use crate::tunings::wants::Irqbalance;
        if self
            .handle
            .block_on(self.systemd.unit_active(IRQBALANCE_UNIT))
        {
            Irqbalance::SystemdUnit
        } else {
            Irqbalance::NotRunning
        }
    }

    fn restart_irqbalance(&self) -> Result<(), String> {
        self.handle
            .block_on(self.systemd.reload_and_restart(IRQBALANCE_UNIT))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_json() {
        let name = IsolationName::new("vm").unwrap();
        let s = start_scope_step("kvmisolate-vm.scope", &name, &[1, 2]);
        let d: ScopeData = parse(&s).unwrap();
        assert_eq!(d.pids, vec![1, 2]);
    }
}
