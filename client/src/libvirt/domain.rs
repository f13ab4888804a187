//! What kvmisolate needs from a libvirt domain XML (the hook, `check --vm`, `plan --vm`): name,
//! pins, scheduling, memory, hugepage backing and kvmisolate's metadata element (found by
//! namespace, whatever its prefix).

use std::collections::BTreeMap;

use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::libvirt::{LeafKind, METADATA_ELEMENT, METADATA_NS};
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

/// Why a domain XML cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Not well-formed XML.
    #[error("the domain XML is not well-formed at byte {pos}: {reason}")]
    Xml {
        /// Where.
        pos: u64,
        /// What quick-xml said.
        reason: String,
    },
    /// Well-formed, but not a usable `<domain>`.
    #[error("the domain XML {0}")]
    Invalid(String),
}

/// `<memoryBacking><hugepages>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HugepageBacking {
    /// The page size of its first `<page size=...>`, in KiB; `None`: the host's default.
    pub page_kib: Option<u64>,
    /// The `nodeset` of that `<page>`, if it has one: the *guest* NUMA nodes those pages back
    /// (the host nodes they come from are `<numatune>`'s).
    pub nodes: Option<CpuSet>,
}

/// The attributes of `<kvmisolate:isolate .../>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// `profile`.
    pub profile: Option<String>,
    /// `tunings` (comma-separated).
    pub tunings: Option<String>,
    /// `hugepages`.
    pub hugepages: Option<String>,
    /// `on-conflict`.
    pub on_conflict: Option<String>,
    /// `vfio-irqs`.
    pub vfio_irqs: Option<String>,
}

/// A domain, as far as the hook is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Domain {
    /// `<name>`.
    pub name: String,
    /// `<domain id=...>` (running domains only).
    pub id: Option<u32>,
    /// `<vcpu>` (the maximum count).
    pub vcpus: u32,
    /// `<vcpupin vcpu= cpuset=>`.
    pub vcpupins: BTreeMap<u32, CpuSet>,
    /// `<emulatorpin cpuset=>`.
    pub emulatorpin: Option<CpuSet>,
    /// `<iothreadpin iothread= cpuset=>`.
    pub iothreadpins: BTreeMap<u32, CpuSet>,
    /// Whether a `<vcpusched>` asks for `fifo` or `rr`.
    pub realtime_vcpus: bool,
    /// `<memory>` in KiB.
    pub memory_kib: u64,
    /// `<memoryBacking><hugepages>`, if present.
    pub hugepages: Option<HugepageBacking>,
    /// `<numatune><memory nodeset=...>`: the NUMA nodes the guest's memory comes from.
    pub numa_nodes: Option<CpuSet>,
    /// kvmisolate's metadata element, if present.
    pub metadata: Option<Metadata>,
    /// The host PCI addresses (`DDDD:BB:SS.F`) of its `<hostdev mode='subsystem' type='pci'>`
    /// devices (their `<source><address>`).
    pub hostdevs: Vec<String>,
}

/// Parses libvirt's cpuset syntax: `0-3,8`, with `^N` exclusions (`0-5,^3`).
pub fn parse_cpuset(text: &str) -> Result<CpuSet, String> {
    let mut set = CpuSet::new();
    let mut minus = CpuSet::new();
    for item in text.split(',').map(str::trim) {
        if let Some(ex) = item.strip_prefix('^') {
            minus = minus.union(&CpuSet::parse(ex).map_err(|e| e.to_string())?);
        } else {
            set = set.union(&CpuSet::parse(item).map_err(|e| e.to_string())?);
        }
    }
    Ok(set.difference(&minus))
}

/// A size with libvirt's units (`b`, `KB`=1000, `k`/`KiB`=1024, `M`/`MiB`, `MB`, `G`...) in
/// KiB; `unit` absent means KiB.
pub fn size_kib(value: &str, unit: Option<&str>) -> Result<u64, String> {
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a whole number"))?;
    let bytes: u128 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        other => return Err(format!("unknown unit {other:?}")),
    };
    u64::try_from(u128::from(n) * bytes / 1024)
        .map_err(|_| format!("{value} {unit:?} is too large"))
}

/// A PCI `<address domain= bus= slot= function=/>` as `DDDD:BB:SS.F`.
fn pci_address(e: &BytesStart<'_>) -> Result<String, DomainError> {
    let field = |name: &str, max: u32| -> Result<u32, DomainError> {
        let text = attr(e, name)?.unwrap_or_else(|| "0".into());
        let (digits, radix) = match text.strip_prefix("0x") {
            Some(hex) => (hex, 16),
            None => (text.as_str(), 10),
        };
        u32::from_str_radix(digits, radix)
            .ok()
            .filter(|v| *v <= max)
            .ok_or_else(|| {
                DomainError::Invalid(format!(
                    "has a PCI <hostdev> source address with {name}={text:?}, not a number up to {max:#x}"
                ))
            })
    };
    Ok(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        field("domain", 0xffff)?,
        field("bus", 0xff)?,
        field("slot", 0x1f)?,
        field("function", 7)?
    ))
}

fn attr(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, DomainError> {
    for a in e.attributes() {
        let a = a.map_err(|err| DomainError::Invalid(format!("has a bad attribute: {err}")))?;
        if a.key.local_name().as_ref() == name.as_bytes() {
            let v = a
                .unescape_value()
                .map_err(|err| DomainError::Invalid(format!("has a bad attribute value: {err}")))?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

fn required(e: &BytesStart<'_>, name: &str, element: &str) -> Result<String, DomainError> {
    attr(e, name)?.ok_or_else(|| DomainError::Invalid(format!("has a <{element}> without {name}=")))
}

fn cpus_attr(e: &BytesStart<'_>, element: &str) -> Result<CpuSet, DomainError> {
    let text = required(e, "cpuset", element)?;
    parse_cpuset(&text)
        .map_err(|err| DomainError::Invalid(format!("has <{element} cpuset='{text}'>: {err}")))
}

fn number(text: &str, what: &str) -> Result<u32, DomainError> {
    text.trim()
        .parse()
        .map_err(|_| DomainError::Invalid(format!("has {what} {text:?}, not a number")))
}

impl Domain {
    /// The pins of the domain's thread groups, as [`kvmisolate_dbus::libvirt::place`] takes
    /// them: one entry per vCPU (`<vcpu>` many, or up to the highest `<vcpupin>`; an empty
    /// set for an unpinned one), the emulator if pinned, each pinned iothread.
    pub fn pin_groups(&self) -> Vec<(LeafKind, CpuSet)> {
        let count = self
            .vcpus
            .max(self.vcpupins.keys().max().map_or(0, |m| m + 1));
        let mut out: Vec<(LeafKind, CpuSet)> = (0..count)
            .map(|v| {
                (
                    LeafKind::Vcpu(v),
                    self.vcpupins.get(&v).cloned().unwrap_or_default(),
                )
            })
            .collect();
        if let Some(e) = &self.emulatorpin {
            out.push((LeafKind::Emulator, e.clone()));
        }
        out.extend(
            self.iothreadpins
                .iter()
                .map(|(t, c)| (LeafKind::Iothread(*t), c.clone())),
        );
        out
    }

    /// Parses a domain XML (as libvirt hands it to hooks, or as `virsh dumpxml` prints it).
    pub fn parse(xml: &str) -> Result<Self, DomainError> {
        let mut reader = NsReader::from_str(xml);
        let mut d = Domain::default();
        let mut path: Vec<String> = Vec::new();
        let mut text = String::new();
        let mut memory_unit: Option<String> = None;
        let mut seen_domain = false;
        let mut in_pci_hostdev = false;
        loop {
            let pos = reader.buffer_position();
            let (ns, event) = reader.read_resolved_event().map_err(|e| DomainError::Xml {
                pos,
                reason: e.to_string(),
            })?;
            let ours =
                matches!(ns, ResolveResult::Bound(n) if n.as_ref() == METADATA_NS.as_bytes());
            match event {
                Event::Start(ref e) | Event::Empty(ref e) => {
                    let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    let parent = path.last().map(String::as_str);
                    match (parent, local.as_str()) {
                        (None, "domain") => {
                            seen_domain = true;
                            if let Some(id) = attr(e, "id")? {
                                // Inactive domains say id='-1'.
                                d.id = id.trim().parse().ok();
                            }
                        }
                        (None, other) => {
                            return Err(DomainError::Invalid(format!(
                                "has <{other}> at the top, not <domain>"
                            )));
                        }
                        (Some("domain"), "memory") => memory_unit = attr(e, "unit")?,
                        (Some("cputune"), "vcpupin") => {
                            let v = number(&required(e, "vcpu", "vcpupin")?, "a vcpupin vcpu")?;
                            d.vcpupins.insert(v, cpus_attr(e, "vcpupin")?);
                        }
                        (Some("devices"), "hostdev") => {
                            in_pci_hostdev = matches!(event, Event::Start(_))
                                && attr(e, "mode")?.as_deref() == Some("subsystem")
                                && attr(e, "type")?.as_deref() == Some("pci");
                        }
                        (Some("source"), "address")
                            if in_pci_hostdev
                                && path.len() >= 2
                                && path[path.len() - 2] == "hostdev" =>
                        {
                            d.hostdevs.push(pci_address(e)?);
                        }
                        (Some("cputune"), "emulatorpin") => {
                            d.emulatorpin = Some(cpus_attr(e, "emulatorpin")?);
                        }
                        (Some("cputune"), "iothreadpin") => {
                            let t = number(
                                &required(e, "iothread", "iothreadpin")?,
                                "an iothreadpin iothread",
                            )?;
                            d.iothreadpins.insert(t, cpus_attr(e, "iothreadpin")?);
                        }
                        (Some("cputune"), "vcpusched") => {
                            if matches!(attr(e, "scheduler")?.as_deref(), Some("fifo" | "rr")) {
                                d.realtime_vcpus = true;
                            }
                        }
                        (Some("memoryBacking"), "hugepages") => {
                            d.hugepages = Some(HugepageBacking {
                                page_kib: None,
                                nodes: None,
                            });
                        }
                        (Some("hugepages"), "page") => {
                            if let Some(hp) = &mut d.hugepages
                                && hp.page_kib.is_none()
                            {
                                if let Some(n) = attr(e, "nodeset")? {
                                    hp.nodes = Some(parse_cpuset(&n).map_err(|err| {
                                        DomainError::Invalid(format!(
                                            "has <page nodeset='{n}'>: {err}"
                                        ))
                                    })?);
                                }
                                let size = required(e, "size", "page")?;
                                let unit = attr(e, "unit")?;
                                hp.page_kib =
                                    Some(size_kib(&size, unit.as_deref()).map_err(|err| {
                                        DomainError::Invalid(format!(
                                            "has <page size='{size}'>: {err}"
                                        ))
                                    })?);
                            }
                        }
                        (Some("numatune"), "memory") => {
                            if let Some(n) = attr(e, "nodeset")? {
                                d.numa_nodes = Some(parse_cpuset(&n).map_err(|err| {
                                    DomainError::Invalid(format!(
                                        "has <numatune><memory nodeset='{n}'>: {err}"
                                    ))
                                })?);
                            }
                        }
                        (Some("metadata"), name) if ours && name == METADATA_ELEMENT => {
                            d.metadata = Some(Metadata {
                                profile: attr(e, "profile")?,
                                tunings: attr(e, "tunings")?,
                                hugepages: attr(e, "hugepages")?,
                                on_conflict: attr(e, "on-conflict")?,
                                vfio_irqs: attr(e, "vfio-irqs")?,
                            });
                        }
                        _ => {}
                    }
                    if matches!(event, Event::Start(_)) {
                        path.push(local);
                        text.clear();
                    }
                }
                Event::Text(t) => {
                    let t = t
                        .decode()
                        .map_err(|e| DomainError::Invalid(format!("has bad text: {e}")))?;
                    text.push_str(&t);
                }
                Event::End(_) => {
                    let local = path.pop().unwrap_or_default();
                    if local == "hostdev" {
                        in_pci_hostdev = false;
                    }
                    let parent = path.last().map(String::as_str);
                    match (parent, local.as_str()) {
                        (Some("domain"), "name") => d.name = text.trim().to_owned(),
                        (Some("domain"), "vcpu") => d.vcpus = number(&text, "<vcpu>")?,
                        (Some("domain"), "memory") => {
                            d.memory_kib = size_kib(&text, memory_unit.as_deref())
                                .map_err(|e| DomainError::Invalid(format!("has <memory>: {e}")))?;
                        }
                        _ => {}
                    }
                    text.clear();
                }
                Event::GeneralRef(r) => {
                    let name = String::from_utf8_lossy(&r).into_owned();
                    let c = match r.resolve_char_ref() {
                        Ok(Some(c)) => c,
                        _ => match name.as_str() {
                            "amp" => '&',
                            "lt" => '<',
                            "gt" => '>',
                            "quot" => '"',
                            "apos" => '\'',
                            _ => {
                                return Err(DomainError::Invalid(format!(
                                    "uses the unknown entity &{name};"
                                )));
                            }
                        },
                    };
                    text.push(c);
                }
                Event::Eof => {
                    if let Some(open) = path.last() {
                        return Err(DomainError::Xml {
                            pos: reader.buffer_position(),
                            reason: format!("it ends inside <{open}>"),
                        });
                    }
                    break;
                }
                _ => {}
            }
        }
        if !seen_domain {
            return Err(DomainError::Invalid("has no <domain> element".to_owned()));
        }
        if d.name.is_empty() {
            return Err(DomainError::Invalid("has no <name>".to_owned()));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cpusets_and_sizes() {
        assert_eq!(parse_cpuset("0-5,^3").unwrap().to_string(), "0-2,4-5");
        assert_eq!(parse_cpuset("2").unwrap().to_string(), "2");
        assert!(parse_cpuset("x").is_err());
        assert_eq!(size_kib("8388608", None).unwrap(), 8 << 20);
        assert_eq!(size_kib("8", Some("GiB")).unwrap(), 8 << 20);
        assert_eq!(size_kib("2", Some("M")).unwrap(), 2048);
        assert_eq!(size_kib("1", Some("G")).unwrap(), 1 << 20);
        assert_eq!(size_kib("1000", Some("KB")).unwrap(), 976);
        assert!(size_kib("1", Some("parsecs")).is_err());
        assert!(size_kib("-1", None).is_err());
    }
}
