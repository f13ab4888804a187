//! Readers (and the one writer) of the host's kernel interfaces: CPUs ([`cpus`]), cgroupfs
//! ([`cgroupfs`]), kernel features ([`kernel`]), memory ([`meminfo`]).

pub mod cgroupfs;
pub mod cpus;
pub mod kernel;
pub mod meminfo;

pub use cpus::{HostCpus, HostError};
