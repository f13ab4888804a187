//! The lease registry: the isolations the service holds, as the bus shows them.
//!
//! Two locks, one job each. The table (a `std` lock, held only to read or swap entries and
//! never across an `.await`) serves `Status()` and every property read at once, whatever is
//! in flight. The change lock ([`Registry::change`]) is held by an Isolate or a Release for
//! its whole duration (hugepage compaction included): it orders the changes, and only the
//! changes wait for it.

use std::collections::BTreeMap;
use std::sync::RwLock;

use kvmisolate_dbus::options::{IsolationState, ReleaseWhen};
use kvmisolate_dbus::{CpuSet, IsolationName};

use crate::engine::journal::Record;
use crate::engine::model::Target;
use crate::tunings::Holder;

/// One isolation as the bus shows it: its journal record plus the state last read.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The journal record (what was asked, what to restore).
    pub record: Record,
    /// `active` or `degraded`.
    pub state: IsolationState,
    /// Why it is degraded (empty when active).
    pub state_reason: String,
}

/// A lease's identity: its name and creation time. An isolation made later under the same
/// name is another lease, which a release meant for this one must never touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseKey {
    /// The isolation's name.
    pub name: String,
    /// µs since the epoch (creation times only grow: see `Orchestrator::isolate`).
    pub created_usec: u64,
}

impl Lease {
    /// An `active` lease of `record`.
    pub fn new(record: Record) -> Self {
        Self {
            record,
            state: IsolationState::Active,
            state_reason: String::new(),
        }
    }

    /// This lease's identity.
    pub fn key(&self) -> LeaseKey {
        LeaseKey {
            name: self.name().to_string(),
            created_usec: self.created_usec(),
        }
    }

    /// The isolation's name.
    pub fn name(&self) -> &IsolationName {
        self.record.name()
    }

    /// Its CPUs.
    pub fn cpus(&self) -> &CpuSet {
        self.record.cpus()
    }

    /// The creator's uid.
    pub fn owner_uid(&self) -> u32 {
        self.record.request.owner_uid
    }

    /// µs since the epoch.
    pub fn created_usec(&self) -> u64 {
        self.record.request.created_usec
    }

    /// When it ends by itself.
    pub fn release_when(&self) -> ReleaseWhen {
        self.record.request.release_when
    }

    /// The unique bus name of the creator (empty if none was recorded).
    pub fn caller(&self) -> &str {
        self.record.request.caller.as_deref().unwrap_or_default()
    }

    /// `unit:NAME`, `pids:N,...`, ...
    pub fn target(&self) -> String {
        self.record.request.target.describe()
    }

    /// The partitioned cgroups (relative to the cgroup root).
    pub fn cgroups(&self) -> Vec<String> {
        self.record
            .partitions
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect()
    }

    /// The tuning profile (`none`, `default`, `realtime`, `custom`).
    pub fn profile(&self) -> &str {
        &self.record.request.tunings.profile
    }

    /// What the user should know about the target (a libvirt domain's pins).
    pub fn warnings(&self) -> &[String] {
        self.record.request.target.warnings()
    }

    /// The partition reported on the bus (`Partition`, the `partition` key of `Status()`):
    /// the type in force, or `none` for a hugepage reservation, which holds no partition.
    pub fn partition_word(&self) -> &'static str {
        if self.record.request.target.is_reservation() {
            "none"
        } else {
            self.record.partition.as_str()
        }
    }

    /// What the isolation holds, in one sentence (the `description` key of `Status()`).
    pub fn description(&self) -> String {
        match &self.record.request.target {
            Target::Reservation { domain, .. } => {
                let pool = self.record.request.tunings.hugepages.map_or_else(
                    || "a hugepage pool".to_owned(),
                    |h| format!("{} hugepages of {} ({h})", h.pages(), h.page_size.as_str()),
                );
                format!(
                    "reserves {pool} for libvirt domain {domain:?} from its prepare to its release; holds no CPUs and no partition"
                )
            }
            target => {
                let n = self.record.partitions.len();
                format!(
                    "CPUs {} in {n} {} partition{} for {}",
                    self.cpus(),
                    self.record.partition,
                    if n == 1 { "" } else { "s" },
                    target.describe()
                )
            }
        }
    }

    /// The tunings engine's view of this isolation.
    pub fn holder(&self) -> Holder {
        holder_of(&self.record)
    }
}

/// The tunings engine's view of the isolation `record` holds.
pub fn holder_of(record: &Record) -> Holder {
    let holder = Holder::new(
        record.name().as_str(),
        record.cpus(),
        &record.request.tunings,
    )
    .with_isolated_partition(record.partition == kvmisolate_dbus::options::PartitionType::Isolated);
    match &record.request.target {
        Target::Libvirt { domain, leaves, .. } => holder.with_vfio(
            domain,
            record.request.tunings.vfio_irqs.unwrap_or_default(),
            vcpu_cpus(record.cpus(), leaves),
        ),
        _ => holder,
    }
}

/// The CPUs of a domain's vCPU leaves (`libvirt/vcpuN`); without any, the isolation's CPUs
/// minus those of its other leaves (emulator), or all of them when nothing is left.
fn vcpu_cpus(cpus: &CpuSet, leaves: &[crate::engine::model::LeafPartition]) -> CpuSet {
    let is_vcpu =
        |l: &&crate::engine::model::LeafPartition| l.cgroup.file_name().starts_with("vcpu");
    let vcpus = leaves
        .iter()
        .filter(is_vcpu)
        .fold(CpuSet::new(), |a, l| a.union(&l.cpus));
    if !vcpus.is_empty() {
        return vcpus;
    }
    let others = leaves
        .iter()
        .filter(|l| !is_vcpu(l))
        .fold(CpuSet::new(), |a, l| a.union(&l.cpus));
    let rest = cpus.difference(&others);
    if rest.is_empty() { cpus.clone() } else { rest }
}

/// The leases held, and the lock that orders their changes.
#[derive(Debug, Default)]
pub struct Registry {
    leases: RwLock<BTreeMap<String, Lease>>,
    change: tokio::sync::Mutex<()>,
}

/// Proof that the holder orders a change ([`Registry::change`]).
pub type Change<'a> = tokio::sync::MutexGuard<'a, ()>;

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for the changes in flight, then holds off the others until dropped. Reads never
    /// wait for it.
    pub async fn change(&self) -> Change<'_> {
        self.change.lock().await
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Lease>> {
        // A panic while the table was written leaves whole entries (every write is one
        // insert, remove or field swap): the table is still the truth.
        self.leases.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Lease>> {
        self.leases.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease named `name`.
    pub fn get(&self, name: &str) -> Option<Lease> {
        self.read().get(name).cloned()
    }

    /// Every lease, by name.
    pub fn leases(&self) -> Vec<Lease> {
        self.read().values().cloned().collect()
    }

    /// The names held.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Whether no lease is held.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The CPUs of every lease.
    pub fn isolated_cpus(&self) -> CpuSet {
        self.read()
            .values()
            .fold(CpuSet::new(), |acc, l| acc.union(l.cpus()))
    }

    /// Adds `lease` (under the change lock).
    pub fn insert(&self, _change: &Change<'_>, lease: Lease) {
        self.write().insert(lease.name().to_string(), lease);
    }

    /// Removes the lease `name` (under the change lock).
    pub fn remove(&self, _change: &Change<'_>, name: &str) {
        self.write().remove(name);
    }

    /// Sets the state of the lease `key` (not of a later one of its name); returns the lease
    /// as it is now, `None` if `key` is no longer held.
    pub fn set_state(
        &self,
        key: &LeaseKey,
        state: IsolationState,
        reason: String,
    ) -> Option<Lease> {
        let mut leases = self.write();
        let lease = leases
            .get_mut(&key.name)
            .filter(|l| l.created_usec() == key.created_usec)?;
        lease.state = state;
        lease.state_reason = reason;
        Some(lease.clone())
    }
}
