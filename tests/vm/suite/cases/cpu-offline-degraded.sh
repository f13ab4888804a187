# cpu-offline-degraded: the kernel invalidates a partition whose CPUs all go offline; the daemon
# must notice (no polling: inotify on cpuset.cpus.partition) and say `degraded` with the
# kernel's reason. Isolating one CPU (3) makes that certain; the 2-3 case of the issue (offline 3
# only: the partition keeps CPU 2 and stays valid in the kernel) is recorded as information.
run() {
    need_kvmisolate
    local before=$KT_STATE/co-before.snap pid cg reason st
    snapshot "$before"
    pid=$(start_fake_vm 1)
    isolate_ok --cpus 3 --pid "$pid" --partition root
    expect_isolation cpus-3 3 root "$pid"
    cg=$(iso_cgroups cpus-3 | head -1)
    cpu_offline 3
    note "CPU 3 offline: partition file reads '$(partition_of "$cg")'"
    wait_state cpus-3 degraded 10 || fail "state '$(iso_field cpus-3 state)' 10 s after CPU 3 went offline, want degraded (partition file: '$(partition_of "$cg")')"
    reason=$(iso_field cpus-3 state-reason)
    [ -n "$reason" ] || fail "degraded without a state-reason"
    note "degraded: $reason"
    case $(partition_of "$cg") in
        *invalid*) grep -qF "$(partition_of "$cg" | sed -n 's/.*(\(.*\)).*/\1/p' | cut -c1-20)" <<<"$reason" \
            || note "warning: state-reason does not quote the kernel's reason '$(partition_of "$cg")'" ;;
    esac
    cpu_online 3
    sleep 3
    st=$(iso_field cpus-3 state)
    note "CPU 3 online again: state $st ($(iso_field cpus-3 state-reason)), partition file '$(partition_of "$cg")'"
    release_ok cpus-3
    expect_no_isolations
    stop_fake_vm "$pid"; wait_for own_cgroups_settled 10 || true
    wait_restored "$before"

    # information: 2-3 with only CPU 3 offline
    pid=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$pid"
    cg=$(iso_cgroups cpus-2-3 | head -1)
    cpu_offline 3; sleep 2
    note "2-3 with CPU 3 offline: state $(iso_field cpus-2-3 state) ($(iso_field cpus-2-3 state-reason)), partition '$(partition_of "$cg")', effective $(cat "$cg/cpuset.cpus.effective")"
    cpu_online 3; sleep 2
    note "2-3 with CPU 3 back: state $(iso_field cpus-2-3 state), partition '$(partition_of "$cg")', effective $(cat "$cg/cpuset.cpus.effective")"
    release_ok cpus-2-3
    stop_fake_vm "$pid"; wait_for own_cgroups_settled 10 || true
    wait_restored "$before"
}
