//! Finding a running domain's scope cgroup by the domain's name, by scanning cgroupfs (works
//! with and without systemd, and without machined). The naming rules are
//! [`kvmisolate_dbus::libvirt::machine`]'s (shared with `kvmisolate check --vm`):
//!
//! libvirt names the machine `qemu-<ID>-<NAME'>`, where `NAME'` is the domain name reduced to
//! what a host name may hold: letters, digits, `-` and `.`, other characters dropped, no `-`
//! or `.` at the start or repeated after another one, none at the end, and the whole name cut
//! at 64 characters. With systemd the scope is `machine-<machine name>.scope` under
//! `machine.slice`, unit-escaped (`-` inside the name becomes `\x2d`); without systemd it is
//! `<machine name>.libvirt-qemu` under `machine`.

use crate::engine::Error;

use crate::host::cgroupfs::{CgroupFs, CgroupPath};

pub use kvmisolate_dbus::libvirt::machine::{
    MACHINE_DIR, MACHINE_SLICE, machine_name, parse_scope_name, unescape_unit,
};

/// Finds the scope cgroup of running domain `domain`: a child of `machine.slice` (or
/// `machine`) whose machine name is libvirt's for this domain name and the id in it.
/// `TargetNotFound` when none is, `Failed` when several do (two names libvirt shortens alike).
pub fn find_scope(fs: &CgroupFs, domain: &str) -> Result<CgroupPath, Error> {
    find_scope_of(fs, domain, None)
}

/// [`find_scope`], where two names libvirt shortens alike (`win 11`, `win_11`) are told apart
/// by `qemu`, the cgroup of the domain's own QEMU process (from libvirt's pid file): the
/// matching scope that holds it is the domain's.
pub fn find_scope_of(
    fs: &CgroupFs,
    domain: &str,
    qemu: Option<&CgroupPath>,
) -> Result<CgroupPath, Error> {
    let mut found = Vec::new();
    for parent in [MACHINE_SLICE, MACHINE_DIR] {
        let Ok(parent) = CgroupPath::new(parent) else {
            continue;
        };
        if !fs.exists(&parent) {
            continue;
        }
        let children = fs
            .children(&parent)
            .map_err(|e| Error::Failed(e.to_string()))?;
        for child in children {
            if let Some((id, machine)) = parse_scope_name(child.file_name())
                && machine == machine_name(id, domain)
            {
                found.push(child);
            }
        }
    }
    match found.len() {
        0 => Err(Error::TargetNotFound(format!(
            "libvirt domain {domain:?} is not running: no cgroup for it under /{MACHINE_SLICE} \
             or /{MACHINE_DIR} (virsh list shows the running domains)"
        ))),
        1 => Ok(found.swap_remove(0)),
        _ if qemu.is_some_and(|q| {
            found
                .iter()
                .filter(|s| *s == q || s.is_ancestor_of(q))
                .count()
                == 1
        }) =>
        {
            let q = qemu.ok_or_else(|| Error::Failed("no QEMU cgroup".into()))?;
            found
                .into_iter()
                .find(|s| s == q || s.is_ancestor_of(q))
                .ok_or_else(|| Error::Failed("no scope holds the domain's QEMU".into()))
        }
        _ => {
            let list: Vec<String> = found.iter().map(ToString::to_string).collect();
            Err(Error::Failed(format!(
                "several running domains match the name {domain:?} once libvirt shortened it \
                 ({}); rename one of them",
                list.join(", ")
            )))
        }
    }
}
