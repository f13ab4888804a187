//! libvirt's names for a running domain's machine and its scope cgroup (pure; the service and
//! `kvmisolate check --vm` both look the scope up with them).
//!
//! libvirt names the machine `qemu-<ID>-<NAME'>`, where `NAME'` is the domain name reduced to
//! what a host name may hold: letters, digits, `-` and `.`, other characters dropped, no `-`
//! or `.` at the start or repeated after another one, none at the end, and the whole name cut
//! at 64 characters. With systemd the scope is `machine-<machine name>.scope` under
//! `machine.slice`, unit-escaped (`-` inside the name becomes `\x2d`); without systemd it is
//! `<machine name>.libvirt-qemu` under `machine`.

/// The slice systemd's machined puts machines in.
pub const MACHINE_SLICE: &str = "machine.slice";
/// The cgroup libvirt uses for machines when systemd does not manage the host.
pub const MACHINE_DIR: &str = "machine";
/// The most characters of a machine name libvirt keeps.
const MACHINE_NAME_MAX: usize = 64;

/// libvirt's machine name for domain `name` with domain id `id`: `qemu-<id>-<name'>`.
pub fn machine_name(id: u32, name: &str) -> String {
    let mut out = format!("qemu-{id}-");
    // Right after the prefix (which ends in '-') a separator would be doubled.
    let mut after_separator = true;
    for c in name.chars() {
        if out.chars().count() >= MACHINE_NAME_MAX {
            break;
        }
        if c == '-' || c == '.' {
            if !after_separator {
                out.push(c);
            }
            after_separator = true;
            continue;
        }
        after_separator = false;
        if c.is_ascii_alphanumeric() {
            out.push(c);
        }
    }
    while out.ends_with(['-', '.']) {
        out.pop();
    }
    out
}

/// Undoes systemd's unit-name escaping: `\xNN` becomes the byte NN. Malformed escapes are
/// kept as they are; the result is lossily decoded as UTF-8.
pub fn unescape_unit(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && bytes.get(i + 1) == Some(&b'x')
            && let Some(hex) = text.get(i + 2..i + 4)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The machine id and name encoded in a scope's directory name (`machine-qemu\x2d3\x2dvm.scope`
/// → `(3, "qemu-3-vm")`), if it is a libvirt QEMU machine's.
pub fn parse_scope_name(dir: &str) -> Option<(u32, String)> {
    let machine = if let Some(unit) = dir.strip_suffix(".scope") {
        unescape_unit(unit).strip_prefix("machine-")?.to_owned()
    } else {
        dir.strip_suffix(".libvirt-qemu")?.to_owned()
    };
    let rest = machine.strip_prefix("qemu-")?;
    let (id, _) = rest.split_once('-')?;
    let id: u32 = id.parse().ok()?;
    Some((id, machine))
}

/// Whether the scope directory name `dir` is that of running domain `domain`.
pub fn is_scope_of(dir: &str, domain: &str) -> bool {
    parse_scope_name(dir).is_some_and(|(id, machine)| machine == machine_name(id, domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names_follow_libvirt() {
        assert_eq!(machine_name(1, "win10"), "qemu-1-win10");
        assert_eq!(machine_name(12, "my-vm.test"), "qemu-12-my-vm.test");
        assert_eq!(machine_name(3, "Gaming VM (GPU)"), "qemu-3-GamingVMGPU");
        assert_eq!(machine_name(3, "--a..b--"), "qemu-3-a.b");
        assert_eq!(machine_name(3, "a_b"), "qemu-3-ab");
        assert_eq!(machine_name(3, "é"), "qemu-3");
        let long = "x".repeat(100);
        assert_eq!(machine_name(7, &long).len(), 64);
    }

    #[test]
    fn unescapes_and_parses_scope_names() {
        assert_eq!(
            unescape_unit(r"machine-qemu\x2d1\x2dwin10"),
            "machine-qemu-1-win10"
        );
        assert_eq!(unescape_unit(r"a\x2"), r"a\x2");
        assert_eq!(unescape_unit(r"a\xzz"), r"a\xzz");
        assert_eq!(
            parse_scope_name(r"machine-qemu\x2d1\x2dwin10.scope"),
            Some((1, "qemu-1-win10".to_owned()))
        );
        assert_eq!(
            parse_scope_name("qemu-4-db.libvirt-qemu"),
            Some((4, "qemu-4-db".to_owned()))
        );
        assert_eq!(parse_scope_name("machine-lxc\\x2d1\\x2dc.scope"), None);
        assert_eq!(parse_scope_name("vm.scope"), None);
        assert_eq!(parse_scope_name(r"machine-qemu\x2dx\x2dvm.scope"), None);
        assert!(is_scope_of(r"machine-qemu\x2d3\x2dmy\x2dvm.scope", "my-vm"));
        assert!(!is_scope_of(
            r"machine-qemu\x2d3\x2dmy\x2dvm.scope",
            "my-vm2"
        ));
    }
}
