//! The libvirt hook (`kvmisolate libvirt-hook DOMAIN OPERATION SUB-OPERATION EXTRA`, the
//! domain XML on stdin), installed as `/etc/libvirt/hooks/qemu.d/kvmisolate`.
//!
//! It never calls libvirt (libvirtd waits for its hooks: a call back would deadlock) and only
//! acts on domains that opt in, by a `<kvmisolate:isolate/>` element in their `<metadata>` or a
//! `[vm.NAME]` section in `/etc/kvmisolate/kvmisolate.toml`:
//! - `prepare`: checks the domain's pins against the active isolations and the host, and
//!   refuses the start (exit 1, the reason on stderr, which `virsh start` shows) on a conflict
//!   unless `on-conflict = "warn"`;
//! - `started`: isolates the running domain in place (`Isolate` with `libvirt-domain`);
//! - `release`: releases it (the service also does by itself when the domain's cgroup empties).
//!
//! Whether a domain opts in is decided first, from the raw XML text and configuration file, so a
//! malformed `kvmisolate.toml` or a domain XML the parser rejects never stops a domain that did
//! not opt in (the error is logged and the domain starts). Only the leases the hook made for the
//! domain are released ([`leases`]).
//!
//! [`run`] is the bus side (each operation), [`check`] is `prepare`'s pure part; the domain
//! XML and the opt-in are read by [`crate::libvirt`] (shared with `check --vm` and `plan --vm`).

pub mod check;
pub mod leases;
pub mod run;

#[cfg(test)]
mod tests;
