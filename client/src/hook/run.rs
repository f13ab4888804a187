//! The hook's bus side: `prepare` checks the domain against the host and kvmisolated's
//! leases and reserves its hugepages, `started` isolates it, `release` ends the hook's own
//! leases for it.

use crate::bus::Context;
use crate::cli::LibvirtHookArgs;
use crate::failure::{ExitCode, Failure};
use crate::libvirt::{domain, optin};
use crate::request::{self, IsolateRequest, Target};
use crate::{check, hook};

/// How long the libvirt hook may take.
const HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The largest domain XML the hook reads.
const HOOK_MAX_XML: u64 = 16 << 20;

/// Runs `kvmisolate libvirt-hook`: never prompts, and bounded in time (libvirtd waits for it).
pub async fn cmd(ctx: &Context<'_>, args: LibvirtHookArgs) -> Result<(), Failure> {
    let ctx = ctx.never_asking();
    match tokio::time::timeout(HOOK_TIMEOUT, libvirt_hook(&ctx, args)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::other(format!(
            "the libvirt hook gave up after {} s waiting for kvmisolated",
            HOOK_TIMEOUT.as_secs()
        ))),
    }
}

async fn libvirt_hook(ctx: &Context<'_>, args: LibvirtHookArgs) -> Result<(), Failure> {
    use std::io::Read as _;
    // Read the XML whatever the operation: libvirt writes it to every hook.
    let mut xml = String::new();
    std::io::stdin()
        .take(HOOK_MAX_XML)
        .read_to_string(&mut xml)
        .map_err(|e| Failure::other(format!("cannot read the domain XML on stdin: {e}")))?;
    let op = args.operation.as_str();
    if !matches!(op, "prepare" | "started" | "release") {
        return Ok(());
    }
    let dom = &args.domain;
    let bad = |m: String| Failure::new(ExitCode::BadRequest, format!("domain {dom:?}: {m}"));
    // Opt-in first: what is broken stops only a domain that opted in.
    let section = match optin::decide(&xml, &args.config, dom) {
        optin::OptIn::No { broken } => {
            if let Some(e) = broken {
                eprintln!(
                    "kvmisolate: warning: {e}; domain {dom:?} does not opt in and starts unisolated (fix the file: domains that opt in cannot start until it is)"
                );
            }
            return Ok(());
        }
        optin::OptIn::Maybe(section) => section.map_err(bad)?,
    };
    let domain = domain::Domain::parse(&xml).map_err(|e| bad(e.to_string()))?;
    let Some(settings) = optin::settings(&domain, section.as_ref()).map_err(bad)? else {
        return Ok(());
    };
    let warn_only = settings.on_conflict == kvmisolate_dbus::libvirt::OnConflict::Warn;
    let result = hook_operation(ctx, op, &args, &domain, &settings).await;
    match result {
        // on-conflict = "warn": the domain starts (unisolated) whatever went wrong.
        Err(f) if warn_only && op != "release" => {
            eprintln!(
                "kvmisolate: warning: {} (on-conflict = \"warn\": the domain starts unisolated)",
                f.message
            );
            Ok(())
        }
        other => other,
    }
}

/// One hook operation on a domain that opted in.
async fn hook_operation(
    ctx: &Context<'_>,
    op: &str,
    args: &LibvirtHookArgs,
    domain: &domain::Domain,
    settings: &optin::Settings,
) -> Result<(), Failure> {
    let dom = &args.domain;
    let name = request::vm_name(dom);
    let conn = ctx.connect().await?;
    let proxy = ctx.isolator(&conn).await?;
    match op {
        "prepare" => {
            let st = ctx.status(&proxy).await?;
            let reserve_name = request::reservation_name(dom);
            let host = hook_host_view(args, &st, &[name.as_str(), reserve_name.as_str()]);
            let verdict = hook::check::check(domain, settings, &host);
            for w in &verdict.warnings {
                eprintln!("kvmisolate: domain {dom:?}: warning: {w}");
            }
            let mut conflicts = verdict.conflicts;
            if conflicts.is_empty() {
                // Hugepages: reserved now, before QEMU maps its memory; a left-over reservation
                // of an earlier start that never reached release goes first.
                let Ok(Some(spec)) = settings.hugepage_spec(domain) else {
                    return Ok(());
                };
                for n in hook::leases::releasable(&st, dom, hook::leases::Which::Reservation) {
                    let _ = ctx.release(&proxy, &n).await;
                }
                let req =
                    IsolateRequest::new("", None, Target::Reservation(dom.clone()), None, None)?
                        .with_tunings(None, Some(&spec.to_string()), false)?;
                match ctx.isolate(&conn, &req).await {
                    Ok(_) => {
                        ctx.say(&format!(
                            "Reserved {spec} of hugepages for domain {dom:?} as \"{reserve_name}\""
                        ));
                        return Ok(());
                    }
                    Err(f) => conflicts.push(format!("hugepages: {}", f.message)),
                }
            }
            let verdict = hook::check::Verdict {
                conflicts,
                ..verdict
            };
            let msg = format!(
                "domain {dom:?} cannot be isolated on {}: {}",
                if verdict.cpus.is_empty() {
                    "its pins".to_owned()
                } else {
                    verdict.cpus.to_string()
                },
                verdict.conflicts.join("; ")
            );
            Err(Failure::new(ExitCode::BadRequest, msg))
        }
        "started" => {
            let tunings = match (&settings.tunings, settings.profile) {
                (Some(list), _) => Some(
                    list.iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                (None, Some(p)) => Some(p.as_str().to_owned()),
                (None, None) => None,
            };
            let req = IsolateRequest::new(
                "",
                Some(name.as_str()),
                Target::Libvirt(dom.clone()),
                None,
                None,
            )?
            .with_tunings(tunings.as_deref(), None, false)?
            .with_vfio_irqs(settings.vfio_irqs);
            let (_, line) = ctx.isolate(&conn, &req).await?;
            ctx.say(&line);
            Ok(())
        }
        _ => {
            let mut result = Ok(());
            let st = ctx.status(&proxy).await?;
            for n in hook::leases::releasable(&st, dom, hook::leases::Which::Both) {
                match ctx.release(&proxy, &n).await {
                    // Released by the service already (the domain's cgroup emptied), or never
                    // made.
                    Err(f) if f.code == ExitCode::NotFound => {}
                    Err(f) => result = Err(f),
                    Ok(()) => {}
                }
            }
            result
        }
    }
}

/// What `prepare` reads of the host: sysfs, procfs and the service's `Status()`.
fn hook_host_view(
    args: &LibvirtHookArgs,
    status: &kvmisolate_dbus::status::Status,
    own: &[&str],
) -> hook::check::HostView {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let online = crate::topology::online_cpus(&args.sysfs_root).unwrap_or_default();
    let held = check::daemon::held_in(status)
        .into_iter()
        .filter(|(name, _)| !own.contains(&name.as_str()))
        .collect();
    let remote_partitions = status.kernel_support.remote_partitions;
    let rt_throttling_off =
        read(args.proc_root.join("sys/kernel/sched_rt_runtime_us")).trim() == "-1";
    let kernel = read(args.proc_root.join("sys/kernel/osrelease"))
        .trim()
        .to_owned();
    hook::check::HostView {
        online,
        remote_partitions,
        held,
        rt_throttling_off,
        kernel,
    }
}
