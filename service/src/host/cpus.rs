//! The host's CPUs, as sysfs lists them under `<sysfs>/devices/system/cpu/`.

use std::io;
use std::path::{Path, PathBuf};

use kvmisolate_dbus::{CpuListError, CpuSet};

/// Why the host's CPU lists could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A sysfs file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A sysfs file does not hold a cpulist.
    #[error("{path} does not hold a CPU list: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: CpuListError,
    },
}

/// The CPUs of the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostCpus {
    /// CPUs physically present (`present`).
    pub present: CpuSet,
    /// CPUs online now (`online`).
    pub online: CpuSet,
    /// CPUs the kernel could ever bring up (`possible`).
    pub possible: CpuSet,
    /// CPUs booted `nohz_full=` (or `isolcpus=nohz`): `nohz_full`, empty when the file is
    /// missing or says `(null)`.
    pub nohz_full: CpuSet,
}

impl HostCpus {
    /// Reads `<sysfs_root>/devices/system/cpu/{present,online,possible}`.
    pub fn read(sysfs_root: &Path) -> Result<Self, HostError> {
        let dir = sysfs_root.join("devices/system/cpu");
        Ok(Self {
            present: read_list(&dir.join("present"))?,
            online: read_list(&dir.join("online"))?,
            possible: read_list(&dir.join("possible"))?,
            nohz_full: std::fs::read_to_string(dir.join("nohz_full"))
                .ok()
                .and_then(|t| CpuSet::parse(t.trim()).ok())
                .unwrap_or_default(),
        })
    }

    /// The online CPUs that are not in `isolated`: what the host keeps.
    pub fn housekeeping(&self, isolated: &CpuSet) -> CpuSet {
        self.online.difference(isolated)
    }
}

fn read_list(path: &Path) -> Result<CpuSet, HostError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostError::Io {
        path: path.to_owned(),
        source,
    })?;
    CpuSet::parse(&text).map_err(|source| HostError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sysfs_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("devices/system/cpu");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("present"), "0-7\n").unwrap();
        std::fs::write(dir.join("online"), "0-5,7\n").unwrap();
        std::fs::write(dir.join("possible"), "0-15\n").unwrap();
        let host = HostCpus::read(tmp.path()).unwrap();
        assert_eq!(host.present.to_string(), "0-7");
        assert_eq!(host.online.to_string(), "0-5,7");
        assert_eq!(host.possible.to_string(), "0-15");
        assert_eq!(
            host.housekeeping(&CpuSet::parse("2-3").unwrap())
                .to_string(),
            "0-1,4-5,7"
        );
    }

    #[test]
    fn errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let err = HostCpus::read(tmp.path()).unwrap_err();
        assert!(
            err.to_string().contains("devices/system/cpu/present"),
            "{err}"
        );
        let dir = tmp.path().join("devices/system/cpu");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["present", "online", "possible"] {
            std::fs::write(dir.join(f), "0-3\n").unwrap();
        }
        std::fs::write(dir.join("online"), "zero\n").unwrap();
        let err = HostCpus::read(tmp.path()).unwrap_err();
        assert!(matches!(err, HostError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("online"), "{err}");
    }
}
