//! `kvmisolate status`: the `Status()` dictionary as JSON (as the service sent it, every key),
//! and as text for people (from the typed reply, [`Status`]).

use std::collections::HashMap;
use std::fmt::Write as _;

use kvmisolate_dbus::status::{IsolationEntry, KernelSupport, Status};

use crate::words::plural;
use serde_json::{Map, Value};
use zbus::{OwnedVariant, Variant};

/// Converts a D-Bus value to JSON: numbers stay numbers, strings, object paths and signatures
/// become strings, arrays and structures become arrays, dictionaries become objects (non-string
/// keys are written as their JSON text).
pub fn variant_to_json(v: &Variant<'_>) -> Value {
    match v {
        Variant::U8(n) => Value::from(*n),
        Variant::Bool(b) => Value::Bool(*b),
        Variant::I16(n) => Value::from(*n),
        Variant::U16(n) => Value::from(*n),
        Variant::I32(n) => Value::from(*n),
        Variant::U32(n) => Value::from(*n),
        Variant::I64(n) => Value::from(*n),
        Variant::U64(n) => Value::from(*n),
        Variant::F64(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Variant::Str(s) => Value::String(s.to_string()),
        Variant::Signature(s) => Value::String(s.to_string()),
        Variant::ObjectPath(p) => Value::String(p.as_str().to_owned()),
        Variant::Variant(inner) => variant_to_json(inner),
        Variant::Array(a) => Value::Array(a.inner().iter().map(variant_to_json).collect()),
        Variant::Dict(d) => {
            let mut map = Map::new();
            for (k, v) in d.iter() {
                let k = match variant_to_json(k) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                map.insert(k, variant_to_json(v));
            }
            Value::Object(map)
        }
        Variant::Structure(s) => Value::Array(s.fields().iter().map(variant_to_json).collect()),
        #[cfg(unix)]
        Variant::Fd(fd) => Value::String(fd.to_string()),
    }
}

/// The `Status()` dictionary as a JSON object with the same keys (sorted, so the output is
/// stable).
pub fn status_to_json(status: &HashMap<String, OwnedVariant>) -> Value {
    Value::Object(
        status
            .iter()
            .map(|(k, v)| (k.clone(), variant_to_json(v)))
            .collect(),
    )
}

/// A duration in the largest two units (`45s`, `3m12s`, `2h05m`, `4d03h`).
pub fn format_age(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Formats the status for people. `now_us` is the current time in microseconds since the Unix
/// epoch, for the ages.
pub fn format_status(status: &Status, now_us: u64) -> String {
    let mut out = String::new();
    let isolations = status.isolations.as_slice();

    // The summary line.
    if isolations.is_empty() {
        let _ = write!(out, "No isolations: the host keeps all online CPUs");
        if !status.online_cpus.is_empty() {
            let _ = write!(out, " ({})", status.online_cpus);
        }
        out.push('\n');
    } else {
        let or_none = |s: &str| if s.is_empty() { "none" } else { s }.to_owned();
        let _ = writeln!(
            out,
            "{}: CPUs {} isolated, host keeps {}",
            plural(isolations.len(), "isolation", "isolations"),
            or_none(&status.isolated_cpus),
            or_none(&status.housekeeping_cpus),
        );
    }

    // The table.
    if !isolations.is_empty() {
        let header = [
            "NAME",
            "CPUS",
            "PARTITION",
            "STATE",
            "TARGET",
            "ENDS WHEN",
            "OWNER",
            "AGE",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
        let mut reasons = Vec::new();
        for iso in isolations {
            let (name, state) = (&iso.name, &iso.state);
            let age = if iso.created > 0 {
                format_age(now_us.saturating_sub(iso.created) / 1_000_000)
            } else {
                "?".to_owned()
            };
            let release_when = match iso.release_when.as_str() {
                "target-exits" => "target exits",
                "caller-disconnects" => "caller leaves",
                "released" => "released",
                other => other,
            };
            let cpus = match iso.cpus.as_str() {
                "" => "-",
                c => c,
            };
            rows.push(vec![
                name.clone(),
                cpus.to_owned(),
                iso.partition.clone(),
                state.clone(),
                iso.target.clone(),
                release_when.to_owned(),
                iso.owner_uid.to_string(),
                age,
            ]);
            if state != "active" && !iso.state_reason.is_empty() {
                reasons.push(format!("{name} is {state}: {}", iso.state_reason));
            }
            // What holds no partition (a hugepage reservation) says what it holds instead.
            if iso.partition == "none" && !iso.description.is_empty() {
                reasons.push(format!("{name}: {}", iso.description));
            }
        }
        out.push('\n');
        out.push_str(&table(&rows));
        if !reasons.is_empty() {
            out.push('\n');
            for r in reasons {
                let _ = writeln!(out, "  {r}");
            }
        }
        for iso in isolations {
            out.push_str(&format_tunings(iso));
        }
    }

    let warnings: Vec<String> = isolations
        .iter()
        .flat_map(|iso| iso.warnings.iter().map(|w| format!("{}: {w}", iso.name)))
        .chain(status.warnings.iter().cloned())
        .collect();
    if !warnings.is_empty() {
        let _ = writeln!(out, "\nWarnings:");
        for w in warnings {
            let _ = writeln!(out, "  {w}");
        }
    }

    let _ = writeln!(
        out,
        "\nKernel: {}",
        format_kernel_support(&status.kernel_support)
    );
    out
}

/// Cuts `text` to `max` characters, marking the cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The tunings of one isolation: one line each (what it is now, what it was), or nothing.
fn format_tunings(iso: &IsolationEntry) -> String {
    if iso.tunings.is_empty() {
        return String::new();
    }
    let mut out = format!("\nTunings of {} (profile {}):\n", iso.name, iso.profile);
    for t in &iso.tunings {
        let detail = match t.state.as_str() {
            "applied" if !t.current.is_empty() => {
                let mut d = format!("{} (was {})", t.current, t.original);
                if !t.reason.is_empty() {
                    d.push_str(&format!("; {}", t.reason));
                }
                d
            }
            _ => t.reason.clone(),
        };
        let _ = writeln!(
            out,
            "  {:<20} {:<8} {}",
            t.name,
            t.state,
            clip(&detail, 100)
        );
    }
    out
}

/// The `KernelSupport` dictionary in one line.
pub fn format_kernel_support(ks: &KernelSupport) -> String {
    let mut parts = Vec::new();
    if !ks.kernel_release.is_empty() {
        parts.push(format!("Linux {}", ks.kernel_release));
    }
    parts.push(
        if ks.cgroup_v2 {
            "cgroup v2 with cpuset"
        } else {
            "no cgroup v2 cpuset"
        }
        .to_owned(),
    );
    if ks.partition_types.is_empty() {
        parts.push("no partitions".to_owned());
    } else {
        parts.push(format!("partitions {}", ks.partition_types.join("+")));
    }
    parts.push(
        if ks.remote_partitions {
            "remote partitions"
        } else {
            "local partitions only (no cpuset.cpus.exclusive)"
        }
        .to_owned(),
    );
    parts.push(
        if ks.systemd {
            "systemd"
        } else {
            "without systemd"
        }
        .to_owned(),
    );
    let mut line = parts.join(", ");
    if !ks.problems.is_empty() {
        let _ = write!(
            line,
            "; isolation is not possible: {}",
            ks.problems.join("; ")
        );
    }
    line
}

/// Left-aligned columns separated by two spaces, without trailing spaces.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[c].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kvmisolate_dbus::status::{self as key, TuningRow};
    use zbus::wire::serialized::Context;
    use zbus::wire::{LE, to_bytes};
    use zbus::{Dict, Signature};

    const NOW: u64 = 1_700_000_000_000_000;

    /// An active isolation `name` on `cpus` of unit `NAME.scope`, as the service reports one.
    pub(crate) fn entry(name: &str, cpus: &str) -> IsolationEntry {
        IsolationEntry {
            name: name.to_owned(),
            object_path: format!(
                "/org/kvmisolate/Isolator1/isolation/{}",
                name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            )
            .try_into()
            .unwrap(),
            cpus: cpus.to_owned(),
            target: format!("unit:{name}.scope"),
            partition: "isolated".to_owned(),
            description: String::new(),
            state: "active".to_owned(),
            state_reason: String::new(),
            owner_uid: 1000,
            created: NOW,
            release_when: "target-exits".to_owned(),
            cgroups: vec!["machine.slice/x".to_owned()],
            profile: "default".to_owned(),
            tunings: Vec::new(),
            warnings: Vec::new(),
            irqs_left: None,
        }
    }

    /// A tuning row.
    pub(crate) fn row(name: &str, state: &str, reason: &str, orig: &str, cur: &str) -> TuningRow {
        TuningRow {
            name: name.to_owned(),
            state: state.to_owned(),
            reason: reason.to_owned(),
            original: orig.to_owned(),
            current: cur.to_owned(),
        }
    }

    /// A `Status()` reply holding `isolations`, on a host that supports everything.
    pub(crate) fn status_of(isolations: Vec<IsolationEntry>) -> Status {
        Status {
            version: "0.1.0".to_owned(),
            online_cpus: "0-7".to_owned(),
            kernel_support: KernelSupport {
                cgroup_v2: true,
                partition_types: vec!["root".to_owned(), "isolated".to_owned()],
                remote_partitions: true,
                files: vec!["cpuset.cpus.exclusive".to_owned()],
                kernel_release: "6.12.0".to_owned(),
                systemd: true,
                problems: Vec::new(),
            },
            isolations,
            ..Status::default()
        }
    }

    /// A status like the service's: two isolations, one degraded, a warning.
    fn synthetic_status() -> Status {
        let mut win10 = entry("win10", "2-3");
        win10.created = NOW - 192 * 1_000_000;
        win10.tunings = vec![
            row("vmstat-interval", "applied", "", "1", "120"),
            row(
                "cpu-governor",
                "skipped",
                "no CPU frequency scaling on this host",
                "",
                "",
            ),
        ];
        let mut build = entry("build", "4-5");
        build.partition = "root".to_owned();
        build.state = "degraded".to_owned();
        build.state_reason = "Invalid cpu list in cpuset.cpus.exclusive".to_owned();
        build.created = NOW - 7300 * 1_000_000;
        Status {
            isolated_cpus: "2-5".to_owned(),
            housekeeping_cpus: "0-1,6-7".to_owned(),
            warnings: vec!["irqbalance is running".to_owned()],
            ..status_of(vec![win10, build])
        }
    }

    /// `status` as the generic dictionary a client reads off the wire.
    fn on_the_wire(status: &Status) -> HashMap<String, OwnedVariant> {
        let bytes = to_bytes(Context::new(LE, 0), status).unwrap();
        bytes.deserialize().unwrap().0
    }

    #[test]
    fn json_keeps_keys_and_types() {
        let json = status_to_json(&on_the_wire(&synthetic_status()));
        assert_eq!(json[key::VERSION], "0.1.0");
        assert_eq!(json[key::ISOLATED_CPUS], "2-5");
        assert_eq!(json[key::KERNEL_SUPPORT][key::K_REMOTE_PARTITIONS], true);
        assert_eq!(
            json[key::KERNEL_SUPPORT][key::K_PARTITION_TYPES],
            serde_json::json!(["root", "isolated"])
        );
        let iso = &json[key::ISOLATIONS][0];
        assert_eq!(iso[key::I_NAME], "win10");
        assert_eq!(iso[key::I_OWNER_UID], 1000);
        assert_eq!(iso[key::I_CREATED], NOW - 192_000_000);
        assert_eq!(
            iso[key::I_OBJECT_PATH],
            "/org/kvmisolate/Isolator1/isolation/win10"
        );
        assert_eq!(iso[key::I_CGROUPS], serde_json::json!(["machine.slice/x"]));
        assert_eq!(
            json[key::WARNINGS],
            serde_json::json!(["irqbalance is running"])
        );
        // Sorted keys: the text is stable from one run to the next.
        let text = serde_json::to_string(&json).unwrap();
        assert!(text.starts_with("{\"housekeeping-cpus\":"), "{text}");
    }

    #[test]
    fn json_of_odd_values() {
        assert_eq!(
            variant_to_json(&Variant::from(-3i64)),
            serde_json::json!(-3)
        );
        assert_eq!(
            variant_to_json(&Variant::from(1.5f64)),
            serde_json::json!(1.5)
        );
        assert_eq!(variant_to_json(&Variant::from(f64::NAN)), Value::Null);
        assert_eq!(
            variant_to_json(&Variant::from((1u8, "a"))),
            serde_json::json!([1, "a"])
        );
        let mut d = Dict::new(&Signature::U32, &Signature::Str);
        d.append(Variant::from(7u32), Variant::from("x")).unwrap();
        assert_eq!(
            variant_to_json(&Variant::Dict(d)),
            serde_json::json!({"7": "x"})
        );
        let nested = Variant::Variant(Box::new(Variant::Variant(Box::new(Variant::from(true)))));
        assert_eq!(variant_to_json(&nested), Value::Bool(true));
    }

    #[test]
    fn human_status() {
        let text = format_status(&synthetic_status(), NOW);
        let expected = "\
2 isolations: CPUs 2-5 isolated, host keeps 0-1,6-7

NAME   CPUS  PARTITION  STATE     TARGET            ENDS WHEN     OWNER  AGE
win10  2-3   isolated   active    unit:win10.scope  target exits  1000   3m12s
build  4-5   root       degraded  unit:build.scope  target exits  1000   2h01m

  build is degraded: Invalid cpu list in cpuset.cpus.exclusive

Tunings of win10 (profile default):
  vmstat-interval      applied  120 (was 1)
  cpu-governor         skipped  no CPU frequency scaling on this host

Warnings:
  irqbalance is running

Kernel: Linux 6.12.0, cgroup v2 with cpuset, partitions root+isolated, remote partitions, systemd
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn human_status_idle_and_unsupported() {
        // As the service reports a host without cgroup v2 (every key is always sent).
        let status = Status {
            online_cpus: "0-3".to_owned(),
            kernel_support: KernelSupport {
                systemd: true,
                problems: vec!["the host runs cgroup v1 (hybrid hierarchy)".to_owned()],
                ..KernelSupport::default()
            },
            ..Status::default()
        };
        let text = format_status(&status, NOW);
        assert_eq!(
            text,
            "No isolations: the host keeps all online CPUs (0-3)\n\n\
             Kernel: no cgroup v2 cpuset, no partitions, local partitions only (no \
             cpuset.cpus.exclusive), systemd; isolation is not possible: the host runs cgroup \
             v1 (hybrid hierarchy)\n"
        );
    }

    #[test]
    fn a_reservation_says_what_it_holds() {
        let mut res = entry("hugepages-vm", "");
        res.partition = "none".to_owned();
        res.target = "reservation:vm".to_owned();
        res.description = "2 GiB of 2 MiB hugepages for domain vm".to_owned();
        res.warnings = vec!["a warning of its own".to_owned()];
        let text = format_status(&status_of(vec![res]), NOW);
        assert!(text.contains("\nhugepages-vm  -     none"), "{text}");
        assert!(
            text.contains("  hugepages-vm: 2 GiB of 2 MiB hugepages for domain vm\n"),
            "{text}"
        );
        assert!(
            text.contains("Warnings:\n  hugepages-vm: a warning of its own\n"),
            "{text}"
        );
    }

    #[test]
    fn ages() {
        assert_eq!(format_age(0), "0s");
        assert_eq!(format_age(59), "59s");
        assert_eq!(format_age(61), "1m01s");
        assert_eq!(format_age(3600 * 5 + 60 * 7), "5h07m");
        assert_eq!(format_age(86_400 * 3 + 3600), "3d01h");
    }
}
