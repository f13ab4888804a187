//! Kernel threads created while an isolation exists, pinned to the housekeeping CPUs.
//!
//! A partition re-affines the kernel threads that exist when it forms, but Linux (up to about
//! 6.16) resets every *new* kernel thread to the kthread housekeeping mask (all CPUs without
//! `isolcpus=`), ignoring partitions, so a `psimon` or a worker started later may run on
//! isolated CPUs. While at least one isolation exists a thread here listens to the proc
//! connector (`NETLINK_CONNECTOR`, `CN_IDX_PROC`; needs `CAP_NET_ADMIN`) behind a classic BPF
//! socket filter that lets through only fork events whose parent is `kthreadd` (tgid 2): an
//! idle host, or one forking ordinary processes, never wakes it.
//!
//! The kernel sends the fork event before the new thread has run, and the reset to all CPUs
//! comes after it (6.4+: in `kthread()` itself; 6.1: in `__kthread_create_on_node` once the
//! thread exists), so a pin made on the event alone can be overwritten. Each new kthread is
//! therefore pinned on the event and checked again [`RECHECKS`] later (a timer armed only by
//! such an event). Its affinity becomes `current ∩ housekeeping`; threads already inside the
//! housekeeping CPUs, threads placed only on isolated CPUs, and per-CPU threads
//! (`PF_NO_SETAFFINITY`: `sched_setaffinity` fails with EINVAL) are left alone.

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

/// What one look at a kernel thread found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// Its affinity was `was`; it is now `now`.
    Pinned {
        /// The affinity found.
        was: CpuSet,
        /// The affinity set.
        now: CpuSet,
    },
    /// Already within the housekeeping CPUs.
    Fine,
    /// Allowed only on isolated CPUs: placed there on purpose, left alone.
    LeftAlone(CpuSet),
    /// `PF_NO_SETAFFINITY` (per-CPU threads): the kernel refuses, as it should.
    Unmovable,
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

fn to_cpuset(set: &nix::sched::CpuSet) -> CpuSet {
    (0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .filter_map(|c| u32::try_from(c).ok())
        .collect()
}

/// Pins thread `tid` into `housekeeping` if it is allowed elsewhere.
pub fn pin(tid: u32, housekeeping: &CpuSet) -> Pin {
    let Ok(raw) = i32::try_from(tid) else {
        return Pin::Gone;
    };
    let pid = Pid::from_raw(raw);
    let current = match nix::sched::sched_getaffinity(pid) {
        Ok(set) => to_cpuset(&set),
        Err(Errno::ESRCH) => return Pin::Gone,
        Err(e) => return Pin::Failed(e),
    };
    let Some(target) = pinned_affinity(&current, housekeeping) else {
        return if current.is_subset(housekeeping) {
            Pin::Fine
        } else {
            Pin::LeftAlone(current)
        };
    };
    let mut set = nix::sched::CpuSet::new();
    for cpu in target.iter() {
        if set.set(cpu as usize).is_err() {
            return Pin::Failed(Errno::EINVAL);
        }
    }
    match nix::sched::sched_setaffinity(pid, &set) {
        Ok(()) => Pin::Pinned {
            was: current,
            now: target,
        },
        Err(Errno::EINVAL) => Pin::Unmovable,
        Err(Errno::ESRCH) => Pin::Gone,
        Err(e) => Pin::Failed(e),
    }
}

/// A new kernel thread being followed: when to look at it again.
struct Followed {
    tid: u32,
    born: Instant,
    next: usize,
    /// When it had to be pinned, and what it was allowed on then.
    pins: Vec<(Duration, CpuSet)>,
}

/// Bytes on the control pipe: look at every kernel thread again; stop.
const SWEEP: &[u8] = b"s";
const STOP: &[u8] = b"x";

/// The running listener: its control pipe and the CPUs it pins to.
struct Running {
    control: OwnedFd,
    housekeeping: Arc<Mutex<CpuSet>>,
    thread: std::thread::JoinHandle<()>,
}

/// Pins new kernel threads to the housekeeping CPUs while isolations exist.
pub struct KthreadPinner {
    proc_root: PathBuf,
    running: Mutex<Option<Running>>,
}

impl KthreadPinner {
    /// A pinner that is not running yet; `proc_root` is where `comm` names are read.
    pub fn new(proc_root: PathBuf) -> Self {
        Self {
            proc_root,
            running: Mutex::new(None),
        }
    }

    /// `Some(cpus)`: pin new kernel threads into `cpus` (starting the listener if needed);
    /// `None`: no isolation is left, stop listening.
    pub fn set(&self, housekeeping: Option<CpuSet>) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        match (housekeeping, running.as_ref()) {
            (Some(cpus), Some(r)) => {
                let changed = r.housekeeping.lock().map(|mut h| {
                    let changed = *h != cpus;
                    *h = cpus;
                    changed
                });
                if changed.unwrap_or(false) {
                    let _ = nix::unistd::write(&r.control, SWEEP);
                }
            }
            (Some(cpus), None) => match self.start(cpus) {
                Ok(r) => *running = Some(r),
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot follow new kernel threads (proc connector); kernel threads created \
                     from now on may run on isolated CPUs"
                ),
            },
            (None, Some(_)) => {
                if let Some(r) = running.take() {
                    let _ = nix::unistd::write(&r.control, STOP);
                    let _ = r.thread.join();
                    tracing::debug!("no isolation left: stopped following new kernel threads");
                }
            }
            (None, None) => {}
        }
    }

    fn start(&self, cpus: CpuSet) -> std::io::Result<Running> {
        let sock = open_connector()?;
        let (control_rx, control) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Kernel threads made between the partition write and now (an Isolate can make some,
        // e.g. systemd re-creating a PSI trigger) had no listener: a sweep finds them.
        nix::unistd::write(&control, SWEEP)?;
        let housekeeping = Arc::new(Mutex::new(cpus));
        let shared = housekeeping.clone();
        let proc_root = self.proc_root.clone();
        let thread = std::thread::Builder::new()
            .name("kthreads".into())
            .spawn(move || listen(&sock, &control_rx, &shared, &proc_root))?;
        tracing::debug!("following new kernel threads (proc connector)");
        Ok(Running {
            control,
            housekeeping,
            thread,
        })
    }
}

impl Drop for KthreadPinner {
    fn drop(&mut self) {
        self.set(None);
    }
}

fn comm(proc_root: &Path, tid: u32) -> String {
    std::fs::read_to_string(proc_root.join(format!("{tid}/comm")))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_default()
}

/// The listener thread: blocks in poll(2) on the socket and the control pipe, with a timeout
/// only while a new kernel thread awaits a re-check.
fn listen(sock: &OwnedFd, control: &OwnedFd, housekeeping: &Mutex<CpuSet>, proc_root: &Path) {
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
                Ok(1) if byte == SWEEP => sweep(&cpus, proc_root),
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
                        look(&mut f, &cpus, proc_root, Duration::ZERO);
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
                look(f, &cpus, proc_root, *d);
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

/// Pins every existing child of kthreadd that is allowed outside `cpus`.
fn sweep(cpus: &CpuSet, proc_root: &Path) {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if parent_of(&stat) != Some(KTHREADD) {
            continue;
        }
        if let Pin::Pinned { was, now } = pin(pid, cpus) {
            tracing::info!(
                tid = pid,
                comm = %comm(proc_root, pid),
                "kernel thread created during an isolate pinned to the housekeeping CPUs: {was} -> {now}"
            );
        }
    }
}

/// Whether `tid` is (still) a child of kthreadd: after a delay, the thread may have exited and
/// its pid gone to another task, which must not be pinned.
fn child_of_kthreadd(proc_root: &Path, tid: u32) -> bool {
    std::fs::read_to_string(proc_root.join(format!("{tid}/stat")))
        .is_ok_and(|stat| parent_of(&stat) == Some(KTHREADD))
}

/// One look at a followed thread, `at` after its fork event.
fn look(f: &mut Followed, cpus: &CpuSet, proc_root: &Path, at: Duration) {
    if !at.is_zero() && !child_of_kthreadd(proc_root, f.tid) {
        tracing::debug!(
            tid = f.tid,
            at_ms = at.as_millis() as u64,
            "a followed kernel thread is gone (its pid is no child of kthreadd now)"
        );
        f.next = RECHECKS.len();
        return;
    }
    match pin(f.tid, cpus) {
        Pin::Pinned { was, now } => {
            tracing::debug!(tid = f.tid, comm = %comm(proc_root, f.tid), at_ms = at.as_millis() as u64, %was, %now, "pinned a new kernel thread");
            f.pins.push((at, was));
        }
        Pin::Gone | Pin::Unmovable => f.next = RECHECKS.len(),
        Pin::Fine | Pin::LeftAlone(_) => {}
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
    fn parents_come_from_proc_stat() {
        assert_eq!(parent_of("77 (psimon) S 2 0 0 0 -1 2129984"), Some(2));
        assert_eq!(parent_of("90 (a) b (c)) R 1 90 90"), Some(1));
        assert_eq!(parent_of("garbage"), None);
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
            format!("{tid} (kworker/u8:1) S 1 0 0 0 -1 2129984\n"),
        )
        .unwrap();
        let all: CpuSet = (0..nix::sched::CpuSet::count() as u32).collect();
        let mut f = Followed {
            tid,
            born: Instant::now(),
            next: 1,
            pins: Vec::new(),
        };
        look(&mut f, &all, tmp.path(), RECHECKS[1]);
        assert_eq!(f.next, RECHECKS.len(), "followed no longer");
        assert!(f.pins.is_empty());
        // Still kthreadd's child: looked at (and left as it is, being within `all`).
        std::fs::write(
            &stat,
            format!("{tid} (kworker/u8:1) S 2 0 0 0 -1 2129984\n"),
        )
        .unwrap();
        let mut f = Followed {
            tid,
            born: Instant::now(),
            next: 1,
            pins: Vec::new(),
        };
        look(&mut f, &all, tmp.path(), RECHECKS[1]);
        assert_eq!(f.next, 1);
        assert!(child_of_kthreadd(tmp.path(), tid));
        assert!(!child_of_kthreadd(tmp.path(), tid + 1));
    }

    #[test]
    fn pinning_a_missing_thread_says_gone() {
        assert_eq!(pin(u32::MAX - 1, &CpuSet::parse("0").unwrap()), Pin::Gone);
    }
}
