//! The journal: one JSON record per isolation in `<run-dir>/isolations/<name>.json`.
//!
//! A record is written before the first step, and every step is appended (with the original
//! state it will change, `done: false`) and persisted *before* it is performed, then marked
//! done in the next save (replay undoes every recorded step, done or not). Each save is atomic: a temporary file in the same directory is written and fsynced,
//! renamed over the record, and the directory is fsynced. Deleting the record is the last act
//! of a release. `/run` is a tmpfs, so a reboot (which undoes every partition) empties it.
//!
//! A release that cannot save its `releasing` phase (ENOSPC, EIO) leaves an empty marker
//! `<name>.releasing` instead (a new empty file needs no data block): a record with a marker
//! is `releasing` whatever its phase says, so the next start finishes the undo rather than
//! adopting steps already undone. A release that can write neither undoes nothing.
//!
//! A record written by another version: one of a newer version is read as far as this
//! version understands it and restored (never adopted); one it cannot read stays where it is
//! and is reported (never set aside); one of an older version is migrated.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use kvmisolate_dbus::options::PartitionType;
use kvmisolate_dbus::{CpuSet, IsolationName};
use serde::{Deserialize, Serialize};

use crate::engine::model::{PartitionMode, Request, Step};
use crate::engine::plan::{ActiveIsolation, Plan};
use crate::host::cgroupfs::CgroupPath;

/// The record format version.
pub const RECORD_VERSION: u32 = 1;

/// A journal error, with the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file system operation failed.
    #[error("journal: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A record could not be serialized.
    #[error("journal: cannot encode the record of {name}: {source}")]
    Encode {
        /// The isolation.
        name: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JournalError + use<> {
    let path = path.to_owned();
    move |source| JournalError::Io { op, path, source }
}

/// Where an isolation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Steps are being performed.
    Applying,
    /// Every step was performed and verified.
    Active,
    /// Steps are being undone.
    Releasing,
}

/// A step and whether it was performed (`false`: it may or may not have been).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalStep {
    /// The step, with the original state it changes.
    pub step: Step,
    /// Whether it was performed and verified.
    pub done: bool,
}

/// The journal record of one isolation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// The request (name, CPUs, target, options, owner, caller, creation time).
    pub request: Request,
    /// The partition type chosen.
    pub partition: PartitionType,
    /// Remote or local partitions.
    pub mode: PartitionMode,
    /// The cgroups made partitions.
    pub partitions: Vec<CgroupPath>,
    /// Where the isolation is in its life.
    pub phase: Phase,
    /// The steps recorded so far, in the order performed.
    pub steps: Vec<JournalStep>,
}

impl Record {
    /// A fresh record (phase `applying`, no steps) for `request` planned as `plan`.
    pub fn new(request: &Request, plan: &Plan) -> Self {
        Self {
            version: RECORD_VERSION,
            request: request.clone(),
            partition: plan.partition,
            mode: plan.mode,
            partitions: plan.partitions.clone(),
            phase: Phase::Applying,
            steps: Vec::new(),
        }
    }

    /// The isolation's name.
    pub fn name(&self) -> &IsolationName {
        &self.request.name
    }

    /// The isolation's CPUs.
    pub fn cpus(&self) -> &CpuSet {
        &self.request.cpus
    }

    /// What the planner needs to know about this isolation.
    pub fn to_active(&self) -> ActiveIsolation {
        ActiveIsolation {
            name: self.request.name.clone(),
            cpus: self.request.cpus.clone(),
            cgroups: self.partitions.clone(),
        }
    }
}

/// What [`Journal::load_all`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The readable records, sorted by name.
    pub records: Vec<Record>,
    /// One sentence per record set aside or leftover removed.
    pub warnings: Vec<String>,
}

/// The journal directory, and its records in memory.
///
/// The files are the crash-safe truth; the memory is their mirror. [`Journal::load_all`]
/// reads the directory (once, at start-up: the replay), and every later [`Journal::save`],
/// [`Journal::mark_releasing`] and [`Journal::remove`] updates the mirror once the file is
/// written, so [`Journal::records`] and [`Journal::contains`] read no file.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    fsync: bool,
    mirror: std::sync::Arc<std::sync::Mutex<Option<Mirror>>>,
    /// Record files read so far (a figure for the benchmark and the tests).
    reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Record saves attempted so far (a figure for the benchmark and the tests).
    saves: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Tests: make saves or markers fail as a full or broken file system would.
    #[cfg(test)]
    pub(crate) faults: std::sync::Arc<Faults>,
}

/// The records as the files hold them.
#[derive(Debug, Default)]
struct Mirror {
    records: std::collections::BTreeMap<String, Record>,
    /// Records left in place that this version cannot read: their names stay taken.
    unread: std::collections::BTreeSet<String>,
}

/// Injected failures (tests).
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Every save fails with ENOSPC.
    pub saves: std::sync::atomic::AtomicBool,
    /// Creating a `releasing` marker fails with EIO.
    pub markers: std::sync::atomic::AtomicBool,
}

impl Journal {
    /// Opens (creating it, mode 0700) the journal directory, normally
    /// `<run-dir>/isolations`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, JournalError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create", &dir))?;
        Ok(Self {
            dir,
            fsync: true,
            mirror: Default::default(),
            reads: Default::default(),
            saves: Default::default(),
            #[cfg(test)]
            faults: Default::default(),
        })
    }

    /// Turns the fsyncs off (tests only: durability is what the journal is for).
    #[cfg(test)]
    pub(crate) fn set_fsync(&mut self, on: bool) {
        self.fsync = on;
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record file of `name`.
    pub fn path_of(&self, name: &IsolationName) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Whether a record of `name` exists (its name is taken, also by a record this version
    /// cannot read).
    pub fn contains(&self, name: &IsolationName) -> bool {
        if let Some(m) = self.lock().as_ref() {
            return m.records.contains_key(name.as_str()) || m.unread.contains(name.as_str());
        }
        self.path_of(name).exists()
    }

    /// Every readable record, sorted by name: from memory once [`Journal::load_all`] ran
    /// (which this calls otherwise).
    pub fn records(&self) -> Result<Vec<Record>, JournalError> {
        if let Some(m) = self.lock().as_ref() {
            return Ok(m.records.values().cloned().collect());
        }
        let loaded = self.load_all()?;
        for w in loaded.warnings {
            tracing::warn!("{w}");
        }
        Ok(loaded.records)
    }

    /// How many record files were read so far.
    pub fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Mirror>> {
        // Every update is one insert or remove: a panic elsewhere leaves it whole.
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` to the mirror, if loaded.
    fn update(&self, f: impl FnOnce(&mut Mirror)) {
        if let Some(m) = self.lock().as_mut() {
            f(m);
        }
    }

    /// The `releasing` marker of `name`.
    fn marker_of(&self, name: &IsolationName) -> PathBuf {
        self.dir.join(format!("{name}.releasing"))
    }

    /// Marks the record of `name` `releasing` without rewriting it (an empty file: see the
    /// module docs), for when [`Journal::save`] fails.
    pub fn mark_releasing(&self, name: &IsolationName) -> Result<(), JournalError> {
        let path = self.marker_of(name);
        #[cfg(test)]
        if self
            .faults
            .markers
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(io_err("create", &path)(io::Error::from_raw_os_error(
                nix::libc::EIO,
            )));
        }
        fs::File::create(&path).map_err(io_err("create", &path))?;
        self.sync_dir()?;
        self.update(|m| {
            if let Some(r) = m.records.get_mut(name.as_str()) {
                r.phase = Phase::Releasing;
            }
        });
        Ok(())
    }

    /// Record saves attempted so far ([`Journal::save`]).
    pub fn saves(&self) -> usize {
        self.saves.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes `record` atomically: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, record: &Record) -> Result<(), JournalError> {
        let name = record.name();
        self.saves
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        #[cfg(test)]
        if self.faults.saves.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io_err("write", &self.path_of(name))(
                io::Error::from_raw_os_error(nix::libc::ENOSPC),
            ));
        }
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| JournalError::Encode {
            name: name.to_string(),
            source,
        })?;
        let tmp = self.dir.join(format!(".{name}.json.tmp"));
        let target = self.path_of(name);
        {
            let mut f = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
            f.write_all(&bytes).map_err(io_err("write", &tmp))?;
            f.write_all(b"\n").map_err(io_err("write", &tmp))?;
            if self.fsync {
                f.sync_all().map_err(io_err("fsync", &tmp))?;
            }
        }
        fs::rename(&tmp, &target).map_err(io_err("rename", &target))?;
        self.sync_dir()?;
        self.update(|m| {
            m.records.insert(name.to_string(), record.clone());
        });
        Ok(())
    }

    /// Reads the record of `name`, if any.
    pub fn load(&self, name: &IsolationName) -> Result<Option<Record>, JournalError> {
        let path = self.path_of(name);
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io_err("parse", &path)(io::Error::new(io::ErrorKind::InvalidData, e)))
    }

    /// Reads every record. A record that cannot be read or parsed (or whose name does not
    /// match its file) is renamed to `<file>.corrupt` and reported in `warnings`, but one
    /// written by a newer version stays in place (reported); leftover temporary files of
    /// interrupted saves and markers without a record are removed. A record with a
    /// `releasing` marker, or of a newer version, is returned in phase `releasing`.
    pub fn load_all(&self) -> Result<Loaded, JournalError> {
        let mut out = Loaded::default();
        let mut unread = std::collections::BTreeSet::new();
        let entries = fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))?;
        let mut names: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            match entry.file_name().into_string() {
                Ok(n) => names.push(n),
                Err(n) => out.warnings.push(format!(
                    "journal: ignoring {:?} (not a record name)",
                    self.dir.join(n)
                )),
            }
        }
        names.sort();
        for file in names {
            let path = self.dir.join(&file);
            if file.starts_with('.') && file.ends_with(".tmp") {
                // An interrupted save: the record it was replacing is intact.
                if fs::remove_file(&path).is_ok() {
                    out.warnings.push(format!(
                        "journal: removed {} left by an interrupted save",
                        path.display()
                    ));
                }
                continue;
            }
            if let Some(stem) = file.strip_suffix(".releasing") {
                let record = self.dir.join(format!("{stem}.json"));
                if !record.exists() && fs::remove_file(&path).is_ok() {
                    out.warnings.push(format!(
                        "journal: removed {}, a marker whose record is gone",
                        path.display()
                    ));
                }
                continue;
            }
            let Some(stem) = file.strip_suffix(".json") else {
                continue;
            };
            match self.parse_record(&path, stem) {
                Ok(Parsed::Current(mut record)) => {
                    if self.dir.join(format!("{stem}.releasing")).exists() {
                        record.phase = Phase::Releasing;
                    }
                    out.records.push(record);
                }
                Ok(Parsed::Newer(mut record, version)) => {
                    out.warnings.push(format!(
                        "journal: record {} was written by a newer kvmisolated (record version \
                         {version}, this one reads {RECORD_VERSION}): restoring what this \
                         version knows of it instead of adopting it",
                        path.display()
                    ));
                    record.phase = Phase::Releasing;
                    out.records.push(record);
                }
                Err(ParseError::Newer(version, reason)) => {
                    unread.insert(stem.to_owned());
                    out.warnings.push(format!(
                        "journal: record {} was written by a newer kvmisolated (record version \
                     {version}) and this one cannot read it ({reason}): left in place; start \
                     that version to restore it, or restore what it records by hand",
                        path.display()
                    ))
                }
                Err(ParseError::Unreadable(reason)) => {
                    let aside = self.dir.join(format!("{file}.corrupt"));
                    let moved = fs::rename(&path, &aside);
                    let _ = self.sync_dir();
                    out.warnings.push(match moved {
                        Ok(()) => format!(
                            "journal: record {} is unreadable ({reason}); moved it to {}: what it \
                             recorded must be checked and restored by hand",
                            path.display(),
                            aside.display()
                        ),
                        Err(e) => {
                            unread.insert(stem.to_owned());
                            format!(
                                "journal: record {} is unreadable ({reason}) and could not be \
                                 moved aside ({e})",
                                path.display()
                            )
                        }
                    });
                }
            }
        }
        *self.lock() = Some(Mirror {
            records: out
                .records
                .iter()
                .map(|r| (r.name().to_string(), r.clone()))
                .collect(),
            unread,
        });
        Ok(out)
    }

    fn parse_record(&self, path: &Path, stem: &str) -> Result<Parsed, ParseError> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let unreadable = |e: &dyn std::fmt::Display| ParseError::Unreadable(e.to_string());
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = fs::read(path).map_err(|e| unreadable(&e))?;
        let version = serde_json::from_slice::<Version>(&bytes)
            .map_err(|e| unreadable(&e))?
            .version;
        let record: Record = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) if version > RECORD_VERSION => {
                return Err(ParseError::Newer(version, e.to_string()));
            }
            Err(e) => return Err(unreadable(&e)),
        };
        if record.name().as_str() != stem {
            return Err(ParseError::Unreadable(format!(
                "it belongs to {:?}",
                record.name().as_str()
            )));
        }
        match version {
            RECORD_VERSION => Ok(Parsed::Current(record)),
            v if v > RECORD_VERSION => Ok(Parsed::Newer(record, v)),
            // Version 1 is the first: there is nothing older to migrate from.
            v => Err(ParseError::Unreadable(format!(
                "unknown record version {v}"
            ))),
        }
    }

    /// Deletes the record of `name` and its marker (and fsyncs the directory); absent is fine.
    pub fn remove(&self, name: &IsolationName) -> Result<(), JournalError> {
        let path = self.path_of(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
        let marker = self.marker_of(name);
        match fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &marker)(e)),
        }
        self.sync_dir()?;
        self.update(|m| {
            m.records.remove(name.as_str());
            m.unread.remove(name.as_str());
        });
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), JournalError> {
        if !self.fsync {
            return Ok(());
        }
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", &self.dir))
    }
}

/// A record file read.
enum Parsed {
    /// This version's.
    Current(Record),
    /// A newer version's, read as far as this version understands it.
    Newer(Record, u32),
}

/// Why a record file was not read.
enum ParseError {
    /// A newer version's that this one cannot read: left in place.
    Newer(u32, String),
    /// Not a record this or any version wrote: set aside.
    Unreadable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::{ExternalStep, Target};
    use crate::engine::plan::Plan;
    use crate::testutil::{cg, cpus, name};
    use kvmisolate_dbus::options::ReleaseWhen;

    fn record(n: &str) -> Record {
        let request = Request {
            name: name(n),
            cpus: cpus("2-3"),
            target: Target::Own {
                cgroup: cg(&format!("kvmisolate/{n}")),
                pids: vec![100, 101],
                create: true,
            },
            partition: Some(PartitionType::Isolated),
            release_when: ReleaseWhen::CallerDisconnects,
            owner_uid: 1000,
            caller: Some(":1.7".into()),
            created_usec: 1_700_000_000_000_000,
            pre_steps: vec![],
            tunings: Default::default(),
        };
        let plan = Plan {
            partition: PartitionType::Isolated,
            mode: PartitionMode::Local,
            steps: vec![],
            partitions: vec![cg(&format!("kvmisolate/{n}"))],
        };
        let mut r = Record::new(&request, &plan);
        let steps = vec![
            Step::External(ExternalStep {
                kind: "start-transient-scope".into(),
                data: serde_json::json!({"unit": "x.scope", "properties": [["Delegate", true]]}),
            }),
            Step::EnableController {
                path: CgroupPath::root(),
                controller: "cpuset".into(),
                was_present: false,
            },
            Step::Mkdir {
                path: cg("kvmisolate"),
                existed: false,
            },
            Step::SharedAdd {
                path: cg("kvmisolate"),
                file: "cpuset.cpus".into(),
                original: "\n".into(),
                added: cpus("2-3"),
            },
            Step::SharedPartition {
                path: cg("kvmisolate"),
                original: "member\n".into(),
            },
            Step::MoveProcs {
                to: cg("kvmisolate/x"),
                from: [(100, cg("user.slice/a.scope")), (101, CgroupPath::root())].into(),
            },
            Step::Write {
                path: cg("kvmisolate/x"),
                file: "cpuset.cpus.partition".into(),
                original: "member\n".into(),
                value: "isolated".into(),
            },
        ];
        r.steps = steps
            .into_iter()
            .enumerate()
            .map(|(i, step)| JournalStep {
                step,
                done: i % 2 == 0,
            })
            .collect();
        r
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn every_step_kind_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path().join("run/isolations")).unwrap();
        let r = record("x");
        j.save(&r).unwrap();
        assert_eq!(j.load(r.name()).unwrap().unwrap(), r);
        let all = j.load_all().unwrap();
        assert_eq!(all.records, vec![r.clone()]);
        assert!(all.warnings.is_empty(), "{:?}", all.warnings);
        // Saved atomically: no temporary file is left, and the directory is private.
        assert_eq!(files(j.dir()), ["x.json"]);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(j.dir()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // A save replaces the record.
        let mut r2 = r.clone();
        r2.phase = Phase::Active;
        j.save(&r2).unwrap();
        assert_eq!(j.load(r.name()).unwrap().unwrap().phase, Phase::Active);
        j.remove(r.name()).unwrap();
        j.remove(r.name()).unwrap();
        assert!(!j.contains(r.name()));
        assert_eq!(j.load(r.name()).unwrap(), None);
    }

    #[test]
    fn corrupt_records_are_set_aside_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        j.save(&record("good")).unwrap();
        fs::write(
            j.dir().join("bad.json"),
            b"{\"version\": 1, \"request\": tru",
        )
        .unwrap();
        fs::write(j.dir().join("empty.json"), b"").unwrap();
        // A record whose name does not match its file name is not trusted either.
        let mut other = record("zed");
        other.request.name = name("someone-else");
        fs::write(
            j.dir().join("zed.json"),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        // An interrupted save of "good" leaves a temporary file and the old record intact.
        fs::write(j.dir().join(".good.json.tmp"), b"{half").unwrap();
        fs::write(j.dir().join("README"), b"not a record").unwrap();

        let loaded = j.load_all().unwrap();
        assert_eq!(loaded.records, vec![record("good")]);
        assert_eq!(loaded.warnings.len(), 4, "{:#?}", loaded.warnings);
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.contains("bad.json") && w.contains("bad.json.corrupt"))
        );
        assert!(loaded.warnings.iter().any(|w| w.contains("someone-else")));
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.contains("interrupted save"))
        );
        assert_eq!(
            files(j.dir()),
            [
                "README",
                "bad.json.corrupt",
                "empty.json.corrupt",
                "good.json",
                "zed.json.corrupt"
            ]
        );
        // Loading again is quiet.
        let again = j.load_all().unwrap();
        assert_eq!(again.records.len(), 1);
        assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    }

    #[test]
    fn newer_records_are_restored_or_left_in_place_never_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        // Fields this version does not know: read, and restored rather than adopted.
        let mut v = serde_json::to_value(record("newer")).unwrap();
        v["version"] = serde_json::json!(RECORD_VERSION + 1);
        v["lease-token"] = serde_json::json!("abc");
        v["steps"][0]["checked"] = serde_json::json!(true);
        fs::write(j.dir().join("newer.json"), v.to_string()).unwrap();
        // A step kind this version does not know: cannot be read, stays where it is.
        let mut w = serde_json::to_value(record("opaque")).unwrap();
        w["version"] = serde_json::json!(RECORD_VERSION + 1);
        w["steps"][0]["step"] = serde_json::json!({"kind": "teleport", "to": "mars"});
        fs::write(j.dir().join("opaque.json"), w.to_string()).unwrap();

        let loaded = j.load_all().unwrap();
        assert_eq!(loaded.records.len(), 1);
        let newer = &loaded.records[0];
        assert_eq!(newer.name().as_str(), "newer");
        assert_eq!(newer.phase, Phase::Releasing);
        assert_eq!(newer.steps, record("newer").steps);
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.contains("newer.json") && w.contains("instead of adopting")),
            "{:#?}",
            loaded.warnings
        );
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.contains("opaque.json") && w.contains("left in place")),
            "{:#?}",
            loaded.warnings
        );
        assert_eq!(files(j.dir()), ["newer.json", "opaque.json"]);
        assert!(j.contains(&name("opaque")), "its name stays taken");
    }

    #[test]
    fn a_marker_makes_a_record_releasing() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        let mut r = record("x");
        r.phase = Phase::Active;
        j.save(&r).unwrap();
        j.mark_releasing(r.name()).unwrap();
        let loaded = j.load_all().unwrap();
        assert_eq!(loaded.records[0].phase, Phase::Releasing);
        // A save fails as on a full file system; the marker needs no space.
        j.faults
            .saves
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let e = j.save(&r).unwrap_err();
        assert!(e.to_string().contains("No space left"), "{e}");
        j.remove(r.name()).unwrap();
        assert!(files(j.dir()).is_empty());
        // A marker whose record is gone is removed.
        fs::write(j.dir().join("y.releasing"), b"").unwrap();
        let loaded = j.load_all().unwrap();
        assert!(loaded.records.is_empty());
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(files(j.dir()).is_empty());
    }

    #[test]
    fn active_view() {
        let r = record("x");
        let a = r.to_active();
        assert_eq!(a.name, name("x"));
        assert_eq!(a.cpus, cpus("2-3"));
        assert_eq!(a.cgroups, vec![cg("kvmisolate/x")]);
        assert_eq!(r.cpus(), &cpus("2-3"));
    }
}
