//! Fuzzes isolation-name validation: an accepted name never contains a path separator, a NUL
//! or a dot-dot, and always yields a valid D-Bus object path.
#![no_main]

use kvmisolate_dbus::IsolationName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(name) = IsolationName::new(text) {
        assert!(!text.contains('/') && !text.contains('\0') && !text.starts_with('.'));
        assert!(zbus::ObjectPath::try_from(name.object_path()).is_ok());
    }
});
