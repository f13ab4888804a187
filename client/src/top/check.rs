//! `check --vm`'s measurement: when the domain runs and the caller is root, a 5 s `top`
//! sample of it becomes the `vm-measured` finding ("measured: p99 X µs"). Information only:
//! what a window saw depends on the guest's load then.

use std::time::Duration;

use super::report::TopReport;
use crate::check::args::RootArgs;
use crate::check::{Finding, Report, Severity};

/// The sample's length.
pub const WINDOW: Duration = Duration::from_secs(5);

/// The finding for a sample (or for why there is none).
pub fn finding(sample: Result<&TopReport, &str>) -> Finding {
    match sample {
        Err(why) => Finding::new(
            "vm-measured",
            Severity::Info,
            format!("not measured: {why}"),
        ),
        Ok(r) => {
            let mut found = if r.verdict.samples == 0 {
                format!("measured for {:.0} s: no vCPU wake-up seen", r.duration_s)
            } else {
                format!(
                    "measured for {:.0} s: vCPU wake-up delay p99 {} us, max {:.0} us (goal < {} us, {})",
                    r.duration_s,
                    r.verdict.p99_us,
                    r.verdict.max_us,
                    r.verdict.goal_us,
                    if r.verdict.ok { "met" } else { "missed" }
                )
            };
            if let Some(o) = r.offenders.first() {
                found.push_str(&format!(
                    "; top offender: {} on CPU {} ({:.1} ms waited, {})",
                    o.what,
                    o.cpu,
                    o.wait_us / 1000.0,
                    o.kind
                ));
            }
            let mut f = Finding::new("vm-measured", Severity::Info, found).why(
                "every delay between a vCPU's wake-up and it running adds to the guest's interrupt latency",
            );
            if let Some(o) = r.offenders.first().filter(|_| !r.verdict.ok) {
                f = f.fix(o.fix.clone());
            }
            f
        }
    }
}

/// Adds the `vm-measured` finding to `report` when its domain runs: a sample as root, a
/// note saying why not otherwise.
pub fn add_sample(report: &mut Report, roots: &RootArgs) {
    let Some(vm) = report.vm.as_ref().filter(|v| v.running) else {
        return;
    };
    let f = if nix::unistd::geteuid().is_root() {
        let args = super::TopArgs {
            vm: Some(vm.name.clone()),
            pid: None,
            name: None,
            duration: None,
            json: false,
            plot: None,
            compare: None,
            timers: false,
            buffer_kb: 1024,
            roots: roots.clone(),
        };
        match super::sample(&args, WINDOW) {
            Ok(r) => finding(Ok(&r)),
            Err(e) => finding(Err(&e.message)),
        }
    } else {
        finding(Err(
            "sampling the vCPUs' wake-up delay needs root (kvmisolate top)",
        ))
    };
    report.worst = report.worst.max(f.severity);
    report.findings.push(f);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings() {
        let f = finding(Err("needs root"));
        assert_eq!(f.severity, Severity::Info);
        assert_eq!(f.found, "not measured: needs root");
    }
}
