//! The states `cpuset.cpus.partition` reads, and the kernel's reasons for an invalid partition
//! worded for the user.

use kvmisolate_dbus::options::PartitionType;

/// The state `cpuset.cpus.partition` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionState {
    /// `member`.
    Member,
    /// A valid partition of this type.
    Valid(PartitionType),
    /// `<type> invalid (<reason>)`; `reason` is the kernel's text (empty on 5.15).
    Invalid {
        /// The type word (`root`, `isolated`).
        word: String,
        /// The kernel's reason, verbatim.
        reason: String,
    },
    /// Anything else.
    Other(String),
}

/// Parses the content of `cpuset.cpus.partition`.
pub fn parse_partition(text: &str) -> PartitionState {
    let text = text.trim();
    let mut words = text.splitn(2, ' ');
    let word = words.next().unwrap_or("");
    let rest = words.next().unwrap_or("").trim();
    if let Some(after) = rest.strip_prefix("invalid") {
        let after = after.trim();
        let reason = after
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or(after);
        return PartitionState::Invalid {
            word: word.to_owned(),
            reason: reason.to_owned(),
        };
    }
    if !rest.is_empty() {
        return PartitionState::Other(text.to_owned());
    }
    match word {
        "member" => PartitionState::Member,
        "root" => PartitionState::Valid(PartitionType::Root),
        "isolated" => PartitionState::Valid(PartitionType::Isolated),
        _ => PartitionState::Other(text.to_owned()),
    }
}

/// The kernel's reason for an invalid partition with what it means and what to do, for the
/// reasons whose words alone don't say it.
pub fn explain_invalid(reason: &str) -> String {
    let why = match reason {
        // 6.15+: a local partition cannot take CPUs a remote partition below it holds
        "Have remote partition underneath" => {
            "a remote partition below this cgroup holds some of its CPUs (Linux 6.15+ refuses \
             a local partition over them): release that partition first, or choose other CPUs"
        }
        // 6.19+: isolated partitions and nohz_full
        "partition config conflicts with housekeeping setup" => {
            "with nohz_full= (or isolcpus=) at boot, no CPU would be left that is neither \
             nohz_full nor isolated: use --partition root, or isolate fewer CPUs"
        }
        "Cpu list in cpuset.cpus not exclusive" => {
            "another cgroup beside it holds some of these CPUs exclusively"
        }
        _ => return reason.to_owned(),
    };
    format!("{reason}: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REASON: &str = "Cpu list in cpuset.cpus not exclusive";

    #[test]
    fn explains_known_invalid_reasons() {
        let e = explain_invalid("Have remote partition underneath");
        assert!(
            e.starts_with("Have remote partition underneath: a remote partition below")
                && e.contains("release that partition"),
            "{e}"
        );
        let e = explain_invalid("partition config conflicts with housekeeping setup");
        assert!(
            e.contains("nohz_full") && e.contains("--partition root"),
            "{e}"
        );
        assert_eq!(explain_invalid("something new"), "something new");
    }

    #[test]
    fn parses_partition_states() {
        assert_eq!(parse_partition("member\n"), PartitionState::Member);
        assert_eq!(
            parse_partition("isolated\n"),
            PartitionState::Valid(PartitionType::Isolated)
        );
        assert_eq!(
            parse_partition("isolated invalid (Cpu list in cpuset.cpus not exclusive)\n"),
            PartitionState::Invalid {
                word: "isolated".into(),
                reason: REASON.into()
            }
        );
        assert_eq!(
            parse_partition("root invalid\n"),
            PartitionState::Invalid {
                word: "root".into(),
                reason: String::new()
            }
        );
        assert!(matches!(parse_partition("bogus"), PartitionState::Other(_)));
    }
}
