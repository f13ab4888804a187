//! Which isolations the hook may release for a domain: only its own two names
//! ([`crate::request::vm_name`], [`crate::request::reservation_name`]) and only when their target
//! is exactly that domain (`libvirt:DOMAIN`, `reservation:DOMAIN`). A lease someone else made
//! under such a name, or for another domain, is never the hook's to end.

use kvmisolate_dbus::status::Status;
use kvmisolate_dbus::target::TargetText;

use crate::request::{reservation_name, vm_name};

/// Which of the hook's leases to look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The hugepage reservation only (`prepare`, a left-over of an earlier start).
    Reservation,
    /// The isolation and the reservation (`release`).
    Both,
}

/// The names of `domain`'s leases in a `Status()` that the hook may release.
pub fn releasable(status: &Status, domain: &str, which: Which) -> Vec<String> {
    let mut wanted = vec![(
        reservation_name(domain).as_str().to_owned(),
        TargetText::Reservation(domain).to_string(),
    )];
    if which == Which::Both {
        wanted.insert(
            0,
            (
                vm_name(domain).as_str().to_owned(),
                TargetText::Libvirt(domain).to_string(),
            ),
        );
    }
    wanted
        .into_iter()
        .filter(|(name, target)| {
            status
                .isolations
                .iter()
                .any(|iso| &iso.name == name && &iso.target == target)
        })
        .map(|(name, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::{entry, status_of};

    fn status(leases: &[(&str, &str)]) -> Status {
        status_of(
            leases
                .iter()
                .map(|(n, t)| {
                    let mut e = entry(n, "2-3");
                    e.target = (*t).to_owned();
                    e
                })
                .collect(),
        )
    }

    #[test]
    fn only_exact_targets_under_the_hooks_names() {
        let w11 = vm_name("win 11");
        let r11 = reservation_name("win 11");
        let st = status(&[
            (w11.as_str(), "libvirt:win 11"),
            (r11.as_str(), "reservation:win 11"),
            ("libvirt-win_11", "libvirt:win_11"),
            ("other", "libvirt:win 11"),
        ]);
        assert_eq!(
            releasable(&st, "win 11", Which::Both),
            vec![w11.as_str().to_owned(), r11.as_str().to_owned()]
        );
        assert_eq!(
            releasable(&st, "win 11", Which::Reservation),
            vec![r11.as_str().to_owned()]
        );
        assert_eq!(
            releasable(&st, "win_11", Which::Both),
            vec!["libvirt-win_11".to_owned()]
        );
        // The hook's name, but another target (made by hand, or by an older version whose
        // names collided): left alone.
        let st = status(&[("libvirt-win_11", "libvirt:win 11")]);
        assert!(releasable(&st, "win_11", Which::Both).is_empty());
        let st = status(&[("libvirt-vm", "pids:42")]);
        assert!(releasable(&st, "vm", Which::Both).is_empty());
        assert!(releasable(&Status::default(), "vm", Which::Both).is_empty());
    }
}
