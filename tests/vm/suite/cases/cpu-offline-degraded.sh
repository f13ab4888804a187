# cpu-offline-degraded: isolate 2-3, take CPU 3 offline: the isolation no longer has what it
# asked for and must say `degraded` with a reason (seen through inotify on the cgroup files, no
# polling); CPU 3 back online: the state is recorded (active again or still degraded); release
# restores everything.
# Kernel facts this case ran into: on 6.12 the kernel refuses (EBUSY) to offline the last CPU
# of a root partition (deadline bandwidth of the fair server), so "all CPUs of a partition
# offline" cannot be produced here; the single-CPU attempt is logged as information.
run() {
    need_kvmisolate
    local before=$KT_STATE/co-before.snap pid cg reason st err
    snapshot "$before"
    pid=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$pid" --partition root
    expect_isolation cpus-2-3 2-3 root "$pid"
    cg=$(iso_cgroups cpus-2-3 | head -1)
    err=$(cpu_offline 3 2>&1) || fail "the kernel refused to offline CPU 3: $err"
    note "CPU 3 offline: partition '$(partition_of "$cg")', effective $(cat "$cg/cpuset.cpus.effective"), root effective $(root_effective)"
    wait_state cpus-2-3 degraded 10 \
        || fail "state '$(iso_field cpus-2-3 state)' 10 s after CPU 3 went offline, want degraded (partition '$(partition_of "$cg")', effective $(cat "$cg/cpuset.cpus.effective"))"
    reason=$(iso_field cpus-2-3 state-reason)
    [ -n "$reason" ] || fail "degraded without a state-reason"
    note "degraded: $reason"
    case $(partition_of "$cg") in
        *invalid*) grep -qF "$(partition_of "$cg" | sed -n 's/.*(\(.*\)).*/\1/p' | cut -c1-20)" <<<"$reason" \
            || note "warning: state-reason does not quote the kernel's reason '$(partition_of "$cg")'" ;;
    esac
    cpu_online 3
    sleep 3
    st=$(iso_field cpus-2-3 state)
    note "CPU 3 online again: state $st ($(iso_field cpus-2-3 state-reason)), partition '$(partition_of "$cg")', effective $(cat "$cg/cpuset.cpus.effective")"
    release_ok cpus-2-3
    expect_no_isolations
    stop_fake_vm "$pid"; wait_for own_cgroups_settled 10 || true
    wait_restored "$before"

    # information: a single-CPU isolation whose CPU is taken offline
    pid=$(start_fake_vm 1)
    isolate_ok --cpus 3 --pid "$pid" --partition isolated
    cg=$(iso_cgroups cpus-3 | head -1)
    if err=$(cpu_offline 3 2>&1); then
        sleep 2
        note "isolated partition on CPU 3 alone, CPU 3 offline: state $(iso_field cpus-3 state) ($(iso_field cpus-3 state-reason)), partition '$(partition_of "$cg")'"
        cpu_online 3; sleep 2
        note "CPU 3 back: state $(iso_field cpus-3 state), partition '$(partition_of "$cg")'"
    else
        note "the kernel refuses to offline CPU 3, the only CPU of an isolated partition: ${err##*: }"
    fi
    release_ok cpus-3
    stop_fake_vm "$pid"; wait_for own_cgroups_settled 10 || true
    wait_restored "$before"
}
