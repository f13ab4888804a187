//! libvirt domains as kvmisolate reads them, for the three commands that take one (the hook,
//! `check --vm`, `plan --vm`): [`domain`] reads a domain XML (never by calling libvirt: the
//! hook runs while libvirtd waits for it), [`optin`] decides whether and how a domain opts in
//! (its metadata element and its `[vm.NAME]` section of the configuration file).

pub mod domain;
pub mod optin;
