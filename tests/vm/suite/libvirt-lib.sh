# Helpers for the cases that drive libvirt (sourced by them after lib.sh): virsh, a domain's
# scope and QEMU pid, bounded start/destroy, and "every host task is off these CPUs".
VIRSH="virsh -q -c qemu:///system"

# lv_need: skip unless this boot has libvirt and systemd, fail if the hook is not installed
lv_need() {
    need_kvmisolate
    command -v virsh >/dev/null || skip "no libvirt in this image (tests/vm/run --libvirt)"
    have_systemd || skip "needs systemd (libvirt's machine scopes)"
    [ -x /etc/libvirt/hooks/qemu.d/kvmisolate ] || fail "make install did not install /etc/libvirt/hooks/qemu.d/kvmisolate"
    timeout -k 5 60 $VIRSH version >/dev/null 2>&1 || fail "libvirtd does not answer"
}

scope_of() { # NAME: the domain's scope directory (machine-qemu\x2dID\x2dNAME.scope, escaped)
    local d u
    for d in "$CG"/machine.slice/machine-qemu*.scope; do
        [ -d "$d" ] || continue
        u=${d##*/}; u=${u//\\x2d/-}
        case $u in machine-qemu-*-"$1".scope) echo "$d"; return ;; esac
    done
    return 1
}

qemu_pid() { cat "/run/libvirt/qemu/$1.pid"; }

start_ok() { # NAME
    local out
    out=$(timeout -k 5 120 $VIRSH start "$1" 2>&1) || fail "virsh start $1 failed: $out"
}

destroy() { timeout -k 5 60 $VIRSH destroy "$1" >/dev/null 2>&1 || true; }

# lv_forget NAME...: destroy and undefine (cleanup; never fails)
lv_forget() {
    local d
    for d in "$@"; do
        timeout -k 5 30 $VIRSH destroy "$d" >/dev/null 2>&1
        timeout -k 5 30 $VIRSH undefine "$d" >/dev/null 2>&1
    done
    return 0
}

# host_threads_off CPUS EXCLUDED-PIDS...: every task but the domains' QEMUs and per-CPU
# kthreads is off CPUS
host_threads_off() {
    local cpus=$1 offenders late; shift
    offenders=$(affinity_offenders "$(cpulist_minus "$(online_cpus)" "$cpus")" "$@")
    late=$(grep '^LATE ' <<<"$offenders" | sed 's/^LATE //' || true)
    [ -z "$late" ] || note "kernel threads created later, allowed everywhere by the kernel: $(echo $late | cut -c1-200)"
    offenders=$(grep -v '^LATE ' <<<"$offenders" || true)
    [ -z "$offenders" ] || fail "tasks allowed on $cpus: $(echo $offenders | cut -c1-600)"
    note "every host task is off $cpus"
}
