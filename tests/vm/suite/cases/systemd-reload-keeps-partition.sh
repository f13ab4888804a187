# systemd-reload-keeps-partition (systemd only): an active isolation stays valid through
# `systemctl daemon-reload`, an unrelated transient unit starting and stopping (one with
# AllowedCPUs=0), `systemctl set-property --runtime` on the isolation's slice and unit, and a
# journald restart.
cleanup() { systemctl stop kvmisolate-test-unrelated.service 2>/dev/null || true; }
still_valid() { # WHAT
    local cg
    for cg in $(iso_cgroups cpus-2-3); do
        partition_valid "$cg" || fail "after $1: ${cg#"$CG"/} partition reads '$(partition_of "$cg")'"
    done
    [ "$(iso_field cpus-2-3 state)" = active ] || fail "after $1: state $(iso_field cpus-2-3 state) ($(iso_field cpus-2-3 state-reason))"
    cpulist_eq "$(root_effective)" 0-1,4-5 || fail "after $1: root cpuset.cpus.effective $(root_effective)"
    grep -qw cpuset "$CG/cgroup.subtree_control" || fail "after $1: +cpuset gone from the root's subtree_control"
    note "after $1: valid"
}
run() {
    need_kvmisolate
    local before=$KT_STATE/sr-before.snap pid cg unit slice
    snapshot "$before"
    pid=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$pid"
    expect_isolation cpus-2-3 2-3 "$(iso_field cpus-2-3 partition)" "$pid"
    cg=$(iso_cgroups cpus-2-3 | head -1)
    unit=${cg##*/}; slice=$(basename "$(dirname "$cg")")
    systemctl daemon-reload; sleep 1; still_valid "daemon-reload"
    systemd-run --quiet --unit=kvmisolate-test-unrelated -p AllowedCPUs=0 sleep 30
    sleep 1; still_valid "starting an unrelated unit with AllowedCPUs=0"
    systemctl stop kvmisolate-test-unrelated.service; sleep 1; still_valid "stopping it"
    if [[ $slice == *.slice ]]; then
        systemctl set-property --runtime "$slice" TasksMax=4096; sleep 1; still_valid "set-property on $slice"
    fi
    if [[ $unit == *.scope || $unit == *.service ]]; then
        systemctl set-property --runtime "$unit" TasksMax=4096; sleep 1; still_valid "set-property on $unit"
    fi
    systemctl restart systemd-journald.service; sleep 1; still_valid "restarting journald"
    systemctl daemon-reexec; sleep 2; still_valid "daemon-reexec"
    expect_isolation cpus-2-3 2-3 "$(iso_field cpus-2-3 partition)" "$pid"
    release_ok cpus-2-3
    stop_fake_vm "$pid"; wait_for own_cgroups_settled 10 || true
    [[ $slice == *.slice ]] && systemctl revert "$slice" >/dev/null 2>&1 || true
    wait_restored "$before"
}
