//! The `kvmisolate plan` command: read the topology, plan, print or apply. Needs neither the
//! service nor privileges (it only reads sysfs, and the domain file if asked to).

use std::path::Path;

use super::args::PlanArgs;
use super::libvirt::LibvirtOptions;
use super::{PlanOptions, Size, apply, libvirt, plan, render};
use crate::failure::{ExitCode, Failure};
use crate::topology::Topology;

/// The options the planner gets from the command line.
pub fn options(args: &PlanArgs) -> PlanOptions {
    PlanOptions {
        size: match (args.vcpus, args.cores) {
            (Some(n), _) => Size::Vcpus(n),
            (None, Some(n)) => Size::Cores(n),
            (None, None) => Size::Fill,
        },
        host_cpus: args.host_cpus,
        prefer: args.prefer.into(),
        emulator: args.emulator.into(),
        iothreads: args.iothreads,
        hugepages: args.hugepages,
        guest: args.guest.into(),
    }
}

/// Runs `kvmisolate plan`; returns what to print on stdout.
pub fn run(args: &PlanArgs, quiet: bool) -> Result<String, Failure> {
    let mut topo = Topology::read(&args.sysfs_root)
        .map_err(|e| Failure::other(format!("cannot read the CPU topology: {e}")))?;
    topo.read_cpu_flags(&args.proc_root);
    let plan = plan(&topo, &options(args))
        .map_err(|e| Failure::new(ExitCode::BadRequest, format!("cannot plan: {e}")))?;
    if let Some(size) = args.hugepages {
        // The kernel lists every page size it supports, whatever the pools hold.
        let dir = args
            .sysfs_root
            .join(format!("kernel/mm/hugepages/hugepages-{}kB", size.kib()));
        if !dir.is_dir() {
            return Err(Failure::new(
                ExitCode::BadRequest,
                format!(
                    "--hugepages {}: this host has no {} pages ({} does not exist); use 2M, or \
                     boot with hugepagesz=1G if the CPU has the pdpe1gb flag",
                    size.as_str(),
                    size.as_str(),
                    dir.display()
                ),
            ));
        }
    }
    let xml = LibvirtOptions { fifo: args.fifo };
    if args.json {
        return Ok(render::json(&topo, &plan));
    }
    if args.libvirt {
        return Ok(libvirt::snippet(&plan, xml));
    }
    let Some(path) = &args.apply else {
        return Ok(render::human(&topo, &plan));
    };
    let original = std::fs::read_to_string(path)
        .map_err(|e| Failure::other(format!("cannot read {}: {e}", path.display())))?;
    let changed = apply::apply(&original, &plan, xml)
        .map_err(|e| Failure::new(ExitCode::BadRequest, format!("{}: {e}", path.display())))?;
    let label = path.display().to_string();
    if args.dry_run {
        return Ok(apply::diff(&label, &original, &changed));
    }
    if changed == original {
        return Ok(if quiet {
            String::new()
        } else {
            format!("{label} already matches the plan; not changed\n")
        });
    }
    write_with_backup(path, &original, &changed)?;
    Ok(if quiet {
        String::new()
    } else {
        format!(
            "wrote {label} (the previous version is in {label}.bak); isolate {}, housekeeping {}\n",
            plan.isolate, plan.housekeeping
        )
    })
}

/// Writes `original` to `PATH.bak`, then `changed` to `path`.
fn write_with_backup(path: &Path, original: &str, changed: &str) -> Result<(), Failure> {
    let mut backup = path.as_os_str().to_owned();
    backup.push(".bak");
    let backup = Path::new(&backup);
    std::fs::write(backup, original).map_err(|e| {
        Failure::other(format!(
            "cannot write the backup {}: {e}; {} was not changed",
            backup.display(),
            path.display()
        ))
    })?;
    std::fs::write(path, changed)
        .map_err(|e| Failure::other(format!("cannot write {}: {e}", path.display())))
}
