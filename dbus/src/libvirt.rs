//! The libvirt integration's shared vocabulary: the domain-XML metadata namespace, and the
//! `[vm.NAME]` section of `/etc/kvmisolate/kvmisolate.toml` that both the service (which
//! validates the file) and the libvirt hook (which acts on it) read.

use std::fmt;
use std::str::FromStr;

use crate::tunings::HugepageSpec;

/// The namespace of kvmisolate's element in a domain's `<metadata>`:
/// `<kvmisolate:isolate xmlns:kvmisolate="https://kvmisolate.org/xmlns/libvirt/1" .../>`.
pub const METADATA_NS: &str = "https://kvmisolate.org/xmlns/libvirt/1";

/// The local name of that element.
pub const METADATA_ELEMENT: &str = "isolate";

/// What the hook does when a domain's CPUs conflict with an active isolation or the host's
/// limits at `prepare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Refuse to start the domain (the default).
    #[default]
    Fail,
    /// Start it anyway, unisolated, with a warning.
    Warn,
}

impl FromStr for OnConflict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail" => Ok(Self::Fail),
            "warn" => Ok(Self::Warn),
            other => Err(format!(
                "on-conflict must be 'fail' or 'warn', not {other:?}"
            )),
        }
    }
}

/// Hugepages for a domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VmHugepages {
    /// Exactly the domain's memory, in the page size of its `<memoryBacking><hugepages>`, when
    /// it has one (the default); none otherwise.
    #[default]
    Auto,
    /// None reserved.
    None,
    /// This pool.
    Spec(HugepageSpec),
}

impl FromStr for VmHugepages {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            spec => spec.parse().map(Self::Spec).map_err(|e| {
                format!("hugepages must be 'auto', 'none' or a size such as 16G:1G ({e})")
            }),
        }
    }
}

impl fmt::Display for VmHugepages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::None => f.write_str("none"),
            Self::Spec(s) => write!(f, "{s}"),
        }
    }
}

/// A `[vm.NAME]` section as written (values checked by [`VmSection::validate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmSection {
    /// `profile`: none, default or realtime.
    pub profile: Option<String>,
    /// `tunings`: tuning names, instead of a profile.
    pub tunings: Option<Vec<String>>,
    /// `hugepages`: auto, none or a size.
    pub hugepages: Option<String>,
    /// `on-conflict`: fail or warn.
    pub on_conflict: Option<OnConflict>,
}

impl VmSection {
    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = &self.profile {
            p.parse::<crate::tunings::Profile>()
                .map_err(|e| format!("profile: {e}"))?;
        }
        if let Some(list) = &self.tunings {
            for t in list {
                t.parse::<crate::tunings::Tuning>()
                    .map_err(|e| format!("tunings: {e}"))?;
            }
        }
        if self.profile.is_some() && self.tunings.is_some() {
            return Err("give either profile or tunings, not both".to_owned());
        }
        if let Some(h) = &self.hugepages {
            h.parse::<VmHugepages>()
                .map_err(|e| format!("hugepages: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn values() {
        assert_eq!("auto".parse::<VmHugepages>(), Ok(VmHugepages::Auto));
        assert_eq!("none".parse::<VmHugepages>(), Ok(VmHugepages::None));
        assert_eq!(
            "2G".parse::<VmHugepages>().map(|h| h.to_string()),
            Ok("2G:2M".into())
        );
        assert!("lots".parse::<VmHugepages>().is_err());
        assert_eq!("warn".parse::<OnConflict>(), Ok(OnConflict::Warn));
        assert!("maybe".parse::<OnConflict>().is_err());
        let ok = VmSection {
            profile: Some("realtime".into()),
            hugepages: Some("auto".into()),
            ..VmSection::default()
        };
        assert!(ok.validate().is_ok());
        let bad = VmSection {
            profile: Some("fast".into()),
            ..VmSection::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("profile:"));
        let both = VmSection {
            profile: Some("none".into()),
            tunings: Some(vec!["thp".into()]),
            ..VmSection::default()
        };
        assert!(both.validate().is_err());
    }
}
