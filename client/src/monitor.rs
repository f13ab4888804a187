//! `kvmisolate monitor`: one timestamped line per change, from signals alone.
//!
//! One match rule covers every signal the service sends below its object path (the manager's
//! and every isolation's `PropertiesChanged`, `Released`, ObjectManager's `InterfacesAdded` /
//! `InterfacesRemoved`), so isolations created later are followed without new subscriptions.
//! A second rule reports the service starting and stopping.

use std::collections::{BTreeMap, HashMap};

use kvmisolate_dbus::names;
use serde_json::Value;
use zbus::{OwnedObjectPath, OwnedVariant};

use crate::status::variant_to_json;

/// A change worth a line.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Properties of the manager or of an isolation changed.
    PropertiesChanged {
        /// The object.
        path: String,
        /// Changed properties, with their new values.
        changed: BTreeMap<String, Value>,
        /// Properties whose new value was not sent.
        invalidated: Vec<String>,
    },
    /// An isolation ended.
    Released {
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
    /// An isolation object appeared.
    Added {
        /// The object.
        path: String,
        /// Its `Isolation1` properties, if sent.
        properties: BTreeMap<String, Value>,
    },
    /// An isolation object disappeared.
    Removed {
        /// The object.
        path: String,
    },
    /// The service got (`true`) or lost (`false`) its bus name.
    Service(bool),
}

/// The isolation name encoded in an object path (the reverse of
/// `IsolationName::object_path`), or `isolator` for the manager object.
pub fn object_label(path: &str) -> String {
    if path == names::OBJECT_PATH {
        return "isolator".to_owned();
    }
    let Some(enc) = path
        .strip_prefix(names::ISOLATION_PATH_PREFIX)
        .and_then(|p| p.strip_prefix('/'))
    else {
        return path.to_owned();
    };
    let bytes = enc.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_'
            && let Some(b) = enc
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| enc.to_owned())
}

fn show_value(name: &str, v: &Value) -> String {
    match v {
        Value::String(s)
            if !s.is_empty() && !s.contains(char::is_whitespace) && !s.contains('"') =>
        {
            s.clone()
        }
        Value::Array(items) if name == "Isolations" => {
            let names: Vec<String> = items
                .iter()
                .map(|p| p.as_str().map_or_else(|| p.to_string(), object_label))
                .collect();
            format!("[{}]", names.join(","))
        }
        other => other.to_string(),
    }
}

fn show_properties(props: &BTreeMap<String, Value>) -> String {
    props
        .iter()
        .map(|(k, v)| format!("{k}={}", show_value(k, v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The line for an event (without the timestamp).
pub fn describe(event: &Event) -> String {
    match event {
        Event::PropertiesChanged {
            path,
            changed,
            invalidated,
        } => {
            let mut parts = Vec::new();
            if !changed.is_empty() {
                parts.push(show_properties(changed));
            }
            for p in invalidated {
                parts.push(format!("{p}=?"));
            }
            format!("{}: {}", object_label(path), parts.join(" "))
        }
        Event::Released { name, reason } => format!("{name}: released ({reason})"),
        Event::Added { path, properties } => {
            if properties.is_empty() {
                format!("{}: added", object_label(path))
            } else {
                format!(
                    "{}: added {}",
                    object_label(path),
                    show_properties(properties)
                )
            }
        }
        Event::Removed { path } => format!("{}: removed", object_label(path)),
        Event::Service(true) => "service: started".to_owned(),
        Event::Service(false) => "service: stopped".to_owned(),
    }
}

fn json_map(m: &HashMap<String, OwnedVariant>) -> BTreeMap<String, Value> {
    m.iter()
        .map(|(k, v)| (k.clone(), variant_to_json(v)))
        .collect()
}

/// Decodes a signal message; `None` for signals that are not changes we report.
pub fn event_of(msg: &zbus::Message) -> Option<Event> {
    let header = msg.header();
    let path = header.path()?.as_str().to_owned();
    let interface = header.interface()?.as_str().to_owned();
    let member = header.member()?.as_str().to_owned();
    let body = msg.body();
    match (interface.as_str(), member.as_str()) {
        ("org.freedesktop.DBus.Properties", "PropertiesChanged") => {
            let (_iface, changed, invalidated): (
                String,
                HashMap<String, OwnedVariant>,
                Vec<String>,
            ) = body.deserialize().ok()?;
            Some(Event::PropertiesChanged {
                path,
                changed: json_map(&changed),
                invalidated,
            })
        }
        (names::INTERFACE, "Released") => {
            let (name, _path, reason): (String, OwnedObjectPath, String) =
                body.deserialize().ok()?;
            Some(Event::Released { name, reason })
        }
        ("org.freedesktop.DBus.ObjectManager", "InterfacesAdded") => {
            let (object, ifaces): (
                OwnedObjectPath,
                HashMap<String, HashMap<String, OwnedVariant>>,
            ) = body.deserialize().ok()?;
            let properties = ifaces
                .get(names::ISOLATION_INTERFACE)
                .map(json_map)
                .unwrap_or_default();
            Some(Event::Added {
                path: object.as_str().to_owned(),
                properties,
            })
        }
        ("org.freedesktop.DBus.ObjectManager", "InterfacesRemoved") => {
            let (object, _ifaces): (OwnedObjectPath, Vec<String>) = body.deserialize().ok()?;
            Some(Event::Removed {
                path: object.as_str().to_owned(),
            })
        }
        ("org.freedesktop.DBus", "NameOwnerChanged") => {
            let (name, _old, new): (String, String, String) = body.deserialize().ok()?;
            (name == names::BUS_NAME).then_some(Event::Service(!new.is_empty()))
        }
        _ => None,
    }
}

/// A UTC timestamp with milliseconds (`2025-01-31T12:00:03.120Z`) for `micros` since the epoch.
pub fn timestamp(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let millis = micros / 1000 % 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_decode_object_paths() {
        let name = kvmisolate_dbus::IsolationName::new("vm-1.x_y").unwrap();
        assert_eq!(object_label(&name.object_path()), "vm-1.x_y");
        assert_eq!(object_label(names::OBJECT_PATH), "isolator");
        assert_eq!(object_label("/elsewhere"), "/elsewhere");
    }

    #[test]
    fn lines() {
        let mut changed = BTreeMap::new();
        changed.insert("State".to_owned(), json!("degraded"));
        changed.insert("StateReason".to_owned(), json!("Invalid (hotplug)"));
        let e = Event::PropertiesChanged {
            path: format!("{}/win10", names::ISOLATION_PATH_PREFIX),
            changed,
            invalidated: vec![],
        };
        assert_eq!(
            describe(&e),
            "win10: State=degraded StateReason=\"Invalid (hotplug)\""
        );

        let mut changed = BTreeMap::new();
        changed.insert("IsolatedCpus".to_owned(), json!("2-3"));
        changed.insert(
            "Isolations".to_owned(),
            json!([format!("{}/win10", names::ISOLATION_PATH_PREFIX)]),
        );
        let e = Event::PropertiesChanged {
            path: names::OBJECT_PATH.to_owned(),
            changed,
            invalidated: vec!["KernelSupport".to_owned()],
        };
        assert_eq!(
            describe(&e),
            "isolator: IsolatedCpus=2-3 Isolations=[win10] KernelSupport=?"
        );
        let e = Event::Released {
            name: "win10".into(),
            reason: "target-exited".into(),
        };
        assert_eq!(describe(&e), "win10: released (target-exited)");
        assert_eq!(describe(&Event::Service(false)), "service: stopped");
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_700_000_000_123_456), "2023-11-14T22:13:20.123Z");
        assert_eq!(timestamp(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
    }
}
