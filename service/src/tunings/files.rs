//! How each kind of tuned file is read, written, verified and restored.
//!
//! The kernel's files do not read back what was written: THP shows every word with the
//! selected one in brackets, masks come back zero-padded with commas, the unbound workqueue
//! mask reads back without the CPUs that partitions took. A [`Codec`] knows, for one kind of
//! file, which text is the *value* (what to journal and to write back) and when a write took.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kvmisolate_dbus::CpuSet;
use serde::{Deserialize, Serialize};

/// The kind of a tuned file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Codec {
    /// A plain value (`120`, `-1`, `performance`), compared as trimmed text.
    Text,
    /// A kernel cpulist (`0-1,6`), compared as a set.
    CpuList,
    /// A hex CPU mask (`ff`, `00000000,000000ff`), compared as a set.
    CpuMask,
    /// The unbound workqueue mask: the value is `cpumask_requested` where the kernel has it
    /// (the mask the user asked for, before partitions took their CPUs).
    WorkqueueMask,
    /// A list of words with the selected one in brackets (`always [madvise] never`).
    Selected,
    /// A page count (`nr_hugepages`); what the kernel really allocated is read back.
    Count,
    /// A file of ours that did not exist before (a systemd drop-in).
    OwnFile,
}

/// Why a tuned file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The OS refused.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// `read` or `write`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The write was accepted but the file reads back something else.
    #[error("{} reads back {found:?} after writing {wrote:?}", path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What was written.
        wrote: String,
        /// What it reads now.
        found: String,
    },
    /// The request cannot be met on this host (said in full).
    #[error("{0}")]
    Impossible(String),
    /// The file's content is not in the expected format.
    #[error("{} holds {text:?}, which is not {what}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Its content.
        text: String,
        /// What was expected.
        what: &'static str,
    },
}

impl FileError {
    /// The errno of an I/O error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

fn read_raw(path: &Path) -> Result<String, FileError> {
    fs::read_to_string(path).map_err(|source| FileError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })
}

/// Writes `value` the way sysfs and procfs want it: one `write(2)` of the whole value.
fn write_raw(path: &Path, value: &str) -> Result<(), FileError> {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(!is_kernel_file(path))
        .open(path)
        .map_err(|source| FileError::Io {
            op: "write",
            path: path.to_owned(),
            source,
        })?;
    f.write_all(value.as_bytes())
        .map_err(|source| FileError::Io {
            op: "write",
            path: path.to_owned(),
            source,
        })
}

/// procfs/sysfs files ignore O_TRUNC, but a fake tree in a test directory needs it.
fn is_kernel_file(path: &Path) -> bool {
    path.starts_with("/proc") || path.starts_with("/sys")
}

/// The selected word of `always [madvise] never`.
pub fn selected_word(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find(|w| w.starts_with('[') && w.ends_with(']') && w.len() > 2)
        .map(|w| &w[1..w.len() - 1])
}

/// The words a `Selected` file offers, brackets removed.
pub fn offered_words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_owned())
        .collect()
}

fn requested_sibling(path: &Path) -> PathBuf {
    path.with_file_name("cpumask_requested")
}

impl Codec {
    /// The file's current *value* (`None`: an [`Codec::OwnFile`] that does not exist).
    pub fn read(self, path: &Path) -> Result<Option<String>, FileError> {
        match self {
            Self::OwnFile => match fs::read_to_string(path) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(FileError::Io {
                    op: "read",
                    path: path.to_owned(),
                    source,
                }),
            },
            Self::Selected => {
                let text = read_raw(path)?;
                selected_word(&text)
                    .map(|w| Some(w.to_owned()))
                    .ok_or_else(|| FileError::Format {
                        path: path.to_owned(),
                        text: text.trim().to_owned(),
                        what: "a list of words with one in [brackets]",
                    })
            }
            Self::WorkqueueMask => {
                let req = requested_sibling(path);
                let source = if req.exists() { req } else { path.to_owned() };
                Ok(Some(read_raw(&source)?.trim().to_owned()))
            }
            _ => Ok(Some(read_raw(path)?.trim().to_owned())),
        }
    }

    fn same(self, path: &Path, wrote: &str, found: &str) -> Result<bool, FileError> {
        let set = |text: &str, hex: bool| {
            let parsed = if hex {
                CpuSet::from_hex_mask(text)
            } else {
                CpuSet::parse(text)
            };
            parsed.map_err(|_| FileError::Format {
                path: path.to_owned(),
                text: text.to_owned(),
                what: if hex { "a CPU mask" } else { "a CPU list" },
            })
        };
        Ok(match self {
            Self::CpuList => set(wrote, false)? == set(found, false)?,
            Self::CpuMask | Self::WorkqueueMask => set(wrote, true)? == set(found, true)?,
            Self::Count => true,
            Self::OwnFile => wrote == found,
            Self::Text | Self::Selected => wrote.trim() == found.trim(),
        })
    }

    /// Writes `value` and reads it back; returns what the file holds now (for [`Codec::Count`],
    /// the count the kernel really reached, which may be less).
    pub fn write(self, path: &Path, value: &str) -> Result<String, FileError> {
        if self == Self::OwnFile {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(|source| FileError::Io {
                    op: "create directory for",
                    path: path.to_owned(),
                    source,
                })?;
            }
            let tmp = path.with_extension("tmp");
            fs::write(&tmp, value).map_err(|source| FileError::Io {
                op: "write",
                path: tmp.clone(),
                source,
            })?;
            fs::rename(&tmp, path).map_err(|source| FileError::Io {
                op: "rename to",
                path: path.to_owned(),
                source,
            })?;
            return Ok(value.to_owned());
        }
        write_raw(path, value)?;
        if self == Self::WorkqueueMask {
            // The effective mask reads back without the CPUs partitions took (6.8+): it must
            // be a non-empty part of what was written.
            let found = read_raw(path)?.trim().to_owned();
            let (w, f) = (
                CpuSet::from_hex_mask(value).ok(),
                CpuSet::from_hex_mask(&found).ok(),
            );
            return match (w, f) {
                (Some(w), Some(f)) if !f.is_empty() && f.is_subset(&w) => Ok(found),
                _ => Err(FileError::Mismatch {
                    path: path.to_owned(),
                    wrote: value.to_owned(),
                    found,
                }),
            };
        }
        let found = self.read(path)?.unwrap_or_default();
        if !self.same(path, value, &found)? {
            return Err(FileError::Mismatch {
                path: path.to_owned(),
                wrote: value.to_owned(),
                found,
            });
        }
        Ok(found)
    }

    /// Puts `original` (as [`Codec::read`] returned it) back.
    pub fn restore(self, path: &Path, original: Option<&str>) -> Result<(), FileError> {
        match (self, original) {
            (Self::OwnFile, None) => {
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(FileError::Io {
                            op: "remove",
                            path: path.to_owned(),
                            source,
                        });
                    }
                }
                // The drop-in directory was ours too when it is empty now.
                if let Some(dir) = path.parent() {
                    let _ = fs::remove_dir(dir);
                }
                Ok(())
            }
            (_, None) => Ok(()),
            (Self::Count, Some(v)) => {
                // A pool that cannot shrink (pages in use) keeps them as surplus: not an error.
                write_raw(path, v)
            }
            (codec, Some(v)) => codec.write(path, v).map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn selected_words() {
        assert_eq!(selected_word("always [madvise] never\n"), Some("madvise"));
        assert_eq!(
            selected_word("always defer defer+madvise [madvise] never"),
            Some("madvise")
        );
        assert_eq!(selected_word("always madvise never"), None);
        assert_eq!(selected_word("[] x"), None);
        assert_eq!(
            offered_words("[always] madvise never"),
            vec!["always", "madvise", "never"]
        );
    }

    #[test]
    fn round_trips_on_a_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        let thp = dir.path().join("enabled");
        fs::write(&thp, "always [madvise] never\n").unwrap();
        assert_eq!(
            Codec::Selected.read(&thp).unwrap().as_deref(),
            Some("madvise")
        );
        // The fake file does not bracket what is written: a mismatch is reported.
        let e = Codec::Selected.write(&thp, "never").unwrap_err();
        assert!(e.to_string().contains("not a list of words"), "{e}");

        let mask = dir.path().join("default_smp_affinity");
        fs::write(&mask, "00000000,0000003f\n").unwrap();
        assert_eq!(
            Codec::CpuMask.read(&mask).unwrap().as_deref(),
            Some("00000000,0000003f")
        );
        Codec::CpuMask.write(&mask, "33").unwrap();
        Codec::CpuMask
            .restore(&mask, Some("00000000,0000003f"))
            .unwrap();
        assert_eq!(fs::read_to_string(&mask).unwrap(), "00000000,0000003f");

        let wq = dir.path().join("cpumask");
        fs::write(&wq, "f3\n").unwrap();
        fs::write(dir.path().join("cpumask_requested"), "ff\n").unwrap();
        assert_eq!(
            Codec::WorkqueueMask.read(&wq).unwrap().as_deref(),
            Some("ff")
        );

        let own = dir.path().join("x.service.d/50-kvmisolate.conf");
        assert_eq!(Codec::OwnFile.read(&own).unwrap(), None);
        Codec::OwnFile.write(&own, "[Service]\n").unwrap();
        assert_eq!(fs::read_to_string(&own).unwrap(), "[Service]\n");
        Codec::OwnFile.restore(&own, None).unwrap();
        assert!(!own.exists() && !own.parent().unwrap().exists());

        let list = dir.path().join("smp_affinity_list");
        fs::write(&list, "0-5\n").unwrap();
        Codec::CpuList.write(&list, "0-1,4-5").unwrap();
        let e = Codec::CpuList.write(&list, "x").unwrap_err();
        assert!(e.to_string().contains("not a CPU list"), "{e}");
    }
}
