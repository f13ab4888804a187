//! Replies and requests recorded from today's service and CLI before the contract was typed
//! (`fixtures/`: raw little-endian message bodies) decode with the typed contract and re-encode
//! to the same dictionaries: the wire format did not change. (The service sends its
//! dictionaries in hash order, so two encodings of one reply may order their keys apart; what a
//! client reads is compared, key by key, value by value and type by type.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use kvmisolate_dbus::options::IsolateOptions;
use kvmisolate_dbus::status::Status;
use serde::Serialize;
use serde::de::DeserializeOwned;
use zbus::wire::serialized::{Context, Data};
use zbus::wire::{LE, to_bytes};
use zbus::{OwnedVariant, Type};

fn fixture(name: &str) -> Data<'static, 'static> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Data::new(bytes, Context::new(LE, 0))
}

/// The generic reading of `a{sv}` bytes: what any client sees, key order aside.
fn generic(data: &Data<'_, '_>) -> HashMap<String, OwnedVariant> {
    data.deserialize().unwrap().0
}

/// Decodes `name` as `T`, re-encodes it and checks that both read the same.
fn round_trip<T: Serialize + DeserializeOwned + Type>(name: &str) -> T {
    assert_eq!(T::SIGNATURE.to_string(), "a{sv}");
    let recorded = fixture(name);
    let typed: T = recorded.deserialize().unwrap().0;
    let again = to_bytes(Context::new(LE, 0), &typed).unwrap();
    assert_eq!(generic(&again), generic(&recorded), "{name}");
    typed
}

#[test]
fn recorded_status_replies_round_trip() {
    let empty: Status = round_trip("status-empty.bin");
    assert!(empty.isolations.is_empty());
    assert!(empty.kernel_support.cgroup_v2);

    let tuned: Status = round_trip("status-tunings.bin");
    let iso = &tuned.isolations[0];
    assert_eq!(iso.profile, "custom");
    assert_eq!(
        iso.tunings
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["hugepages", "vmstat-interval", "cpu-governor"]
    );
    assert!(iso.irqs_left().is_empty());

    let degraded: Status = round_trip("status-degraded.bin");
    assert_eq!(degraded.isolations[0].state, "degraded");
    assert!(!degraded.warnings.is_empty());

    let libvirt: Status = round_trip("status-libvirt-hugepages.bin");
    assert_eq!(libvirt.isolations.len(), 2);
    assert!(libvirt.isolations.iter().any(|i| i.partition == "none"));
}

#[test]
fn recorded_isolate_options_round_trip() {
    for name in [
        "options-pids.bin",
        "options-unit-tunings.bin",
        "options-profile.bin",
        "options-libvirt.bin",
        "options-reservation.bin",
    ] {
        round_trip::<IsolateOptions>(name);
    }
}
