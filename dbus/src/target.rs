//! The text of an isolation's target (its `Target` property and `target` in `Status()`):
//! `KIND:WHAT`, one formatter for the service and every client.

use std::fmt;

/// An isolation's target, borrowed, for its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetText<'a> {
    /// `unit:NAME`: a systemd unit partitioned in place.
    Unit(&'a str),
    /// `pids:1,2,3`: processes moved into a cgroup of kvmisolate's own.
    Pids(&'a [u32]),
    /// `libvirt:DOMAIN`: a running libvirt domain isolated in place.
    Libvirt(&'a str),
    /// `reservation:DOMAIN`: hugepages held for a libvirt domain about to start.
    Reservation(&'a str),
}

impl fmt::Display for TargetText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unit(u) => write!(f, "unit:{u}"),
            Self::Pids(pids) => {
                f.write_str("pids:")?;
                for (i, p) in pids.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
            Self::Libvirt(d) => write!(f, "libvirt:{d}"),
            Self::Reservation(d) => write!(f, "reservation:{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        assert_eq!(TargetText::Unit("vm.scope").to_string(), "unit:vm.scope");
        assert_eq!(TargetText::Pids(&[10, 11]).to_string(), "pids:10,11");
        assert_eq!(TargetText::Pids(&[]).to_string(), "pids:");
        assert_eq!(TargetText::Libvirt("win 10").to_string(), "libvirt:win 10");
        assert_eq!(TargetText::Reservation("w").to_string(), "reservation:w");
    }
}
