//! Words both forms of a plan use (the reasons and the rendering), so neither imports the
//! other.

use super::GuestTopology;
use crate::words::plural;

/// `1 socket, 1 die, 3 cores, 2 threads per core`.
pub fn topology_text(g: &GuestTopology) -> String {
    format!(
        "{}, {}, {}, {} per core",
        plural(g.sockets as usize, "socket", "sockets"),
        plural(g.dies as usize, "die", "dies"),
        plural(g.cores as usize, "core", "cores"),
        plural(g.threads as usize, "thread", "threads")
    )
}
