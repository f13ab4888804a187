//! Presets: the configuration's `[isolation.NAME]` sections that name a target the service can
//! resolve on its own (`unit = "..."` or `libvirt-domain = "..."`), so that a desktop client
//! can start them with one call (`StartPreset`) and list them (`Presets`).
//!
//! Starting a preset is exactly `Isolate(NAME, "", {unit|libvirt-domain: TARGET})`: the same
//! validation, the same authorization of what it acts on (the unit or domain decides the
//! polkit action), the CPUs and tunings from the section. Nothing here touches the host.

use std::collections::HashMap;

use kvmisolate_dbus::{CpuSet, Error, options};
use zbus::{OwnedVariant, Variant};

use crate::bus::request::TargetRequest;
use crate::config::{Config, IsolationConfig};
use crate::daemon::registry::Lease;

/// What a preset isolates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresetTarget {
    /// A systemd unit, partitioned in place.
    Unit(String),
    /// A running libvirt domain (its CPUs come from its pins).
    Libvirt(String),
}

impl PresetTarget {
    /// The `Isolate` option naming it.
    fn option(&self) -> (&'static str, &str) {
        match self {
            Self::Unit(u) => (options::UNIT, u),
            Self::Libvirt(d) => (options::LIBVIRT_DOMAIN, d),
        }
    }
}

impl From<&PresetTarget> for TargetRequest {
    fn from(target: &PresetTarget) -> Self {
        match target {
            PresetTarget::Unit(u) => Self::Unit(u.clone()),
            PresetTarget::Libvirt(d) => Self::Libvirt(d.clone()),
        }
    }
}

/// The target of section `section` from its `unit` and `libvirt-domain` keys, checked the way
/// `Isolate` would check them (so a preset that loads is one `StartPreset` can send).
pub fn target(
    name: &str,
    unit: Option<String>,
    domain: Option<String>,
    cpus: Option<&CpuSet>,
    section: &str,
) -> Result<Option<PresetTarget>, String> {
    let target = match (unit, domain) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "[{section}]: give either unit or libvirt-domain, not both"
            ));
        }
        (Some(u), None) => PresetTarget::Unit(u),
        (None, Some(d)) => PresetTarget::Libvirt(d),
        (None, None) => return Ok(None),
    };
    if matches!(target, PresetTarget::Unit(_)) && cpus.is_none() {
        return Err(format!(
            "[{section}]: a unit preset needs its CPUs: add cpus = \"...\" (e.g. \"2-5\")"
        ));
    }
    crate::bus::request::parse(name, "", &option_map(&target))
        .map_err(|e| format!("[{section}] {}", error_text(&e)))?;
    Ok(Some(target))
}

fn error_text(e: &Error) -> String {
    use zbus::DBusError;
    e.description().unwrap_or_default().to_owned()
}

fn option_map(target: &PresetTarget) -> HashMap<String, OwnedVariant> {
    let (key, value) = target.option();
    // A string always converts.
    let value = OwnedVariant::try_from(Variant::from(value.to_owned()))
        .unwrap_or_else(|_| OwnedVariant::from(0u8));
    HashMap::from([(key.to_owned(), value)])
}

/// The `Isolate` options that start preset `name`, or `NoSuchIsolation` naming the presets
/// there are (checked before anything else, authorization included).
pub fn options(config: &Config, name: &str) -> Result<HashMap<String, OwnedVariant>, Error> {
    match config.isolations.get(name).and_then(|s| s.target.as_ref()) {
        Some(target) => Ok(option_map(target)),
        None => {
            let known: Vec<&str> = presets(config).map(|(n, _, _)| n).collect();
            Err(Error::NoSuchIsolation(format!(
                "no preset named {name:?}: presets are the [isolation.NAME] sections of {} \
                 with unit = \"...\" or libvirt-domain = \"...\" ({})",
                crate::config::DEFAULT_PATH,
                if known.is_empty() {
                    "there are none".to_owned()
                } else {
                    format!("configured: {}", known.join(", "))
                }
            )))
        }
    }
}

fn presets(config: &Config) -> impl Iterator<Item = (&str, &IsolationConfig, &PresetTarget)> {
    config
        .isolations
        .iter()
        .filter_map(|(n, s)| s.target.as_ref().map(|t| (n.as_str(), s, t)))
}

/// One `Presets` row: name, CPUs (empty: the domain's pins), target, profile, whether it can
/// start now, and why not.
pub type Row = (String, String, String, String, bool, String);

/// The `Presets` property: every preset, with whether it can start given the isolations in
/// force (its name free, its CPUs not held). Whether the target runs is known only when
/// starting it (`TargetNotFound` then).
pub fn rows<'a>(config: &Config, leases: impl Iterator<Item = &'a Lease> + Clone) -> Vec<Row> {
    presets(config)
        .map(|(name, section, target)| {
            let cpus = section.cpus.clone().unwrap_or_default();
            let profile = section
                .selection
                .as_ref()
                .unwrap_or(&config.default_selection)
                .name();
            let why = if leases.clone().any(|l| l.name().as_str() == name) {
                "already isolated".to_owned()
            } else if let Some(l) = leases.clone().find(|l| !l.cpus().is_disjoint(&cpus)) {
                format!(
                    "CPUs {} are held by {}",
                    l.cpus().intersection(&cpus),
                    l.name().as_str()
                )
            } else {
                String::new()
            };
            (
                name.to_owned(),
                cpus.to_string(),
                // The `Target` text an isolation of it shows, worded in one place.
                TargetRequest::from(target).describe(),
                profile,
                why.is_empty(),
                why,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn sections_with_a_target_are_presets() {
        let c = config(
            "[isolation.game]\ncpus = \"2-3\"\nunit = \"game.service\"\nprofile = \"none\"\n\
             [isolation.win11]\nlibvirt-domain = \"win11\"\n\
             [isolation.plain]\ncpus = \"4\"\n",
        );
        let rows = rows(&c, std::iter::empty());
        assert_eq!(
            rows,
            vec![
                (
                    "game".into(),
                    "2-3".into(),
                    "unit:game.service".into(),
                    "none".into(),
                    true,
                    String::new()
                ),
                (
                    "win11".into(),
                    String::new(),
                    "libvirt:win11".into(),
                    "default".into(),
                    true,
                    String::new()
                ),
            ]
        );
        let opts = options(&c, "game").unwrap();
        assert_eq!(
            String::try_from(opts[options::UNIT].clone()).unwrap(),
            "game.service"
        );
        assert!(
            options(&c, "win11")
                .unwrap()
                .contains_key(options::LIBVIRT_DOMAIN)
        );
    }

    #[test]
    fn unknown_names_and_plain_sections_are_not_presets() {
        let c = config("[isolation.plain]\ncpus = \"4\"\n");
        for name in ["plain", "nope", "", "../x"] {
            let e = options(&c, name).unwrap_err();
            assert!(matches!(e, Error::NoSuchIsolation(ref m) if m.contains("there are none")));
        }
    }

    #[test]
    fn bad_preset_sections_name_the_fix() {
        for (text, needle) in [
            (
                "[isolation.g]\ncpus = \"2\"\nunit = \"a.service\"\nlibvirt-domain = \"w\"\n",
                "either unit or libvirt-domain",
            ),
            ("[isolation.g]\nunit = \"a.service\"\n", "needs its CPUs"),
            (
                "[isolation.g]\ncpus = \"2\"\nunit = \"\"\n",
                "[isolation.g]",
            ),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
