//! `kvmisolate status`: the `Status()` dictionary as JSON, and as text for people.

use std::collections::HashMap;
use std::fmt::Write as _;

use kvmisolate_dbus::status as key;
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

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn strings_of(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default()
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

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Formats the status (as converted by [`status_to_json`]) for people. `now_us` is the current
/// time in microseconds since the Unix epoch, for the ages.
pub fn format_status(status: &Value, now_us: u64) -> String {
    let mut out = String::new();
    let isolations: &[Value] = status
        .get(key::ISOLATIONS)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let isolated = str_of(status, key::ISOLATED_CPUS);
    let housekeeping = str_of(status, key::HOUSEKEEPING_CPUS);
    let online = str_of(status, key::ONLINE_CPUS);

    // The summary line.
    if isolations.is_empty() {
        let _ = write!(out, "No isolations: the host keeps all online CPUs");
        if !online.is_empty() {
            let _ = write!(out, " ({online})");
        }
        out.push('\n');
    } else {
        let isolated = if isolated.is_empty() {
            "none"
        } else {
            isolated
        };
        let housekeeping = if housekeeping.is_empty() {
            "none"
        } else {
            housekeeping
        };
        let _ = writeln!(
            out,
            "{}: CPUs {isolated} isolated, host keeps {housekeeping}",
            plural(isolations.len(), "isolation", "isolations")
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
            let name = str_of(iso, key::I_NAME);
            let state = str_of(iso, key::I_STATE);
            let owner = iso
                .get(key::I_OWNER_UID)
                .and_then(Value::as_u64)
                .map_or_else(|| "?".to_owned(), |u| u.to_string());
            let age = iso
                .get(key::I_CREATED)
                .and_then(Value::as_u64)
                .filter(|&c| c > 0)
                .map_or_else(
                    || "?".to_owned(),
                    |c| format_age(now_us.saturating_sub(c) / 1_000_000),
                );
            let release_when = match str_of(iso, key::I_RELEASE_WHEN) {
                "target-exits" => "target exits",
                "caller-disconnects" => "caller leaves",
                "released" => "released",
                other => other,
            };
            let cpus = match str_of(iso, key::I_CPUS) {
                "" => "-",
                c => c,
            };
            rows.push(vec![
                name.to_owned(),
                cpus.to_owned(),
                str_of(iso, key::I_PARTITION).to_owned(),
                state.to_owned(),
                str_of(iso, key::I_TARGET).to_owned(),
                release_when.to_owned(),
                owner,
                age,
            ]);
            let reason = str_of(iso, key::I_STATE_REASON);
            if state != "active" && !reason.is_empty() {
                reasons.push(format!("{name} is {state}: {reason}"));
            }
            // What holds no partition (a hugepage reservation) says what it holds instead.
            let description = str_of(iso, key::I_DESCRIPTION);
            if str_of(iso, key::I_PARTITION) == "none" && !description.is_empty() {
                reasons.push(format!("{name}: {description}"));
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

    let mut warnings: Vec<String> = isolations
        .iter()
        .flat_map(|iso| {
            let name = str_of(iso, key::I_NAME).to_owned();
            strings_of(iso, key::I_WARNINGS)
                .into_iter()
                .map(move |w| format!("{name}: {w}"))
        })
        .collect();
    warnings.extend(strings_of(status, key::WARNINGS));
    if !warnings.is_empty() {
        let _ = writeln!(out, "\nWarnings:");
        for w in warnings {
            let _ = writeln!(out, "  {w}");
        }
    }

    if let Some(ks) = status.get(key::KERNEL_SUPPORT) {
        let _ = writeln!(out, "\nKernel: {}", format_kernel_support(ks));
    }
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
fn format_tunings(iso: &Value) -> String {
    let rows: Vec<Vec<String>> = iso
        .get(key::I_TUNINGS)
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    let f: Vec<String> = r
                        .as_array()?
                        .iter()
                        .map(|v| v.as_str().unwrap_or_default().to_owned())
                        .collect();
                    (f.len() == 5).then_some(f)
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\nTunings of {} (profile {}):\n",
        str_of(iso, key::I_NAME),
        str_of(iso, key::I_PROFILE)
    );
    for f in rows {
        let (name, state, reason, original, current) = (&f[0], &f[1], &f[2], &f[3], &f[4]);
        let detail = match state.as_str() {
            "applied" if !current.is_empty() => {
                let mut d = format!("{current} (was {original})");
                if !reason.is_empty() {
                    d.push_str(&format!("; {reason}"));
                }
                d
            }
            _ => reason.clone(),
        };
        let _ = writeln!(out, "  {name:<20} {state:<8} {}", clip(&detail, 100));
    }
    out
}

/// The `KernelSupport` dictionary in one line.
pub fn format_kernel_support(ks: &Value) -> String {
    let mut parts = Vec::new();
    let release = str_of(ks, key::K_KERNEL_RELEASE);
    if !release.is_empty() {
        parts.push(format!("Linux {release}"));
    }
    match ks.get(key::K_CGROUP_V2).and_then(Value::as_bool) {
        Some(true) => parts.push("cgroup v2 with cpuset".to_owned()),
        Some(false) => parts.push("no cgroup v2 cpuset".to_owned()),
        None => {}
    }
    let types = strings_of(ks, key::K_PARTITION_TYPES);
    if types.is_empty() {
        parts.push("no partitions".to_owned());
    } else {
        parts.push(format!("partitions {}", types.join("+")));
    }
    match ks.get(key::K_REMOTE_PARTITIONS).and_then(Value::as_bool) {
        Some(true) => parts.push("remote partitions".to_owned()),
        Some(false) => parts.push("local partitions only (no cpuset.cpus.exclusive)".to_owned()),
        None => {}
    }
    match ks.get(key::K_SYSTEMD).and_then(Value::as_bool) {
        Some(true) => parts.push("systemd".to_owned()),
        Some(false) => parts.push("without systemd".to_owned()),
        None => {}
    }
    let mut line = parts.join(", ");
    let problems = strings_of(ks, key::K_PROBLEMS);
    if !problems.is_empty() {
        let _ = write!(line, "; isolation is not possible: {}", problems.join("; "));
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
    use zbus::{Dict, ObjectPath, Signature};

    fn sv_dict(entries: Vec<(&str, Variant<'static>)>) -> Variant<'static> {
        let mut d = Dict::new(&Signature::Str, &Signature::Variant);
        for (k, v) in entries {
            d.append(Variant::from(k.to_owned()), Variant::Variant(Box::new(v)))
                .unwrap();
        }
        Variant::Dict(d)
    }

    fn owned(v: Variant<'static>) -> OwnedVariant {
        v.try_to_owned().unwrap()
    }

    const NOW: u64 = 1_700_000_000_000_000;

    fn tunings_of(name: &str) -> Vec<(String, String, String, String, String)> {
        let row = |a: &str, b: &str, c: &str, d: &str, e: &str| {
            (
                a.to_owned(),
                b.to_owned(),
                c.to_owned(),
                d.to_owned(),
                e.to_owned(),
            )
        };
        if name != "win10" {
            return Vec::new();
        }
        vec![
            row("vmstat-interval", "applied", "", "1", "120"),
            row(
                "cpu-governor",
                "skipped",
                "no CPU frequency scaling on this host",
                "",
                "",
            ),
        ]
    }

    /// A status dictionary like the service's: two isolations, one degraded, a warning.
    pub(crate) fn synthetic_status() -> HashMap<String, OwnedVariant> {
        let iso = |name: &str, cpus: &str, part: &str, state: &str, reason: &str, age_s: u64| {
            sv_dict(vec![
                (key::I_NAME, Variant::from(name.to_owned())),
                (
                    key::I_OBJECT_PATH,
                    Variant::ObjectPath(
                        ObjectPath::try_from(format!("/org/kvmisolate/Isolator1/isolation/{name}"))
                            .unwrap(),
                    ),
                ),
                (key::I_CPUS, Variant::from(cpus.to_owned())),
                (key::I_TARGET, Variant::from(format!("unit:{name}.scope"))),
                (key::I_PARTITION, Variant::from(part.to_owned())),
                (key::I_STATE, Variant::from(state.to_owned())),
                (key::I_STATE_REASON, Variant::from(reason.to_owned())),
                (key::I_OWNER_UID, Variant::from(1000u32)),
                (key::I_CREATED, Variant::from(NOW - age_s * 1_000_000)),
                (key::I_RELEASE_WHEN, Variant::from("target-exits")),
                (
                    key::I_CGROUPS,
                    Variant::from(vec!["machine.slice/x".to_owned()]),
                ),
                (key::I_PROFILE, Variant::from("default")),
                (key::I_TUNINGS, Variant::from(tunings_of(name))),
            ])
        };
        let mut isolations = zbus::Array::new(&Signature::Dict {
            key: Signature::Str.into(),
            value: Signature::Variant.into(),
        });
        isolations
            .append(iso("win10", "2-3", "isolated", "active", "", 192))
            .unwrap();
        isolations
            .append(iso(
                "build",
                "4-5",
                "root",
                "degraded",
                "Invalid cpu list in cpuset.cpus.exclusive",
                7300,
            ))
            .unwrap();
        let ks = sv_dict(vec![
            (key::K_CGROUP_V2, Variant::from(true)),
            (
                key::K_PARTITION_TYPES,
                Variant::from(vec!["root".to_owned(), "isolated".to_owned()]),
            ),
            (key::K_REMOTE_PARTITIONS, Variant::from(true)),
            (
                key::K_FILES,
                Variant::from(vec!["cpuset.cpus.exclusive".to_owned()]),
            ),
            (key::K_KERNEL_RELEASE, Variant::from("6.12.0")),
            (key::K_SYSTEMD, Variant::from(true)),
            (key::K_PROBLEMS, Variant::from(Vec::<String>::new())),
        ]);
        let mut m = HashMap::new();
        m.insert(key::VERSION.to_owned(), owned(Variant::from("0.1.0")));
        m.insert(key::ISOLATED_CPUS.to_owned(), owned(Variant::from("2-5")));
        m.insert(
            key::HOUSEKEEPING_CPUS.to_owned(),
            owned(Variant::from("0-1,6-7")),
        );
        m.insert(key::ONLINE_CPUS.to_owned(), owned(Variant::from("0-7")));
        m.insert(key::KERNEL_SUPPORT.to_owned(), owned(ks));
        m.insert(
            key::ISOLATIONS.to_owned(),
            owned(Variant::Array(isolations)),
        );
        m.insert(
            key::WARNINGS.to_owned(),
            owned(Variant::from(vec!["irqbalance is running".to_owned()])),
        );
        m
    }

    #[test]
    fn json_keeps_keys_and_types() {
        let json = status_to_json(&synthetic_status());
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
        let text = format_status(&status_to_json(&synthetic_status()), NOW);
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
        let status = serde_json::json!({
            "online-cpus": "0-3",
            "isolations": [],
            "warnings": [],
            "kernel-support": {
                "cgroup-v2": false,
                "partition-types": [],
                "problems": ["the host runs cgroup v1 (hybrid hierarchy)"],
            },
        });
        let text = format_status(&status, NOW);
        assert_eq!(
            text,
            "No isolations: the host keeps all online CPUs (0-3)\n\n\
             Kernel: no cgroup v2 cpuset, no partitions; isolation is not possible: the host \
             runs cgroup v1 (hybrid hierarchy)\n"
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
