//! Puts a plan into an existing libvirt domain XML, changing only the elements it plans.
//!
//! The top-level `<vcpu>`, `<iothreads>`, `<cputune>`, `<numatune>` and `<cpu>` are replaced (or
//! inserted where libvirt would write them), the kvmisolate opt-in is put into `<metadata>`,
//! and a `<vcpus>` list (per-vCPU settings for the old count) is removed. Inside `<cputune>`,
//! `<numatune>` and `<cpu>`, children the plan does not set (`<shares>`, `<feature>`,
//! comments...) are kept; attributes of `<cpu>` other than `mode` are kept. The guest-side
//! elements ([`super::guest`]: `<memoryBacking>`, `<features>`, `<clock>`, the `<driver>` of
//! virtio disks) are merged: only the children and attributes the plan sets are written, in
//! place. Every byte outside those elements stays as it was.

use super::libvirt::{self, Body, LibvirtOptions, METADATA_NS, Managed};
use super::xml_spans::{self, Element, Item, SpanError};
use super::{Plan, guest};

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

/// Where `name` comes in libvirt's order of a domain's top-level elements.
pub fn order_of(name: &str) -> usize {
    ORDER.iter().position(|n| *n == name).unwrap_or(ORDER.len())
}

/// One replacement of `start..end` by `text`; `rank` (libvirt's order of the element it
/// inserts), then `seq`, order insertions at the same place.
struct Edit {
    start: usize,
    end: usize,
    text: String,
    rank: usize,
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
    let mut push_ranked = |rank: usize, start: usize, end: usize, text: String| {
        edits.push(Edit {
            start,
            end,
            text,
            rank,
            seq,
        });
        seq += 1;
    };

    let metadata = libvirt::metadata_element(opts);
    match root.elements().filter(|e| e.name == "metadata").last() {
        Some(m) if m.empty => {
            let ind = xml_spans::indent_at(original, m.start).unwrap_or(&child_indent);
            push_ranked(
                0,
                m.start,
                m.end,
                format!("<metadata>\n{ind}{unit}{metadata}\n{ind}</metadata>"),
            );
        }
        Some(m) => match m.elements().find(|e| is_kvmisolate_isolate(e)) {
            Some(old) => push_ranked(0, old.start, old.end, metadata),
            None => {
                let ind = xml_spans::indent_at(original, m.start).unwrap_or(&child_indent);
                let after = m.children.iter().map(item_end).max().unwrap_or(m.open_end);
                push_ranked(0, after, after, format!("\n{ind}{unit}{metadata}"));
            }
        },
        None => {
            let at = insertion_point(&root, "metadata");
            push_ranked(
                order_of("metadata"),
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
                push_ranked(0, old.start, old.end, m.render(ind, &unit, &attrs, &kept));
            }
            None => {
                let at = insertion_point(&root, m.name);
                let text = m.render(&child_indent, &unit, &[], &[]);
                push_ranked(order_of(m.name), at, at, format!("\n{child_indent}{text}"));
            }
        }
    }

    let side = &plan.guest_side;
    for want in guest::wants(side, plan.hugepages.as_ref()) {
        match root.elements().filter(|e| want.matches(e)).last() {
            Some(old) => {
                let mut splices = Vec::new();
                guest::merge(original, old, &want, &unit, &mut splices);
                for (start, end, text) in splices {
                    push_ranked(0, start, end, text);
                }
            }
            None => {
                let at = insertion_point(&root, want.name);
                let text = want.render(&child_indent, &unit, false);
                push_ranked(
                    order_of(want.name),
                    at,
                    at,
                    format!("\n{child_indent}{text}"),
                );
            }
        }
    }
    if side.disk_iothreads > 0 {
        for (i, disk) in guest::iothread_disks(&root).into_iter().enumerate() {
            let n = u32::try_from(i).unwrap_or(0) % side.disk_iothreads + 1;
            let mut splices = Vec::new();
            guest::merge(original, disk, &guest::disk_want(n), &unit, &mut splices);
            for (start, end, text) in splices {
                push_ranked(0, start, end, text);
            }
        }
    }

    // Per-vCPU settings (`<vcpus>`) would contradict the new vCPU count: libvirt rebuilds them.
    for old in root.elements().filter(|e| e.name == "vcpus") {
        let from = original[..old.start].trim_end_matches([' ', '\t']).len();
        let from = if original[..from].ends_with('\n') {
            from - 1
        } else {
            old.start
        };
        push_ranked(0, from, old.end, String::new());
    }

    edits.sort_by(|a, b| {
        b.start
            .cmp(&a.start)
            .then(b.rank.cmp(&a.rank))
            .then(b.seq.cmp(&a.seq))
    });
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
                Item::Element(e) if m.replaces(e) => None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlanOptions, Size, plan};
    use crate::topology::{Topology, fixture};

    const WIN11: &str = include_str!("../../tests/fixtures/domains/win11.xml");

    fn x3d_plan(size: Size) -> Plan {
        let dir = fixture::tree("x3d-16c32t");
        let topo = Topology::read(dir.path()).unwrap();
        plan(
            &topo,
            &PlanOptions {
                size,
                ..PlanOptions::default()
            },
        )
        .unwrap()
    }

    /// The text with every plan-managed element (and the white space before it on its line,
    /// and its line break) cut out: what must not change.
    fn skeleton(text: &str) -> String {
        let root = xml_spans::parse(text).unwrap();
        let managed = [
            "memoryBacking",
            "vcpu",
            "iothreads",
            "cputune",
            "numatune",
            "features",
            "cpu",
            "clock",
        ];
        let mut cuts: Vec<(usize, usize)> = root
            .elements()
            .filter(|e| managed.contains(&e.name.as_str()))
            .map(|e| (e.start, e.end))
            .collect();
        for disk in guest::iothread_disks(&root) {
            cuts.extend(
                disk.elements()
                    .filter(|e| e.name == "driver")
                    .map(|e| (e.start, e.end)),
            );
        }
        for m in root.elements().filter(|e| e.name == "metadata") {
            cuts.extend(
                m.elements()
                    .filter(|e| is_kvmisolate_isolate(e))
                    .map(|e| (e.start, e.end)),
            );
        }
        cuts.sort();
        let mut out = text.to_owned();
        for (start, end) in cuts.into_iter().rev() {
            let from = text[..start].trim_end_matches([' ', '\t']).len();
            let from = if text[..from].ends_with('\n') {
                from - 1
            } else {
                from
            };
            out.replace_range(from..end, "");
        }
        out
    }

    #[test]
    fn only_cpu_elements_change() {
        let p = x3d_plan(Size::Vcpus(8));
        let out = apply(WIN11, &p, LibvirtOptions::default()).unwrap();
        assert_ne!(out, WIN11);
        assert_eq!(skeleton(&out), skeleton(WIN11));
        // What was kept inside the changed elements.
        assert!(out.contains("    <shares>2048</shares>\n    <vcpupin vcpu='0' cpuset='4'/>"));
        assert!(out.contains("<cpu mode='host-passthrough' check='partial' migratable='on'>"));
        assert!(out.contains("    <!-- needed for SMT on AMD guests -->\n    <feature policy='require' name='topoext'/>"));
        assert!(!out.contains("<model fallback"));
        assert!(!out.contains("current='6'"));
        // Idempotent.
        assert_eq!(apply(&out, &p, LibvirtOptions::default()).unwrap(), out);
        // A different plan replaces the previous one.
        let smaller = x3d_plan(Size::Vcpus(4));
        let again = apply(&out, &smaller, LibvirtOptions::default()).unwrap();
        assert_eq!(again.matches("<vcpupin").count(), 4);
        assert_eq!(again.matches("<kvmisolate:isolate").count(), 1);
        assert_eq!(skeleton(&again), skeleton(WIN11));
    }

    #[test]
    fn the_guest_side_is_merged_into_what_is_there() {
        let dir = fixture::tree("x3d-16c32t");
        let mut topo = Topology::read(dir.path()).unwrap();
        topo.cpu_flags = crate::topology::CpuFlags::Known(vec!["tsc_deadline_timer".to_owned()]);
        let opts = PlanOptions {
            size: Size::Vcpus(8),
            guest: crate::plan::GuestOs::Windows,
            ..PlanOptions::default()
        };
        let p = plan(&topo, &opts).unwrap();
        let out = apply(WIN11, &p, LibvirtOptions::default()).unwrap();
        assert_eq!(skeleton(&out), skeleton(WIN11));
        assert!(out.contains("  <memoryBacking>\n    <hugepages/>\n    <locked/>\n    <nosharepages/>\n  </memoryBacking>\n"), "{out}");
        assert!(out.contains("<driver name='qemu' type='qcow2' cache='none' io='threads' discard='unmap' iothread='1'/>"), "{out}");
        assert!(out.contains("      <spinlocks state='on' retries='8191'/>\n      <vendor_id state='on' value='0123456789ab'/>\n      <vpindex state='on'/>\n      <synic state='on'/>\n      <stimer state='on'>\n        <direct state='on'/>\n      </stimer>\n"), "{out}");
        assert!(
            out.contains("    <smm state='on'/>\n    <pmu state='off'/>\n  </features>"),
            "{out}"
        );
        assert!(out.contains("    <cache mode='passthrough'/>\n    <feature policy='require' name='tsc-deadline'/>\n    <!-- needed for SMT"), "{out}");
        // The clock already had both timers: untouched.
        let clock = |t: &str| t[t.find("<clock").unwrap()..t.find("</clock>").unwrap()].to_owned();
        assert_eq!(clock(&out), clock(WIN11));
        // Every line outside the planned elements is the original's.
        let lines = |t: &str| t.lines().map(str::to_owned).collect::<Vec<_>>();
        let (old, new) = (lines(WIN11), lines(&out));
        let removed: Vec<&String> = old.iter().filter(|l| !new.contains(l)).collect();
        for l in removed {
            let l = l.trim();
            assert!(
                [
                    "<vcpu",
                    "<vcpupin",
                    "<emulatorpin",
                    "<cpu ",
                    "<model",
                    "<driver"
                ]
                .iter()
                .any(|p| l.starts_with(p)),
                "removed: {l}"
            );
        }
        assert_eq!(apply(&out, &p, LibvirtOptions::default()).unwrap(), out);
    }

    #[test]
    fn missing_elements_go_where_libvirt_puts_them() {
        let bare = "<domain type='kvm'>\n\t<name>t</name>\n\t<memory unit='KiB'>1048576</memory>\n\t<os>\n\t\t<type>hvm</type>\n\t</os>\n\t<devices/>\n</domain>\n";
        let p = x3d_plan(Size::Vcpus(2));
        let out = apply(bare, &p, LibvirtOptions { fifo: true }).unwrap();
        let order: Vec<String> = xml_spans::parse(&out)
            .unwrap()
            .elements()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(
            order,
            [
                "name",
                "metadata",
                "memory",
                "memoryBacking",
                "vcpu",
                "iothreads",
                "cputune",
                "numatune",
                "os",
                "features",
                "cpu",
                "devices"
            ]
        );
        assert!(
            out.contains("\n\t<metadata>\n\t\t<kvmisolate:isolate "),
            "{out}"
        );
        assert!(
            out.contains("\n\t\t<vcpusched vcpus='0-1' scheduler='fifo' priority='1'/>\n"),
            "{out}"
        );
        assert!(out.contains("\n\t</cpu>\n\t<devices/>"), "{out}");
        // Besides the managed elements, only the new <metadata> wrapper was added.
        assert_eq!(
            skeleton(&out).replace("\n\t<metadata>\n\t</metadata>", ""),
            skeleton(bare)
        );
    }

    #[test]
    fn empty_and_foreign_elements() {
        let text = "<domain>\n  <name>t</name>\n  <metadata/>\n  <vcpu cpuset='1-3'>2</vcpu>\n  <vcpus>\n    <vcpu id='0' enabled='yes'/>\n  </vcpus>\n  <numatune>\n    <memory mode='interleave' nodeset='0-1'/>\n    <memnode cellid='0' mode='strict' nodeset='0'/>\n  </numatune>\n  <cpu mode='host-passthrough' check='none' migratable='on'/>\n</domain>";
        let p = x3d_plan(Size::Vcpus(2));
        let out = apply(text, &p, LibvirtOptions::default()).unwrap();
        let opt_in = libvirt::metadata_element(LibvirtOptions::default());
        assert!(
            out.contains(&format!("  <metadata>\n    {opt_in}\n  </metadata>\n")),
            "{out}"
        );
        assert!(
            out.contains("  <vcpu placement='static'>2</vcpu>\n  <iothreads>"),
            "{out}"
        );
        assert!(!out.contains("<vcpus>"), "{out}");
        assert!(out.contains("    <memory mode='strict' nodeset='0'/>\n    <memnode cellid='0' mode='strict' nodeset='0'/>\n"), "{out}");
        assert!(
            out.contains(
                "<cpu mode='host-passthrough' check='none' migratable='on'>\n    <topology"
            ),
            "{out}"
        );
        assert!(out.ends_with("</cpu>\n</domain>"), "{out}");
    }

    #[test]
    fn another_prefix_for_our_namespace_is_recognised() {
        let text = "<domain>\n  <metadata>\n    <k:isolate xmlns:k=\"https://kvmisolate.org/xmlns/libvirt/1\" profile=\"gaming\"/>\n    <k:other xmlns:k=\"urn:x\"/>\n  </metadata>\n</domain>\n";
        let out = apply(text, &x3d_plan(Size::Vcpus(2)), LibvirtOptions::default()).unwrap();
        assert!(!out.contains("<k:isolate"), "{out}");
        assert!(out.contains("<k:other xmlns:k=\"urn:x\"/>"));
        assert_eq!(out.matches("kvmisolate:isolate").count(), 1);
    }

    #[test]
    fn errors() {
        let p = x3d_plan(Size::Vcpus(2));
        let o = LibvirtOptions::default();
        assert_eq!(
            apply("<network/>", &p, o).unwrap_err(),
            ApplyError::NotDomain("network".to_owned())
        );
        let e = apply("<domain>\n<vcpu>2</cpu>\n</domain>", &p, o).unwrap_err();
        assert!(
            e.to_string().starts_with("not well-formed XML: line 2"),
            "{e}"
        );
    }

    #[test]
    fn diff_is_unified() {
        let d = diff("d.xml", "a\nb\n", "a\nc\n");
        assert_eq!(
            d,
            "--- d.xml\n+++ d.xml (planned)\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
        );
        assert_eq!(diff("d.xml", "a\n", "a\n"), "");
    }
}
