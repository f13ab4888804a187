//! libvirt domains, isolated in place on the cgroups libvirt made for them.
//!
//! libvirt puts a running domain in `machine.slice/machine-qemu\x2d<ID>\x2d<NAME>.scope` (with
//! systemd; `machine/qemu-<ID>-<NAME>.libvirt-qemu` without) and each of its thread groups in
//! a leaf below `libvirt/`: `vcpuN`, `emulator`, `iothreadN`, whose `cpuset.cpus` hold the
//! pins of the domain XML. [`scope`] finds the scope of a domain by name, [`layout`] reads the
//! leaves and their pins, [`select`] decides which leaves become partitions (and warns about
//! pins that hurt latency).

pub mod layout;
pub mod scope;
pub mod select;

pub use layout::{Layout, Leaf, LeafKind};
pub use scope::{find_scope, find_scope_of};
pub use select::{Selection, select};

/// The longest domain name accepted (libvirt has no limit of its own; this bounds the work).
pub const MAX_DOMAIN_NAME: usize = 1024;

/// Checks a domain name as given in the `libvirt-domain` option: non-empty, bounded, no `/`
/// (libvirt refuses it too) and no control characters.
pub fn validate_domain_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("option \"libvirt-domain\" is empty; give the domain's name".to_owned());
    }
    if name.len() > MAX_DOMAIN_NAME {
        return Err(format!(
            "option \"libvirt-domain\" is longer than {MAX_DOMAIN_NAME} bytes"
        ));
    }
    if name.contains('/') {
        return Err("option \"libvirt-domain\": a domain name cannot contain '/'".to_owned());
    }
    if name.chars().any(char::is_control) {
        return Err(
            "option \"libvirt-domain\": a domain name cannot contain control characters".to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names() {
        assert!(validate_domain_name("win10").is_ok());
        assert!(validate_domain_name("my vm (gaming)").is_ok());
        for bad in ["", "a/b", "a\nb", &"x".repeat(MAX_DOMAIN_NAME + 1)] {
            assert!(validate_domain_name(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod engine_tests;
