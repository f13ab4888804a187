//! The libvirt domain XML elements for a plan: `<memoryBacking>` (with `--hugepages`),
//! `<vcpu>`, `<iothreads>`, `<cputune>`, `<numatune>`, `<cpu>` and the kvmisolate opt-in in
//! `<metadata>`.

use std::fmt::Write as _;

use kvmisolate_dbus::tunings::{Profile, Tuning};

use super::xml_spans::Element;
use super::{EmulatorMode, Plan, guest};

/// The namespace of kvmisolate's libvirt metadata.
pub const METADATA_NS: &str = "https://kvmisolate.org/xmlns/libvirt/1";

/// The metadata element that opts a domain in to isolation by kvmisolate, with the tunings
/// that make `kvmisolate check` clean for the planned CPUs: the `default` profile's plus `thp`
/// (THP `always`, the usual kernel default, is a check warning: khugepaged and compaction
/// stalls), `cpu-idle` (deep idle states enabled on the isolated CPUs are one too) and
/// `numa-balancing` (a warning on hosts with several nodes); with `--fifo` the `realtime` profile, which also turns RT throttling off (the hook
/// refuses SCHED_FIFO vCPUs without that) and the fair server on the isolated CPUs.
pub fn metadata_element(opts: LibvirtOptions) -> String {
    let what = if opts.fifo {
        format!("profile=\"{}\"", Profile::Realtime)
    } else {
        let mut list = Profile::Default.tunings();
        list.extend([Tuning::NumaBalancing, Tuning::CpuIdle, Tuning::Thp]);
        let names: Vec<&str> = Tuning::ALL
            .iter()
            .filter(|t| list.contains(t))
            .map(|t| t.as_str())
            .collect();
        format!("tunings=\"{}\"", names.join(","))
    };
    format!("<kvmisolate:isolate xmlns:kvmisolate=\"{METADATA_NS}\" {what}/>")
}

/// Choices that only matter to the XML.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LibvirtOptions {
    /// Add `<vcpusched scheduler='fifo' priority='1'>` for every vCPU.
    pub fifo: bool,
}

/// An element's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Text (`<vcpu>3</vcpu>`).
    Text(String),
    /// Child elements, one line of XML each.
    Children(Vec<String>),
}

/// A top-level domain element the plan sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// The element name.
    pub name: &'static str,
    /// Its attributes, written out (`mode='host-passthrough'`).
    pub attrs: Vec<String>,
    /// Its content.
    pub body: Body,
    /// Whether attributes of an existing element that the plan does not set are kept.
    pub keep_other_attrs: bool,
    /// The children of an existing element that the plan replaces, by name (`feature
    /// name=tsc-deadline`: only those with that attribute value); other children are kept.
    pub replaces: Vec<&'static str>,
    /// Whether kept children go before the plan's own (libvirt writes `<shares>` before
    /// `<vcpupin>`, but `<topology>` before `<feature>`).
    pub kept_first: bool,
}

impl Managed {
    /// Whether `e`, a child of an existing element, is one the plan replaces.
    pub fn replaces(&self, e: &Element) -> bool {
        self.replaces.iter().any(|spec| match spec.split_once(' ') {
            Some((name, attr)) => {
                e.name == name
                    && attr
                        .split_once('=')
                        .is_some_and(|(k, v)| e.attr(k) == Some(v))
            }
            None => e.name == *spec,
        })
    }

    /// The element as XML: the first line unindented, inner lines indented by `base` plus
    /// `unit`, the closing tag by `base`; `kept` are children of an existing element to keep,
    /// written before or after the plan's own as [`Managed::kept_first`] says.
    pub fn render(
        &self,
        base: &str,
        unit: &str,
        extra_attrs: &[String],
        kept: &[String],
    ) -> String {
        let mut s = format!("<{}", self.name);
        for a in self.attrs.iter().chain(extra_attrs) {
            let _ = write!(s, " {a}");
        }
        match &self.body {
            Body::Text(t) => {
                let _ = write!(s, ">{t}</{}>", self.name);
            }
            Body::Children(children) if children.is_empty() && kept.is_empty() => s.push_str("/>"),
            Body::Children(children) => {
                s.push('>');
                let (first, second) = if self.kept_first {
                    (kept, children.as_slice())
                } else {
                    (children.as_slice(), kept)
                };
                for c in first.iter().chain(second) {
                    let _ = write!(s, "\n{base}{unit}{c}");
                }
                let _ = write!(s, "\n{base}</{}>", self.name);
            }
        }
        s
    }
}

/// The elements for `plan`, in libvirt's order.
pub fn elements(plan: &Plan, opts: LibvirtOptions) -> Vec<Managed> {
    let vcpus = plan.vcpus.len();
    let mut out = vec![Managed {
        name: "vcpu",
        attrs: vec!["placement='static'".to_owned()],
        body: Body::Text(vcpus.to_string()),
        keep_other_attrs: false,
        replaces: Vec::new(),
        kept_first: false,
    }];
    if !plan.iothreads.is_empty() {
        out.push(Managed {
            name: "iothreads",
            attrs: Vec::new(),
            body: Body::Text(plan.iothreads.len().to_string()),
            keep_other_attrs: false,
            replaces: Vec::new(),
            kept_first: false,
        });
    }
    let mut tune: Vec<String> = plan
        .vcpus
        .iter()
        .map(|p| format!("<vcpupin vcpu='{}' cpuset='{}'/>", p.vcpu, p.cpu))
        .collect();
    tune.push(format!("<emulatorpin cpuset='{}'/>", plan.emulator));
    for io in &plan.iothreads {
        tune.push(format!(
            "<iothreadpin iothread='{}' cpuset='{}'/>",
            io.iothread, io.cpus
        ));
    }
    if opts.fifo && vcpus > 0 {
        let range = if vcpus == 1 {
            "0".to_owned()
        } else {
            format!("0-{}", vcpus - 1)
        };
        tune.push(format!(
            "<vcpusched vcpus='{range}' scheduler='fifo' priority='1'/>"
        ));
    }
    let mut replaces = vec!["vcpupin", "emulatorpin", "vcpusched"];
    if !plan.iothreads.is_empty() {
        replaces.push("iothreadpin");
    }
    out.push(Managed {
        name: "cputune",
        attrs: Vec::new(),
        body: Body::Children(tune),
        keep_other_attrs: false,
        replaces,
        kept_first: true,
    });
    if let Some(node) = plan.numa_node {
        out.push(Managed {
            name: "numatune",
            attrs: Vec::new(),
            body: Body::Children(vec![format!("<memory mode='strict' nodeset='{node}'/>")]),
            keep_other_attrs: false,
            replaces: vec!["memory"],
            kept_first: false,
        });
    }
    let g = &plan.guest;
    let mut cpu = vec![
        format!(
            "<topology sockets='{}' dies='{}' cores='{}' threads='{}'/>",
            g.sockets, g.dies, g.cores, g.threads
        ),
        "<cache mode='passthrough'/>".to_owned(),
    ];
    let mut replaces = vec!["topology", "cache", "model", "vendor", "numa"];
    if plan.guest_side.tsc_deadline {
        cpu.push(guest::TSC_DEADLINE_FEATURE.to_owned());
        replaces.push("feature name=tsc-deadline");
    }
    out.push(Managed {
        name: "cpu",
        attrs: vec!["mode='host-passthrough'".to_owned()],
        body: Body::Children(cpu),
        keep_other_attrs: true,
        replaces,
        kept_first: false,
    });
    out
}

/// What `--libvirt` prints: the elements to put in the domain (`virsh edit`), 2-space indented.
pub fn snippet(plan: &Plan, opts: LibvirtOptions) -> String {
    let mut s = format!(
        "<!-- kvmisolate plan: isolate {} (vCPUs {}, emulator {}), housekeeping {} -->\n",
        plan.isolate,
        plan.vcpu_cpus(),
        match plan.emulator_mode {
            EmulatorMode::Separate => plan.emulator.to_string(),
            EmulatorMode::Shared => "shared".to_owned(),
        },
        plan.housekeeping
    );
    let _ = writeln!(s, "<metadata>\n  {}\n</metadata>", metadata_element(opts));
    let mut parts: Vec<(&str, String)> = elements(plan, opts)
        .iter()
        .map(|e| (e.name, e.render("", "  ", &[], &[])))
        .collect();
    for w in guest::wants(&plan.guest_side, plan.hugepages.as_ref()) {
        parts.push((w.name, w.render("", "  ", false)));
    }
    parts.sort_by_key(|(name, _)| super::apply::order_of(name));
    for (_, text) in parts {
        let _ = writeln!(s, "{text}");
    }
    if plan.guest_side.disk_iothreads > 0 {
        let which = if plan.guest_side.disk_iothreads == 1 {
            "iothread='1'".to_owned()
        } else {
            format!("iothread='1'..'{}' in turn", plan.guest_side.disk_iothreads)
        };
        let _ = writeln!(
            s,
            "<!-- and in <devices>, the <driver> of each virtio <disk>: io='threads' {which} -->\n{}",
            guest::disk_want(1)
                .children
                .iter()
                .map(|d| d.render("", "  ", false))
                .collect::<String>()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlanOptions, Size, plan};
    use crate::topology::{Topology, fixture};

    fn recipe(size: Size) -> Plan {
        let dir = fixture::tree("recipe-6c");
        let topo = Topology::read(dir.path()).unwrap();
        let opts = PlanOptions {
            size,
            iothreads: 0,
            ..PlanOptions::default()
        };
        plan(&topo, &opts).unwrap()
    }

    #[test]
    fn one_vcpu_with_fifo_and_no_iothreads() {
        let s = snippet(&recipe(Size::Vcpus(1)), LibvirtOptions { fifo: true });
        assert!(
            s.contains("<vcpusched vcpus='0' scheduler='fifo' priority='1'/>"),
            "{s}"
        );
        assert!(!s.contains("iothread"), "{s}");
        assert!(
            s.contains("<topology sockets='1' dies='1' cores='1' threads='1'/>"),
            "{s}"
        );
        assert!(s.contains(&metadata_element(LibvirtOptions { fifo: true })));
        assert!(s.contains("profile=\"realtime\""), "{s}");
    }

    /// The libvirt hook reads the opt-in the plan writes: the tunings `kvmisolate check` wants
    /// (THP included), and with `--fifo` RT throttling off, without which it refuses the start.
    #[test]
    fn the_hook_accepts_the_opt_in() {
        use crate::libvirt::{domain::Domain, optin};
        for fifo in [false, true] {
            let opts = LibvirtOptions { fifo };
            let xml = super::super::apply::apply(
                "<domain type='kvm'>\n  <name>g</name>\n</domain>\n",
                &recipe(Size::Vcpus(2)),
                opts,
            )
            .unwrap();
            let domain = Domain::parse(&xml).unwrap();
            let s = optin::settings(&domain, None).unwrap().expect("opted in");
            let tunings = match (&s.tunings, s.profile) {
                (Some(list), None) => list.clone(),
                (None, Some(p)) => p.tunings(),
                other => panic!("{other:?}"),
            };
            assert!(tunings.contains(&Tuning::Thp), "{tunings:?}");
            assert!(tunings.contains(&Tuning::CpuIdle), "{tunings:?}");
            for t in Profile::Default.tunings() {
                assert!(tunings.contains(&t), "{t} missing from {tunings:?}");
            }
            assert_eq!(s.disables_rt_throttling(), fifo, "{xml}");
        }
    }

    #[test]
    fn render_indents_and_keeps() {
        let m = Managed {
            name: "cputune",
            attrs: Vec::new(),
            body: Body::Children(vec!["<a/>".to_owned()]),
            keep_other_attrs: false,
            replaces: Vec::new(),
            kept_first: true,
        };
        assert_eq!(
            m.render("  ", "  ", &[], &["<shares>1</shares>".to_owned()]),
            "<cputune>\n    <shares>1</shares>\n    <a/>\n  </cputune>"
        );
        let empty = Managed {
            body: Body::Children(Vec::new()),
            ..m
        };
        assert_eq!(
            empty.render("", "  ", &["x='1'".to_owned()], &[]),
            "<cputune x='1'/>"
        );
    }
}
