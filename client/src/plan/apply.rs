//! Puts a plan into an existing libvirt domain XML, changing only the CPU-related elements.
//!
//! The top-level `<vcpu>`, `<iothreads>`, `<cputune>`, `<numatune>` and `<cpu>` are replaced (or
//! inserted where libvirt would write them), and the kvmisolate opt-in is put into
//! `<metadata>`. Inside `<cputune>`, `<numatune>` and `<cpu>`, children the plan does not set
//! (`<shares>`, `<feature>`, comments...) are kept, after the plan's own; attributes of `<cpu>`
//! other than `mode` are kept. Every byte outside those elements stays as it was.

use super::Plan;
use super::libvirt::{self, Body, LibvirtOptions, METADATA_NS, Managed};
use super::xml_spans::{self, Element, Item, SpanError};

/// Why a domain XML could not be changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The text is not well-formed XML.
    #[error("not well-formed XML: {0}")]
    Xml(#[from] SpanError),
    /// The root element is not `<domain>`.
    #[error("not a libvirt domain: the root element is <{0}>, not <domain>")]
    NotDomain(String),
}

/// The order in which libvirt writes a domain's top-level elements (the ones that matter for
/// placing new elements).
const ORDER: &[&str] = &[
    "name",
    "uuid",
    "genid",
    "title",
    "description",
    "metadata",
    "maxMemory",
    "memory",
    "currentMemory",
    "blkiotune",
    "memtune",
    "memoryBacking",
    "vcpu",
    "vcpus",
    "iothreads",
    "iothreadids",
    "defaultiothread",
    "cputune",
    "numatune",
    "resource",
    "throttlegroups",
    "sysinfo",
    "bootloader",
    "bootloader_args",
    "os",
    "idmap",
    "features",
    "cpu",
    "clock",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "on_lockfailure",
    "pm",
    "perf",
    "devices",
];

fn order_of(name: &str) -> usize {
    ORDER.iter().position(|n| *n == name).unwrap_or(ORDER.len())
}

/// One replacement of `start..end` by `text`; `seq` orders insertions at the same place.
struct Edit {
    start: usize,
    end: usize,
    text: String,
    seq: usize,
}

/// `original` with `plan` applied.
pub fn apply(original: &str, plan: &Plan, opts: LibvirtOptions) -> Result<String, ApplyError> {
    let root = xml_spans::parse(original)?;
    if root.name != "domain" {
        return Err(ApplyError::NotDomain(root.name));
    }
    let base = xml_spans::indent_at(original, root.start).unwrap_or("");
    let child_indent = root
        .elements()
        .next()
        .and_then(|e| xml_spans::indent_at(original, e.start))
        .filter(|i| i.len() > base.len())
        .map_or_else(|| format!("{base}  "), str::to_owned);
    let unit = child_indent[base.len()..].to_owned();
    let mut edits = Vec::new();
    let mut seq = 0;
    let mut push = |start: usize, end: usize, text: String| {
        edits.push(Edit {
            start,
            end,
            text,
            seq,
        });
        seq += 1;
    };

    let metadata = libvirt::metadata_element();
    match root.elements().filter(|e| e.name == "metadata").last() {
        Some(m) if m.empty => {
            let ind = xml_spans::indent_at(original, m.start).unwrap_or(&child_indent);
            push(
                m.start,
                m.end,
                format!("<metadata>\n{ind}{unit}{metadata}\n{ind}</metadata>"),
            );
        }
        Some(m) => match m.elements().find(|e| is_kvmisolate_isolate(e)) {
            Some(old) => push(old.start, old.end, metadata),
            None => {
                let ind = xml_spans::indent_at(original, m.start).unwrap_or(&child_indent);
                let after = m.children.iter().map(item_end).max().unwrap_or(m.open_end);
                push(after, after, format!("\n{ind}{unit}{metadata}"));
            }
        },
        None => {
            let at = insertion_point(&root, "metadata");
            push(
                at,
                at,
                format!(
                    "\n{child_indent}<metadata>\n{child_indent}{unit}{metadata}\n{child_indent}</metadata>"
                ),
            );
        }
    }

    for m in libvirt::elements(plan, opts) {
        match root.elements().filter(|e| e.name == m.name).last() {
            Some(old) => {
                let ind = xml_spans::indent_at(original, old.start).unwrap_or(&child_indent);
                let (attrs, kept) = kept_parts(original, &m, old);
                push(old.start, old.end, m.render(ind, &unit, &attrs, &kept));
            }
            None => {
                let at = insertion_point(&root, m.name);
                let text = m.render(&child_indent, &unit, &[], &[]);
                push(at, at, format!("\n{child_indent}{text}"));
            }
        }
    }

    edits.sort_by(|a, b| b.start.cmp(&a.start).then(b.seq.cmp(&a.seq)));
    let mut out = original.to_owned();
    for e in edits {
        out.replace_range(e.start..e.end, &e.text);
    }
    Ok(out)
}

fn item_end(item: &Item) -> usize {
    match item {
        Item::Element(e) => e.end,
        Item::Comment { end, .. } => *end,
    }
}

/// Whether `e` is `<PREFIX:isolate xmlns:PREFIX="https://kvmisolate.org/xmlns/libvirt/1">`.
fn is_kvmisolate_isolate(e: &Element) -> bool {
    let Some((prefix, local)) = e.name.split_once(':') else {
        return false;
    };
    local == "isolate" && e.attr(&format!("xmlns:{prefix}")) == Some(METADATA_NS)
}

/// The attributes and children of an existing element that the plan keeps.
fn kept_parts(text: &str, m: &Managed, old: &Element) -> (Vec<String>, Vec<String>) {
    let attrs = if m.keep_other_attrs {
        let planned: Vec<&str> = m
            .attrs
            .iter()
            .filter_map(|a| a.split_once('=').map(|(k, _)| k))
            .collect();
        old.attrs
            .iter()
            .filter(|(k, _)| !planned.contains(&k.as_str()))
            .map(|(_, raw)| raw.clone())
            .collect()
    } else {
        Vec::new()
    };
    let kept = match m.body {
        Body::Text(_) => Vec::new(),
        Body::Children(_) => old
            .children
            .iter()
            .filter_map(|item| match item {
                Item::Element(e) if m.replaces.contains(&e.name.as_str()) => None,
                Item::Element(e) => Some(text[e.start..e.end].to_owned()),
                Item::Comment { start, end } => Some(text[*start..*end].to_owned()),
            })
            .collect(),
    };
    (attrs, kept)
}

/// Where a missing top-level element goes: after the last element libvirt writes before it,
/// or first in the domain.
fn insertion_point(root: &Element, name: &str) -> usize {
    let rank = order_of(name);
    root.elements()
        .filter(|e| order_of(&e.name) < rank)
        .max_by_key(|e| (order_of(&e.name), e.end))
        .map_or(root.open_end, |e| e.end)
}

/// A unified diff from `old` to `new`, labelled with `path`.
pub fn diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(path, &format!("{path} (planned)"))
        .to_string()
}
