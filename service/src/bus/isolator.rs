//! The D-Bus objects: `org.kvmisolate.Isolator1` (the manager) and one
//! `org.kvmisolate.Isolation1` per isolation, and the event handling that keeps them current
//! (partition changes, target exit, caller disconnect) without polling.
//!
//! Flow of a call: parse and validate the arguments (no lock, no prompt) → find out whose
//! target it is ([`Orchestrator::inspect`], cheap reads) → authorize with polkit the actions that
//! needs ([`crate::bus::authz`]; no lock held) → take the registry's change lock → plan and apply
//! through the [`Orchestrator`] → publish the object and announce the change. Reads (`Status()`,
//! properties) take a snapshot of the [`Registry`] and never wait for a change in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kvmisolate_dbus::options::{IsolationState, ReleaseWhen};
use kvmisolate_dbus::status::{IsolationEntry, KernelSupport, Status, TuningRow};
use kvmisolate_dbus::{CpuSet, Error, names};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{BoxDBusError, Connection, OwnedObjectPath, OwnedVariant, Variant, fdo, interface};

use crate::bus::authz;
use crate::bus::polkit;
use crate::bus::request;
use crate::daemon::kthreads::KthreadPinner;
use crate::daemon::orchestrator::Orchestrator;
use crate::daemon::registry::{Change, Lease, LeaseKey, Registry};
use crate::daemon::watch::Watcher;
use crate::timing;

/// State shared by every object and event handler.
pub struct Shared {
    conn: Connection,
    orchestrator: Orchestrator,
    /// The leases held (read without waiting) and the lock that orders their changes.
    registry: Registry,
    watcher: Watcher,
    /// Pins kernel threads created while isolations exist (`None` in the emulated test mode).
    kthreads: Option<KthreadPinner>,
    /// Woken on every change and at the start and end of every call, for the idle-exit timer
    /// and the drain at SIGTERM.
    pub activity: tokio::sync::Notify,
    warnings: std::sync::Mutex<Vec<String>>,
    /// Method calls and event handlers (target exit, caller gone) in progress.
    in_flight: AtomicUsize,
    /// Set at SIGTERM: no new operation starts.
    stopping: AtomicBool,
    /// Woken when the isolations change: the VFIO IRQ follower sleeps on it while no
    /// isolation has `vfio-irqs` follow a domain.
    vfio_wake: tokio::sync::Notify,
}

/// How often the MSI vectors of followed VFIO devices are listed: no kernel event announces a
/// vector the guest enables (its driver loads after the domain started and was isolated).
const VFIO_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// One operation in progress (see [`Shared::begin`]); ends when dropped.
struct InFlight<'a> {
    shared: &'a Shared,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.shared.activity.notify_waiters();
        self.shared.activity.notify_one();
    }
}

fn boxed<E: zbus::DBusError + Send + Sync + 'static>(e: E) -> BoxDBusError {
    Box::new(e)
}

fn path_of(lease: &Lease) -> OwnedObjectPath {
    // Names are validated, so their encoded paths always are valid object paths.
    OwnedObjectPath::try_from(lease.name().object_path()).unwrap_or_else(|_| {
        OwnedObjectPath::try_from(names::ISOLATION_PATH_PREFIX).unwrap_or_default()
    })
}

/// `org.kvmisolate.Isolator1`.
pub struct Isolator {
    shared: Arc<Shared>,
}

#[interface(name = "org.kvmisolate.Isolator1")]
impl Isolator {
    /// Creates an isolation.
    #[zbus(out_args("isolation"))]
    async fn isolate(
        &self,
        name: &str,
        cpus: &str,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<OwnedObjectPath, BoxDBusError> {
        let _call = self.shared.begin().map_err(boxed)?;
        let _total = timing::phase("isolate", "total");
        let req = timing::time("isolate", "parse", || request::parse(name, cpus, &options))
            .map_err(boxed)?;
        let caller = {
            let _p = timing::phase("isolate", "caller");
            polkit::caller(&self.shared.conn, &header).await
        }
        .map_err(boxed)?;
        request::check_reserved_name(&req.name, caller.uid).map_err(boxed)?;
        // What the call acts on decides the actions (uid 0 needs none).
        let held = if caller.uid == 0 {
            Vec::new()
        } else {
            let orchestrator = &self.shared.orchestrator;
            let inspected = {
                let _p = timing::phase("isolate", "inspect");
                orchestrator.inspect(&req, caller.uid).await
            };
            let (facts, held) = inspected.map_err(Error::from).map_err(boxed)?;
            let _p = timing::phase("isolate", "polkit");
            let mem = orchestrator.meminfo();
            for ask in authz::asks(&req, &facts, mem.as_ref()) {
                polkit::authorize_with(
                    &self.shared.conn,
                    &header,
                    &caller,
                    ask.action,
                    &ask.details,
                )
                .await
                .map_err(boxed)?;
            }
            held
        };
        self.shared.isolate(req, caller, held).await.map_err(boxed)
    }

    /// Starts the configuration's preset `name` (see [`crate::daemon::presets`]): `Isolate` of its
    /// target, authorized the same way.
    #[zbus(out_args("isolation"))]
    async fn start_preset(
        &self,
        name: &str,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<OwnedObjectPath, BoxDBusError> {
        let config = self.shared.orchestrator.file_config();
        let options = crate::daemon::presets::options(config, name).map_err(boxed)?;
        self.isolate(name, "", options, header).await
    }

    /// Releases one isolation.
    async fn release(
        &self,
        name: &str,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BoxDBusError> {
        let _call = self.shared.begin().map_err(boxed)?;
        let _total = timing::phase("release", "total");
        let held = self
            .shared
            .registry
            .get(name)
            .map(|l| (l.key(), l.owner_uid()));
        let Some((key, owner)) = held else {
            return Err(boxed(no_such(name)));
        };
        self.shared.release_checked(&key, owner, &header).await
    }

    /// Releases every isolation held when it is called (not those made while it runs).
    async fn release_all(&self, #[zbus(header)] header: Header<'_>) -> Result<(), BoxDBusError> {
        let _call = self.shared.begin().map_err(boxed)?;
        let caller = polkit::caller(&self.shared.conn, &header)
            .await
            .map_err(boxed)?;
        // The leases this call is about, by identity: a lease made while polkit is asked is
        // not part of it, whoever owns it.
        let held: Vec<(LeaseKey, u32)> = self
            .shared
            .registry
            .leases()
            .iter()
            .map(|l| (l.key(), l.owner_uid()))
            .collect();
        if held.iter().any(|(_, owner)| *owner != caller.uid) {
            polkit::authorize(&self.shared.conn, &header, &caller, names::ACTION_RELEASE)
                .await
                .map_err(boxed)?;
        }
        let mut failures = Vec::new();
        for (key, _) in held {
            match self.shared.release(&key, "released", |_| true).await {
                Ok(()) | Err(Error::NoSuchIsolation(_)) => {}
                Err(e) => failures.push(format!("{}: {e:?}", key.name)),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(boxed(Error::Failed(format!(
                "some isolations could not be fully released: {}",
                failures.join("; ")
            ))))
        }
    }

    /// Everything in one dictionary.
    #[zbus(out_args("status"))]
    async fn status(&self) -> Status {
        self.shared.status()
    }

    /// Emitted when an isolation ends.
    #[zbus(signal)]
    async fn released(
        emitter: &SignalEmitter<'_>,
        name: &str,
        path: zbus::ObjectPath<'_>,
        reason: &str,
    ) -> zbus::Result<()>;

    /// CPUs held by active isolations.
    #[zbus(property)]
    async fn isolated_cpus(&self) -> String {
        self.shared.registry.isolated_cpus().to_string()
    }

    /// Online CPUs left to the host.
    #[zbus(property)]
    async fn housekeeping_cpus(&self) -> String {
        let isolated = self.shared.registry.isolated_cpus();
        self.shared
            .orchestrator
            .online_cpus()
            .difference(&isolated)
            .to_string()
    }

    /// The isolation objects.
    #[zbus(property)]
    async fn isolations(&self) -> Vec<OwnedObjectPath> {
        self.shared.registry.leases().iter().map(path_of).collect()
    }

    /// The configuration's presets and whether each can start now.
    #[zbus(property)]
    async fn presets(&self) -> Vec<crate::daemon::presets::Row> {
        let leases = self.shared.registry.leases();
        crate::daemon::presets::rows(self.shared.orchestrator.file_config(), leases.iter())
    }

    /// What the kernel supports.
    #[zbus(property)]
    async fn kernel_support(&self) -> KernelSupport {
        self.shared.orchestrator.kernel_support()
    }
}

/// `org.kvmisolate.Isolation1`: a snapshot of one lease, replaced on every change.
pub struct IsolationObject {
    lease: Lease,
    shared: Arc<Shared>,
}

#[interface(name = "org.kvmisolate.Isolation1")]
impl IsolationObject {
    /// Releases this isolation.
    async fn release(&self, #[zbus(header)] header: Header<'_>) -> Result<(), BoxDBusError> {
        let _call = self.shared.begin().map_err(boxed)?;
        self.shared
            .release_checked(&self.lease.key(), self.lease.owner_uid(), &header)
            .await
    }

    /// The isolation's name.
    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.lease.name().to_string()
    }
    /// The isolated CPUs.
    #[zbus(property(emits_changed_signal = "const"))]
    fn cpus(&self) -> String {
        self.lease.cpus().to_string()
    }
    /// What was isolated.
    #[zbus(property(emits_changed_signal = "const"))]
    fn target(&self) -> String {
        self.lease.target()
    }
    /// `isolated` or `root`; `none` for a hugepage reservation.
    #[zbus(property(emits_changed_signal = "const"))]
    fn partition(&self) -> String {
        self.lease.partition_word().to_owned()
    }
    /// `active` or `degraded`.
    #[zbus(property)]
    fn state(&self) -> String {
        self.lease.state.to_string()
    }
    /// Why the state is what it is.
    #[zbus(property)]
    fn state_reason(&self) -> String {
        self.lease.state_reason.clone()
    }
    /// The creator's uid.
    #[zbus(property(emits_changed_signal = "const"))]
    fn owner_uid(&self) -> u32 {
        self.lease.owner_uid()
    }
    /// Creation time in µs since the epoch.
    #[zbus(property(emits_changed_signal = "const"))]
    fn created(&self) -> u64 {
        self.lease.created_usec()
    }
    /// When it ends by itself.
    #[zbus(property(emits_changed_signal = "const"))]
    fn release_when(&self) -> String {
        self.lease.release_when().to_string()
    }
    /// The tuning profile: `none`, `default`, `realtime`, or `custom` (an explicit list).
    #[zbus(property(emits_changed_signal = "const"))]
    fn profile(&self) -> String {
        self.lease.profile().to_owned()
    }
    /// Each selected host tuning: (name, state `applied`/`skipped`/`failed`, reason,
    /// original value, current value). Read live; invalidated whenever another isolation
    /// comes or goes (host-wide values follow the union of all isolations).
    #[zbus(property(emits_changed_signal = "invalidates"))]
    fn tunings(&self) -> Vec<TuningRow> {
        tuning_rows(&self.shared.orchestrator.tuning_reports(&self.lease))
    }
}

/// The `Tunings` rows of `reports`.
fn tuning_rows(reports: &[crate::tunings::TuningReport]) -> Vec<TuningRow> {
    reports
        .iter()
        .map(|r| TuningRow {
            name: r.tuning.to_string(),
            state: r.state.to_string(),
            reason: r.reason.clone(),
            original: r.original.clone(),
            current: r.current.clone(),
        })
        .collect()
}

impl Shared {
    /// Builds the shared state, adopts isolations that survived a restart and publishes the
    /// objects. Returns the shared state and the receiver of watcher events.
    pub async fn start(conn: Connection, orchestrator: Orchestrator) -> anyhow::Result<Arc<Self>> {
        let (watcher, mut changes) = Watcher::start()?;
        let kthreads = orchestrator
            .kthread_proc_root()
            .map(|p| KthreadPinner::new(p, orchestrator.kthread_ledger_path()));
        let shared = Arc::new(Self {
            conn: conn.clone(),
            orchestrator,
            registry: Registry::new(),
            watcher,
            kthreads,
            activity: tokio::sync::Notify::new(),
            warnings: std::sync::Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            vfio_wake: tokio::sync::Notify::new(),
        });
        let server = conn.object_server();
        server.at(names::OBJECT_PATH, fdo::ObjectManager).await?;
        server
            .at(
                names::OBJECT_PATH,
                Isolator {
                    shared: shared.clone(),
                },
            )
            .await?;

        // Subscribed before adopting: a caller that leaves from now on is seen by
        // follow_callers, one that left before by the NameHasOwner check below.
        let dbus = fdo::DBusProxy::new(&conn).await?;
        let owner_changes = dbus.receive_name_owner_changed().await?;
        let (adopted, warnings) = shared.orchestrator.recover().await;
        if let Ok(mut w) = shared.warnings.lock() {
            w.extend(warnings);
        }
        for lease in adopted {
            tracing::info!(name = %lease.name(), cpus = %lease.cpus(), "adopted isolation from the journal");
            {
                let change = shared.registry.change().await;
                shared.registry.insert(&change, lease.clone());
            }
            shared.publish(&lease).await;
        }
        // Re-check every adopted lease once: the world may have moved while we were down.
        let names = shared.registry.names();
        for name in names {
            shared.recheck(&name).await;
        }
        shared.release_orphans(&dbus).await;
        shared.follow_kthreads().await;

        let s = shared.clone();
        tokio::spawn(async move {
            while let Some(name) = changes.recv().await {
                s.recheck(&name).await;
            }
        });
        let s = shared.clone();
        tokio::spawn(async move { s.follow_callers(owner_changes).await });
        let s = shared.clone();
        tokio::spawn(async move { s.follow_vfio_irqs().await });
        match crate::daemon::hotplug::start() {
            Ok(mut hotplug) => {
                let s = shared.clone();
                tokio::spawn(async move {
                    while hotplug.recv().await.is_some() {
                        let names = s.registry.names();
                        for name in names {
                            s.recheck(&name).await;
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "no CPU hotplug notification; an offline CPU is noticed only when a partition changes")
            }
        }
        Ok(shared)
    }

    /// Whether no isolation is held and no call is in progress (for the idle exit).
    pub async fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && self.registry.is_empty()
    }

    /// Marks the start of an operation (a method call, an event handler): the idle exit waits
    /// for it, and so does [`Shared::stop`]. Refused once the service is stopping.
    fn begin(&self) -> Result<InFlight<'_>, Error> {
        // Counted before the flag is read: `stop` sets the flag before it reads the count, so
        // one of the two sees the other.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let call = InFlight { shared: self };
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Error::Failed(
                "kvmisolated is stopping; call again in a moment (D-Bus activation starts it anew)"
                    .into(),
            ));
        }
        self.activity.notify_one();
        Ok(call)
    }

    /// Waits for work the last Release left running after its reply (systemd stopping the
    /// emptied scope), so the daemon exits with nothing of its own half-done.
    pub async fn settle(&self) {
        self.orchestrator.settle().await;
    }

    /// SIGTERM: refuses new operations, waits for those in progress to finish (an Isolate
    /// completes or rolls back, a Release restores), then holds the lease lock so nothing
    /// starts after. Held isolations stay; the next start adopts them.
    pub async fn stop(&self) -> Change<'_> {
        self.stopping.store(true, Ordering::SeqCst);
        loop {
            let ended = self.activity.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let n = self.in_flight.load(Ordering::SeqCst);
            if n == 0 {
                break;
            }
            tracing::info!(
                "stopping: waiting for {n} operation{} in progress",
                if n == 1 { "" } else { "s" }
            );
            ended.await;
        }
        self.registry.change().await
    }

    async fn isolate(
        self: &Arc<Self>,
        req: request::IsolateRequest,
        caller: polkit::Caller,
        held: Vec<crate::daemon::ownership::HeldProcess>,
    ) -> Result<OwnedObjectPath, Error> {
        let change = {
            let _p = timing::phase("isolate", "wait-change");
            self.registry.change().await
        };
        // The one name check: the journal holds every isolation, also one whose release failed.
        if self.orchestrator.name_taken(&req.name) {
            return Err(Error::NameExists(format!(
                "an isolation named {:?} exists already; release it first or pick another name",
                req.name.as_str()
            )));
        }
        let lease = self.orchestrator.isolate(&req, &caller, &held).await?;
        tracing::info!(
            name = %lease.name(), cpus = %lease.cpus(), target = %lease.target(), partition = lease.partition_word(),
            uid = caller.uid, "isolated"
        );
        let path = path_of(&lease);
        self.registry.insert(&change, lease.clone());
        drop(change);
        timing::time_async("isolate", "publish", self.publish(&lease)).await;
        timing::time_async("isolate", "announce", self.manager_changed()).await;
        Ok(path)
    }

    /// Registers the object of `lease` and its watches.
    async fn publish(self: &Arc<Self>, lease: &Lease) {
        for path in self.orchestrator.watch_paths(lease) {
            if let Err(e) = self.watcher.watch(lease.name().as_str(), &path) {
                tracing::warn!(name = %lease.name(), path = %path.display(), error = %e, "cannot watch; changes there go unnoticed");
            }
        }
        let obj = IsolationObject {
            lease: lease.clone(),
            shared: self.clone(),
        };
        if let Err(e) = self.conn.object_server().at(path_of(lease), obj).await {
            tracing::error!(name = %lease.name(), error = %e, "cannot publish the isolation object");
        }
    }

    /// A caller's release of the lease `key`, owned by `owner`: the caller's own, or
    /// authorized by polkit. Only that lease is released, never a later one of its name.
    async fn release_checked(
        &self,
        key: &LeaseKey,
        owner: u32,
        header: &Header<'_>,
    ) -> Result<(), BoxDBusError> {
        let caller = {
            let _p = timing::phase("release", "caller");
            polkit::caller(&self.conn, header).await
        }
        .map_err(boxed)?;
        if owner != caller.uid {
            let _p = timing::phase("release", "polkit");
            polkit::authorize(&self.conn, header, &caller, names::ACTION_RELEASE)
                .await
                .map_err(boxed)?;
        }
        self.release(key, "released", |_| true).await.map_err(boxed)
    }

    /// Releases the lease `key` if `still(lease)` holds, both checked under the lock the
    /// release holds (so a lease made meanwhile under the same name is never touched),
    /// restoring everything, and announces it with `reason`. `Ok` without releasing when
    /// `still` says no.
    pub async fn release(
        &self,
        key: &LeaseKey,
        reason: &str,
        still: impl FnOnce(&Lease) -> bool,
    ) -> Result<(), Error> {
        let name = key.name.as_str();
        let change = {
            let _p = timing::phase("release", "wait-change");
            self.registry.change().await
        };
        let lease = match self.registry.get(name) {
            Some(l) if l.created_usec() == key.created_usec => l,
            Some(l) => return Err(replaced(key, &l)),
            None => return Err(no_such(name)),
        };
        if !still(&lease) {
            return Ok(());
        }
        let staying = self
            .registry
            .leases()
            .iter()
            .filter(|l| l.name() != lease.name())
            .fold(CpuSet::new(), |acc, l| acc.union(l.cpus()));
        // New kthreads: no longer narrowed to the CPUs being returned. Existing ones are put
        // back after the partition is gone (manager_changed below): until then the kernel
        // clamps a kthread's affinity to the top cpuset's CPUs.
        timing::time("release", "kthreads-follow", || {
            self.follow_kthreads_with(&staying, false)
        });
        let result = self.orchestrator.release(&lease).await;
        match result {
            Ok(warnings) => {
                if !warnings.is_empty()
                    && let Ok(mut w) = self.warnings.lock()
                {
                    w.extend(
                        warnings
                            .into_iter()
                            .map(|x| format!("after releasing {name}: {x}")),
                    );
                }
                self.registry.remove(&change, name);
                drop(change);
                let unpublish = timing::phase("release", "unpublish");
                self.watcher.unwatch(name);
                let path = path_of(&lease);
                let _ = self
                    .conn
                    .object_server()
                    .remove::<IsolationObject, _>(&path)
                    .await;
                tracing::info!(name, reason, "released");
                if let Ok(iface) = self
                    .conn
                    .object_server()
                    .interface::<_, Isolator>(names::OBJECT_PATH)
                    .await
                {
                    let _ = Isolator::released(iface.signal_emitter(), name, path.as_ref(), reason)
                        .await;
                }
                drop(unpublish);
                timing::time_async("release", "announce", self.manager_changed()).await;
                self.activity.notify_one();
                Ok(())
            }
            Err(e) => {
                tracing::error!(name, error = ?e, "release incomplete; the journal keeps what is left to restore");
                let updated = self.registry.set_state(
                    key,
                    IsolationState::Degraded,
                    format!("release incomplete: {e:?}"),
                );
                drop(change);
                if let Some(updated) = updated {
                    self.follow_kthreads().await;
                    self.update_object(&updated).await;
                }
                Err(e.into())
            }
        }
    }

    /// Re-reads the state of `name` after a watcher event, and releases it when its target is
    /// gone (unless only an explicit Release may end it).
    async fn recheck(&self, name: &str) {
        let Ok(_call) = self.begin() else {
            return;
        };
        let Some(lease) = self.registry.get(name) else {
            return;
        };
        let health = self.orchestrator.health(&lease);
        let key = lease.key();
        if !health.target_alive && lease.release_when() != ReleaseWhen::Released {
            // Judged again under the release's lock: the target of this very lease is gone.
            let dead = |l: &Lease| !self.orchestrator.health(l).target_alive;
            // Reads no longer wait for a Release in flight, so the lease seen above may be one
            // that Release is removing: gone (or replaced) by the time we hold the lock is fine.
            match self.release(&key, "target-exited", dead).await {
                Ok(()) | Err(Error::NoSuchIsolation(_)) => {}
                Err(e) => {
                    tracing::error!(name, error = ?e, "automatic release after the target exited failed");
                }
            }
            return;
        }
        if health.state != lease.state || health.reason != lease.state_reason {
            let Some(updated) = self
                .registry
                .set_state(&key, health.state, health.reason.clone())
            else {
                return;
            };
            tracing::warn!(name, state = %updated.state, reason = %updated.state_reason, "isolation state changed");
            self.update_object(&updated).await;
        }
    }

    async fn update_object(&self, lease: &Lease) {
        let path = path_of(lease);
        let Ok(iface) = self
            .conn
            .object_server()
            .interface::<_, IsolationObject>(&path)
            .await
        else {
            return;
        };
        iface.get_mut().await.lease = lease.clone();
        // State and its reason travel in one PropertiesChanged, so a GUI never shows a new
        // state with a stale reason.
        let changed = HashMap::from([
            ("State", Variant::from(lease.state.as_str())),
            ("StateReason", Variant::from(lease.state_reason.as_str())),
        ]);
        let iface_name =
            zbus::names::InterfaceName::from_static_str_unchecked(names::ISOLATION_INTERFACE);
        let _ = fdo::Properties::properties_changed(
            iface.signal_emitter(),
            iface_name,
            changed,
            std::borrow::Cow::Borrowed(&[]),
        )
        .await;
    }

    /// Keeps kernel threads on the housekeeping CPUs while any isolation exists, restores them
    /// when none is left.
    async fn follow_kthreads(&self) {
        let isolated = self.registry.isolated_cpus();
        self.follow_kthreads_with(&isolated, true);
    }

    /// `follow_kthreads` for the CPUs `isolated`; `sweep`: also bring the existing kthreads
    /// where they belong (false before a release: only new kthreads are no longer narrowed to
    /// the CPUs the host is getting back).
    fn follow_kthreads_with(&self, isolated: &CpuSet, sweep: bool) {
        let Some(pinner) = &self.kthreads else {
            return;
        };
        let housekeeping = self.orchestrator.online_cpus().difference(isolated);
        let housekeeping =
            (!isolated.is_empty() && !housekeeping.is_empty()).then_some(housekeeping);
        if sweep {
            let _p = timing::phase("kthreads", "sweep");
            pinner.set(housekeeping);
        } else {
            pinner.follow(housekeeping);
        }
    }

    /// Places the VFIO IRQs guests enable after their isolation: while an isolation's
    /// `vfio-irqs` follows a domain, its devices' MSI vectors are listed every [`VFIO_POLL`]
    /// and the tunings reconciled when they change; otherwise it sleeps until the isolations
    /// change.
    async fn follow_vfio_irqs(self: Arc<Self>) {
        loop {
            if !self.orchestrator.follows_vfio() {
                self.vfio_wake.notified().await;
                continue;
            }
            tokio::time::sleep(VFIO_POLL).await;
            if !self.orchestrator.vfio_irqs_moved() {
                continue;
            }
            let Ok(_call) = self.begin() else {
                return;
            };
            let change = self.registry.change().await;
            match self.orchestrator.follow_vfio().await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(
                        "VFIO IRQs changed (a guest enabled or dropped MSI vectors); placed them"
                    );
                    drop(change);
                    self.tunings_changed().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "placing the VFIO IRQs a guest enabled failed; retried when they change again or at the next isolate or release");
                }
            }
        }
    }

    async fn manager_changed(&self) {
        self.vfio_wake.notify_one();
        self.follow_kthreads().await;
        let Ok(iface) = self
            .conn
            .object_server()
            .interface::<_, Isolator>(names::OBJECT_PATH)
            .await
        else {
            return;
        };
        let obj = iface.get().await;
        let emitter = iface.signal_emitter();
        let _ = obj.isolations_changed(emitter).await;
        let _ = obj.isolated_cpus_changed(emitter).await;
        let _ = obj.housekeeping_cpus_changed(emitter).await;
        let _ = obj.presets_changed(emitter).await;
        drop(obj);
        // Host-wide tunings follow the union of all isolations: every Tunings may differ now.
        self.tunings_changed().await;
    }

    /// Announces that every isolation's `Tunings` may have changed.
    async fn tunings_changed(&self) {
        let paths: Vec<OwnedObjectPath> = self.registry.leases().iter().map(path_of).collect();
        for path in paths {
            if let Ok(iface) = self
                .conn
                .object_server()
                .interface::<_, IsolationObject>(&path)
                .await
            {
                let _ = iface
                    .get()
                    .await
                    .tunings_invalidate(iface.signal_emitter())
                    .await;
            }
        }
    }

    /// Releases `caller-disconnects` leases whose caller left the bus (`changes`: the
    /// `NameOwnerChanged` stream, subscribed before the journal's leases were adopted).
    async fn follow_callers(self: Arc<Self>, mut changes: fdo::NameOwnerChangedStream) {
        use futures_util::StreamExt;
        while let Some(signal) = changes.next().await {
            let Ok(args) = signal.args() else { continue };
            if args.new_owner().is_some() {
                continue;
            }
            self.release_callers_leases(&args.name().to_string()).await;
        }
    }

    /// Releases the `caller-disconnects` leases of `gone`, a bus name that has no owner.
    async fn release_callers_leases(&self, gone: &str) {
        let Ok(_call) = self.begin() else {
            return;
        };
        let keys: Vec<LeaseKey> = self
            .registry
            .leases()
            .iter()
            .filter(|l| l.release_when() == ReleaseWhen::CallerDisconnects && l.caller() == gone)
            .map(Lease::key)
            .collect();
        for key in keys {
            if let Err(e) = self.release(&key, "caller-disconnected", |_| true).await {
                tracing::error!(name = key.name, error = ?e, "release after the caller disconnected failed");
            }
        }
    }

    /// Start-up: releases the adopted `caller-disconnects` leases whose caller left the bus
    /// while the service was down (nobody would ever end them otherwise).
    async fn release_orphans(&self, dbus: &fdo::DBusProxy<'_>) {
        let callers: std::collections::BTreeSet<String> = self
            .registry
            .leases()
            .iter()
            .filter(|l| l.release_when() == ReleaseWhen::CallerDisconnects)
            .map(|l| l.caller().to_owned())
            .collect();
        for caller in callers {
            let present = match zbus::names::BusName::try_from(caller.as_str()) {
                Ok(name) => match dbus.name_has_owner(name).await {
                    Ok(has) => has,
                    Err(e) => {
                        // Not proof that it left: keep the lease, its NameOwnerChanged ends it.
                        tracing::warn!(caller, error = %e, "cannot ask the bus whether a lease's caller is still there");
                        true
                    }
                },
                // No caller recorded: no disconnect could ever end it.
                Err(_) => false,
            };
            if !present {
                tracing::info!(
                    caller,
                    "the caller of an adopted caller-disconnects lease left while kvmisolated was down"
                );
                self.release_callers_leases(&caller).await;
            }
        }
    }

    /// The `Status()` reply: the one place it is built.
    fn status(&self) -> Status {
        // A snapshot: never waits for an Isolate or Release in flight.
        let _p = timing::phase("status", "total");
        let leases = self.registry.leases();
        let isolated = leases
            .iter()
            .fold(CpuSet::new(), |acc, l| acc.union(l.cpus()));
        let online = self.orchestrator.online_cpus();
        let mut warnings = self.warnings.lock().map(|w| w.clone()).unwrap_or_default();
        for l in leases
            .iter()
            .filter(|l| l.state == IsolationState::Degraded)
        {
            warnings.push(format!(
                "isolation {} is degraded: {}",
                l.name(),
                l.state_reason
            ));
        }
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            isolated_cpus: isolated.to_string(),
            housekeeping_cpus: online.difference(&isolated).to_string(),
            online_cpus: online.to_string(),
            kernel_support: self.orchestrator.kernel_support(),
            isolations: leases
                .iter()
                .map(|l| lease_entry(l, &self.orchestrator.tuning_reports(l)))
                .collect(),
            warnings,
        }
    }
}

fn lease_entry(l: &Lease, tunings: &[crate::tunings::TuningReport]) -> IsolationEntry {
    let irqs_left: Vec<u32> = tunings
        .iter()
        .flat_map(|t| t.irqs_left.iter().copied())
        .collect();
    IsolationEntry {
        name: l.name().as_str().to_owned(),
        object_path: path_of(l),
        cpus: l.cpus().to_string(),
        target: l.target().to_owned(),
        partition: l.partition_word().to_owned(),
        description: l.description().to_owned(),
        state: l.state.as_str().to_owned(),
        state_reason: l.state_reason.clone(),
        owner_uid: l.owner_uid(),
        created: l.created_usec(),
        release_when: l.release_when().as_str().to_owned(),
        cgroups: l.cgroups(),
        profile: l.profile().to_owned(),
        tunings: tuning_rows(tunings),
        warnings: l.warnings().to_vec(),
        irqs_left: (!irqs_left.is_empty()).then_some(irqs_left),
    }
}

/// The error for a release of `key` that found `now` under its name: another lease.
fn replaced(key: &LeaseKey, now: &Lease) -> Error {
    Error::NoSuchIsolation(format!(
        "the isolation {:?} this call was for (created {} µs since the epoch) was released \
         meanwhile; the one of that name now (created {}) is another and was left alone; \
         call again to release it",
        key.name,
        key.created_usec,
        now.created_usec()
    ))
}

fn no_such(name: &str) -> Error {
    let shown: String = name.chars().take(64).collect();
    Error::NoSuchIsolation(format!(
        "no isolation is named {shown:?}; `kvmisolate status` lists them"
    ))
}
