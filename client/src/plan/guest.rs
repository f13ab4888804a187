//! The guest-side half of a plan: what the domain XML asks of QEMU besides the CPUs (the
//! guide's `<pmu state='off'/>`, `<memoryBacking>` with `<locked/>` and `<nosharepages/>`,
//! disks on the planned I/O threads, and for Windows the Hyper-V enlightenments and clock).
//!
//! Each is a [`Want`]: an element with the attributes and children the plan sets. [`merge`]
//! turns a want into edits of an existing element (attributes and children the plan does not
//! set are kept, so is every byte outside what changes); [`unmet`] says what a domain lacks
//! (`check --vm`). The `<cpu>` feature `tsc-deadline` is written with the rest of `<cpu>`
//! ([`super::libvirt`]); [`tsc_deadline_want`] is its want for `check`.

use std::fmt::Write as _;

use super::xml_spans::{self, Element, Item};
use super::{GuestOs, GuestSide, Hugepages};

/// The `/proc/cpuinfo` flag of the TSC deadline timer.
pub const TSC_DEADLINE_FLAG: &str = "tsc_deadline_timer";

/// An element the plan wants, merged into an existing one of the same name (and key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The element name.
    pub name: &'static str,
    /// The attributes the plan sets (others of an existing element are kept), in order.
    pub attrs: Vec<(&'static str, String)>,
    /// The attribute that tells it from siblings of the same name (`name` of a `<timer>`).
    pub key: Option<&'static str>,
    /// An attribute whose presence is enough for [`unmet`] (the plan writes its own value).
    pub any_value: Option<&'static str>,
    /// The children the plan wants inside it (others are kept).
    pub children: Vec<Want>,
    /// The whole element as text, replacing an existing one entirely (its children are the
    /// plan's alone).
    pub exact: Option<String>,
}

impl Want {
    fn leaf(name: &'static str, attrs: &[(&'static str, &str)]) -> Self {
        Self {
            name,
            attrs: attrs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            key: None,
            any_value: None,
            children: Vec::new(),
            exact: None,
        }
    }

    fn on(name: &'static str) -> Self {
        Self::leaf(name, &[("state", "on")])
    }

    fn with(mut self, children: Vec<Want>) -> Self {
        self.children = children;
        self
    }

    fn keyed(mut self, key: &'static str) -> Self {
        self.key = Some(key);
        self
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `e` is the element this want describes (name, and key attribute if any).
    pub fn matches(&self, e: &Element) -> bool {
        e.name == self.name && self.key.is_none_or(|k| e.attr(k) == self.value(k))
    }

    /// The element as new XML: inner lines indented by `base` plus `unit`, the closing tag by
    /// `base`; all on one line when `inline`.
    pub fn render(&self, base: &str, unit: &str, inline: bool) -> String {
        if let Some(text) = &self.exact {
            return text.clone();
        }
        let mut s = format!("<{}", self.name);
        for (k, v) in &self.attrs {
            let _ = write!(s, " {k}='{v}'");
        }
        if self.children.is_empty() {
            s.push_str("/>");
            return s;
        }
        s.push('>');
        let inner = format!("{base}{unit}");
        for c in &self.children {
            if !inline {
                let _ = write!(s, "\n{inner}");
            }
            s.push_str(&c.render(&inner, unit, inline));
        }
        if !inline {
            let _ = write!(s, "\n{base}");
        }
        let _ = write!(s, "</{}>", self.name);
        s
    }
}

/// The top-level elements of the guest-side half, in libvirt's order: `<memoryBacking>`
/// (with the plan's hugepages), `<features>` and, for Windows, `<clock>`.
pub fn wants(side: &GuestSide, hugepages: Option<&Hugepages>) -> Vec<Want> {
    let mut backing = Vec::new();
    if let Some(h) = hugepages {
        let mut pages = Want::leaf("hugepages", &[]);
        pages.exact = Some(format!(
            "<hugepages><page size='{}' unit='KiB'/></hugepages>",
            h.page_kib
        ));
        backing.push(pages);
    }
    backing.push(Want::leaf("nosharepages", &[]));
    backing.push(Want::leaf("locked", &[]));
    let mut features = vec![Want::leaf("pmu", &[("state", "off")])];
    let mut out = vec![Want::leaf("memoryBacking", &[]).with(backing)];
    if side.os == GuestOs::Windows {
        features.insert(0, hyperv());
        out.push(Want::leaf("features", &[]).with(features));
        out.push(Want::leaf("clock", &[]).with(vec![
            Want::leaf("timer", &[("name", "hpet"), ("present", "no")]).keyed("name"),
            Want::leaf("timer", &[("name", "hypervclock"), ("present", "yes")]).keyed("name"),
        ]));
    } else {
        out.push(Want::leaf("features", &[]).with(features));
    }
    out
}

/// `<hyperv mode='custom'>` with the enlightenments that cut a Windows guest's timer and
/// interrupt exits.
fn hyperv() -> Want {
    Want::leaf("hyperv", &[("mode", "custom")]).with(vec![
        Want::on("relaxed"),
        Want::on("vapic"),
        Want::leaf("spinlocks", &[("state", "on"), ("retries", "8191")]),
        Want::on("vpindex"),
        Want::on("synic"),
        Want::on("stimer").with(vec![Want::on("direct")]),
        Want::on("frequencies"),
        Want::on("tlbflush"),
        Want::on("ipi"),
    ])
}

/// The `<cpu>` feature that requires the TSC deadline timer.
pub const TSC_DEADLINE_FEATURE: &str = "<feature policy='require' name='tsc-deadline'/>";

/// [`TSC_DEADLINE_FEATURE`] inside `<cpu>`, as a want (for `check`).
pub fn tsc_deadline_want() -> Want {
    Want::leaf("cpu", &[]).with(vec![
        Want::leaf(
            "feature",
            &[("policy", "require"), ("name", "tsc-deadline")],
        )
        .keyed("name"),
    ])
}

/// A `<disk>` bound to I/O thread `iothread` with `io='threads'`.
pub fn disk_want(iothread: u32) -> Want {
    let mut driver = Want::leaf(
        "driver",
        &[
            ("name", "qemu"),
            ("io", "threads"),
            ("iothread", &iothread.to_string()),
        ],
    );
    driver.any_value = Some("iothread");
    Want::leaf("disk", &[]).with(vec![driver])
}

/// The disks of `<devices>` that an I/O thread can serve: `<disk>`s (not CD-ROMs or floppies)
/// on the virtio bus (libvirt refuses `iothread` on the others).
pub fn iothread_disks(root: &Element) -> Vec<&Element> {
    root.elements()
        .filter(|e| e.name == "devices")
        .flat_map(Element::elements)
        .filter(|d| d.name == "disk" && d.attr("device").is_none_or(|v| v == "disk"))
        .filter(|d| {
            d.elements()
                .any(|t| t.name == "target" && t.attr("bus") == Some("virtio"))
        })
        .collect()
}

/// The `dev` of a disk's `<target>` (`vda`), or `?`.
pub fn disk_name(disk: &Element) -> &str {
    disk.elements()
        .find(|t| t.name == "target")
        .and_then(|t| t.attr("dev"))
        .unwrap_or("?")
}

/// Whether the domain looks like a Windows guest: libosinfo says so, or it already has
/// `<hyperv>` features.
pub fn looks_like_windows(root: &Element) -> bool {
    fn any(e: &Element, f: &dyn Fn(&Element) -> bool) -> bool {
        f(e) || e.elements().any(|c| any(c, f))
    }
    root.elements().any(|top| match top.name.as_str() {
        "metadata" => any(top, &|e| {
            e.name.ends_with(":os")
                && e.attr("id")
                    .is_some_and(|id| id.contains("microsoft.com/win"))
        }),
        "features" => top.elements().any(|f| f.name == "hyperv"),
        _ => false,
    })
}

/// One replacement of `start..end` by the text.
pub type Splice = (usize, usize, String);

/// The edits of `text` that make the existing element `old` hold `want`; `unit` is one level
/// of indentation.
pub fn merge(text: &str, old: &Element, want: &Want, unit: &str, out: &mut Vec<Splice>) {
    if let Some(exact) = &want.exact {
        if !same(old, exact) {
            out.push((old.start, old.end, exact.clone()));
        }
        return;
    }
    let base = xml_spans::indent_at(text, old.start).unwrap_or("");
    let missing: Vec<&Want> = want
        .children
        .iter()
        .filter(|w| !old.elements().any(|e| w.matches(e)))
        .collect();
    let attrs_differ = want.attrs.iter().any(|(k, v)| old.attr(k) != Some(v));
    if old.empty {
        if attrs_differ || !missing.is_empty() {
            let mut s = start_tag(old, want);
            if missing.is_empty() {
                s.insert(s.len() - 1, '/');
            } else {
                let inner = format!("{base}{unit}");
                for w in &missing {
                    let _ = write!(s, "\n{inner}{}", w.render(&inner, unit, false));
                }
                let _ = write!(s, "\n{base}</{}>", old.name);
            }
            out.push((old.start, old.end, s));
        }
        return;
    }
    if attrs_differ {
        out.push((old.start, old.open_end, start_tag(old, want)));
    }
    for w in &want.children {
        if let Some(child) = old.elements().filter(|e| w.matches(e)).last() {
            merge(text, child, w, unit, out);
        }
    }
    if missing.is_empty() {
        return;
    }
    let after = old
        .children
        .iter()
        .map(item_end)
        .max()
        .unwrap_or(old.open_end);
    let inline = !text[old.open_end..old.end].contains('\n');
    let mut s = String::new();
    if inline {
        for w in &missing {
            s.push_str(&w.render("", "", true));
        }
    } else {
        let inner = old
            .elements()
            .last()
            .and_then(|e| xml_spans::indent_at(text, e.start))
            .map_or_else(|| format!("{base}{unit}"), str::to_owned);
        for w in &missing {
            let _ = write!(s, "\n{inner}{}", w.render(&inner, unit, false));
        }
    }
    out.push((after, after, s));
}

fn item_end(item: &Item) -> usize {
    match item {
        Item::Element(e) => e.end,
        Item::Comment { end, .. } => *end,
    }
}

/// `old`'s start tag (`<name ...>`, without `/`) with the want's attributes set: existing
/// attributes keep their place, new ones follow.
fn start_tag(old: &Element, want: &Want) -> String {
    let mut s = format!("<{}", old.name);
    for (k, raw) in &old.attrs {
        match want.value(k) {
            Some(v) => {
                let _ = write!(s, " {k}='{v}'");
            }
            None => {
                let _ = write!(s, " {raw}");
            }
        }
    }
    for (k, v) in &want.attrs {
        if old.attr(k).is_none() {
            let _ = write!(s, " {k}='{v}'");
        }
    }
    s.push('>');
    s
}

/// Whether `old` is the element `text` describes (names, attribute values and children;
/// white space, quotes and attribute order aside).
fn same(old: &Element, text: &str) -> bool {
    xml_spans::parse(text).is_ok_and(|new| canon(old) == canon(&new))
}

fn canon(e: &Element) -> String {
    let mut attrs: Vec<String> = e
        .attrs
        .iter()
        .map(|(k, _)| format!("{k}={}", e.attr(k).unwrap_or("")))
        .collect();
    attrs.sort();
    let children: String = e.elements().map(canon).collect();
    format!("<{} {}>{children}</>", e.name, attrs.join(" "))
}

/// What `old` (None: absent) lacks of `want`, one line each, prefixed with `path` (the
/// enclosing elements).
pub fn unmet(old: Option<&Element>, want: &Want, path: &str, out: &mut Vec<String>) {
    let Some(old) = old else {
        if !want.attrs.is_empty() || want.children.is_empty() || want.exact.is_some() {
            out.push(format!("{path}{}", want.render("", "", true)));
            return;
        }
        // A missing container (`<features>`, `<memoryBacking>`...): each child, one line each.
        let inner = format!("{path}<{}>", want.name);
        for w in &want.children {
            unmet(None, w, &inner, out);
        }
        return;
    };
    if let Some(exact) = &want.exact {
        if !same(old, exact) {
            out.push(format!("{path}{exact}"));
        }
        return;
    }
    let wrong: Vec<String> = want
        .attrs
        .iter()
        .filter(|(k, v)| match old.attr(k) {
            Some(_) if want.any_value == Some(*k) => false,
            found => found != Some(v.as_str()),
        })
        .map(|(k, v)| format!("{k}='{v}'"))
        .collect();
    if !wrong.is_empty() {
        out.push(format!("{path}<{} {}>", want.name, wrong.join(" ")));
    }
    let inner = format!("{path}<{}>", want.name);
    for w in &want.children {
        let child = old.elements().filter(|e| w.matches(e)).last();
        unmet(child, w, &inner, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(os: GuestOs) -> GuestSide {
        GuestSide {
            os,
            tsc_deadline: true,
            disk_iothreads: 1,
        }
    }

    fn apply(text: &str, want: &Want) -> String {
        let root = xml_spans::parse(text).unwrap();
        let mut edits = Vec::new();
        merge(text, &root, want, "  ", &mut edits);
        edits.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut out = text.to_owned();
        for (start, end, t) in edits {
            out.replace_range(start..end, &t);
        }
        out
    }

    fn features_want(os: GuestOs) -> Want {
        wants(&side(os), None)
            .into_iter()
            .find(|w| w.name == "features")
            .unwrap()
    }

    #[test]
    fn a_one_line_element_stays_on_one_line() {
        let out = apply(
            "<features><acpi/><apic/><vmport state=\"off\"/></features>",
            &features_want(GuestOs::Any),
        );
        assert_eq!(
            out,
            "<features><acpi/><apic/><vmport state=\"off\"/><pmu state='off'/></features>"
        );
    }

    #[test]
    fn existing_children_are_changed_in_place() {
        let text = "<features>\n    <acpi/>\n    <pmu state='on'/>\n    <hyperv mode='passthrough'>\n      <vendor_id state='on' value='x'/>\n      <stimer state='on'/>\n      <spinlocks state='on' retries='4095'/>\n    </hyperv>\n  </features>";
        let out = apply(text, &features_want(GuestOs::Windows));
        assert!(out.contains("    <acpi/>\n    <pmu state='off'/>\n    <hyperv mode='custom'>\n      <vendor_id state='on' value='x'/>\n      <stimer state='on'>\n        <direct state='on'/>\n      </stimer>\n      <spinlocks state='on' retries='8191'/>\n      <relaxed state='on'/>\n"), "{out}");
        assert!(
            out.ends_with("      <ipi state='on'/>\n    </hyperv>\n  </features>"),
            "{out}"
        );
        // Idempotent, and nothing unmet afterwards.
        assert_eq!(apply(&out, &features_want(GuestOs::Windows)), out);
        let mut lacks = Vec::new();
        unmet(
            Some(&xml_spans::parse(&out).unwrap()),
            &features_want(GuestOs::Windows),
            "",
            &mut lacks,
        );
        assert!(lacks.is_empty(), "{lacks:?}");
    }

    #[test]
    fn unmet_names_each_missing_piece() {
        let text = "<features><hyperv mode='custom'><relaxed state='on'/><spinlocks state='on' retries='4095'/></hyperv></features>";
        let mut lacks = Vec::new();
        unmet(
            Some(&xml_spans::parse(text).unwrap()),
            &features_want(GuestOs::Windows),
            "",
            &mut lacks,
        );
        assert!(
            lacks.contains(&"<features><hyperv><spinlocks retries='8191'>".to_owned()),
            "{lacks:?}"
        );
        assert!(
            lacks.contains(
                &"<features><hyperv><stimer state='on'><direct state='on'/></stimer>".to_owned()
            ),
            "{lacks:?}"
        );
        assert!(
            lacks.contains(&"<features><pmu state='off'/>".to_owned()),
            "{lacks:?}"
        );
        assert!(!lacks.iter().any(|l| l.contains("relaxed")), "{lacks:?}");
        // A missing container is listed child by child, an element of its own whole.
        let mut lacks = Vec::new();
        unmet(None, &features_want(GuestOs::Windows), "", &mut lacks);
        assert_eq!(lacks.len(), 2, "{lacks:?}");
        assert!(
            lacks[0].starts_with("<features><hyperv mode='custom'><relaxed state='on'/>"),
            "{lacks:?}"
        );
        assert_eq!(
            lacks.last().map(String::as_str),
            Some("<features><pmu state='off'/>")
        );
        // A disk bound to another I/O thread is fine for check.
        let disk = "<disk><driver name='qemu' io='threads' iothread='2'/></disk>";
        let mut lacks = Vec::new();
        unmet(
            Some(&xml_spans::parse(disk).unwrap()),
            &disk_want(1),
            "",
            &mut lacks,
        );
        assert!(lacks.is_empty(), "{lacks:?}");
    }

    #[test]
    fn an_empty_parent_gets_its_children() {
        let out = apply(
            "<disk type='file'>\n  <driver name='qemu' type='raw'/>\n</disk>",
            &disk_want(2),
        );
        assert_eq!(
            out,
            "<disk type='file'>\n  <driver name='qemu' type='raw' io='threads' iothread='2'/>\n</disk>"
        );
        let out = apply(
            "<stimer state='on'/>",
            &Want::on("stimer").with(vec![Want::on("direct")]),
        );
        assert_eq!(
            out,
            "<stimer state='on'>\n  <direct state='on'/>\n</stimer>"
        );
    }

    #[test]
    fn windows_is_recognised() {
        let libosinfo = "<domain><metadata><libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'><libosinfo:os id='http://microsoft.com/win/11'/></libosinfo:libosinfo></metadata></domain>";
        assert!(looks_like_windows(&xml_spans::parse(libosinfo).unwrap()));
        assert!(looks_like_windows(
            &xml_spans::parse("<domain><features><hyperv/></features></domain>").unwrap()
        ));
        assert!(!looks_like_windows(
            &xml_spans::parse(&libosinfo.replace("microsoft.com/win", "debian.org/debian"))
                .unwrap()
        ));
    }
}
