//! Which polkit actions an `Isolate` call needs, decided from what it acts on (pure).
//!
//! - `org.kvmisolate.isolate`: the caller's own target: processes whose uids are all the
//!   caller's, or a unit in the caller's `user-UID.slice` whose processes all are. The
//!   isolation follows the cgroup, so what counts is everything in it: a unit's cgroup is
//!   checked whole, and the scope a `pids` target lands in is a new one of kvmisolate's that
//!   holds only those processes (and what they fork).
//! - `org.kvmisolate.isolate-any`: anything else (another user's or root's processes, system
//!   units, system libvirt domains, hugepage reservations for a domain). It replaces
//!   `isolate`; an administrator grants it separately.
//! - `org.kvmisolate.tune-host`, in addition: what puts the whole host at risk, i.e. RT
//!   throttling off (`rt-throttling`, `fair-server`, a profile with them such as `realtime`),
//!   the split-lock mitigation off (`split-lock`: a guest may then hog the memory bus) and a
//!   hugepage pool larger than the host can spare ([`MemInfo::spare_kib`]).
//!
//! Only what the caller asks for counts: CPUs, tunings and pools an administrator wrote into
//! `[isolation.NAME]` of the configuration are the administrator's choice. uid 0 needs nothing
//! (see [`crate::bus::polkit`]). Each action carries polkit details describing the target, so a rule
//! can decide on them and the prompt says what is being done.

use kvmisolate_dbus::names;
use kvmisolate_dbus::tunings::Tuning;

use crate::bus::request::{IsolateRequest, TargetRequest};
use crate::host::meminfo::MemInfo;

/// The polkit detail keys (`action.lookup("...")` in a rule, `$(...)` in a message).
pub mod detail {
    /// The isolation's name.
    pub const NAME: &str = "name";
    /// The CPUs asked for (may be empty: the configuration's or the domain's).
    pub const CPUS: &str = "cpus";
    /// `pids`, `unit`, `libvirt-domain` or `reserve-for-domain`.
    pub const TARGET_KIND: &str = "target_kind";
    /// The target as the `Target` property shows it (`pids:1,2`, `unit:x.service`...).
    pub const TARGET: &str = "target";
    /// The uids owning the target's processes, comma-separated (`mixed` for a process
    /// whose uids differ; empty when not known, e.g. a libvirt domain).
    pub const TARGET_OWNER: &str = "target_owner";
    /// Why the target is not the caller's.
    pub const WHY: &str = "why";
    /// The host-wide tunings asked for, comma-separated.
    pub const TUNINGS: &str = "tunings";
    /// The hugepage pool asked for.
    pub const HUGEPAGES: &str = "hugepages";
}

/// What was found out about a request's target (by [`crate::daemon::orchestrator::Orchestrator::inspect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFacts {
    /// The uids owning its processes (`None`: a process whose uids differ).
    pub owners: Vec<Option<u32>>,
    /// Why it is not the caller's (`None`: it is).
    pub foreign: Option<String>,
}

/// One polkit check to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The action id.
    pub action: &'static str,
    /// Its details.
    pub details: Vec<(&'static str, String)>,
}

/// The tunings of `req` that put the whole host at risk.
pub fn risky_tunings(req: &IsolateRequest) -> Vec<Tuning> {
    let asked = match (&req.tunings.list, req.tunings.profile) {
        (Some(list), _) => list.clone(),
        (None, Some(p)) => p.tunings(),
        (None, None) => Vec::new(),
    };
    asked
        .into_iter()
        .filter(|t| {
            matches!(
                t,
                Tuning::RtThrottling | Tuning::FairServer | Tuning::SplitLock
            )
        })
        .collect()
}

/// The `pids`/`unit`/... word of a target.
pub fn target_kind(target: &TargetRequest) -> &'static str {
    match target {
        TargetRequest::Pids(_) => "pids",
        TargetRequest::Unit(_) => "unit",
        TargetRequest::Libvirt(_) => "libvirt-domain",
        TargetRequest::Reservation(_) => "reserve-for-domain",
    }
}

fn owners_text(owners: &[Option<u32>]) -> String {
    let mut words: Vec<String> = owners
        .iter()
        .map(|o| o.map_or_else(|| "mixed".to_owned(), |u| u.to_string()))
        .collect();
    words.sort();
    words.dedup();
    words.join(",")
}

/// The checks `req` needs from a caller that is not uid 0. `mem` is the host's memory now
/// (`None` if unreadable: then any pool counts as large).
pub fn asks(req: &IsolateRequest, facts: &TargetFacts, mem: Option<&MemInfo>) -> Vec<Ask> {
    let mut target_details = vec![
        (detail::NAME, req.name.to_string()),
        (detail::CPUS, req.cpus.to_string()),
        (detail::TARGET_KIND, target_kind(&req.target).to_owned()),
        (detail::TARGET, req.target.describe()),
        (detail::TARGET_OWNER, owners_text(&facts.owners)),
    ];
    let mut out = Vec::new();
    match &facts.foreign {
        None => out.push(Ask {
            action: names::ACTION_ISOLATE,
            details: target_details.clone(),
        }),
        Some(why) => {
            let mut details = target_details.clone();
            details.push((detail::WHY, why.clone()));
            out.push(Ask {
                action: names::ACTION_ISOLATE_ANY,
                details,
            });
        }
    }
    let risky = risky_tunings(req);
    let big_pool = req.tunings.hugepages.filter(|spec| match mem {
        Some(m) => spec.total_kib > m.spare_kib(),
        None => true,
    });
    if !risky.is_empty() || big_pool.is_some() {
        let words: Vec<&str> = risky.iter().map(|t| t.as_str()).collect();
        target_details.push((detail::TUNINGS, words.join(",")));
        target_details.push((
            detail::HUGEPAGES,
            big_pool.map(|s| s.to_string()).unwrap_or_default(),
        ));
        out.push(Ask {
            action: names::ACTION_TUNE_HOST,
            details: target_details,
        });
    }
    out
}

/// Why a target kind is never the caller's own (libvirt's system domains, reservations).
pub fn never_own(target: &TargetRequest) -> Option<String> {
    match target {
        TargetRequest::Libvirt(d) => Some(format!(
            "libvirt domain {d:?} is a system domain (run by libvirtd as root), not the caller's"
        )),
        TargetRequest::Reservation(d) => Some(format!(
            "a hugepage reservation for libvirt domain {d:?} is the libvirt hook's (root's)"
        )),
        TargetRequest::Pids(_) | TargetRequest::Unit(_) => None,
    }
}

/// Why processes with `owners` are not all `uid`'s (`None`: they are).
pub fn foreign_owners(what: &str, owners: &[Option<u32>], uid: u32) -> Option<String> {
    let others: Vec<Option<u32>> = owners.iter().copied().filter(|o| *o != Some(uid)).collect();
    if others.is_empty() {
        return None;
    }
    Some(format!(
        "{what} has processes of uid {}, not only of the caller (uid {uid})",
        owners_text(&others)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use zbus::{OwnedVariant, Variant};

    fn req(opts: &[(&str, Variant<'static>)]) -> IsolateRequest {
        let opts: HashMap<String, OwnedVariant> = opts
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OwnedVariant::try_from(v.clone()).unwrap()))
            .collect();
        crate::bus::request::parse("vm", "2-3", &opts).unwrap()
    }

    fn pids() -> (&'static str, Variant<'static>) {
        ("pids", Variant::from(vec![10u32, 11]))
    }

    const MEM: MemInfo = MemInfo {
        total_kib: 2 << 20,
        available_kib: 1 << 20,
    };

    fn actions(asks: &[Ask]) -> Vec<&str> {
        asks.iter().map(|a| a.action).collect()
    }

    fn get<'a>(ask: &'a Ask, key: &str) -> &'a str {
        ask.details
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn own_processes_need_isolate_others_isolate_any() {
        let r = req(&[pids()]);
        let own = TargetFacts {
            owners: vec![Some(1000), Some(1000)],
            foreign: foreign_owners("the processes", &[Some(1000), Some(1000)], 1000),
        };
        assert_eq!(own.foreign, None);
        let a = asks(&r, &own, Some(&MEM));
        assert_eq!(actions(&a), ["org.kvmisolate.isolate"]);
        assert_eq!(get(&a[0], detail::TARGET), "pids:10,11");
        assert_eq!(get(&a[0], detail::TARGET_OWNER), "1000");
        assert_eq!(get(&a[0], detail::TARGET_KIND), "pids");

        let owners = vec![Some(1000), Some(0), None];
        let theirs = TargetFacts {
            foreign: foreign_owners("the processes", &owners, 1000),
            owners,
        };
        let a = asks(&r, &theirs, Some(&MEM));
        assert_eq!(actions(&a), ["org.kvmisolate.isolate-any"]);
        assert_eq!(get(&a[0], detail::TARGET_OWNER), "0,1000,mixed");
        assert!(get(&a[0], detail::WHY).contains("uid 0,mixed"));
    }

    /// The shipped policy declares every action the service asks for, with the defaults the
    /// contract promises, and its messages only use details the service sends.
    #[test]
    fn the_shipped_policy_matches() {
        let text = include_str!("../../../polkit/org.kvmisolate.policy");
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(text, options).unwrap();
        let defaults = |id: &str| -> Vec<String> {
            let action = doc
                .descendants()
                .find(|n| n.has_tag_name("action") && n.attribute("id") == Some(id))
                .unwrap_or_else(|| panic!("no action {id}"));
            ["allow_any", "allow_inactive", "allow_active"]
                .iter()
                .map(|k| {
                    action
                        .descendants()
                        .find(|n| n.has_tag_name(*k))
                        .and_then(|n| n.text())
                        .unwrap()
                        .to_owned()
                })
                .collect()
        };
        assert_eq!(
            defaults(names::ACTION_ISOLATE),
            ["auth_admin", "auth_admin", "auth_admin_keep"]
        );
        assert_eq!(
            defaults(names::ACTION_ISOLATE_ANY),
            ["auth_admin", "auth_admin", "auth_admin"]
        );
        assert_eq!(
            defaults(names::ACTION_TUNE_HOST),
            ["auth_admin", "auth_admin", "auth_admin_keep"]
        );
        assert_eq!(
            defaults(names::ACTION_RELEASE),
            ["auth_admin", "auth_admin", "auth_admin_keep"]
        );
        let known = [
            detail::NAME,
            detail::CPUS,
            detail::TARGET_KIND,
            detail::TARGET,
            detail::TARGET_OWNER,
            detail::WHY,
            detail::TUNINGS,
            detail::HUGEPAGES,
        ];
        for message in doc.descendants().filter(|n| n.has_tag_name("message")) {
            let m = message.text().unwrap();
            for var in m.split("$(").skip(1) {
                let key = var.split(')').next().unwrap();
                assert!(known.contains(&key), "{key} in {m:?}");
            }
        }
        let rules = include_str!("../../../polkit/50-kvmisolate.rules.example");
        for action in [
            names::ACTION_ISOLATE,
            names::ACTION_ISOLATE_ANY,
            names::ACTION_TUNE_HOST,
            names::ACTION_RELEASE,
        ] {
            assert!(rules.contains(&format!("\"{action}\"")), "{action}");
        }
    }

    #[test]
    fn domains_and_reservations_are_never_the_callers() {
        let r = req(&[("libvirt-domain", Variant::from("win"))]);
        let facts = TargetFacts {
            owners: Vec::new(),
            foreign: never_own(&r.target),
        };
        let a = asks(&r, &facts, Some(&MEM));
        assert_eq!(actions(&a), ["org.kvmisolate.isolate-any"]);
        assert_eq!(get(&a[0], detail::TARGET_KIND), "libvirt-domain");
        assert_eq!(never_own(&TargetRequest::Pids(vec![1])), None);
        assert!(never_own(&TargetRequest::Reservation("x".into())).is_some());
    }

    #[test]
    fn host_wide_risk_needs_tune_host_too() {
        let own = TargetFacts {
            owners: vec![Some(1000)],
            foreign: None,
        };
        for risky in [
            req(&[pids(), ("profile", Variant::from("realtime"))]),
            req(&[pids(), ("tunings", Variant::from(vec!["rt-throttling"]))]),
            req(&[pids(), ("tunings", Variant::from(vec!["split-lock"]))]),
            req(&[
                pids(),
                ("tunings", Variant::from(vec!["thp", "fair-server"])),
            ]),
            // 1 GiB available - 256 MiB margin = 768 MiB cap, 384 MiB spare.
            req(&[pids(), ("hugepages", Variant::from("512M"))]),
        ] {
            let a = asks(&risky, &own, Some(&MEM));
            assert_eq!(
                actions(&a),
                ["org.kvmisolate.isolate", "org.kvmisolate.tune-host"],
                "{risky:?}"
            );
        }
        let a = asks(
            &req(&[pids(), ("profile", Variant::from("realtime"))]),
            &own,
            None,
        );
        assert_eq!(
            get(&a[1], detail::TUNINGS),
            "rt-throttling,fair-server,split-lock"
        );
        for fine in [
            req(&[pids(), ("profile", Variant::from("default"))]),
            req(&[pids(), ("tunings", Variant::from(vec!["thp"]))]),
            req(&[pids(), ("hugepages", Variant::from("256M"))]),
        ] {
            assert_eq!(
                actions(&asks(&fine, &own, Some(&MEM))),
                ["org.kvmisolate.isolate"],
                "{fine:?}"
            );
        }
        // Memory that cannot be read: any pool is large.
        let a = asks(
            &req(&[pids(), ("hugepages", Variant::from("2M"))]),
            &own,
            None,
        );
        assert_eq!(a.len(), 2);
        assert_eq!(get(&a[1], detail::HUGEPAGES), "2M:2M");
    }
}
