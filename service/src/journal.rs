//! The journal: one JSON record per isolation in `<run-dir>/isolations/<name>.json`.
//!
//! A record is written before the first step, and every step is appended (with the original
//! state it will change, `done: false`) and persisted *before* it is performed, then marked
//! done. Each save is atomic: a temporary file in the same directory is written and fsynced,
//! renamed over the record, and the directory is fsynced. Deleting the record is the last act
//! of a release. `/run` is a tmpfs, so a reboot (which undoes every partition) empties it.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use kvmisolate_dbus::options::PartitionType;
use kvmisolate_dbus::{CpuSet, IsolationName};
use serde::{Deserialize, Serialize};

use crate::cgroupfs::CgroupPath;
use crate::plan::{ActiveIsolation, PartitionMode, Plan, Request, Step};

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

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    fsync: bool,
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
        Ok(Self { dir, fsync: true })
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

    /// Whether a record of `name` exists.
    pub fn contains(&self, name: &IsolationName) -> bool {
        self.path_of(name).exists()
    }

    /// Writes `record` atomically: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, record: &Record) -> Result<(), JournalError> {
        let name = record.name();
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
        self.sync_dir()
    }

    /// Reads the record of `name`, if any.
    pub fn load(&self, name: &IsolationName) -> Result<Option<Record>, JournalError> {
        let path = self.path_of(name);
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
    /// match its file) is renamed to `<file>.corrupt` and reported in `warnings`; leftover
    /// temporary files of interrupted saves are removed.
    pub fn load_all(&self) -> Result<Loaded, JournalError> {
        let mut out = Loaded::default();
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
            let Some(stem) = file.strip_suffix(".json") else {
                continue;
            };
            match self.parse_record(&path, stem) {
                Ok(record) => out.records.push(record),
                Err(reason) => {
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
                        Err(e) => format!(
                            "journal: record {} is unreadable ({reason}) and could not be moved \
                             aside ({e})",
                            path.display()
                        ),
                    });
                }
            }
        }
        Ok(out)
    }

    fn parse_record(&self, path: &Path, stem: &str) -> Result<Record, String> {
        let bytes = fs::read(path).map_err(|e| e.to_string())?;
        let record: Record = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if record.name().as_str() != stem {
            return Err(format!("it belongs to {:?}", record.name().as_str()));
        }
        if record.version != RECORD_VERSION {
            return Err(format!("unknown record version {}", record.version));
        }
        Ok(record)
    }

    /// Deletes the record of `name` (and fsyncs the directory); absent is fine.
    pub fn remove(&self, name: &IsolationName) -> Result<(), JournalError> {
        let path = self.path_of(name);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ExternalStep, Plan, Target};
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
        let mut future = record("future");
        future.version = 99;
        fs::write(
            j.dir().join("future.json"),
            serde_json::to_vec(&future).unwrap(),
        )
        .unwrap();
        // An interrupted save of "good" leaves a temporary file and the old record intact.
        fs::write(j.dir().join(".good.json.tmp"), b"{half").unwrap();
        fs::write(j.dir().join("README"), b"not a record").unwrap();

        let loaded = j.load_all().unwrap();
        assert_eq!(loaded.records, vec![record("good")]);
        assert_eq!(loaded.warnings.len(), 5, "{:#?}", loaded.warnings);
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.contains("bad.json") && w.contains("bad.json.corrupt"))
        );
        assert!(loaded.warnings.iter().any(|w| w.contains("someone-else")));
        assert!(loaded.warnings.iter().any(|w| w.contains("version 99")));
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
                "future.json.corrupt",
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
    fn active_view() {
        let r = record("x");
        let a = r.to_active();
        assert_eq!(a.name, name("x"));
        assert_eq!(a.cpus, cpus("2-3"));
        assert_eq!(a.cgroups, vec![cg("kvmisolate/x")]);
        assert_eq!(r.cpus(), &cpus("2-3"));
    }
}
