//! Performing plans: journal first, every write read back, rollback on failure; releasing
//! isolations; replaying the journal at start-up.
//!
//! The engine is synchronous (cgroupfs and the journal are local files); call it from a
//! blocking context (`tokio::task::spawn_blocking`) and never run two of its operations at
//! once: the caller serializes `apply`, `release` and `replay` (one lock for all).
//!
//! # Crash consistency
//! Each step is persisted with the original state it changes *before* it is performed. Undo
//! of every step kind is safe whether or not the step was performed (restoring a value that
//! is already there is a no-op), so a record can always be rolled back, whatever point a
//! SIGKILL interrupted: [`Engine::replay`] adopts isolations that are `active` with a living
//! target and releases everything else.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::engine::Error;
use crate::engine::journal::{Journal, JournalError, JournalStep, Phase, Record};
use crate::engine::model::{Request, Snapshot, Step, Target};
use crate::engine::partition::{PartitionState, parse_partition};
use crate::engine::plan::Plan;
use crate::engine::step::{self, failed, is_cpus_file};
use crate::host::cgroupfs::{CgroupFs, CgroupPath, cgroup_of_pid};
use crate::host::kernel::PARTITION_FILE;
use crate::test_hooks::TestHooks;

use crate::engine::effects::ExternalEffects;

/// Why a release did not restore everything. The record stays in the journal (phase
/// `releasing`) so the next start retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("releasing '{name}' left things unrestored: {}", failures.join("; "))]
pub struct ReleaseError {
    /// The isolation.
    pub name: String,
    /// One sentence per step that could not be undone (or journal problem).
    pub failures: Vec<String>,
}

impl From<ReleaseError> for Error {
    fn from(e: ReleaseError) -> Self {
        Error::Failed(e.to_string())
    }
}

/// What [`Engine::replay`] did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Records `active` with a living target: adopt them (same name, same object path).
    pub adopted: Vec<Record>,
    /// Isolations restored and dropped.
    pub released: Vec<String>,
    /// Isolations that could not be fully restored (their record stays for the next start).
    pub failed: Vec<ReleaseError>,
    /// Journal warnings (corrupt records set aside...).
    pub warnings: Vec<String>,
}

/// Where a simulated crash may happen (unit tests; the service's own hook is
/// [`TestHooks::step_performed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    /// Step n (1-based) is journalled (done=false) but not performed.
    BeforePerform(usize),
    /// Step n is performed but not yet marked done.
    AfterPerform(usize),
    /// Step n is marked done.
    AfterDone(usize),
}

fn journal_failed(e: JournalError) -> Error {
    Error::Failed(e.to_string())
}

/// The operation names of the timing events ([`crate::timing`]).
const OP: &str = "isolate";
const UNDO: &str = "release";

/// The partition engine: cgroupfs, `/proc`, the journal and the external effects.
pub struct Engine {
    /// The cgroup tree.
    pub fs: CgroupFs,
    /// `/proc` (injectable for tests).
    pub proc_root: PathBuf,
    /// The journal.
    pub journal: Journal,
    /// Effects outside cgroupfs.
    pub effects: Box<dyn ExternalEffects + Send + Sync>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("fs", &self.fs)
            .field("proc_root", &self.proc_root)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine.
    pub fn new(
        fs: CgroupFs,
        proc_root: impl Into<PathBuf>,
        journal: Journal,
        effects: Box<dyn ExternalEffects + Send + Sync>,
    ) -> Self {
        Self {
            fs,
            proc_root: proc_root.into(),
            journal,
            effects,
        }
    }

    /// Waits for what the last release left running after its reply (systemd stopping the
    /// emptied scope): blocks; call it off the async threads.
    pub fn settle(&self) {
        crate::timing::time("engine", "wait-last-release", || self.effects.settle());
    }

    /// Reads what [`crate::engine::plan::plan`] needs about `target`: the files of every existing
    /// cgroup from the root down to the target ([`Snapshot::FILES`]) and, for engine-created
    /// pids targets, each pid's cgroup (`TargetNotFound` if a process does not exist).
    pub fn snapshot(&self, target: &Target) -> Result<Snapshot, Error> {
        self.settle();
        let mut snap = Snapshot::default();
        for p in target.snapshot_cgroups() {
            if !self.fs.exists(&p) {
                continue;
            }
            let mut files = BTreeMap::new();
            for f in Snapshot::FILES {
                if let Some(text) = self.fs.read_opt(&p, f).map_err(failed)? {
                    files.insert((*f).to_owned(), text);
                }
            }
            snap.cgroups.insert(p, files);
        }
        if let Target::Own { pids, .. } = target {
            for &pid in pids {
                match cgroup_of_pid(&self.proc_root, pid) {
                    Ok(c) => {
                        snap.pid_cgroups.insert(pid, c);
                    }
                    Err(e) if e.is_not_found() => {
                        return Err(Error::TargetNotFound(format!(
                            "process {pid} does not exist"
                        )));
                    }
                    Err(e) => return Err(failed(e)),
                }
            }
        }
        Ok(snap)
    }

    /// Whether `record`'s target still has processes (`cgroup.events` says `populated 1`; a
    /// hugepage reservation has none and is always alive); `None` if that cannot be read.
    pub fn target_alive(&self, record: &Record) -> Option<bool> {
        if record.request.target.is_reservation() {
            return Some(true);
        }
        match self
            .fs
            .read_opt(record.request.target.cgroup(), "cgroup.events")
        {
            Ok(Some(events)) => Some(events.lines().any(|l| l.trim() == "populated 1")),
            Ok(None) => Some(false),
            Err(_) => None,
        }
    }

    /// The state of a partition cgroup (`None` if the cgroup or file is gone).
    pub fn partition_state(&self, cgroup: &CgroupPath) -> Option<PartitionState> {
        self.fs
            .read_opt(cgroup, PARTITION_FILE)
            .ok()
            .flatten()
            .map(|t| parse_partition(&t))
    }

    /// Performs `plan` for `request`: the record is journalled first, each step is journalled
    /// (with its original state) before it is performed and read back after. On any failure
    /// everything done so far is undone in reverse order and the record removed; the original
    /// error is returned (with the rollback's failures appended if it could not restore
    /// everything, in which case the record stays for the next start to retry).
    ///
    /// `hooks` ([`TestHooks`]): `KVMISOLATED_CRASH_AFTER_STEP` is honoured right after a step
    /// is performed, before it is marked done.
    pub fn apply(
        &self,
        request: &Request,
        plan: &Plan,
        hooks: &TestHooks,
    ) -> Result<Record, Error> {
        let mut hook = |p: Point| {
            if let Point::AfterPerform(n) = p {
                hooks.step_performed(n);
            }
            false
        };
        self.apply_with(request, plan, &mut hook)
            .map_err(|e| e.unwrap_or_else(|| failed("interrupted")))
    }

    /// `apply` with a hook called at every [`Point`]; the hook returning `true` simulates a
    /// crash there (return at once, journal left as is): `Err(None)`.
    pub(crate) fn apply_with(
        &self,
        request: &Request,
        plan: &Plan,
        hook: &mut dyn FnMut(Point) -> bool,
    ) -> Result<Record, Option<Error>> {
        self.settle();
        let name = &request.name;
        if self.journal.contains(name) {
            return Err(Some(Error::NameExists(format!(
                "an isolation named '{name}' exists already (it has a journal record); release \
                 it first or choose another name"
            ))));
        }
        let others = self.others(name).map_err(Some)?;
        let mut record = Record::new(request, plan);
        crate::timing::time(OP, "journal-save", || self.journal.save(&record))
            .map_err(|e| Some(journal_failed(e)))?;
        for (i, step) in plan.steps.iter().enumerate() {
            let n = i + 1;
            let prepared = match crate::timing::time(OP, format!("prepare-{}", step.kind()), || {
                step::prepare(self, step, &others)
            }) {
                Ok(s) => s,
                Err(f) => return Err(Some(self.abort(record, &others, f.error))),
            };
            record.steps.push(JournalStep {
                step: prepared.clone(),
                done: false,
            });
            if let Err(e) = crate::timing::time(OP, "journal-save", || self.journal.save(&record)) {
                record.steps.pop();
                return Err(Some(self.abort(record, &others, journal_failed(e))));
            }
            if hook(Point::BeforePerform(n)) {
                return Err(None);
            }
            tracing::debug!(isolation = %name, step = n, "{}", prepared.describe());
            if let Err(f) = crate::timing::time(OP, format!("perform-{}", step.kind()), || {
                step::perform(self, &prepared)
            }) {
                if !f.touched {
                    record.steps.pop();
                }
                return Err(Some(self.abort(record, &others, f.error)));
            }
            if hook(Point::AfterPerform(n)) {
                return Err(None);
            }
            // Persisted with the next save (the next step's, or the phase `active`): replay
            // undoes a recorded step whether or not it is marked done, so a save of its own
            // would change nothing a crash could tell apart.
            if let Some(last) = record.steps.last_mut() {
                last.done = true;
            }
            if hook(Point::AfterDone(n)) {
                return Err(None);
            }
        }
        record.phase = Phase::Active;
        if let Err(e) = self.journal.save(&record) {
            return Err(Some(self.abort(record, &others, journal_failed(e))));
        }
        Ok(record)
    }

    /// The other records in the journal (shared steps look at them), from its mirror.
    fn others(&self, name: &kvmisolate_dbus::IsolationName) -> Result<Vec<Record>, Error> {
        let records = self.journal.records().map_err(journal_failed)?;
        Ok(records.into_iter().filter(|r| r.name() != name).collect())
    }

    /// Rolls back after a failed apply and builds the error to return.
    fn abort(&self, mut record: Record, others: &[Record], error: Error) -> Error {
        tracing::warn!(isolation = %record.name(), "isolation failed, rolling back: {error:?}");
        record.phase = Phase::Releasing;
        let _ = self.journal.save(&record);
        let failures = self.undo_all(&mut record, others);
        if failures.is_empty() {
            match self.journal.remove(record.name()) {
                Ok(()) => error,
                Err(e) => Error::with_context(
                    error,
                    &format!("and removing its journal record failed: {e}"),
                ),
            }
        } else {
            Error::with_context(
                error,
                &format!(
                    "rolling back also failed: {}; kvmisolated will retry at its next start",
                    failures.join("; ")
                ),
            )
        }
    }

    /// Undoes every recorded step in reverse order, continuing past failures. Steps undone
    /// are removed from the record; returns the failures.
    fn undo_all(&self, record: &mut Record, others: &[Record]) -> Vec<String> {
        self.undo_steps(record, others, None).0
    }

    /// `undo_all`, stopping (a simulated crash) after `stop_after` successful undos; the
    /// second value tells whether it stopped.
    ///
    /// The journal is saved once, at the end and only when something could not be undone
    /// (the record then holds just those steps, for the next start to retry), like the
    /// done-marks of an apply: an undo is safe to repeat, so a crash half-way, which leaves
    /// every step recorded, makes the next start undo them all again to the same result.
    /// The caller has saved the `releasing` phase before the first undo, and removes the
    /// record when nothing failed.
    fn undo_steps(
        &self,
        record: &mut Record,
        others: &[Record],
        stop_after: Option<usize>,
    ) -> (Vec<String>, bool) {
        let mut failures = Vec::new();
        let mut deferred = Vec::new();
        let mut undone = 0;
        let mut i = record.steps.len();
        while i > 0 {
            if stop_after == Some(undone) {
                return (failures, true);
            }
            i -= 1;
            let step = record.steps[i].step.clone();
            // `cpuset.cpus` restores come last, once the processes have left (moved back,
            // scope stopped): the kernel refuses to empty a populated cgroup's cpuset.cpus
            // (ENOSPC), and shrinking a partition root under a still-populated member child
            // would leave that child no CPU and invalidate its sibling partitions.
            if is_cpus_file(&step) {
                deferred.push(step);
                continue;
            }
            if self.undo_recorded(record, &step, others, &mut failures) {
                undone += 1;
            }
        }
        for step in deferred {
            if stop_after == Some(undone) {
                return (failures, true);
            }
            if self.undo_recorded(record, &step, others, &mut failures) {
                undone += 1;
            }
        }
        if !failures.is_empty()
            && let Err(e) = crate::timing::time(UNDO, "journal-save", || self.journal.save(record))
        {
            tracing::warn!("{e}");
        }
        (failures, false)
    }

    /// Undoes one step of `record`; on success drops it from the record (in memory: see
    /// [`Engine::undo_steps`]), on failure adds the reason to `failures`. Returns whether it
    /// was undone.
    fn undo_recorded(
        &self,
        record: &mut Record,
        step: &Step,
        others: &[Record],
        failures: &mut Vec<String>,
    ) -> bool {
        let undone = crate::timing::time(UNDO, format!("undo-{}", step.kind()), || {
            step::undo(self, step, others)
        });
        match undone {
            Ok(()) => {
                if let Some(pos) = record.steps.iter().rposition(|s| s.step == *step) {
                    record.steps.remove(pos);
                }
                true
            }
            Err(e) => {
                tracing::warn!(isolation = %record.name(), "cannot undo \"{}\": {e}", step.describe());
                failures.push(format!("cannot undo \"{}\": {e}", step.describe()));
                false
            }
        }
    }

    /// Releases an isolation: undoes every recorded step in reverse order (continuing past
    /// failures), then deletes the record. On failure the record stays (phase `releasing`,
    /// holding only the steps not undone) and the failures are reported.
    pub fn release(&self, record: &Record) -> Result<(), ReleaseError> {
        self.release_with(record, None)
    }

    /// `release`, simulating a crash after `stop_after` steps are undone (tests).
    pub(crate) fn release_with(
        &self,
        record: &Record,
        stop_after: Option<usize>,
    ) -> Result<(), ReleaseError> {
        self.settle();
        let name = record.name().to_string();
        let mut failures = Vec::new();
        let others = match self.others(record.name()) {
            Ok(o) => o,
            Err(e) => {
                return Err(ReleaseError {
                    name,
                    failures: vec![e.to_string()],
                });
            }
        };
        let mut rec = record.clone();
        rec.phase = Phase::Releasing;
        // The phase must be on disk before the first undo: a record still `active` whose steps
        // were undone would be adopted again by the next start.
        if let Err(e) = self.journal.save(&rec) {
            tracing::warn!(isolation = %name, "{e}; marking the record releasing instead");
            if let Err(m) = self.journal.mark_releasing(rec.name()) {
                return Err(ReleaseError {
                    name,
                    failures: vec![format!(
                        "cannot record that the release started ({e}; {m}): nothing was undone \
                         and the isolation stays as it was; make room in {} and release again",
                        self.journal.dir().display()
                    )],
                });
            }
        }
        let (undo_failures, stopped) = self.undo_steps(&mut rec, &others, stop_after);
        if stopped {
            return Err(ReleaseError {
                name,
                failures: vec!["simulated crash".to_owned()],
            });
        }
        failures.extend(undo_failures);
        if failures.is_empty()
            && let Err(e) = self.journal.remove(rec.name())
        {
            failures.push(e.to_string());
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ReleaseError { name, failures })
        }
    }

    /// Start-up: records that are `active` and whose target `is_target_alive` are returned
    /// for adoption; every other record (applying, releasing, or target gone) is released.
    pub fn replay(&self, is_target_alive: impl Fn(&Record) -> bool) -> ReplayReport {
        self.settle();
        let mut report = ReplayReport::default();
        let loaded = match self.journal.load_all() {
            Ok(l) => l,
            Err(e) => {
                report.warnings.push(e.to_string());
                return report;
            }
        };
        report.warnings = loaded.warnings;
        let mut to_release = Vec::new();
        for record in loaded.records {
            if record.phase == Phase::Active && is_target_alive(&record) {
                report.adopted.push(record);
            } else {
                to_release.push(record);
            }
        }
        // Newest first: the reverse of the order they were made in.
        to_release.sort_by_key(|r| std::cmp::Reverse(r.request.created_usec));
        for record in to_release {
            match self.release(&record) {
                Ok(()) => report.released.push(record.name().to_string()),
                Err(e) => report.failed.push(e),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::SUBTREE_CONTROL_FILE;
    use crate::engine::step::has_word;
    use crate::host::cgroupfs::EmulatedKernel;
    use crate::host::kernel::EXCLUSIVE_FILE;
    use crate::testutil::*;
    use kvmisolate_dbus::CpuSet;
    use kvmisolate_dbus::options::PartitionType;

    const REASON: &str = "Cpu list in cpuset.cpus not exclusive";

    #[test]
    fn unit_remote_isolate_and_release_restore_byte_for_byte() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let before = t.state();
        let rec = t.isolate(&t.unit_request("vm", "2-3")).unwrap();
        assert_eq!(rec.phase, Phase::Active);
        assert!(rec.steps.iter().all(|s| s.done));
        assert_eq!(t.read("machine.slice/vm.scope", PARTITION_FILE), "root\n");
        assert_eq!(t.read("machine.slice/vm.scope", EXCLUSIVE_FILE), "2-3\n");
        // The target's cpuset.cpus is left alone: the remote partition takes its CPUs from
        // cpuset.cpus.exclusive.
        assert_eq!(t.read("machine.slice/vm.scope", "cpuset.cpus"), "\n");
        assert_eq!(t.read("machine.slice", EXCLUSIVE_FILE), "2-3\n");
        assert!(has_word(&t.read("", SUBTREE_CONTROL_FILE), "cpuset"));
        assert!(has_word(
            &t.read("machine.slice", SUBTREE_CONTROL_FILE),
            "cpuset"
        ));
        assert_eq!(t.engine.journal.load(rec.name()).unwrap().unwrap(), rec);
        assert_eq!(
            t.engine.partition_state(&cg("machine.slice/vm.scope")),
            Some(PartitionState::Valid(PartitionType::Root))
        );
        t.engine.release(&rec).unwrap();
        t.assert_state(&before, "state");
        assert!(!t.engine.journal.contains(rec.name()));
    }

    #[test]
    fn pids_targets_without_systemd_restore_byte_for_byte() {
        for kernel in [EmulatedKernel::LINUX_6_12, EmulatedKernel::LINUX_6_1] {
            let t = FakeTree::new(kernel);
            let before = t.state();
            let rec = t.isolate(&t.pids_request("x", "4", &[100, 101])).unwrap();
            assert_eq!(rec.partition, PartitionType::Isolated);
            assert_eq!(t.read("kvmisolate/x", PARTITION_FILE), "isolated\n");
            assert_eq!(t.read("kvmisolate/x", "cgroup.procs"), "100\n101\n");
            assert_eq!(t.read("user.slice/session-1.scope", "cgroup.procs"), "");
            assert_eq!(
                cgroup_of_pid(&t.proc_root, 100).unwrap(),
                cg("kvmisolate/x")
            );
            if kernel.exclusive {
                assert_eq!(t.read("kvmisolate", EXCLUSIVE_FILE), "4\n");
                assert_eq!(t.read("kvmisolate", PARTITION_FILE), "member\n");
            } else {
                assert_eq!(t.read("kvmisolate", "cpuset.cpus"), "4\n");
                assert_eq!(t.read("kvmisolate", PARTITION_FILE), "root\n");
            }
            t.engine.release(&rec).unwrap();
            t.assert_state(&before, &format!("{kernel:?}"));
        }
    }

    #[test]
    fn rejected_partition_rolls_back_partition_first() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let before = t.state();
        let vm = cg("machine.slice/vm.scope");
        t.fs().emulate_reject_partition(&vm, Some(REASON));
        let req = t.unit_request("vm", "2");
        let err = t.isolate(&req).unwrap_err();
        let Error::PartitionRejected(msg) = err else {
            panic!("expected PartitionRejected, got {err:?}");
        };
        assert!(msg.contains(REASON), "{msg}");
        assert!(msg.contains("/machine.slice/vm.scope"), "{msg}");
        t.assert_state(&before, "state");
        assert!(!t.engine.journal.contains(&req.name));
        let writes = t.fs().emulated_writes();
        let expected = [
            "/cgroup.subtree_control=+cpuset",
            "/machine.slice/cpuset.cpus.exclusive=2",
            "/machine.slice/cgroup.subtree_control=+cpuset",
            "/machine.slice/vm.scope/cpuset.cpus.exclusive=2",
            "/machine.slice/vm.scope/cpuset.cpus.partition=isolated",
            // Rollback: strictly reverse, the partition first.
            "/machine.slice/vm.scope/cpuset.cpus.partition=member",
            "/machine.slice/vm.scope/cpuset.cpus.exclusive=",
            "/machine.slice/cgroup.subtree_control=-cpuset",
            "/machine.slice/cpuset.cpus.exclusive=",
            "/cgroup.subtree_control=-cpuset",
        ];
        assert_eq!(writes, expected);
    }

    fn names(v: &[Record]) -> Vec<String> {
        v.iter().map(|r| r.name().to_string()).collect()
    }

    #[test]
    fn systemd_scope_target_runs_external_first_and_undoes_it_last() {
        for kernel in [EmulatedKernel::LINUX_6_12, EmulatedKernel::LINUX_6_1] {
            let t = FakeTree::new(kernel);
            let before = t.state();
            let req = t.scope_request("c", "2-3", &[100]);
            let rec = t.isolate(&req).unwrap();
            assert!(
                matches!(&rec.steps[0].step, Step::External(e) if e.data["from"]["100"] == "user.slice/session-1.scope")
            );
            let scope = "kvmisolate.slice/kvmisolate-c.scope";
            assert_eq!(t.read(scope, PARTITION_FILE), "root\n");
            assert_eq!(t.read(scope, "cgroup.procs"), "100\n");
            t.fs().emulated_writes();
            t.engine.release(&rec).unwrap();
            let writes = t.fs().emulated_writes();
            assert_eq!(writes[0], format!("/{scope}/cpuset.cpus.partition=member"));
            assert_eq!(writes.last().unwrap(), "/cgroup.subtree_control=-cpuset");
            // The scope is stopped (pids moved back, cgroup removed) after every cgroup write.
            assert_eq!(
                *t.systemd_log.lock().unwrap(),
                [
                    "perform start-scope",
                    "undo start-scope (cgroup.subtree_control of / is \"memory pids\")"
                ]
            );
            t.assert_state(&before, &format!("{kernel:?}"));
        }
    }

    #[test]
    fn failing_external_step_rolls_back_what_came_before() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let before = t.state();
        let mut req = t.scope_request("c", "2-3", &[100]);
        req.pre_steps.push(crate::engine::model::ExternalStep {
            kind: "fail".into(),
            data: serde_json::Value::Null,
        });
        let err = t.isolate(&req).unwrap_err();
        assert_eq!(err, Error::Failed("external step failed".into()));
        t.assert_state(&before, "state");
        assert!(!t.engine.journal.contains(&req.name));
    }

    #[test]
    fn write_failures_roll_back_and_map_to_contract_errors() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let before = t.state();
        t.fs().emulate_fail_write(
            &cg("machine.slice"),
            EXCLUSIVE_FILE,
            Some("2-3"),
            nix::errno::Errno::EINVAL as i32,
        );
        let err = t.isolate(&t.unit_request("vm", "2-3")).unwrap_err();
        assert!(
            matches!(&err, Error::PartitionRejected(m) if m.contains("/machine.slice/cpuset.cpus.exclusive") && m.contains("exclusively")),
            "{err:?}"
        );
        t.assert_state(&before, "state");

        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let before = t.state();
        t.fs().emulate_fail_write(
            &cg("machine.slice/vm.scope"),
            PARTITION_FILE,
            Some("isolated"),
            nix::errno::Errno::EINVAL as i32,
        );
        let err = t.isolate(&t.unit_request("vm", "2")).unwrap_err();
        assert!(
            matches!(&err, Error::PartitionRejected(m) if m.contains("--partition root")),
            "{err:?}"
        );
        t.assert_state(&before, "state");

        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let before = t.state();
        t.fs().emulate_fail_write(
            &cg("machine.slice/vm.scope"),
            "cpuset.cpus.exclusive",
            Some("2"),
            nix::errno::Errno::EACCES as i32,
        );
        let err = t.isolate(&t.unit_request("vm", "2")).unwrap_err();
        assert!(
            matches!(&err, Error::Failed(m) if m.contains("Permission denied")),
            "{err:?}"
        );
        t.assert_state(&before, "state");
    }

    #[test]
    fn failed_rollback_keeps_the_record_for_the_next_start() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let before = t.state();
        let vm = cg("machine.slice/vm.scope");
        t.fs().emulate_reject_partition(&vm, Some(REASON));
        // The rollback cannot restore the partition file...
        t.fs().emulate_fail_write(
            &vm,
            PARTITION_FILE,
            Some("member"),
            nix::errno::Errno::EIO as i32,
        );
        let req = t.unit_request("vm", "2");
        let err = t.isolate(&req).unwrap_err();
        let Error::PartitionRejected(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains(REASON)
                && msg.contains("rolling back also failed")
                && msg.contains("retry"),
            "{msg}"
        );
        let kept = t.engine.journal.load(&req.name).unwrap().unwrap();
        assert_eq!(kept.phase, Phase::Releasing);
        assert_eq!(
            kept.steps.len(),
            1,
            "only the step that could not be undone stays"
        );
        // ...until the next start, when it can.
        t.fs()
            .emulate_fail_write(&vm, PARTITION_FILE, Some("member"), 0);
        let report = t.engine.replay(|_| true);
        assert_eq!(report.released, ["vm"]);
        t.assert_state(&before, "state");
    }

    #[test]
    fn release_continues_past_failures_and_reports_them() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let before = t.state();
        let rec = t.isolate(&t.unit_request("vm", "2-3")).unwrap();
        let vm = cg("machine.slice/vm.scope");
        t.fs()
            .emulate_fail_write(&vm, EXCLUSIVE_FILE, None, nix::errno::Errno::EIO as i32);
        let err = t.engine.release(&rec).unwrap_err();
        assert_eq!(err.failures.len(), 1, "{err}");
        assert!(err.to_string().contains("cpuset.cpus.exclusive"), "{err}");
        // Everything else was restored.
        assert_eq!(t.read("", SUBTREE_CONTROL_FILE), "memory pids\n");
        let kept = t.engine.journal.load(rec.name()).unwrap().unwrap();
        assert_eq!(kept.steps.len(), 1);
        t.fs().emulate_fail_write(&vm, EXCLUSIVE_FILE, None, 0);
        t.engine.release(&kept).unwrap();
        t.assert_state(&before, "state");
    }

    #[test]
    fn overlapping_ancestors_restore_in_either_release_order() {
        for kernel in [EmulatedKernel::LINUX_6_12, EmulatedKernel::LINUX_6_1] {
            for first_released in [0, 1] {
                let t = FakeTree::new(kernel);
                let before = t.state();
                let reqs = if kernel.exclusive {
                    [
                        t.unit_request_for("vm.scope", "a", "2-3"),
                        t.unit_request_for("vm2.scope", "b", "4-5"),
                    ]
                } else {
                    [
                        t.pids_request("a", "2-3", &[100]),
                        t.pids_request("b", "4-5", &[101]),
                    ]
                };
                let ra = t.isolate(&reqs[0]).unwrap();
                let after_a = t.state();
                let rb = t.isolate(&reqs[1]).unwrap();
                let shared = if kernel.exclusive {
                    ("machine.slice", EXCLUSIVE_FILE)
                } else {
                    ("kvmisolate", "cpuset.cpus")
                };
                assert_eq!(t.read(shared.0, shared.1), "2-5\n");
                let recs = [ra, rb];
                t.engine.release(&recs[first_released]).unwrap();
                let left = if first_released == 0 {
                    "4-5\n"
                } else {
                    "2-3\n"
                };
                assert_eq!(t.read(shared.0, shared.1), left);
                // The other isolation is intact.
                let other = &recs[1 - first_released];
                assert_eq!(
                    t.engine.partition_state(&other.partitions[0]),
                    Some(PartitionState::Valid(PartitionType::Root))
                );
                if !kernel.exclusive {
                    assert_eq!(
                        t.read("kvmisolate", PARTITION_FILE),
                        "root\n",
                        "still needed"
                    );
                }
                if first_released == 1 {
                    t.assert_state(
                        &after_a,
                        "releasing the second gives back the state after the first",
                    );
                }
                t.engine.release(other).unwrap();
                t.assert_state(
                    &before,
                    &format!("{kernel:?} first released {first_released}"),
                );
            }
        }
    }

    type MakeReq = fn(&FakeTree) -> Request;

    struct Scenario {
        what: &'static str,
        kernel: EmulatedKernel,
        prior: &'static [MakeReq],
        req: MakeReq,
    }

    fn scenarios() -> Vec<Scenario> {
        let k12 = EmulatedKernel::LINUX_6_12;
        let k61 = EmulatedKernel::LINUX_6_1;
        vec![
            Scenario {
                what: "unit 6.12",
                kernel: k12,
                prior: &[],
                req: |t| t.unit_request("vm", "2-3"),
            },
            Scenario {
                what: "pids 6.12",
                kernel: k12,
                prior: &[],
                req: |t| t.pids_request("x", "4", &[100, 101]),
            },
            Scenario {
                what: "pids 6.1",
                kernel: k61,
                prior: &[],
                req: |t| t.pids_request("x", "4", &[100, 101]),
            },
            Scenario {
                what: "scope 6.12",
                kernel: k12,
                prior: &[],
                req: |t| t.scope_request("c", "2-3", &[100]),
            },
            Scenario {
                what: "scope 6.1",
                kernel: k61,
                prior: &[],
                req: |t| t.scope_request("c", "2-3", &[100]),
            },
            Scenario {
                what: "second unit 6.12",
                kernel: k12,
                prior: &[|t| t.unit_request_for("vm.scope", "a", "2-3")],
                req: |t| t.unit_request_for("vm2.scope", "b", "4-5"),
            },
            Scenario {
                what: "second pids 6.12",
                kernel: k12,
                prior: &[|t| t.pids_request("a", "2", &[100])],
                req: |t| t.pids_request("b", "3-4", &[101]),
            },
            Scenario {
                what: "second pids 6.1",
                kernel: k61,
                prior: &[|t| t.pids_request("a", "2", &[100])],
                req: |t| t.pids_request("b", "3-4", &[101]),
            },
            Scenario {
                what: "second scope 6.1",
                kernel: k61,
                prior: &[|t| t.scope_request("a", "2", &[100])],
                req: |t| t.scope_request("b", "3-4", &[101]),
            },
        ]
    }

    /// SIGKILL at every point of an Isolate (step k journalled but not performed, performed but
    /// not marked done, marked done), then a restart: the isolation is fully restored and the
    /// ones made before are adopted untouched.
    #[test]
    fn replay_restores_after_a_crash_at_every_step() {
        for sc in scenarios() {
            let probe = FakeTree::new(sc.kernel);
            for p in sc.prior {
                probe.isolate(&p(&probe)).unwrap();
            }
            let n = probe.plan(&(sc.req)(&probe)).unwrap().steps.len();
            let mut points = Vec::new();
            for k in 1..=n {
                points.extend([
                    Point::BeforePerform(k),
                    Point::AfterPerform(k),
                    Point::AfterDone(k),
                ]);
            }
            for point in points {
                let t = FakeTree::new(sc.kernel);
                let pristine = t.state();
                let prior: Vec<Record> = sc
                    .prior
                    .iter()
                    .map(|p| t.isolate(&p(&t)).unwrap())
                    .collect();
                let before = t.state();
                let req = (sc.req)(&t);
                let plan = t.plan(&req).unwrap();
                let r = t.engine.apply_with(&req, &plan, &mut |p| p == point);
                assert!(matches!(r, Err(None)), "{}: {point:?}: {r:?}", sc.what);
                let rec = t.engine.journal.load(&req.name).unwrap().unwrap();
                assert_eq!(rec.phase, Phase::Applying);
                let report = t.engine.replay(|_| true);
                assert_eq!(
                    names(&report.adopted),
                    names(&prior),
                    "{}: {point:?}",
                    sc.what
                );
                assert_eq!(
                    report.released,
                    [req.name.to_string()],
                    "{}: {point:?}",
                    sc.what
                );
                assert!(
                    report.failed.is_empty(),
                    "{}: {point:?}: {:?}",
                    sc.what,
                    report.failed
                );
                t.assert_state(&before, &format!("{}: {point:?}", sc.what));
                for p in &prior {
                    t.engine.release(p).unwrap();
                }
                t.assert_state(&pristine, &format!("{}: {point:?}", sc.what));
            }
        }
    }

    /// A fresh tree with the scenario's prior isolations and its request applied: the tree,
    /// the prior records, the state before the request, and its record.
    fn isolated(sc: &Scenario) -> (FakeTree, Vec<Record>, BTreeMap<String, Vec<u8>>, Record) {
        let t = FakeTree::new(sc.kernel);
        let prior: Vec<Record> = sc
            .prior
            .iter()
            .map(|p| t.isolate(&p(&t)).unwrap())
            .collect();
        let before = t.state();
        let rec = t.isolate(&(sc.req)(&t)).unwrap();
        (t, prior, before, rec)
    }

    /// SIGKILL after k steps of a Release, for every k, then a restart: fully restored.
    #[test]
    fn replay_restores_after_a_crash_during_release() {
        for sc in scenarios() {
            let probe = FakeTree::new(sc.kernel);
            for p in sc.prior {
                probe.isolate(&p(&probe)).unwrap();
            }
            let n = probe.isolate(&(sc.req)(&probe)).unwrap().steps.len();
            for k in 0..n {
                let (t, prior, before, rec) = isolated(&sc);
                assert!(t.engine.release_with(&rec, Some(k)).is_err());
                let left = t.engine.journal.load(rec.name()).unwrap().unwrap();
                assert_eq!(left.phase, Phase::Releasing);
                // The undos are not saved one by one: every step is still recorded.
                assert_eq!(left.steps.len(), n);
                let report = t.engine.replay(|_| true);
                assert_eq!(names(&report.adopted), names(&prior));
                assert_eq!(report.released, [rec.name().to_string()]);
                t.assert_state(&before, &format!("{}: crash after {k} undos", sc.what));
            }
        }
    }

    fn journal_files(t: &FakeTree) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(t.engine.journal.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A full (or failing) file system: the `releasing` phase cannot be saved, the release
    /// goes on on the strength of the marker, a crash stops it half-way, and the next start
    /// finishes the undo instead of adopting the half-undone isolation.
    #[test]
    fn replay_finishes_a_release_whose_phase_could_not_be_saved() {
        for sc in scenarios() {
            let probe = FakeTree::new(sc.kernel);
            for p in sc.prior {
                probe.isolate(&p(&probe)).unwrap();
            }
            let n = probe.isolate(&(sc.req)(&probe)).unwrap().steps.len();
            for k in 1..n {
                let (t, prior, before, rec) = isolated(&sc);
                t.engine
                    .journal
                    .faults
                    .saves
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                assert!(t.engine.release_with(&rec, Some(k)).is_err());
                // What is on disk still says `active`, with every step.
                let raw: Record = serde_json::from_slice(
                    &std::fs::read(t.engine.journal.path_of(rec.name())).unwrap(),
                )
                .unwrap();
                assert_eq!((raw.phase, raw.steps.len()), (Phase::Active, n));
                // The target lives: without the marker it would be adopted.
                let report = t.engine.replay(|_| true);
                let what = format!("{}: crash after {k} undos, no space", sc.what);
                assert_eq!(names(&report.adopted), names(&prior), "{what}");
                assert_eq!(report.released, [rec.name().to_string()], "{what}");
                t.assert_state(&before, &what);
                assert!(!t.engine.journal.contains(rec.name()), "{what}");
            }
        }
    }

    #[test]
    fn a_release_that_can_record_nothing_undoes_nothing() {
        use std::sync::atomic::Ordering::SeqCst;
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let before = t.state();
        let rec = t.isolate(&t.unit_request("vm", "2-3")).unwrap();
        let isolated = t.state();
        t.engine.journal.faults.saves.store(true, SeqCst);
        t.engine.journal.faults.markers.store(true, SeqCst);
        let e = t.engine.release(&rec).unwrap_err();
        assert!(e.to_string().contains("nothing was undone"), "{e}");
        t.assert_state(&isolated, "still isolated, every step in force");
        assert_eq!(journal_files(&t), ["vm.json"]);
        // A restart adopts it whole (it is whole); with room again it releases.
        assert_eq!(names(&t.engine.replay(|_| true).adopted), ["vm"]);
        t.engine.journal.faults.markers.store(false, SeqCst);
        t.engine.release(&rec).unwrap();
        t.assert_state(&before, "released with the marker only");
        assert!(journal_files(&t).is_empty(), "{:?}", journal_files(&t));
    }

    #[test]
    fn a_record_of_a_newer_version_is_restored_not_adopted() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let before = t.state();
        let rec = t.isolate(&t.unit_request("vm", "2-3")).unwrap();
        let path = t.engine.journal.path_of(rec.name());
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v["version"] = serde_json::json!(crate::engine::journal::RECORD_VERSION + 1);
        v["something-new"] = serde_json::json!([1, 2]);
        std::fs::write(&path, v.to_string()).unwrap();
        let report = t.engine.replay(|_| true);
        assert!(report.adopted.is_empty());
        assert_eq!(report.released, ["vm"]);
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("newer kvmisolated")),
            "{:?}",
            report.warnings
        );
        t.assert_state(&before, "restored");
        assert!(journal_files(&t).is_empty());
    }

    #[test]
    fn replay_adopts_living_targets_and_releases_dead_ones() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let before = t.state();
        let a = t
            .isolate(&t.unit_request_for("vm.scope", "a", "2-3"))
            .unwrap();
        let after_a = t.state();
        let b = t.isolate(&t.pids_request("b", "4", &[101])).unwrap();
        let report = t.engine.replay(|r| r.name().as_str() == "a");
        assert_eq!(names(&report.adopted), ["a"]);
        assert_eq!(report.adopted[0], a);
        assert_eq!(report.released, [b.name().to_string()]);
        t.assert_state(&after_a, "state");
        // Adoption changes nothing; a second replay adopts again.
        let again = t.engine.replay(|_| true);
        assert_eq!(names(&again.adopted), ["a"]);
        t.assert_state(&after_a, "state");
        t.engine.release(&a).unwrap();
        t.assert_state(&before, "state");
        assert!(t.engine.journal.load_all().unwrap().records.is_empty());
    }

    #[test]
    fn a_target_that_vanished_is_released_cleanly() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        t.isolate(&t.unit_request("vm", "2-3")).unwrap();
        // The unit stops: systemd removes its cgroup (procs gone first).
        let vm = cg("machine.slice/vm.scope");
        t.fs()
            .write(&CgroupPath::root(), "cgroup.procs", "200")
            .unwrap();
        t.fs().rmdir(&vm).unwrap();
        let report = t.engine.replay(|_| false);
        assert_eq!(report.released, ["vm"]);
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert!(!t.fs().exists(&vm));
        assert_eq!(t.read("", SUBTREE_CONTROL_FILE), "memory pids\n");
    }

    #[test]
    fn isolate_and_release_read_no_journal_file_once_loaded() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let other = t.isolate(&t.pids_request("other", "4", &[101])).unwrap();
        // As at a start: the journal is read once (the replay), then served from memory.
        t.engine.journal.load_all().unwrap();
        let reads = t.engine.journal.reads();
        let rec = t.isolate(&t.pids_request("vm", "2-3", &[100])).unwrap();
        t.engine.release(&rec).unwrap();
        t.engine.release(&other).unwrap();
        assert_eq!(t.engine.journal.reads(), reads);
        assert!(t.engine.journal.load_all().unwrap().records.is_empty());
    }

    /// A release saves the record once (its `releasing` phase) before the first undo, then
    /// removes it: the undos are not saved one by one, as an undo is safe to repeat (a crash
    /// half-way leaves every step recorded and the next start undoes them all again).
    #[test]
    fn a_release_saves_its_record_once() {
        for (kernel, req) in [
            (
                EmulatedKernel::LINUX_6_12,
                FakeTree::unit_request as fn(&FakeTree, &str, &str) -> Request,
            ),
            (
                EmulatedKernel::LINUX_6_1,
                |t: &FakeTree, n: &str, c: &str| t.pids_request(n, c, &[100]),
            ),
        ] {
            let t = FakeTree::new(kernel);
            let before = t.state();
            let rec = t.isolate(&req(&t, "vm", "2-3")).unwrap();
            let saves = t.engine.journal.saves();
            t.engine.release(&rec).unwrap();
            let n = t.engine.journal.saves() - saves;
            eprintln!(
                "{kernel:?}: {} steps, {n} journal saves per release",
                rec.steps.len()
            );
            assert_eq!(n, 1, "{kernel:?}");
            t.assert_state(&before, &format!("{kernel:?}"));
        }
    }

    #[test]
    fn name_with_a_record_is_refused_by_apply() {
        let t = FakeTree::new(EmulatedKernel::LINUX_6_12);
        let req = t.unit_request("vm", "2");
        let plan = t.plan(&req).unwrap();
        t.engine.apply(&req, &plan, &TestHooks::none()).unwrap();
        let err = t.engine.apply(&req, &plan, &TestHooks::none()).unwrap_err();
        assert!(matches!(err, Error::NameExists(_)), "{err:?}");
    }

    mod sequences {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Isolate {
                target: u8,
                cpus: Vec<u32>,
                reject: bool,
            },
            Crash {
                target: u8,
                cpus: Vec<u32>,
                at: usize,
            },
            Release(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            let cpus = proptest::collection::vec(1u32..6, 1..3);
            prop_oneof![
                (0u8..5, cpus.clone(), proptest::bool::weighted(0.15)).prop_map(
                    |(target, cpus, reject)| Op::Isolate {
                        target,
                        cpus,
                        reject
                    }
                ),
                (0u8..5, cpus, 0usize..30).prop_map(|(target, cpus, at)| Op::Crash {
                    target,
                    cpus,
                    at
                }),
                (0usize..4).prop_map(Op::Release),
            ]
        }

        fn request(t: &FakeTree, target: u8, cpus: &[u32]) -> Request {
            let list: CpuSet = cpus.iter().copied().collect();
            let c = list.to_string();
            match target {
                0 => t.unit_request_for("vm.scope", "u1", &c),
                1 => t.unit_request_for("vm2.scope", "u2", &c),
                2 => t.pids_request("p1", &c, &[100]),
                3 => t.pids_request("p2", &c, &[101]),
                _ => t.scope_request("s1", &c, &[1]),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            /// Random isolate / crash-and-restart / release sequences over a fake tree: every
            /// refusal or rollback leaves the tree as it was, a crash plus replay as it was
            /// before the crashed request, and releasing what is left restores the original
            /// byte for byte.
            #[test]
            fn random_sequences_end_restored(local in any::<bool>(), ops in proptest::collection::vec(op(), 1..10)) {
                let kernel = if local { EmulatedKernel::LINUX_6_1 } else { EmulatedKernel::LINUX_6_12 };
                let t = FakeTree::new(kernel);
                let pristine = t.state();
                let mut active: Vec<Record> = Vec::new();
                for op in ops {
                    let before = t.state();
                    match op {
                        Op::Isolate { target, cpus, reject } => {
                            let req = request(&t, target, &cpus);
                            if reject {
                                t.fs().emulate_reject_partition(req.target.cgroup(), Some(REASON));
                            }
                            match t.isolate(&req) {
                                Ok(rec) => {
                                    prop_assert!(!reject);
                                    prop_assert!(active.iter().all(|a| a.cpus().is_disjoint(rec.cpus())));
                                    active.push(rec);
                                }
                                Err(_) => t.assert_state(&before, "after a refused isolate"),
                            }
                            t.fs().emulate_reject_partition(req.target.cgroup(), None);
                        }
                        Op::Crash { target, cpus, at } => {
                            let req = request(&t, target, &cpus);
                            if let Ok(plan) = t.plan(&req) {
                                let k = at % (3 * plan.steps.len());
                                let point = match k % 3 {
                                    0 => Point::BeforePerform(k / 3 + 1),
                                    1 => Point::AfterPerform(k / 3 + 1),
                                    _ => Point::AfterDone(k / 3 + 1),
                                };
                                let r = t.engine.apply_with(&req, &plan, &mut |p| p == point);
                                prop_assert!(matches!(r, Err(None)));
                                let report = t.engine.replay(|_| true);
                                prop_assert_eq!(report.adopted.len(), active.len());
                                prop_assert!(report.failed.is_empty());
                                t.assert_state(&before, "after the op");
                            }
                        }
                        Op::Release(i) => {
                            if !active.is_empty() {
                                let rec = active.remove(i % active.len());
                                t.engine.release(&rec).unwrap();
                                for a in &active {
                                    let state = t.engine.partition_state(&a.partitions[0]);
                                    prop_assert!(matches!(state, Some(PartitionState::Valid(_))));
                                }
                            }
                        }
                    }
                }
                for rec in active.iter().rev() {
                    t.engine.release(rec).unwrap();
                }
                t.assert_state(&pristine, "at the end");
            }
        }
    }
}
