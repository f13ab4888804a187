//! A benchmark run as data: JSON (`"version": 1`), the human table, `--compare` of two runs,
//! and the `--plot` SVG.

use std::fmt::Write as _;
use std::path::Path;

use kvmisolate_dbus::cpulist::CpuSet;
use serde::{Deserialize, Serialize};

use super::hist::Stats;
use super::interference::{CpuInterference, TaskRun};

/// The `version` of the JSON; bumped on incompatible changes.
pub const JSON_VERSION: u32 = 1;

/// One measured CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuResult {
    /// The CPU.
    pub cpu: u32,
    /// The latency summary (µs).
    #[serde(flatten)]
    pub stats: Stats,
    /// Periods skipped because a wake-up came after the next deadline.
    pub overruns: u64,
    /// How often the measuring thread was preempted (involuntary context switches).
    pub preempted: Option<u64>,
    /// The histogram: `[µs, count]` for every non-empty 1 µs bucket (the last may be the
    /// overflow bucket at 100000).
    pub histogram: Vec<(u64, u64)>,
    /// What else happened on this CPU.
    pub interference: CpuInterference,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// [`JSON_VERSION`].
    pub version: u32,
    /// `uname -r`.
    pub kernel: String,
    /// The measured CPUs.
    pub cpus: CpuSet,
    /// The period, µs.
    #[serde(rename = "interval-us")]
    pub interval_us: u64,
    /// How long it measured, seconds.
    #[serde(rename = "duration-s")]
    pub duration_s: f64,
    /// SCHED_FIFO priority.
    pub priority: u8,
    /// Whether `--load` ran.
    pub load: bool,
    /// Whether mlockall succeeded.
    #[serde(rename = "memory-locked")]
    pub memory_locked: bool,
    /// Per CPU.
    pub results: Vec<CpuResult>,
    /// Tasks other than the benchmark that ran on the measured CPUs (best effort).
    #[serde(rename = "other-tasks")]
    pub other_tasks: Vec<TaskRun>,
    /// Anything that makes the figures less trustworthy.
    pub warnings: Vec<String>,
}

/// A saved run that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a bench result.
    #[error("{path} is not a kvmisolate bench --json result: {why}")]
    Format {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

/// Reads a `--json` result.
pub fn load(path: &Path) -> Result<BenchReport, LoadError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: p.clone(),
        source,
    })?;
    parse(&text).map_err(|why| LoadError::Format { path: p, why })
}

/// Parses a `--json` result (version 1).
pub fn parse(text: &str) -> Result<BenchReport, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match v.get("version").and_then(|v| v.as_u64()) {
        Some(1) => {}
        Some(n) => return Err(format!("version {n}, this kvmisolate reads version 1")),
        None => return Err("no \"version\" key".to_owned()),
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn top(map: &std::collections::BTreeMap<String, u64>, n: usize) -> String {
    let mut v: Vec<(&String, &u64)> = map.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = v.iter().take(n).map(|(k, c)| format!("{k} {c}")).collect();
    let mut s = if shown.is_empty() {
        "none".to_owned()
    } else {
        shown.join(", ")
    };
    if v.len() > n {
        let _ = write!(s, " (+{} more)", v.len() - n);
    }
    s
}

/// The human report.
pub fn format_human(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "kvmisolate bench: CPUs {}, interval {} us, {:.1} s, SCHED_FIFO {}{}, kernel {}",
        r.cpus,
        r.interval_us,
        r.duration_s,
        r.priority,
        if r.load { ", host load on" } else { "" },
        r.kernel
    );
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    let _ = writeln!(
        s,
        "\nwake-up latency (us)\n{:>4} {:>9} {:>8} {:>8} {:>6} {:>6} {:>6} {:>9} {:>8} {:>9}",
        "CPU", "samples", "min", "avg", "p50", "p99", "p99.9", "max", "overruns", "preempted"
    );
    for c in &r.results {
        let st = &c.stats;
        let _ = writeln!(
            s,
            "{:>4} {:>9} {:>8.1} {:>8.1} {:>6} {:>6} {:>6} {:>9.1} {:>8} {:>9}",
            c.cpu,
            st.samples,
            st.min_us,
            st.avg_us,
            st.p50_us,
            st.p99_us,
            st.p999_us,
            st.max_us,
            c.overruns,
            c.preempted.map_or("?".to_owned(), |p| p.to_string())
        );
    }
    let _ = writeln!(s, "\ninterference on each measured CPU during the run");
    for c in &r.results {
        let i = &c.interference;
        let _ = writeln!(
            s,
            "  CPU {}: interrupts: {}\n         (LOC includes the measurement's own timer, one per sample)\n         softirqs: {}\n         schedule() calls: {} (~{} are the measurement's own sleeps)",
            c.cpu,
            top(&i.interrupts, 6),
            top(&i.softirqs, 6),
            i.schedule_calls.map_or("?".to_owned(), |n| n.to_string()),
            2 * c.stats.samples
        );
    }
    if r.other_tasks.is_empty() {
        let _ = writeln!(s, "\nno other task was seen on the measured CPUs");
    } else {
        let _ = writeln!(
            s,
            "\nother tasks last seen on the measured CPUs (timeslices, CPU time):"
        );
        for t in r.other_tasks.iter().take(20) {
            let _ = writeln!(
                s,
                "  CPU {}: {} (PID {}{}) {} times, {} us",
                t.cpu,
                t.comm,
                t.pid,
                if t.pid == t.tid {
                    String::new()
                } else {
                    format!(" TID {}", t.tid)
                },
                t.runs,
                t.run_us
            );
        }
        if r.other_tasks.len() > 20 {
            let _ = writeln!(
                s,
                "  ... and {} more (--json lists all)",
                r.other_tasks.len() - 20
            );
        }
    }
    s
}

/// `+d (+p%)`: the change from `a` to `b`.
pub fn change(a: f64, b: f64) -> String {
    let d = b - a;
    if a.abs() < f64::EPSILON {
        format!("{d:+.1}")
    } else {
        format!("{d:+.1} ({:+.0}%)", d / a * 100.0)
    }
}

/// The difference between run `a` (before) and run `b` (after), per CPU.
pub fn format_compare(a: &BenchReport, b: &BenchReport, pa: &Path, pb: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "A: {} (CPUs {}, {} us, {:.0} s{})",
        pa.display(),
        a.cpus,
        a.interval_us,
        a.duration_s,
        if a.load { ", load" } else { "" }
    );
    let _ = writeln!(
        s,
        "B: {} (CPUs {}, {} us, {:.0} s{})",
        pb.display(),
        b.cpus,
        b.interval_us,
        b.duration_s,
        if b.load { ", load" } else { "" }
    );
    if a.interval_us != b.interval_us || a.load != b.load {
        let _ = writeln!(
            s,
            "warning: the runs differ in interval or load; compare with care"
        );
    }
    for ca in &a.results {
        let Some(cb) = b.results.iter().find(|c| c.cpu == ca.cpu) else {
            let _ = writeln!(s, "\nCPU {}: only in A", ca.cpu);
            continue;
        };
        let _ = writeln!(
            s,
            "\nCPU {} (us)     {:>10} {:>10}  change",
            ca.cpu, "A", "B"
        );
        let (x, y) = (&ca.stats, &cb.stats);
        let rows: [(&str, f64, f64); 6] = [
            ("min", x.min_us, y.min_us),
            ("avg", x.avg_us, y.avg_us),
            ("p50", x.p50_us as f64, y.p50_us as f64),
            ("p99", x.p99_us as f64, y.p99_us as f64),
            ("p99.9", x.p999_us as f64, y.p999_us as f64),
            ("max", x.max_us, y.max_us),
        ];
        for (name, va, vb) in rows {
            let _ = writeln!(s, "  {name:<12} {va:>10.1} {vb:>10.1}  {}", change(va, vb));
        }
        let irq = |c: &CpuResult| c.interference.interrupts.values().sum::<u64>() as f64;
        let _ = writeln!(
            s,
            "  {:<12} {:>10.0} {:>10.0}  {}",
            "interrupts",
            irq(ca),
            irq(cb),
            change(irq(ca), irq(cb))
        );
    }
    for cb in &b.results {
        if !a.results.iter().any(|c| c.cpu == cb.cpu) {
            let _ = writeln!(s, "\nCPU {}: only in B", cb.cpu);
        }
    }
    s
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The histograms as an SVG picture: x = latency (µs, linear), y = count (log10), one line
/// per CPU.
pub fn svg(r: &BenchReport) -> String {
    let title = format!(
        "wake-up latency, CPUs {}, interval {} us, {:.0} s{}",
        r.cpus,
        r.interval_us,
        r.duration_s,
        if r.load { ", host load" } else { "" }
    );
    let series: Vec<(String, &[(u64, u64)])> = r
        .results
        .iter()
        .map(|c| {
            (
                format!("CPU {} (max {:.0} us)", c.cpu, c.stats.max_us),
                c.histogram.as_slice(),
            )
        })
        .collect();
    histograms_svg(&title, &series)
}

/// Histograms (`(label, [(µs, count)])`) as one SVG picture: x = µs (linear), y = count
/// (log10), one line each.
pub fn histograms_svg(title: &str, series: &[(String, &[(u64, u64)])]) -> String {
    let (w, h) = (800.0, 450.0);
    let (left, right, top_m, bottom) = (70.0, 20.0, 40.0, 50.0);
    let pw = w - left - right;
    let ph = h - top_m - bottom;
    let max_us = series
        .iter()
        .flat_map(|(_, h)| h.iter().map(|(us, _)| *us))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_count = series
        .iter()
        .flat_map(|(_, h)| h.iter().map(|(_, n)| *n))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let decades = max_count.log10().ceil().max(1.0);
    let x = |us: f64| left + us / max_us * pw;
    let y = |n: f64| top_m + ph - (n.max(1.0).log10() / decades) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        s,
        "<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>"
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        w / 2.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        "<g stroke=\"black\"><line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/><line x1=\"{left}\" y1=\"{top_m}\" x2=\"{left}\" y2=\"{}\"/></g>",
        top_m + ph,
        left + pw,
        top_m + ph,
        top_m + ph
    );
    for d in 0..=(decades as u32) {
        let yy = y(10f64.powi(d as i32));
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">1e{d}</text>",
            left + pw,
            left - 6.0,
            yy + 4.0
        );
    }
    for i in 0..=5 {
        let us = max_us * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{us:.0}</text>",
            x(us),
            top_m + ph + 18.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">latency (us)</text>\n<text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.1})\">samples (log)</text>",
        left + pw / 2.0,
        h - 10.0,
        top_m + ph / 2.0,
        top_m + ph / 2.0
    );
    for (i, (label, hist)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = hist
            .iter()
            .map(|(us, n)| format!("{:.1},{:.1}", x(*us as f64), y(*n as f64)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            pts.join(" ")
        );
        let ly = top_m + 10.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            left + pw - 150.0,
            left + pw - 130.0,
            left + pw - 125.0,
            ly + 4.0,
            esc(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::hist::Histogram;
    use super::*;

    pub fn sample(cpus: &[u32], base_us: u64) -> BenchReport {
        let results = cpus
            .iter()
            .map(|&cpu| {
                let mut h = Histogram::new();
                for i in 0..1000u64 {
                    h.record((base_us + i % 7) * 1000 + 300);
                }
                h.record(base_us * 40 * 1000);
                let mut interference = CpuInterference::default();
                interference.interrupts.insert("LOC".into(), 100);
                interference.softirqs.insert("TIMER".into(), 90);
                interference.schedule_calls = Some(2010);
                CpuResult {
                    cpu,
                    stats: h.stats(),
                    overruns: 0,
                    preempted: Some(1),
                    histogram: h.sparse(),
                    interference,
                }
            })
            .collect();
        BenchReport {
            version: JSON_VERSION,
            kernel: "6.12.0".into(),
            cpus: cpus.iter().copied().collect(),
            interval_us: 200,
            duration_s: 20.0,
            priority: 95,
            load: false,
            memory_locked: true,
            results,
            other_tasks: vec![TaskRun {
                pid: 20,
                tid: 20,
                comm: "ksoftirqd/2".into(),
                cpu: 2,
                runs: 3,
                run_us: 40,
            }],
            warnings: vec![],
        }
    }

    #[test]
    fn json_round_trip() {
        let r = sample(&[2, 3], 5);
        let text = serde_json::to_string_pretty(&r).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["cpus"], "2-3");
        for k in [
            "cpu",
            "samples",
            "min-us",
            "avg-us",
            "p50-us",
            "p99-us",
            "p99.9-us",
            "max-us",
            "histogram",
            "interference",
        ] {
            assert!(v["results"][0].get(k).is_some(), "{k}");
        }
        assert_eq!(parse(&text).unwrap(), r);
        assert!(parse("{\"version\": 2}").unwrap_err().contains("version 2"));
        assert!(parse("[]").is_err());
        assert!(
            load(Path::new("/nonexistent/x.json"))
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/x.json")
        );
    }

    #[test]
    fn human_table() {
        let t = format_human(&sample(&[2], 5));
        assert!(t.contains("p99.9"), "{t}");
        assert!(t.contains("LOC 100"), "{t}");
        assert!(t.contains("ksoftirqd/2 (PID 20) 3 times"), "{t}");
    }

    #[test]
    fn compare_runs() {
        let a = sample(&[2, 3], 10);
        let b = sample(&[2, 4], 5);
        let t = format_compare(&a, &b, Path::new("a.json"), Path::new("b.json"));
        assert!(t.contains("CPU 2 (us)"), "{t}");
        assert!(t.contains("CPU 3: only in A"), "{t}");
        assert!(t.contains("CPU 4: only in B"), "{t}");
        // max 400 -> 200: -50%
        assert!(t.contains("-200.0 (-50%)"), "{t}");
        let t = format_compare(&a, &a, Path::new("a"), Path::new("a"));
        assert!(t.contains("+0.0 (+0%)"), "{t}");
    }

    /// A minimal XML well-formedness check: balanced tags, quoted attributes, no bare `<`/`&`.
    fn well_formed(xml: &str) -> Result<(), String> {
        let body = xml.trim();
        let body = match body.strip_prefix("<?xml") {
            Some(r) => &r[r.find("?>").ok_or("unterminated declaration")? + 2..],
            None => body,
        };
        let mut stack: Vec<String> = Vec::new();
        let mut rest = body;
        let mut roots = 0;
        while let Some(i) = rest.find('<') {
            let text = &rest[..i];
            if text.contains('>')
                || text
                    .replace("&amp;", "")
                    .replace("&lt;", "")
                    .replace("&gt;", "")
                    .replace("&quot;", "")
                    .contains('&')
            {
                return Err(format!("bad text {text:?}"));
            }
            let end = rest[i..].find('>').ok_or("unterminated tag")? + i;
            let tag = &rest[i + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or("close without open")?;
                if open != name.trim() {
                    return Err(format!("</{name}> closes <{open}>"));
                }
            } else {
                if tag.matches('"').count() % 2 != 0 || tag.contains('<') {
                    return Err(format!("bad tag <{tag}>"));
                }
                if stack.is_empty() {
                    roots += 1;
                }
                if !tag.ends_with('/') {
                    stack.push(tag.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
            rest = &rest[end + 1..];
        }
        if !stack.is_empty() || roots != 1 || !rest.trim().is_empty() {
            return Err(format!("unbalanced: {stack:?}, {roots} roots"));
        }
        Ok(())
    }

    #[test]
    fn svg_is_well_formed() {
        let mut r = sample(&[2, 3], 5);
        r.kernel = "<&>".into();
        let s = svg(&r);
        well_formed(&s).unwrap();
        assert!(s.starts_with("<?xml"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(well_formed("<svg><g></svg>").is_err());
        // An empty run still draws axes.
        let mut e = sample(&[2], 5);
        e.results.clear();
        well_formed(&svg(&e)).unwrap();
    }
}
