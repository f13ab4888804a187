//! Fuzzes the cpulist and hex-mask parsers: they must never panic, and whatever they accept
//! must print back to text that parses to the same set.
#![no_main]

use kvmisolate_dbus::CpuSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(set) = CpuSet::parse(text) {
        let printed = set.to_string();
        assert_eq!(CpuSet::parse(&printed).ok(), Some(set.clone()));
        assert_eq!(CpuSet::from_hex_mask(&set.to_hex_mask()).ok(), Some(set));
    }
    if let Ok(set) = CpuSet::from_hex_mask(text) {
        assert_eq!(CpuSet::parse(&set.to_string()).ok(), Some(set));
    }
});
