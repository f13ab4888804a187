//! CPU hotplug notification without polling: the kernel's uevents (`NETLINK_KOBJECT_UEVENT`)
//! for the `cpu` subsystem. Taking a CPU offline rarely changes a partition's state word (the
//! kernel keeps a partition valid while one of its CPUs is online), so the isolator re-reads
//! every isolation's effective CPUs when one arrives.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
};
use tokio::sync::mpsc;

/// The kernel's uevent multicast group.
const KERNEL_GROUP: u32 = 1;

/// Whether a uevent (`action@devpath\0KEY=VALUE\0...`) is about a CPU going on- or offline.
pub fn is_cpu_hotplug(msg: &[u8]) -> bool {
    let mut fields = msg
        .split(|&b| b == 0)
        .filter_map(|f| std::str::from_utf8(f).ok());
    let Some(head) = fields.next() else {
        return false;
    };
    let action_ok = head.starts_with("online@") || head.starts_with("offline@");
    action_ok && fields.any(|f| f == "SUBSYSTEM=cpu")
}

/// Subscribes to uevents; a unit value arrives on the channel for each CPU hotplug event.
/// Runs a thread blocked in `recv` (no wake-ups while nothing happens).
pub fn start() -> std::io::Result<mpsc::UnboundedReceiver<()>> {
    let fd: OwnedFd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new().name("uevents".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => {
                    if is_cpu_hotplug(&buf[..n]) && tx.send(()).is_err() {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ENOBUFS) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "reading uevents failed; CPU hotplug goes unnoticed");
                    return;
                }
            }
        }
    })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_cpu_hotplug_uevents() {
        let off = b"offline@/devices/system/cpu/cpu3\0ACTION=offline\0DEVPATH=/devices/system/cpu/cpu3\0SUBSYSTEM=cpu\0SEQNUM=1\0";
        assert!(is_cpu_hotplug(off));
        let on = b"online@/devices/system/cpu/cpu3\0ACTION=online\0SUBSYSTEM=cpu\0";
        assert!(is_cpu_hotplug(on));
        let other = b"add@/devices/virtual/net/lo\0ACTION=add\0SUBSYSTEM=net\0";
        assert!(!is_cpu_hotplug(other));
        let mem = b"offline@/devices/system/memory/memory9\0SUBSYSTEM=memory\0";
        assert!(!is_cpu_hotplug(mem));
        assert!(!is_cpu_hotplug(b""));
    }
}
