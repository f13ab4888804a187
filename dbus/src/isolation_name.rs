//! Isolation names: 1-64 characters of `[A-Za-z0-9_.-]`, and the object paths made from them.
//!
//! A name ends up in a systemd unit name (`kvmisolate-<name>.scope`), a cgroup directory and a
//! journal file name, so it is validated once here and only the validated type travels on.

use std::fmt;

/// The longest name accepted.
pub const MAX_LEN: usize = 64;

/// A validated isolation name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct IsolationName(String);

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty string.
    #[error("the isolation name is empty (use 1-{MAX_LEN} characters of A-Z a-z 0-9 _ . -)")]
    Empty,
    /// More than [`MAX_LEN`] bytes.
    #[error("the isolation name is {0} characters long; at most {MAX_LEN} are allowed")]
    TooLong(usize),
    /// A character outside `[A-Za-z0-9_.-]`.
    #[error("the isolation name contains {0:?}; only A-Z a-z 0-9 _ . - are allowed")]
    BadChar(char),
    /// `.` or `..`, or a name starting with `.` or `-` (hidden files, option-like arguments).
    #[error("the isolation name {0:?} may not start with '.' or '-'")]
    BadStart(String),
}

impl IsolationName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_LEN {
            return Err(NameError::TooLong(name.chars().count()));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(NameError::BadChar(c));
        }
        if name.starts_with('.') || name.starts_with('-') {
            return Err(NameError::BadStart(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The object path of the isolation: the prefix plus the name with every character other
    /// than `[A-Za-z0-9]` written as `_xx` (hex), as systemd encodes unit names in paths.
    pub fn object_path(&self) -> String {
        let mut path = String::from(crate::names::ISOLATION_PATH_PREFIX);
        path.push('/');
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() {
                path.push(b as char);
            } else {
                path.push_str(&format!("_{b:02x}"));
            }
        }
        path
    }

    /// The systemd scope kvmisolate creates for a `pids` target.
    pub fn scope_unit(&self) -> String {
        format!("kvmisolate-{}.scope", self.0)
    }
}

impl fmt::Display for IsolationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IsolationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for IsolationName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        IsolationName::new(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for ok in ["win10", "a", "vm-1.gaming_2", &"x".repeat(64)] {
            assert!(IsolationName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_hostile_names() {
        assert_eq!(IsolationName::new(""), Err(NameError::Empty));
        assert!(matches!(
            IsolationName::new(&"x".repeat(65)),
            Err(NameError::TooLong(65))
        ));
        for bad in [
            "a/b", "..", ".", ".hidden", "-rf", "a\0b", "a b", "é", "a\nb", "../etc",
        ] {
            assert!(IsolationName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn object_paths_are_valid_and_distinct() {
        let a = IsolationName::new("vm-1.x_y").unwrap().object_path();
        assert_eq!(a, "/org/kvmisolate/Isolator1/isolation/vm_2d1_2ex_5fy");
        let b = IsolationName::new("vm_2d1").unwrap().object_path();
        assert_ne!(a, b);
        assert!(zbus::ObjectPath::try_from(a.as_str()).is_ok());
    }
}
