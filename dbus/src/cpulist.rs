//! The kernel's cpulist format (`0-3,8,10-11`) and hex CPU masks (`3f`, `ff,ffffffff`).
//!
//! Parsing is strict on purpose: the same text reaches cgroupfs, and anything the kernel might
//! read differently from us (spaces, empty items, reversed ranges, stride syntax) is rejected
//! with an error that names the offending item.
//!
//! A [`CpuSet`] is a fixed-size bitset of [`MAX_CPU`]` + 1` bits, and parsing is one pass over
//! the text that sets each range a 64-bit word at a time: the cost is linear in the length of
//! the text (at most [`MAX_TEXT_LEN`] bytes) whatever the ranges say. The service parses a
//! caller's list before authorization, so this bound is what an unprivileged caller can make
//! it spend (`cargo run --release -p kvmisolate-dbus --example cpulist_bench` prints it).

use std::fmt;
use std::str::FromStr;

/// The largest CPU number accepted (the kernel's `NR_CPUS` cannot exceed 8192).
pub const MAX_CPU: u32 = 8191;
/// The longest cpulist text accepted, in bytes.
pub const MAX_TEXT_LEN: usize = 16 * 1024;

const WORDS: usize = (MAX_CPU as usize + 1) / 64;
/// How much of a list an error message quotes.
const QUOTE_LEN: usize = 64;

/// A set of CPU numbers (0 to [`MAX_CPU`]), printed and parsed in the kernel's cpulist format.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CpuSet {
    // Boxed: 1 KiB inline would make every type holding a set that large.
    words: Box<[u64; WORDS]>,
}

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

impl Default for CpuSet {
    fn default() -> Self {
        Self {
            words: Box::new([0; WORDS]),
        }
    }
}

/// `text` cut to [`QUOTE_LEN`] characters for an error message (`...` marks a cut).
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LEN) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

impl CpuSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a cpulist. The empty string (or a lone newline, as sysfs prints it) is the
    /// empty set; one trailing newline is accepted, no other white space is. Linear in the
    /// length of `text`.
    pub fn parse(text: &str) -> Result<Self, CpuListError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(CpuListError::TooLong(text.len()));
        }
        let body = text.strip_suffix('\n').unwrap_or(text);
        if body.is_empty() {
            return Ok(Self::new());
        }
        // reach[lo] = the highest end of the ranges starting at lo: each item costs O(1) and
        // one sweep over the CPUs at the end sets the bits, so overlapping wide ranges cost
        // no more than disjoint ones.
        let mut reach = vec![-1i32; MAX_CPU as usize + 1];
        let mut top = 0usize;
        for item in body.split(',') {
            if item.is_empty() {
                return Err(CpuListError::EmptyItem(quote(body)));
            }
            let bad = || CpuListError::BadItem {
                item: quote(item),
                list: quote(body),
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
                return Err(CpuListError::Reversed(quote(item)));
            }
            let r = &mut reach[lo as usize];
            *r = (*r).max(hi as i32);
            top = top.max(hi as usize);
        }
        let mut set = Self::new();
        let mut end = -1i32;
        for (cpu, &r) in reach[..=top].iter().enumerate() {
            end = end.max(r);
            if cpu as i32 <= end {
                set.words[cpu / 64] |= 1 << (cpu % 64);
            }
        }
        Ok(set)
    }

    /// Parses a hex mask as found in `smp_affinity` or workqueue `cpumask` files
    /// (`3f`, `00000000,0000003f`); bit N is CPU N.
    pub fn from_hex_mask(text: &str) -> Result<Self, CpuListError> {
        let body = text.trim_end_matches('\n');
        let bad = || CpuListError::BadMask(quote(body));
        if body.is_empty() || body.len() > MAX_TEXT_LEN {
            return Err(bad());
        }
        let mut set = Self::new();
        let mut bit = 0usize;
        for c in body.bytes().rev() {
            if c == b',' {
                continue;
            }
            let v = (c as char).to_digit(16).ok_or_else(bad)?;
            for b in 0..4 {
                if v & (1 << b) != 0 {
                    let cpu = bit + b;
                    if cpu > MAX_CPU as usize {
                        return Err(CpuListError::TooLarge(cpu.to_string()));
                    }
                    set.words[cpu / 64] |= 1 << (cpu % 64);
                }
            }
            bit += 4;
        }
        if bit == 0 {
            return Err(bad());
        }
        Ok(set)
    }

    /// Formats as a hex mask in the kernel's style: 32-bit groups separated by commas, the
    /// highest group first, groups after the first zero-padded to 8 digits; `0` when empty.
    pub fn to_hex_mask(&self) -> String {
        let Some(max) = self.last() else {
            return "0".to_owned();
        };
        let groups = (max / 32 + 1) as usize;
        let mut out = String::new();
        for g in (0..groups).rev() {
            let w = (self.words[g / 2] >> ((g % 2) * 32)) as u32;
            if g + 1 == groups {
                out.push_str(&format!("{w:x}"));
            } else {
                out.push_str(&format!(",{w:08x}"));
            }
        }
        out
    }

    /// Whether the set holds no CPU.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// How many CPUs the set holds.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The set in a sentence: `CPU 7` or `CPUs 7-9` (the same words in the service's errors
    /// and the CLI's findings).
    pub fn phrase(&self) -> String {
        if self.len() == 1 {
            format!("CPU {self}")
        } else {
            format!("CPUs {self}")
        }
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        cpu <= MAX_CPU && self.words[cpu as usize / 64] & (1 << (cpu % 64)) != 0
    }

    /// Adds a CPU; whether it was not there yet. A CPU above [`MAX_CPU`] cannot be held and
    /// is not added (`false`).
    pub fn insert(&mut self, cpu: u32) -> bool {
        if cpu > MAX_CPU || self.contains(cpu) {
            return false;
        }
        self.words[cpu as usize / 64] |= 1 << (cpu % 64);
        true
    }

    /// Removes a CPU; whether it was there.
    pub fn remove(&mut self, cpu: u32) -> bool {
        if !self.contains(cpu) {
            return false;
        }
        self.words[cpu as usize / 64] &= !(1 << (cpu % 64));
        true
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut rest = w;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros();
                rest &= rest - 1;
                Some(i as u32 * 64 + b)
            })
        })
    }

    /// The lowest CPU, if any.
    pub fn first(&self) -> Option<u32> {
        self.words
            .iter()
            .position(|&w| w != 0)
            .map(|i| i as u32 * 64 + self.words[i].trailing_zeros())
    }

    /// The highest CPU, if any.
    pub fn last(&self) -> Option<u32> {
        self.words
            .iter()
            .rposition(|&w| w != 0)
            .map(|i| i as u32 * 64 + 63 - self.words[i].leading_zeros())
    }

    fn zip(&self, other: &CpuSet, f: impl Fn(u64, u64) -> u64) -> CpuSet {
        let mut out = Self::new();
        for (o, (a, b)) in out
            .words
            .iter_mut()
            .zip(self.words.iter().zip(other.words.iter()))
        {
            *o = f(*a, *b);
        }
        out
    }

    /// CPUs in either set.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        self.zip(other, |a, b| a | b)
    }

    /// CPUs in both sets.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        self.zip(other, |a, b| a & b)
    }

    /// CPUs in `self` but not in `other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        self.zip(other, |a, b| a & !b)
    }

    /// Whether every CPU of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.words
            .iter()
            .zip(other.words.iter())
            .all(|(a, b)| a & !b == 0)
    }

    /// Whether the sets share no CPU.
    pub fn is_disjoint(&self, other: &CpuSet) -> bool {
        self.words
            .iter()
            .zip(other.words.iter())
            .all(|(a, b)| a & b == 0)
    }
}

/// Sets compare as their ascending CPU lists do (as a sorted set of numbers would).
impl Ord for CpuSet {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.iter().cmp(other.iter())
    }
}

impl PartialOrd for CpuSet {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
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
    // More than five digits is beyond MAX_CPU whatever they are (and would not fit a u64).
    if text.len() > 5 {
        return Some(Err(CpuListError::TooLarge(quote(item))));
    }
    Some(match text.parse::<u32>() {
        Ok(n) if n <= MAX_CPU => Ok(n),
        _ => Err(CpuListError::TooLarge(quote(item))),
    })
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut iter = self.iter().peekable();
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

/// CPUs above [`MAX_CPU`] are left out.
impl FromIterator<u32> for CpuSet {
    fn from_iter<T: IntoIterator<Item = u32>>(iter: T) -> Self {
        let mut set = Self::new();
        for cpu in iter {
            set.insert(cpu);
        }
        set
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
    fn phrases() {
        assert_eq!(CpuSet::parse("7").unwrap().phrase(), "CPU 7");
        assert_eq!(CpuSet::parse("7-9").unwrap().phrase(), "CPUs 7-9");
    }

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

    /// The worst case of the issue: the longest list of the widest ranges.
    pub(crate) fn worst_case_list() -> String {
        let mut text = String::new();
        while text.len() + "1-8191,".len() + "1-8191".len() <= MAX_TEXT_LEN {
            text.push_str("1-8191,");
        }
        text.push_str("1-8191");
        text
    }

    #[test]
    fn the_longest_list_of_the_widest_ranges_parses() {
        let text = worst_case_list();
        assert!(text.len() <= MAX_TEXT_LEN);
        let set = CpuSet::parse(&text).unwrap();
        assert_eq!(set.len(), 8191);
        assert_eq!(set.to_string(), "1-8191");
        // An error about such a list quotes a bounded part of it.
        let e = CpuSet::parse(&format!("{}x", &text[..text.len() - 1])).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
    }

    #[test]
    fn set_operations_on_word_boundaries() {
        let a = CpuSet::parse("0,63-64,127,8191").unwrap();
        let b = CpuSet::parse("63,128-130").unwrap();
        assert_eq!(a.len(), 5);
        assert_eq!(a.first(), Some(0));
        assert_eq!(a.last(), Some(8191));
        assert_eq!(a.union(&b).to_string(), "0,63-64,127-130,8191");
        assert_eq!(a.intersection(&b).to_string(), "63");
        assert_eq!(a.difference(&b).to_string(), "0,64,127,8191");
        assert!(CpuSet::parse("63").unwrap().is_subset(&a));
        assert!(!b.is_subset(&a));
        assert!(CpuSet::parse("1-62").unwrap().is_disjoint(&a));
        let mut c = CpuSet::new();
        assert!(c.insert(64) && !c.insert(64) && !c.insert(MAX_CPU + 1));
        assert!(c.remove(64) && !c.remove(64) && c.is_empty());
        assert_eq!(CpuSet::new().first(), None);
        assert!(CpuSet::parse("2").unwrap() < CpuSet::parse("10").unwrap());
        assert!(CpuSet::parse("1,9").unwrap() < CpuSet::parse("2").unwrap());
        assert_eq!(
            CpuSet::parse("0-8191").unwrap().to_hex_mask().len(),
            256 * 9 - 1
        );
    }

    proptest! {
        #[test]
        fn behaves_like_a_sorted_set(
            a in proptest::collection::btree_set(0u32..=MAX_CPU, 0..64),
            b in proptest::collection::btree_set(0u32..=MAX_CPU, 0..64),
        ) {
            let (sa, sb): (CpuSet, CpuSet) = (a.iter().copied().collect(), b.iter().copied().collect());
            prop_assert_eq!(sa.iter().collect::<Vec<_>>(), a.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(sa.union(&sb).iter().collect::<Vec<_>>(), a.union(&b).copied().collect::<Vec<_>>());
            prop_assert_eq!(sa.intersection(&sb).iter().collect::<Vec<_>>(), a.intersection(&b).copied().collect::<Vec<_>>());
            prop_assert_eq!(sa.difference(&sb).iter().collect::<Vec<_>>(), a.difference(&b).copied().collect::<Vec<_>>());
            prop_assert_eq!(sa.is_subset(&sb), a.is_subset(&b));
            prop_assert_eq!(sa.is_disjoint(&sb), a.is_disjoint(&b));
            prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
            prop_assert_eq!(sa.len(), a.len());
        }

        #[test]
        fn ranges_set_exactly_their_cpus(lo in 0u32..=MAX_CPU, len in 0u32..300) {
            let hi = (lo + len).min(MAX_CPU);
            let set = CpuSet::parse(&format!("{lo}-{hi}")).unwrap();
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), (lo..=hi).collect::<Vec<_>>());
        }

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
