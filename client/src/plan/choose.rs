//! The planner: which cores the guest, its emulator and the host get, and why.
//!
//! Rules, in order: whole cores only (SMT siblings stay on one side); the core of the first
//! online CPU (CPU 0) stays with the host; on hybrid CPUs the guest gets P-cores only; the
//! guest (vCPUs and a separate emulator core) stays inside one L3 cache when it fits, else
//! inside one NUMA node, never across nodes; the host keeps at least its minimum. Among L3
//! caches that fit, `--prefer cache` takes the largest, `--prefer frequency` the fastest; ties go
//! to the cache with more free cores, then to the lower CPU numbers. Inside the chosen cache the
//! guest takes the highest-numbered cores, leaving low numbers (where CPU 0 is) to the host; the
//! lowest of the cores taken is the emulator's.

use kvmisolate_dbus::cpulist::CpuSet;

use super::{
    CacheInfo, EmulatorMode, GuestTopology, IothreadPin, Plan, PlanOptions, Prefer, Size, VcpuPin,
};
use crate::topology::{Core, CoreKind, Topology};

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `--vcpus 0`, `--cores 0` or `--host-cpus 0`.
    #[error("{option} must be at least 1")]
    Zero {
        /// The option.
        option: &'static str,
    },
    /// A vCPU count that would split a core between host and guest.
    #[error(
        "--vcpus {vcpus} would split a core: this CPU has {threads} threads per core and \
         siblings must stay together, so ask for a multiple of {threads} ({below}{above}), or use \
         --cores"
    )]
    SplitsCore {
        /// The vCPUs asked for.
        vcpus: u32,
        /// Threads per core.
        threads: u32,
        /// The multiple below, with a separator (`"4 or "`), or empty.
        below: String,
        /// The multiple above.
        above: u32,
    },
    /// Nothing but the host's own core is there.
    #[error("this host has no core to give a guest: {0}")]
    NoGuestCores(String),
    /// The host minimum (and the emulator) take everything.
    #[error("no core is left for the guest: {0}")]
    HostTakesAll(String),
    /// The guest asked for is larger than any NUMA node can hold.
    #[error("{asked} does not fit: {reason}")]
    TooBig {
        /// What was asked, as the option (`--vcpus 40`).
        asked: String,
        /// What fits and why not more.
        reason: String,
    },
}

/// Where a group of candidate cores is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// Cores sharing this L3 (index into `Topology::l3`), in one node.
    L3(usize),
    /// Every candidate core of a node (or of the host, without nodes).
    Node,
}

/// A group of cores the guest could live in.
#[derive(Debug, Clone)]
struct Domain<'t> {
    level: Level,
    node: Option<u32>,
    /// Candidate cores (right kind, full SMT width, not the host's own), by first CPU.
    cores: Vec<&'t Core>,
    size_kib: u64,
    max_freq_khz: u64,
}

impl Domain<'_> {
    fn first_cpu(&self) -> u32 {
        self.cores.first().map_or(u32::MAX, |c| c.first_cpu())
    }
}

/// The numbers every domain is measured with.
struct Limits {
    threads: u32,
    emulator_cores: usize,
    /// The most guest cores the host minimum allows.
    max_by_host: usize,
}

impl Limits {
    /// How many guest cores `domain` gives for `wanted` (None: fill), if it fits.
    fn fit(&self, domain: &Domain<'_>, wanted: Option<usize>) -> Option<usize> {
        let room = domain
            .cores
            .len()
            .checked_sub(self.emulator_cores)?
            .min(self.max_by_host);
        match wanted {
            None => (room >= 1).then_some(room),
            Some(g) => (g <= room).then_some(g),
        }
    }

    /// The most cores `domain` can give.
    fn room(&self, domain: &Domain<'_>) -> usize {
        self.fit(domain, None).unwrap_or(0)
    }
}

/// Makes a plan for `topo` as `opts` asks.
pub fn plan(topo: &Topology, opts: &PlanOptions) -> Result<Plan, PlanError> {
    let host_core = topo
        .online
        .first()
        .and_then(|cpu| topo.core_of(cpu))
        .ok_or_else(|| PlanError::NoGuestCores("no online core was found".to_owned()))?;
    let host_min = match opts.host_cpus {
        Some(0) => {
            return Err(PlanError::Zero {
                option: "--host-cpus",
            });
        }
        Some(n) => n as usize,
        None => host_core.cpus.len(),
    };
    let kind_ok = |c: &Core| !topo.hybrid || c.kind == CoreKind::Performance;
    let others: Vec<&Core> = topo
        .cores
        .iter()
        .filter(|c| c.cpus != host_core.cpus && kind_ok(c))
        .collect();
    let threads = others.iter().map(|c| c.cpus.len()).max().ok_or_else(|| {
        PlanError::NoGuestCores(if topo.hybrid {
            "its only P-core holds CPU 0, which stays with the host".to_owned()
        } else {
            format!(
                "its only core ({}) holds CPU 0, which stays with the host",
                host_core.cpus
            )
        })
    })?;
    let candidates: Vec<&Core> = others
        .iter()
        .copied()
        .filter(|c| c.cpus.len() == threads)
        .collect();
    let partial: CpuSet = others
        .iter()
        .filter(|c| c.cpus.len() != threads)
        .flat_map(|c| c.cpus.iter())
        .collect();
    let threads_u32 = u32::try_from(threads).unwrap_or(u32::MAX);

    let wanted = wanted_cores(opts.size, threads_u32)?;
    // On hybrid CPUs a separate emulator goes to an E-core, leaving every P-core to vCPUs.
    let separate = opts.emulator == EmulatorMode::Separate;
    let e_cores: Vec<&Core> = topo
        .cores
        .iter()
        .filter(|c| topo.hybrid && c.kind == CoreKind::Efficiency && c.cpus != host_core.cpus)
        .collect();
    let outside_emulator_threads = match e_cores.last() {
        Some(e) if separate => e.cpus.len(),
        _ => 0,
    };
    let emulator_cores = usize::from(separate && outside_emulator_threads == 0);
    let limits = Limits {
        threads: threads_u32,
        emulator_cores,
        max_by_host: topo
            .online
            .len()
            .saturating_sub(host_min + outside_emulator_threads)
            .checked_div(threads)
            .unwrap_or(0)
            .saturating_sub(emulator_cores),
    };
    if limits.max_by_host == 0 {
        let minimum = match opts.host_cpus {
            Some(n) => format!("--host-cpus {n}"),
            None => format!("the core of CPU 0: {}", host_core.cpus),
        };
        let emulator = if separate {
            format!(", and a separate emulator core {threads} more (try --emulator shared)")
        } else {
            String::new()
        };
        return Err(PlanError::HostTakesAll(format!(
            "this host has {} online CPUs: the host keeps at least {host_min} ({minimum}), a \
             guest core takes {threads}{emulator}",
            topo.online.len()
        )));
    }

    let l3_domains = domains(topo, &candidates, true);
    let node_domains = domains(topo, &candidates, false);
    let found = best(&l3_domains, &limits, wanted, opts.prefer)
        .or_else(|| best(&node_domains, &limits, wanted, opts.prefer));
    let choice = match found {
        Some(choice) => choice,
        None => return Err(too_big(topo, opts, &limits, &node_domains, host_min)),
    };

    let (domain, guest_cores) = (choice.domain, choice.cores);
    // The guest takes the highest-numbered cores of the domain; the lowest of them is the
    // emulator's when it has its own.
    let taken = &domain.cores[domain.cores.len() - guest_cores - emulator_cores..];
    let (mut emulator_core, guest) = taken.split_at(emulator_cores);
    let e_core_near;
    if separate && emulator_core.is_empty() {
        e_core_near = e_cores
            .iter()
            .rev()
            .find(|c| c.node == domain.node)
            .or(e_cores.last())
            .copied();
        emulator_core = e_core_near.as_slice();
    }
    let vcpus: Vec<VcpuPin> = guest
        .iter()
        .flat_map(|c| c.cpus.iter())
        .zip(0u32..)
        .map(|(cpu, vcpu)| VcpuPin { vcpu, cpu })
        .collect();
    let vcpu_cpus: CpuSet = vcpus.iter().map(|p| p.cpu).collect();
    let separate_emulator: CpuSet = emulator_core.iter().flat_map(|c| c.cpus.iter()).collect();
    let isolate = vcpu_cpus.union(&separate_emulator);
    let housekeeping = topo.online.difference(&isolate);
    let node_cpus = domain
        .node
        .and_then(|n| topo.nodes.iter().find(|k| k.id == n))
        .map(|n| n.cpus.clone());
    let near_housekeeping = match &node_cpus {
        Some(cpus) if !housekeeping.is_disjoint(cpus) => housekeeping.intersection(cpus),
        _ => housekeeping.clone(),
    };
    let emulator = match opts.emulator {
        EmulatorMode::Separate => separate_emulator,
        EmulatorMode::Shared => near_housekeeping.clone(),
    };
    let iothreads = (1..=opts.iothreads)
        .map(|iothread| IothreadPin {
            iothread,
            cpus: near_housekeeping.clone(),
        })
        .collect();
    let l3 = match domain.level {
        Level::L3(i) => topo.l3.get(i).map(|c| CacheInfo {
            cpus: c.cpus.clone(),
            size_kib: c.size_kib,
        }),
        Level::Node => None,
    };
    let mut plan = Plan {
        housekeeping,
        emulator,
        emulator_mode: opts.emulator,
        isolate,
        vcpus,
        iothreads,
        guest: GuestTopology {
            sockets: 1,
            dies: 1,
            cores: u32::try_from(guest.len()).unwrap_or(u32::MAX),
            threads: threads_u32,
        },
        numa_node: domain.node,
        l3,
        hugepages: opts
            .hugepages
            .map(|size| super::Hugepages::new(size, domain.node)),
        guest_side: super::GuestSide {
            os: opts.guest,
            tsc_deadline: topo.cpu_flags.has(super::guest::TSC_DEADLINE_FLAG),
            disk_iothreads: opts.iothreads,
        },
        reasons: Vec::new(),
    };
    plan.reasons = super::reasons::reasons(&super::reasons::Why {
        topo,
        opts,
        plan: &plan,
        host_core: &host_core.cpus,
        partial: &partial,
        fitting: choice.fitting,
        tied: choice.tied,
        spans_caches: domain.level == Level::Node,
        freq_khz: domain.max_freq_khz,
    });
    Ok(plan)
}

/// The guest cores asked for (None: fill a domain).
fn wanted_cores(size: Size, threads: u32) -> Result<Option<usize>, PlanError> {
    match size {
        Size::Fill => Ok(None),
        Size::Cores(0) => Err(PlanError::Zero { option: "--cores" }),
        Size::Vcpus(0) => Err(PlanError::Zero { option: "--vcpus" }),
        Size::Cores(n) => Ok(Some(n as usize)),
        Size::Vcpus(n) if !n.is_multiple_of(threads) => {
            let low = n - n % threads;
            Err(PlanError::SplitsCore {
                vcpus: n,
                threads,
                below: if low > 0 {
                    format!("{low} or ")
                } else {
                    String::new()
                },
                above: low + threads,
            })
        }
        Size::Vcpus(n) => Ok(Some((n / threads) as usize)),
    }
}

/// The candidate cores grouped by (node, L3) when `by_l3`, else by node.
fn domains<'t>(topo: &Topology, candidates: &[&'t Core], by_l3: bool) -> Vec<Domain<'t>> {
    let mut out: Vec<Domain<'t>> = Vec::new();
    for &core in candidates {
        let level = match (by_l3, core.l3) {
            (true, Some(i)) => Level::L3(i),
            (true, None) => continue,
            (false, _) => Level::Node,
        };
        match out
            .iter_mut()
            .find(|d| d.level == level && d.node == core.node)
        {
            Some(d) => d.cores.push(core),
            None => out.push(Domain {
                level,
                node: core.node,
                cores: vec![core],
                size_kib: 0,
                max_freq_khz: 0,
            }),
        }
    }
    for d in &mut out {
        d.size_kib = match d.level {
            Level::L3(i) => topo.l3.get(i).and_then(|c| c.size_kib).unwrap_or(0),
            Level::Node => 0,
        };
        d.max_freq_khz = d
            .cores
            .iter()
            .filter_map(|c| c.max_freq_khz)
            .max()
            .unwrap_or(0);
    }
    out
}

/// How a domain was chosen.
#[derive(Debug, Clone, Copy)]
struct Choice<'a, 't> {
    domain: &'a Domain<'t>,
    /// Guest cores it gives.
    cores: usize,
    /// How many domains of its level fit.
    fitting: usize,
    /// Whether another fitting domain was as good on cache size and frequency.
    tied: bool,
}

/// The best domain in `list` that fits.
fn best<'a, 't>(
    list: &'a [Domain<'t>],
    limits: &Limits,
    wanted: Option<usize>,
    prefer: Prefer,
) -> Option<Choice<'a, 't>> {
    let merit = |d: &Domain<'_>| match prefer {
        Prefer::Cache => (d.size_kib, d.max_freq_khz),
        Prefer::Frequency => (d.max_freq_khz, d.size_kib),
    };
    let fitting: Vec<(&Domain<'t>, usize)> = list
        .iter()
        .filter_map(|d| limits.fit(d, wanted).map(|g| (d, g)))
        .collect();
    let &(domain, cores) = fitting.iter().min_by_key(|(d, _)| {
        let (first, second) = merit(d);
        (
            std::cmp::Reverse(first),
            std::cmp::Reverse(second),
            std::cmp::Reverse(limits.room(d)),
            d.first_cpu(),
        )
    })?;
    let tied = fitting
        .iter()
        .filter(|(d, _)| merit(d) == merit(domain))
        .count()
        > 1;
    Some(Choice {
        domain,
        cores,
        fitting: fitting.len(),
        tied,
    })
}

/// The error for a guest that fits nowhere.
fn too_big(
    topo: &Topology,
    opts: &PlanOptions,
    limits: &Limits,
    nodes: &[Domain<'_>],
    host_min: usize,
) -> PlanError {
    let asked = match opts.size {
        Size::Vcpus(n) => format!("--vcpus {n}"),
        Size::Cores(n) => format!("--cores {n}"),
        Size::Fill => "a guest".to_owned(),
    };
    let most = nodes.iter().map(|d| limits.room(d)).max().unwrap_or(0);
    let by_node = nodes
        .iter()
        .map(|d| d.cores.len().saturating_sub(limits.emulator_cores))
        .max()
        .unwrap_or(0);
    let kind = if topo.hybrid { "P-cores" } else { "cores" };
    let emulator = if limits.emulator_cores == 1 {
        " and a core for the separate emulator"
    } else {
        ""
    };
    let why = if most < by_node {
        format!("while leaving the host at least {host_min} CPUs (--host-cpus){emulator}")
    } else if nodes.len() > 1 {
        format!("in one NUMA node{emulator} (a guest never spans nodes)")
    } else {
        format!("on this host{emulator}")
    };
    PlanError::TooBig {
        asked,
        reason: format!(
            "at most {} vCPUs ({most} {kind} of {} threads) fit {why}",
            most * limits.threads as usize,
            limits.threads
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::fixture;

    fn topo(name: &str) -> Topology {
        let dir = fixture::tree(name);
        Topology::read(dir.path()).unwrap()
    }

    fn topo_from(description: &str) -> Topology {
        let dir = fixture::tree_from(description);
        Topology::read(dir.path()).unwrap()
    }

    fn set(text: &str) -> CpuSet {
        CpuSet::parse(text).unwrap()
    }

    fn opts(size: Size) -> PlanOptions {
        PlanOptions {
            size,
            ..PlanOptions::default()
        }
    }

    const FIXTURES: [&str; 6] = [
        "recipe-6c",
        "desktop-8c16t",
        "x3d-16c32t",
        "hybrid-8p16e",
        "numa-2s",
        "offline-adjacent",
    ];

    #[test]
    fn the_recipe() {
        let t = topo("recipe-6c");
        for size in [Size::Vcpus(3), Size::Cores(3)] {
            let p = plan(&t, &opts(size)).unwrap();
            assert_eq!(p.housekeeping, set("0-1"));
            assert_eq!(p.emulator, set("2"));
            assert_eq!(p.vcpu_cpus(), set("3-5"));
            assert_eq!(p.isolate, set("2-5"));
            assert_eq!(p.iothreads[0].cpus, set("0-1"));
            assert_eq!(
                p.guest,
                GuestTopology {
                    sockets: 1,
                    dies: 1,
                    cores: 3,
                    threads: 1
                }
            );
        }
        let filled = PlanOptions {
            host_cpus: Some(2),
            ..PlanOptions::default()
        };
        assert_eq!(plan(&t, &filled).unwrap().isolate, set("2-5"));
        // The default keeps one core for the host.
        assert_eq!(
            plan(&t, &PlanOptions::default()).unwrap().housekeeping,
            set("0")
        );
    }

    #[test]
    fn smt_siblings_pair_up_in_vcpu_order() {
        let p = plan(&topo("desktop-8c16t"), &opts(Size::Vcpus(4))).unwrap();
        let pins: Vec<(u32, u32)> = p.vcpus.iter().map(|v| (v.vcpu, v.cpu)).collect();
        assert_eq!(pins, [(0, 6), (1, 14), (2, 7), (3, 15)]);
        assert_eq!(p.emulator, set("5,13"));
        assert_eq!(p.guest.threads, 2);
        assert_eq!(p.guest.cores, 2);
    }

    #[test]
    fn x3d_cache_or_frequency() {
        let t = topo("x3d-16c32t");
        let cache = plan(&t, &opts(Size::Cores(4))).unwrap();
        assert!(
            cache.isolate.is_subset(&set("0-7,16-23")),
            "{:?}",
            cache.isolate
        );
        assert_eq!(cache.l3.as_ref().and_then(|c| c.size_kib), Some(98304));
        let fast = PlanOptions {
            prefer: Prefer::Frequency,
            ..opts(Size::Cores(4))
        };
        let fast = plan(&t, &fast).unwrap();
        assert!(
            fast.isolate.is_subset(&set("8-15,24-31")),
            "{:?}",
            fast.isolate
        );
        // 8 cores do not fit the big CCD beside CPU 0's core and the emulator: the other does.
        let big = plan(&t, &opts(Size::Cores(7))).unwrap();
        assert!(
            big.isolate.is_subset(&set("8-15,24-31")),
            "{:?}",
            big.isolate
        );
        // 9 cores fit no CCD: the guest spans both, inside the node.
        let huge = plan(&t, &opts(Size::Cores(9))).unwrap();
        assert_eq!(huge.l3, None);
        assert!(huge.reasons.iter().any(|r| r.contains("spans the caches")));
    }

    #[test]
    fn hybrid_gives_vcpus_p_cores_and_the_emulator_an_e_core() {
        let t = topo("hybrid-8p16e");
        let p = plan(&t, &PlanOptions::default()).unwrap();
        assert_eq!(p.vcpu_cpus(), set("2-15"));
        assert_eq!(p.emulator, set("31"));
        let shared = PlanOptions {
            emulator: EmulatorMode::Shared,
            ..PlanOptions::default()
        };
        let p = plan(&t, &shared).unwrap();
        assert_eq!(p.vcpu_cpus(), set("2-15"));
        assert_eq!(p.emulator, set("0-1,16-31"));
        let e = plan(&t, &opts(Size::Vcpus(16))).unwrap_err();
        assert!(e.to_string().contains("P-cores"), "{e}");
    }

    #[test]
    fn numa_server_never_spans_nodes() {
        let t = topo("numa-2s");
        let p = plan(&t, &opts(Size::Vcpus(8))).unwrap();
        assert_eq!(p.numa_node, Some(1));
        assert!(p.isolate.is_subset(&set("16-31,48-63")));
        let e = plan(&t, &opts(Size::Cores(16))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--cores 16 does not fit: at most 30 vCPUs (15 cores of 2 threads) fit in one NUMA \
             node and a core for the separate emulator (a guest never spans nodes)"
        );
    }

    #[test]
    fn offline_siblings_stay_with_the_host() {
        let p = plan(&topo("offline-adjacent"), &PlanOptions::default()).unwrap();
        assert!(p.housekeeping.contains(4));
        assert!(!p.isolate.contains(5));
        assert_eq!(p.guest.threads, 2);
    }

    #[test]
    fn invariants_on_every_fixture() {
        for name in FIXTURES {
            let t = topo(name);
            for o in [
                PlanOptions::default(),
                PlanOptions {
                    emulator: EmulatorMode::Shared,
                    prefer: Prefer::Frequency,
                    iothreads: 0,
                    ..PlanOptions::default()
                },
                opts(Size::Cores(1)),
            ] {
                let p = plan(&t, &o).unwrap_or_else(|e| panic!("{name} {o:?}: {e}"));
                assert!(p.isolate.is_disjoint(&p.housekeeping), "{name}");
                assert_eq!(p.isolate.union(&p.housekeeping), t.online, "{name}");
                assert!(
                    p.housekeeping.contains(0),
                    "{name}: CPU 0 stays with the host"
                );
                for core in &t.cores {
                    assert!(
                        core.cpus.is_subset(&p.isolate) || core.cpus.is_disjoint(&p.isolate),
                        "{name}: core {} is split",
                        core.cpus
                    );
                }
                let nodes: Vec<_> = p
                    .isolate
                    .iter()
                    .map(|c| t.core_of(c).and_then(|k| k.node))
                    .collect();
                assert!(
                    nodes.windows(2).all(|w| w[0] == w[1]),
                    "{name}: spans nodes"
                );
                assert_eq!(p.vcpus.len() as u32, p.guest.cores * p.guest.threads);
                assert_eq!(p.iothreads.len() as u32, o.iothreads);
                assert!(!p.reasons.is_empty());
            }
        }
    }

    #[test]
    fn ties_go_to_the_cache_with_more_free_cores() {
        let p = plan(&topo("numa-2s"), &PlanOptions::default()).unwrap();
        assert_eq!(p.numa_node, Some(1));
        assert!(
            p.reasons.iter().any(|r| r.contains("tie")),
            "{:?}",
            p.reasons
        );
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let t = topo("desktop-8c16t");
        let err = |o: PlanOptions| plan(&t, &o).unwrap_err().to_string();
        assert_eq!(err(opts(Size::Vcpus(0))), "--vcpus must be at least 1");
        assert_eq!(err(opts(Size::Cores(0))), "--cores must be at least 1");
        let zero_host = PlanOptions {
            host_cpus: Some(0),
            ..PlanOptions::default()
        };
        assert_eq!(err(zero_host), "--host-cpus must be at least 1");
        assert!(err(opts(Size::Vcpus(1))).contains("ask for a multiple of 2 (2)"));
        assert!(err(opts(Size::Vcpus(7))).contains("(6 or 8)"));
        let e = err(opts(Size::Vcpus(14)));
        assert!(
            e.starts_with("--vcpus 14 does not fit: at most 12 vCPUs (6 cores of 2 threads)"),
            "{e}"
        );
        let crowded = PlanOptions {
            host_cpus: Some(8),
            ..opts(Size::Cores(4))
        };
        let e = err(crowded);
        assert!(
            e.contains("while leaving the host at least 8 CPUs (--host-cpus)"),
            "{e}"
        );
        let all = PlanOptions {
            host_cpus: Some(14),
            ..PlanOptions::default()
        };
        let e = err(all);
        assert_eq!(
            e,
            "no core is left for the guest: this host has 16 online CPUs: the host keeps at \
             least 14 (--host-cpus 14), a guest core takes 2, and a separate emulator core 2 \
             more (try --emulator shared)"
        );
    }

    #[test]
    fn tiny_hosts() {
        let one = topo_from("cores 0 0\nnode 0 0\n");
        let e = plan(&one, &PlanOptions::default()).unwrap_err().to_string();
        assert!(e.contains("its only core (0) holds CPU 0"), "{e}");
        let two = topo_from("cores 0 0-1\n");
        let e = plan(&two, &PlanOptions::default()).unwrap_err().to_string();
        assert!(
            e.contains("(the core of CPU 0: 0)") && e.contains("--emulator shared"),
            "{e}"
        );
        let shared = PlanOptions {
            emulator: EmulatorMode::Shared,
            ..PlanOptions::default()
        };
        let p = plan(&two, &shared).unwrap();
        assert_eq!(
            (p.vcpu_cpus(), p.emulator.clone(), p.numa_node),
            (set("1"), set("0"), None)
        );
        assert!(p.reasons.iter().any(|r| r.contains("no nodes")));
    }
}
