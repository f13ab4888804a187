//! The kernel's cpulist format (`0-3,8,10-11`) and hex CPU masks (`3f`, `ff,ffffffff`).
//!
//! Parsing is strict on purpose: the same text reaches cgroupfs, and anything the kernel might
//! read differently from us (spaces, empty items, reversed ranges, stride syntax) is rejected
//! with an error that names the offending item.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The largest CPU number accepted (the kernel's `NR_CPUS` cannot exceed 8192).
pub const MAX_CPU: u32 = 8191;
/// The longest cpulist text accepted, in bytes.
pub const MAX_TEXT_LEN: usize = 16 * 1024;

/// A set of CPU numbers, printed and parsed in the kernel's cpulist format.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CpuSet(BTreeSet<u32>);

/// Why a cpulist or CPU mask could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// The text is longer than [`MAX_TEXT_LEN`].
    #[error("CPU list is too long ({0} bytes, at most {MAX_TEXT_LEN})")]
    TooLong(usize),
    /// An item between commas is empty (`1,,2`, a leading or trailing comma).
    #[error("empty item in CPU list {0:?}")]
    EmptyItem(String),
    /// An item is not a number or a `from-to` range.
    #[error("{item:?} in CPU list {list:?} is not a CPU number or a range like 2-5")]
    BadItem {
        /// The offending item.
        item: String,
        /// The whole list.
        list: String,
    },
    /// A range whose end is lower than its start (`5-2`).
    #[error("range {0:?} runs backwards (write it as low-high)")]
    Reversed(String),
    /// A CPU number above [`MAX_CPU`].
    #[error("CPU {0} is beyond the largest CPU number Linux supports ({MAX_CPU})")]
    TooLarge(String),
    /// A hex mask with a bad digit or group.
    #[error("{0:?} is not a hex CPU mask")]
    BadMask(String),
}

impl CpuSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a cpulist. The empty string (or a lone newline, as sysfs prints it) is the
    /// empty set; one trailing newline is accepted, no other white space is.
    pub fn parse(text: &str) -> Result<Self, CpuListError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(CpuListError::TooLong(text.len()));
        }
        let body = text.strip_suffix('\n').unwrap_or(text);
        let mut set = BTreeSet::new();
        if body.is_empty() {
            return Ok(Self(set));
        }
        for item in body.split(',') {
            if item.is_empty() {
                return Err(CpuListError::EmptyItem(body.to_owned()));
            }
            let bad = || CpuListError::BadItem {
                item: item.to_owned(),
                list: body.to_owned(),
            };
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (
                    parse_cpu(a, item).ok_or_else(bad)??,
                    parse_cpu(b, item).ok_or_else(bad)??,
                ),
                None => {
                    let n = parse_cpu(item, item).ok_or_else(bad)??;
                    (n, n)
                }
            };
            if hi < lo {
                return Err(CpuListError::Reversed(item.to_owned()));
            }
            set.extend(lo..=hi);
        }
        Ok(Self(set))
    }

    /// Parses a hex mask as found in `smp_affinity` or workqueue `cpumask` files
    /// (`3f`, `00000000,0000003f`); bit N is CPU N.
    pub fn from_hex_mask(text: &str) -> Result<Self, CpuListError> {
        let body = text.trim_end_matches('\n');
        let bad = || CpuListError::BadMask(body.to_owned());
        if body.is_empty() || body.len() > MAX_TEXT_LEN {
            return Err(bad());
        }
        let digits: String = body.split(',').collect();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut set = BTreeSet::new();
        for (i, c) in digits.bytes().rev().enumerate() {
            let v = (c as char).to_digit(16).ok_or_else(bad)?;
            for bit in 0..4 {
                if v & (1 << bit) != 0 {
                    let cpu = u32::try_from(i * 4 + bit).map_err(|_| bad())?;
                    if cpu > MAX_CPU {
                        return Err(CpuListError::TooLarge(cpu.to_string()));
                    }
                    set.insert(cpu);
                }
            }
        }
        Ok(Self(set))
    }

    /// Formats as a hex mask in the kernel's style: 32-bit groups separated by commas, the
    /// highest group first, groups after the first zero-padded to 8 digits; `0` when empty.
    pub fn to_hex_mask(&self) -> String {
        let Some(&max) = self.0.last() else {
            return "0".to_owned();
        };
        let groups = (max / 32 + 1) as usize;
        let mut words = vec![0u32; groups];
        for &cpu in &self.0 {
            words[(cpu / 32) as usize] |= 1 << (cpu % 32);
        }
        let mut out = String::new();
        for (i, w) in words.iter().rev().enumerate() {
            if i == 0 {
                out.push_str(&format!("{w:x}"));
            } else {
                out.push_str(&format!(",{w:08x}"));
            }
        }
        out
    }

    /// Whether the set holds no CPU.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many CPUs the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    /// Adds a CPU.
    pub fn insert(&mut self, cpu: u32) -> bool {
        self.0.insert(cpu)
    }

    /// Removes a CPU.
    pub fn remove(&mut self, cpu: u32) -> bool {
        self.0.remove(&cpu)
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// The lowest CPU, if any.
    pub fn first(&self) -> Option<u32> {
        self.0.first().copied()
    }

    /// CPUs in either set.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        Self(self.0.union(&other.0).copied().collect())
    }

    /// CPUs in both sets.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        Self(self.0.intersection(&other.0).copied().collect())
    }

    /// CPUs in `self` but not in `other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        Self(self.0.difference(&other.0).copied().collect())
    }

    /// Whether every CPU of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// Whether the sets share no CPU.
    pub fn is_disjoint(&self, other: &CpuSet) -> bool {
        self.0.is_disjoint(&other.0)
    }
}

fn parse_cpu(text: &str, item: &str) -> Option<Result<u32, CpuListError>> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Leading zeros are legal for the kernel but make `010` ambiguous to readers; accept
    // them only as the single digit 0.
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    Some(match text.parse::<u64>() {
        Ok(n) if n <= u64::from(MAX_CPU) => Ok(n as u32),
        _ => Err(CpuListError::TooLarge(item.to_owned())),
    })
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut iter = self.0.iter().copied().peekable();
        let mut first = true;
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end += 1;
                iter.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

impl FromStr for CpuSet {
    type Err = CpuListError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<T: IntoIterator<Item = u32>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl serde::Serialize for CpuSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CpuSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        CpuSet::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_kernel_forms() {
        assert_eq!(
            CpuSet::parse("0-3,8,10-11").unwrap().to_string(),
            "0-3,8,10-11"
        );
        assert_eq!(CpuSet::parse("3,5,7-9\n").unwrap().to_string(), "3,5,7-9");
        assert_eq!(CpuSet::parse("").unwrap(), CpuSet::new());
        assert_eq!(CpuSet::parse("\n").unwrap(), CpuSet::new());
        assert_eq!(CpuSet::parse("5,1,2,3").unwrap().to_string(), "1-3,5");
        assert_eq!(CpuSet::parse("2-2").unwrap().to_string(), "2");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "2-",
            "-2",
            "5-2",
            "1,,2",
            ",1",
            "1,",
            " 1",
            "1 ",
            "1, 2",
            "1\t",
            "a",
            "0x3",
            "1-2-3",
            "8192",
            "99999999999999999999",
            "1-99999",
            "01",
            "+1",
            "1\n\n",
            "1:2/4",
        ] {
            assert!(CpuSet::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(
            CpuSet::parse("5-2"),
            Err(CpuListError::Reversed(_))
        ));
        assert!(matches!(
            CpuSet::parse("9000"),
            Err(CpuListError::TooLarge(_))
        ));
        let long = "1,".repeat(MAX_TEXT_LEN);
        assert!(matches!(
            CpuSet::parse(&long),
            Err(CpuListError::TooLong(_))
        ));
    }

    #[test]
    fn hex_masks() {
        assert_eq!(CpuSet::from_hex_mask("3f\n").unwrap().to_string(), "0-5");
        assert_eq!(
            CpuSet::from_hex_mask("00000000,00000023")
                .unwrap()
                .to_string(),
            "0-1,5"
        );
        assert_eq!(CpuSet::parse("0-1,5").unwrap().to_hex_mask(), "23");
        assert_eq!(CpuSet::parse("0,33").unwrap().to_hex_mask(), "2,00000001");
        assert_eq!(CpuSet::new().to_hex_mask(), "0");
        assert!(CpuSet::from_hex_mask("xyz").is_err());
        assert!(CpuSet::from_hex_mask("").is_err());
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(cpus in proptest::collection::btree_set(0u32..=MAX_CPU, 0..64)) {
            let set: CpuSet = cpus.into_iter().collect();
            let text = set.to_string();
            prop_assert_eq!(CpuSet::parse(&text).unwrap(), set.clone());
            prop_assert_eq!(CpuSet::from_hex_mask(&set.to_hex_mask()).unwrap(), set);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,64}") {
            let _ = CpuSet::parse(&text);
            let _ = CpuSet::from_hex_mask(&text);
        }

        #[test]
        fn accepted_text_is_canonical_or_equivalent(text in "[0-9,\\-]{0,24}") {
            if let Ok(set) = CpuSet::parse(&text) {
                prop_assert_eq!(CpuSet::parse(&set.to_string()).unwrap(), set);
            }
        }
    }
}
