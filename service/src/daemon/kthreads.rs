//! Unbound kernel threads kept off the isolated CPUs while isolations exist, and put back
//! exactly as they were when they are gone.
//!
//! What the kernel does itself depends on the version (measured in the test VM, case
//! `kernel-duties`; docs/ARCHITECTURE.md, "Kernel duties"): up to 6.x a partition re-affines
//! the kernel threads that exist when it forms and widens them back when it goes, but every
//! *new* kernel thread is reset to all CPUs; from 7.0 only *isolated* partitions (the
//! housekeeping mask, HK_TYPE_DOMAIN) move unbound kthreads, existing and new, and a `root`
//! partition moves none, nor widens back anything. So kvmisolated, while isolations exist,
//! looks at kthreadd and its children at each partition change (a sweep, done before the
//! Isolate or Release returns) and at each new one: whatever is allowed outside the
//! housekeeping CPUs is narrowed to `current ∩ housekeeping`, its original affinity recorded
//! first in a ledger ([`crate::daemon::kthread_ledger`]); with no isolation left each is restored to
//! that original. Where the kernel already did the job a sweep finds nothing to do (so the
//! re-pinning stops by itself where the kernel does it, and nothing of the kernel's is
//! overwritten); per-CPU threads (`PF_NO_SETAFFINITY`: EINVAL), threads placed only on
//! isolated CPUs and IRQ threads (`irq/N-name`: they follow their IRQ, which the irq-affinity
//! tuning moves through `/proc/irq`; 6.19+ makes them `PF_NO_SETAFFINITY`) are left alone.
//!
//! New kernel threads: a thread listens to the proc connector (`NETLINK_CONNECTOR`,
//! `CN_IDX_PROC`; needs `CAP_NET_ADMIN`) behind a classic BPF socket filter that lets through
//! only fork events whose parent is `kthreadd` (tgid 2): an idle host, or one forking ordinary
//! processes, never wakes it. The kernel sends the fork event before the new thread has run,
//! and the reset to all CPUs comes after it (6.4+: in `kthread()` itself; 6.1: in
//! `__kthread_create_on_node` once the thread exists), so a pin made on the event alone can
//! be overwritten: each new kthread is looked at on the event and [`RECHECKS`] later (a timer
//! armed only by such an event).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvmisolate_dbus::CpuSet;
use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, NetlinkAddr, bind, recv, sendto};
use nix::unistd::Pid;

use crate::daemon::kthread_ledger::{Ledger, Narrowed, start_time};

/// When a new kernel thread is checked again after its fork event.
pub const RECHECKS: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(100),
    Duration::from_millis(1000),
];

/// `NETLINK_CONNECTOR` (linux/netlink.h).
const NETLINK_CONNECTOR: libc::c_int = 11;
/// `CN_IDX_PROC`, `CN_VAL_PROC` (linux/connector.h).
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN`, `PROC_CN_MCAST_IGNORE` (linux/cn_proc.h).
const MCAST_LISTEN: u32 = 1;
const MCAST_IGNORE: u32 = 2;
/// `PROC_EVENT_FORK`.
const PROC_EVENT_FORK: u32 = 1;
/// `NLMSG_DONE`: the type the connector sends its messages with.
const NLMSG_DONE: u16 = 3;
/// kthreadd's pid (and tgid).
const KTHREADD: u32 = 2;

/// Sizes and offsets in a proc connector message: `nlmsghdr` (16 bytes), `cn_msg` (20), then
/// `proc_event`: `what` (4), `cpu` (4), `timestamp_ns` (8), then the fork event's
/// `parent_pid`, `parent_tgid`, `child_pid`, `child_tgid`.
const NLMSG_HDR: usize = 16;
const CN_MSG: usize = 20;
const EVENT: usize = NLMSG_HDR + CN_MSG;
const WHAT: usize = EVENT;
const FORK_PARENT_TGID: usize = EVENT + 20;
const FORK_CHILD_PID: usize = EVENT + 24;
const FORK_END: usize = EVENT + 32;

/// A 32-bit field as a classic BPF absolute load sees it: the filter reads words in network
/// byte order, the connector writes them in host order.
fn as_bpf_word(v: u32) -> u32 {
    u32::from_be_bytes(v.to_ne_bytes())
}

/// The socket filter: accept a message only if it is a fork event whose parent tgid is
/// kthreadd's.
pub fn kthread_fork_filter() -> Vec<libc::sock_filter> {
    let op = |code: u32| code as u16;
    let ld_abs = op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS);
    let jeq = op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K);
    let ret = op(libc::BPF_RET | libc::BPF_K);
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        ins(ld_abs, 0, 0, WHAT as u32),
        ins(jeq, 0, 3, as_bpf_word(PROC_EVENT_FORK)),
        ins(ld_abs, 0, 0, FORK_PARENT_TGID as u32),
        ins(jeq, 0, 1, as_bpf_word(KTHREADD)),
        ins(ret, 0, 0, u32::MAX),
        ins(ret, 0, 0, 0),
    ]
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at + 4)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

/// The new thread's pid if `msg` is a fork event whose parent is kthreadd.
pub fn kthread_fork_child(msg: &[u8]) -> Option<u32> {
    if msg.len() < FORK_END {
        return None;
    }
    let is_fork = u32_at(msg, WHAT)? == PROC_EVENT_FORK;
    (is_fork && u32_at(msg, FORK_PARENT_TGID)? == KTHREADD).then(|| u32_at(msg, FORK_CHILD_PID))?
}

/// The control message that subscribes to (`MCAST_LISTEN`) or leaves (`MCAST_IGNORE`) the
/// proc connector's events.
fn control_message(op: u32) -> Vec<u8> {
    let total = NLMSG_HDR + CN_MSG + 4;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes()); // nlmsg_len
    m.extend_from_slice(&NLMSG_DONE.to_ne_bytes()); // nlmsg_type
    m.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
    m.extend_from_slice(&std::process::id().to_ne_bytes()); // nlmsg_pid
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes()); // cn_msg.id.idx
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes()); // cn_msg.id.val
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // ack
    m.extend_from_slice(&4u16.to_ne_bytes()); // len
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&op.to_ne_bytes());
    m
}

/// Opens the proc connector socket with the kthread filter attached, subscribed.
fn open_connector() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the returned descriptor is checked and then owned.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            NETLINK_CONNECTOR,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut filter = kthread_fork_filter();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, CN_IDX_PROC))?;
    send_control(&fd, MCAST_LISTEN)?;
    Ok(fd)
}

fn send_control(fd: &OwnedFd, op: u32) -> nix::Result<usize> {
    sendto(
        fd.as_raw_fd(),
        &control_message(op),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
}

/// What one look at a kernel thread found (and did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// Its affinity was `was`; it is now `now` (narrowed, or widened back towards what it had).
    Pinned {
        /// The affinity found.
        was: CpuSet,
        /// The affinity set.
        now: CpuSet,
    },
    /// Put back to what it had before kvmisolated narrowed it.
    Restored(CpuSet),
    /// Already within the housekeeping CPUs.
    Fine,
    /// Allowed only on isolated CPUs: placed there on purpose, left alone.
    LeftAlone(CpuSet),
    /// Narrowed by kvmisolated, then changed by someone else to something narrower: theirs now.
    Forgotten(CpuSet),
    /// `PF_NO_SETAFFINITY` (per-CPU threads): the kernel refuses, as it should.
    Unmovable,
    /// An IRQ thread (`irq/N-name`): it follows its IRQ, moved through `/proc/irq`.
    IrqThread,
    /// The thread is gone.
    Gone,
    /// Another error.
    Failed(Errno),
}

/// The affinity `current` becomes: `current ∩ housekeeping`, or `None` if it is fine as it
/// is (within housekeeping) or must be left alone (no housekeeping CPU in it).
pub fn pinned_affinity(current: &CpuSet, housekeeping: &CpuSet) -> Option<CpuSet> {
    if current.is_subset(housekeeping) {
        return None;
    }
    let target = current.intersection(housekeeping);
    (!target.is_empty()).then_some(target)
}

/// What to do with one kernel thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing (within housekeeping, or not ours and no isolation).
    Nothing,
    /// Set `to`, recording `entry` in the ledger first.
    Narrow {
        /// The affinity to set.
        to: CpuSet,
        /// The ledger entry (its `original` is what to restore later).
        entry: Narrowed,
    },
    /// Put back `to` (its original) and forget it.
    Restore {
        /// The original affinity.
        to: CpuSet,
    },
    /// Forget it without touching it (someone else narrowed it meanwhile).
    Forget,
}

/// The step for a kernel thread allowed on `current`, started at `start`, given the
/// housekeeping CPUs (`None`: no isolation left, restore) and its ledger entry.
///
/// A thread kvmisolated narrowed is always computed from its original affinity, so the same
/// answer comes whatever the kernel did meanwhile (7.x resets unbound kthreads to its own
/// housekeeping mask at each isolated-partition change): `original ∩ housekeeping` while
/// isolations need it, `original` once they don't. Restoring is skipped only if someone
/// narrowed it to something else meanwhile (not what kvmisolated set, not a widening).
pub fn step(
    current: &CpuSet,
    start: u64,
    housekeeping: Option<&CpuSet>,
    known: Option<&Narrowed>,
) -> Step {
    match (known, housekeeping) {
        (Some(e), hk) => {
            let target = hk.map(|h| e.original.intersection(h)).unwrap_or_default();
            if hk.is_some() && !target.is_empty() && target != e.original {
                return if *current == target {
                    Step::Nothing
                } else {
                    Step::Narrow {
                        to: target.clone(),
                        entry: Narrowed {
                            set: target,
                            ..e.clone()
                        },
                    }
                };
            }
            if *current == e.original {
                Step::Forget
            } else if *current == e.set || e.original.is_subset(current) {
                Step::Restore {
                    to: e.original.clone(),
                }
            } else {
                Step::Forget
            }
        }
        (None, Some(h)) => match pinned_affinity(current, h) {
            Some(to) => Step::Narrow {
                to: to.clone(),
                entry: Narrowed {
                    start,
                    original: current.clone(),
                    set: to,
                },
            },
            None => Step::Nothing,
        },
        (None, None) => Step::Nothing,
    }
}

fn to_cpuset(set: &nix::sched::CpuSet) -> CpuSet {
    (0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .filter_map(|c| u32::try_from(c).ok())
        .collect()
}

fn get_affinity(tid: u32) -> Result<CpuSet, Errno> {
    let raw = i32::try_from(tid).map_err(|_| Errno::ESRCH)?;
    nix::sched::sched_getaffinity(Pid::from_raw(raw)).map(|s| to_cpuset(&s))
}

fn set_affinity(tid: u32, cpus: &CpuSet) -> Result<(), Errno> {
    let raw = i32::try_from(tid).map_err(|_| Errno::ESRCH)?;
    let mut set = nix::sched::CpuSet::new();
    for cpu in cpus.iter() {
        set.set(cpu as usize).map_err(|_| Errno::EINVAL)?;
    }
    nix::sched::sched_setaffinity(Pid::from_raw(raw), &set)
}

/// `/proc/TID/stat` of a thread: (parent pid, start time).
fn stat_of(proc_root: &Path, tid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(proc_root.join(format!("{tid}/stat"))).ok()?;
    Some((parent_of(&stat)?, start_time(&stat)?))
}

/// Brings each of `tids` where it belongs for `housekeeping` (see [`step`]), the ledger
/// saved before any affinity is narrowed. Returns what was found for each.
fn confine(
    tids: &[u32],
    housekeeping: Option<&CpuSet>,
    ledger: &Mutex<Ledger>,
    proc_root: &Path,
) -> Vec<(u32, Pin)> {
    let Ok(mut ledger) = ledger.lock() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut steps = Vec::new();
    for &tid in tids {
        // An IRQ thread follows its IRQ's affinity (and is PF_NO_SETAFFINITY on 6.19+): it is
        // moved through /proc/irq by the irq-affinity tuning, never with sched_setaffinity.
        if comm(proc_root, tid).starts_with("irq/") {
            out.push((tid, Pin::IrqThread));
            continue;
        }
        let (start, current) = match (stat_of(proc_root, tid), get_affinity(tid)) {
            (Some((_, start)), Ok(c)) => (start, c),
            (_, Err(e)) if e != Errno::ESRCH => {
                out.push((tid, Pin::Failed(e)));
                continue;
            }
            _ => {
                ledger.remove(tid);
                out.push((tid, Pin::Gone));
                continue;
            }
        };
        let known = ledger.get(tid, start).cloned();
        if known.is_none() {
            // a stale entry of an earlier thread with this tid
            ledger.remove(tid);
        }
        let s = step(&current, start, housekeeping, known.as_ref());
        if let Step::Narrow { entry, .. } = &s {
            ledger.insert(tid, entry.clone());
        }
        steps.push((tid, current, s));
    }
    let journalled = ledger.save();
    if let Err(e) = &journalled {
        tracing::warn!(error = %e, "cannot save the kthread ledger: kernel threads are not narrowed (they could not be restored after a crash)");
    }
    for (tid, current, s) in steps {
        let pin = match s {
            Step::Nothing if housekeeping.is_some_and(|h| !current.is_subset(h)) => {
                Pin::LeftAlone(current)
            }
            Step::Nothing => Pin::Fine,
            Step::Forget => {
                ledger.remove(tid);
                Pin::Forgotten(current)
            }
            Step::Narrow { .. } if journalled.is_err() => {
                ledger.remove(tid);
                Pin::Failed(Errno::EIO)
            }
            Step::Narrow { to, .. } => match set_affinity(tid, &to) {
                Ok(()) => Pin::Pinned {
                    was: current,
                    now: to,
                },
                Err(e) => {
                    ledger.remove(tid);
                    match e {
                        Errno::EINVAL => Pin::Unmovable,
                        Errno::ESRCH => Pin::Gone,
                        e => Pin::Failed(e),
                    }
                }
            },
            Step::Restore { to } => {
                ledger.remove(tid);
                match set_affinity(tid, &to) {
                    Ok(()) => {
                        // the kernel clamps a kthread to the top cpuset's CPUs: say if it did
                        if let Ok(back) = get_affinity(tid)
                            && back != to
                        {
                            tracing::warn!(tid, comm = %comm(proc_root, tid), %to, %back, "kernel thread restored, but the kernel allows it only on {back}");
                        }
                        Pin::Restored(to)
                    }
                    Err(Errno::ESRCH) => Pin::Gone,
                    Err(e) => Pin::Failed(e),
                }
            }
        };
        out.push((tid, pin));
    }
    if let Err(e) = ledger.save() {
        tracing::warn!(error = %e, "cannot save the kthread ledger");
    }
    out
}

/// A new kernel thread being followed: when to look at it again.
struct Followed {
    tid: u32,
    born: Instant,
    next: usize,
    /// When it had to be pinned, and what it was allowed on then.
    pins: Vec<(Duration, CpuSet)>,
}

/// Byte on the control pipe: stop.
const STOP: &[u8] = b"x";

/// The running listener: its control pipe and the CPUs it pins to.
struct Running {
    control: OwnedFd,
    housekeeping: Arc<Mutex<CpuSet>>,
    thread: std::thread::JoinHandle<()>,
}

/// Keeps unbound kernel threads off the isolated CPUs while isolations exist, and puts back
/// exactly what it narrowed when they are gone (see the module docs and
/// [`crate::daemon::kthread_ledger`]).
pub struct KthreadPinner {
    proc_root: PathBuf,
    ledger: Arc<Mutex<Ledger>>,
    running: Mutex<Option<Running>>,
}

impl KthreadPinner {
    /// A pinner that is not running yet; `proc_root` is where threads are read, `ledger` the
    /// file of what it narrowed (what an earlier run left there is honoured).
    pub fn new(proc_root: PathBuf, ledger: Option<PathBuf>) -> Self {
        Self {
            proc_root,
            ledger: Arc::new(Mutex::new(Ledger::load(ledger))),
            running: Mutex::new(None),
        }
    }

    /// `Some(cpus)`: keep unbound kernel threads within `cpus` — the existing ones now (kthreadd
    /// and its children, before this returns), new ones as they come (starting the listener
    /// if needed); `None`: no isolation is left: stop listening and restore what was narrowed.
    /// Call it once the partitions are as they will stay: a kthread's affinity is clamped to
    /// the top cpuset's CPUs, so a restore made while a partition still holds CPUs would not
    /// give them back.
    pub fn set(&self, housekeeping: Option<CpuSet>) {
        self.follow(housekeeping.clone());
        // Every partition change may have moved kernel threads (7.x resets unbound ones to its
        // housekeeping mask when an isolated partition comes or goes): look at all of them.
        sweep(housekeeping.as_ref(), &self.ledger, &self.proc_root);
    }

    /// Only the listener's part of [`KthreadPinner::set`]: new kernel threads are pinned into
    /// `housekeeping` from now on (`None`: stop listening); existing ones are not looked at.
    /// Before a release, so kthreads made meanwhile are not narrowed to CPUs being returned.
    pub fn follow(&self, housekeeping: Option<CpuSet>) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        match (&housekeeping, running.as_ref()) {
            (Some(cpus), Some(r)) => {
                if let Ok(mut h) = r.housekeeping.lock() {
                    *h = cpus.clone();
                }
            }
            (Some(cpus), None) => match self.start(cpus.clone()) {
                Ok(r) => *running = Some(r),
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot follow new kernel threads (proc connector); kernel threads created \
                     from now on may run on isolated CPUs"
                ),
            },
            (None, Some(_)) => {
                if let Some(r) = running.take() {
                    stop(r);
                }
            }
            (None, None) => {}
        }
    }

    fn start(&self, cpus: CpuSet) -> std::io::Result<Running> {
        let sock = open_connector()?;
        let (control_rx, control) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let housekeeping = Arc::new(Mutex::new(cpus));
        let shared = housekeeping.clone();
        let ledger = self.ledger.clone();
        let proc_root = self.proc_root.clone();
        let thread = std::thread::Builder::new()
            .name("kthreads".into())
            .spawn(move || listen(&sock, &control_rx, &shared, &ledger, &proc_root))?;
        tracing::debug!("following new kernel threads (proc connector)");
        Ok(Running {
            control,
            housekeeping,
            thread,
        })
    }
}

fn stop(r: Running) {
    let _ = nix::unistd::write(&r.control, STOP);
    let _ = r.thread.join();
    tracing::debug!("stopped following new kernel threads");
}

impl Drop for KthreadPinner {
    /// Stops listening; restores nothing (isolations may outlive the daemon: the ledger file
    /// tells the next start what is narrowed).
    fn drop(&mut self) {
        if let Some(r) = self.running.get_mut().ok().and_then(|r| r.take()) {
            stop(r);
        }
    }
}

fn comm(proc_root: &Path, tid: u32) -> String {
    std::fs::read_to_string(proc_root.join(format!("{tid}/comm")))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_default()
}

/// The listener thread: blocks in poll(2) on the socket and the control pipe, with a timeout
/// only while a new kernel thread awaits a re-check.
fn listen(
    sock: &OwnedFd,
    control: &OwnedFd,
    housekeeping: &Mutex<CpuSet>,
    ledger: &Mutex<Ledger>,
    proc_root: &Path,
) {
    let mut followed: Vec<Followed> = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let now = Instant::now();
        let timeout = followed
            .iter()
            .filter_map(|f| {
                RECHECKS
                    .get(f.next)
                    .map(|d| (f.born + *d).saturating_duration_since(now))
            })
            .min()
            .map(|d| PollTimeout::try_from(d.as_millis().max(1) as i32).unwrap_or(PollTimeout::MAX))
            .unwrap_or(PollTimeout::NONE);
        let mut fds = [
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(control.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "poll on the proc connector failed; new kernel threads are no longer pinned");
                return;
            }
        }
        let cpus = housekeeping.lock().map(|h| h.clone()).unwrap_or_default();
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            let mut byte = [0u8; 1];
            match nix::unistd::read(control, &mut byte) {
                Err(Errno::EINTR) => {}
                _ => {
                    let _ = send_control(sock, MCAST_IGNORE);
                    return;
                }
            }
        }
        loop {
            match recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    if let Some(tid) = kthread_fork_child(&buf[..n]) {
                        let mut f = Followed {
                            tid,
                            born: Instant::now(),
                            next: 0,
                            pins: Vec::new(),
                        };
                        look(&mut f, &cpus, ledger, proc_root, Duration::ZERO);
                        followed.push(f);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::ENOBUFS) => {
                    tracing::warn!(
                        "proc connector overflow: some new kernel threads may have been missed"
                    );
                    continue;
                }
                Err(_) => break,
            }
        }
        let now = Instant::now();
        for f in &mut followed {
            while let Some(d) = RECHECKS.get(f.next) {
                if f.born + *d > now {
                    break;
                }
                f.next += 1;
                look(f, &cpus, ledger, proc_root, *d);
            }
        }
        followed.retain(|f| {
            let done = f.next >= RECHECKS.len();
            if done {
                report(f, proc_root);
            }
            !done
        });
    }
}

/// The pid of a process's parent, from `/proc/PID/stat` (the field after the `(comm)`).
fn parent_of(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Looks at every unbound kernel thread there is — kthreadd itself and its children — and at
/// every thread in the ledger: each is narrowed to the housekeeping CPUs, widened back, or
/// restored (see [`step`]).
fn sweep(housekeeping: Option<&CpuSet>, ledger: &Mutex<Ledger>, proc_root: &Path) {
    let mut tids: Vec<u32> = ledger
        .lock()
        .map(|l| l.entries().map(|(t, _)| t).collect())
        .unwrap_or_default();
    if housekeeping.is_some() {
        tids.extend(kernel_threads(proc_root));
    }
    tids.sort_unstable();
    tids.dedup();
    if tids.is_empty() {
        return;
    }
    let (mut narrowed, mut restored) = (0, 0);
    for (tid, pin) in confine(&tids, housekeeping, ledger, proc_root) {
        match pin {
            Pin::Pinned { was, now } => {
                narrowed += 1;
                tracing::debug!(tid, comm = %comm(proc_root, tid), %was, %now, "kernel thread kept to the housekeeping CPUs");
            }
            Pin::Restored(to) => {
                restored += 1;
                tracing::debug!(tid, comm = %comm(proc_root, tid), %to, "kernel thread restored");
            }
            Pin::Forgotten(now) => {
                tracing::info!(tid, comm = %comm(proc_root, tid), %now, "kernel thread narrowed by kvmisolated was changed by someone else meanwhile; left as it is")
            }
            Pin::Failed(e) => {
                tracing::warn!(tid, comm = %comm(proc_root, tid), error = %e, "cannot set a kernel thread's affinity")
            }
            _ => {}
        }
    }
    if narrowed + restored > 0 {
        tracing::info!(
            narrowed,
            restored,
            "unbound kernel threads: {narrowed} kept to the housekeeping CPUs, {restored} put back as they were"
        );
    }
}

/// kthreadd and its children. `/proc/2/task/2/children` (CONFIG_PROC_CHILDREN, set by the
/// distributions' kernels) lists them in one read, so a sweep costs the same whatever number
/// of processes the host runs, where reading every process's parent (below) grows with
/// them. A child forked while the file is read may be missed: the fork listener looks at each new one anyway. Without that file, every
/// process's parent is read.
fn kernel_threads(proc_root: &Path) -> Vec<u32> {
    if let Ok(list) =
        std::fs::read_to_string(proc_root.join(format!("{KTHREADD}/task/{KTHREADD}/children")))
    {
        let mut tids = vec![KTHREADD];
        tids.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
        return tids;
    }
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid == KTHREADD || child_of_kthreadd(proc_root, pid))
        .collect()
}

/// Whether `tid` is (still) a child of kthreadd: after a delay, the thread may have exited and
/// its pid gone to another task, which must not be pinned.
fn child_of_kthreadd(proc_root: &Path, tid: u32) -> bool {
    std::fs::read_to_string(proc_root.join(format!("{tid}/stat")))
        .is_ok_and(|stat| parent_of(&stat) == Some(KTHREADD))
}

/// One look at a followed thread, `at` after its fork event.
fn look(f: &mut Followed, cpus: &CpuSet, ledger: &Mutex<Ledger>, proc_root: &Path, at: Duration) {
    if !at.is_zero() && !child_of_kthreadd(proc_root, f.tid) {
        tracing::debug!(
            tid = f.tid,
            at_ms = at.as_millis() as u64,
            "a followed kernel thread is gone (its pid is no child of kthreadd now)"
        );
        f.next = RECHECKS.len();
        return;
    }
    let pin = confine(&[f.tid], Some(cpus), ledger, proc_root)
        .pop()
        .map(|(_, p)| p)
        .unwrap_or(Pin::Gone);
    match pin {
        Pin::Pinned { was, now } => {
            tracing::debug!(tid = f.tid, comm = %comm(proc_root, f.tid), at_ms = at.as_millis() as u64, %was, %now, "pinned a new kernel thread");
            f.pins.push((at, was));
        }
        Pin::Gone | Pin::Unmovable | Pin::IrqThread => f.next = RECHECKS.len(),
        Pin::Fine | Pin::LeftAlone(_) | Pin::Restored(_) | Pin::Forgotten(_) => {}
        Pin::Failed(e) => {
            tracing::warn!(tid = f.tid, comm = %comm(proc_root, f.tid), error = %e, "cannot pin a new kernel thread");
            f.next = RECHECKS.len();
        }
    }
}

/// Logs, once a thread's last re-check is done, when it had to be pinned (the moments show
/// when the kernel reset its affinity).
fn report(f: &Followed, proc_root: &Path) {
    if f.pins.is_empty() {
        return;
    }
    let at: Vec<String> = f
        .pins
        .iter()
        .map(|(d, was)| format!("{} ms (was {was})", d.as_millis()))
        .collect();
    tracing::info!(
        tid = f.tid,
        comm = %comm(proc_root, f.tid),
        "kernel thread created during an isolation pinned to the housekeeping CPUs (needed at: {})",
        at.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's view of a fork event from `parent_tgid`.
    fn fork_event(parent_tgid: u32, child: u32) -> Vec<u8> {
        let mut m = vec![0u8; FORK_END];
        m[WHAT..WHAT + 4].copy_from_slice(&PROC_EVENT_FORK.to_ne_bytes());
        m[EVENT + 16..EVENT + 20].copy_from_slice(&parent_tgid.to_ne_bytes());
        m[FORK_PARENT_TGID..FORK_PARENT_TGID + 4].copy_from_slice(&parent_tgid.to_ne_bytes());
        m[FORK_CHILD_PID..FORK_CHILD_PID + 4].copy_from_slice(&child.to_ne_bytes());
        m[FORK_CHILD_PID + 4..FORK_END].copy_from_slice(&child.to_ne_bytes());
        m
    }

    fn event(what: u32) -> Vec<u8> {
        let mut m = fork_event(KTHREADD, 77);
        m[WHAT..WHAT + 4].copy_from_slice(&what.to_ne_bytes());
        m
    }

    /// A classic BPF interpreter for the instructions the filter uses.
    fn run_filter(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let mut a = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let code = u32::from(i.code);
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                let at = i.k as usize;
                let Some(b) = pkt.get(at..at + 4) else {
                    return 0;
                };
                a = u32::from_be_bytes(b.try_into().unwrap());
                pc += 1;
            } else if code == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K {
                pc += 1 + usize::from(if a == i.k { i.jt } else { i.jf });
            } else if code == libc::BPF_RET | libc::BPF_K {
                return i.k;
            } else {
                panic!("unexpected BPF instruction {code:#x}");
            }
        }
    }

    #[test]
    fn filter_passes_only_forks_by_kthreadd() {
        let prog = kthread_fork_filter();
        assert_ne!(run_filter(&prog, &fork_event(KTHREADD, 1234)), 0);
        assert_eq!(run_filter(&prog, &fork_event(1, 1234)), 0);
        assert_eq!(run_filter(&prog, &fork_event(4321, 1234)), 0);
        assert_eq!(run_filter(&prog, &event(0x8000_0000)), 0); // exit
        assert_eq!(run_filter(&prog, &event(0x200)), 0); // comm
        assert_eq!(run_filter(&prog, &event(0)), 0); // the ack of LISTEN
        assert_eq!(run_filter(&prog, &[0u8; 8]), 0); // short
    }

    #[test]
    fn fork_events_name_the_new_thread() {
        assert_eq!(kthread_fork_child(&fork_event(KTHREADD, 1234)), Some(1234));
        assert_eq!(kthread_fork_child(&fork_event(900, 1234)), None);
        assert_eq!(kthread_fork_child(&event(2)), None);
        assert_eq!(kthread_fork_child(&fork_event(KTHREADD, 1)[..40]), None);
    }

    #[test]
    fn control_messages_have_the_connector_layout() {
        let m = control_message(MCAST_LISTEN);
        assert_eq!(m.len(), 40);
        assert_eq!(u32_at(&m, 0), Some(40));
        assert_eq!(u32_at(&m, NLMSG_HDR), Some(CN_IDX_PROC));
        assert_eq!(u32_at(&m, NLMSG_HDR + 4), Some(CN_VAL_PROC));
        assert_eq!(&m[NLMSG_HDR + 16..NLMSG_HDR + 18], &4u16.to_ne_bytes());
        assert_eq!(u32_at(&m, EVENT), Some(MCAST_LISTEN));
    }

    #[test]
    fn affinities_shrink_to_housekeeping() {
        let s = |t: &str| CpuSet::parse(t).unwrap();
        assert_eq!(
            pinned_affinity(&s("0-5"), &s("0-1,4-5")),
            Some(s("0-1,4-5"))
        );
        assert_eq!(pinned_affinity(&s("0-3"), &s("0-1,4-5")), Some(s("0-1")));
        assert_eq!(pinned_affinity(&s("0-1"), &s("0-1,4-5")), None);
        assert_eq!(pinned_affinity(&s("2-3"), &s("0-1,4-5")), None);
    }

    #[test]
    fn kernel_threads_come_from_kthreadds_children_or_a_scan() {
        let proc = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let p = proc.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("2/stat", "2 (kthreadd) S 0 0 0");
        write("3/stat", "3 (pool_workqueue_) I 2 0 0");
        write("90/stat", "90 (bash) S 1 90 90");
        write("91/stat", "91 (rcu_gp) I 2 0 0");
        let mut scanned = kernel_threads(proc.path());
        scanned.sort_unstable();
        assert_eq!(scanned, vec![2, 3, 91]);
        // With the children file, it alone is read (a stat-less 4 is listed; 91 is not).
        write("2/task/2/children", "3 4 ");
        assert_eq!(kernel_threads(proc.path()), vec![2, 3, 4]);
    }

    #[test]
    fn parents_come_from_proc_stat() {
        assert_eq!(parent_of("77 (psimon) S 2 0 0 0 -1 2129984"), Some(2));
        assert_eq!(parent_of("90 (a) b (c)) R 1 90 90"), Some(1));
        assert_eq!(parent_of("garbage"), None);
    }

    fn n(original: &str, set: &str) -> Narrowed {
        let s = |t: &str| CpuSet::parse(t).unwrap();
        Narrowed {
            start: 9,
            original: s(original),
            set: s(set),
        }
    }

    #[test]
    fn a_reused_pid_is_not_pinned_at_a_recheck() {
        // The followed "kthread" is this test process, whose stat (in a fake proc tree) says
        // its parent is PID 1 now: the pid went to another task, so the recheck drops it.
        let tmp = tempfile::tempdir().unwrap();
        let tid = std::process::id();
        let stat = tmp.path().join(format!("{tid}/stat"));
        std::fs::create_dir_all(stat.parent().unwrap()).unwrap();
        std::fs::write(
            &stat,
            format!("{tid} (kworker/u8:1) S 1 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 12345\n"),
        )
        .unwrap();
        let all: CpuSet = (0..nix::sched::CpuSet::count() as u32).collect();
        let ledger = Mutex::new(Ledger::default());
        let mut f = Followed {
            tid,
            born: Instant::now(),
            next: 1,
            pins: Vec::new(),
        };
        look(&mut f, &all, &ledger, tmp.path(), RECHECKS[1]);
        assert_eq!(f.next, RECHECKS.len(), "followed no longer");
        assert!(f.pins.is_empty());
        // Still kthreadd's child: looked at (and left as it is, being within `all`).
        std::fs::write(
            &stat,
            format!("{tid} (kworker/u8:1) S 2 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 12345\n"),
        )
        .unwrap();
        let mut f = Followed {
            tid,
            born: Instant::now(),
            next: 1,
            pins: Vec::new(),
        };
        look(&mut f, &all, &ledger, tmp.path(), RECHECKS[1]);
        assert_eq!(f.next, 1);
        assert!(child_of_kthreadd(tmp.path(), tid));
        assert!(!child_of_kthreadd(tmp.path(), tid + 1));
    }

    #[test]
    fn steps_narrow_new_threads_and_record_their_original() {
        let s = |t: &str| CpuSet::parse(t).unwrap();
        let hk = s("0-1,4-5");
        assert_eq!(
            step(&s("0-5"), 9, Some(&hk), None),
            Step::Narrow {
                to: hk.clone(),
                entry: n("0-5", "0-1,4-5")
            }
        );
        assert_eq!(step(&s("0-1"), 9, Some(&hk), None), Step::Nothing);
        assert_eq!(step(&s("2-3"), 9, Some(&hk), None), Step::Nothing);
        assert_eq!(step(&s("0-5"), 9, None, None), Step::Nothing);
    }

    #[test]
    fn steps_follow_the_original_whatever_the_kernel_did_meanwhile() {
        let s = |t: &str| CpuSet::parse(t).unwrap();
        let e = n("0-5", "0-1,4-5");
        // ours still in place: nothing to do
        assert_eq!(
            step(&s("0-1,4-5"), 9, Some(&s("0-1,4-5")), Some(&e)),
            Step::Nothing
        );
        // a second isolation (4-5): original ∩ the smaller housekeeping
        assert_eq!(
            step(&s("0-1,4-5"), 9, Some(&s("0-1")), Some(&e)),
            Step::Narrow {
                to: s("0-1"),
                entry: n("0-5", "0-1")
            }
        );
        // 7.x reset it to its housekeeping mask (0-3) at an isolated partition's change
        assert_eq!(
            step(&s("0-3"), 9, Some(&s("0-1")), Some(&e)),
            Step::Narrow {
                to: s("0-1"),
                entry: n("0-5", "0-1")
            }
        );
    }

    #[test]
    fn steps_restore_exactly_unless_someone_else_narrowed_it() {
        let s = |t: &str| CpuSet::parse(t).unwrap();
        let e = n("0-3,5", "0-1,5");
        let restore = Step::Restore { to: s("0-3,5") };
        assert_eq!(step(&s("0-1,5"), 9, None, Some(&e)), restore);
        // housekeeping grew back over the whole original: restored too
        assert_eq!(step(&s("0-1,5"), 9, Some(&s("0-5")), Some(&e)), restore);
        // the kernel widened it (to all CPUs): still put back to the original
        assert_eq!(step(&s("0-5"), 9, None, Some(&e)), restore);
        // already the original: forgotten without a write
        assert_eq!(step(&s("0-3,5"), 9, None, Some(&e)), Step::Forget);
        // someone pinned it elsewhere meanwhile: theirs
        assert_eq!(step(&s("1"), 9, None, Some(&e)), Step::Forget);
    }

    #[test]
    fn confining_a_missing_thread_says_gone() {
        let ledger = Mutex::new(Ledger::default());
        let got = confine(
            &[u32::MAX - 1],
            Some(&CpuSet::parse("0").unwrap()),
            &ledger,
            Path::new("/proc"),
        );
        assert_eq!(got, [(u32::MAX - 1, Pin::Gone)]);
    }
}
