# release-then-isolate: a Release replies once the processes are back where they were and stops
# the emptied scope (and kvmisolate.slice) after its reply. Nothing may see that late stop: an
# Isolate sent right after the reply gets a live scope in a live slice (the stop of the slice
# must not take the new scope with it), and a daemon stopped right after a Release still stops
# what it left running, so nothing of kvmisolate's is left. systemd only (run-suite skips it
# without: the scope and slice are systemd's).
run() {
    need_kvmisolate
    local ta tb tc
    ta=$(start_fake_vm 2); tb=$(start_fake_vm 2); tc=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$ta" --name rti-a
    release_ok rti-a
    isolate_ok --cpus 2-3 --pid "$tb" --name rti-b
    # Whatever the first release left running has long ended by now.
    sleep 2
    expect_isolation rti-b 2-3 "$(iso_field rti-b partition)" "$tb"
    local scope
    scope=$(grep '^0::' "/proc/$tb/cgroup" | grep -o '[^/]*\.scope' | head -1 || true)
    case $scope in *.scope) ;; *) fail "rti-b's target is in $(cat "/proc/$tb/cgroup"), not a scope" ;; esac
    [ "$(systemctl is-active "$scope")" = active ] \
        || fail "rti-b's $scope is $(systemctl is-active "$scope") after rti-a's release"
    pid_alive "$tb" || fail "rti-b's target $tb died (the late stop of rti-a's slice took it?)"
    grep -q "kvmisolate.slice/" "/proc/$tb/cgroup" || fail "rti-b's target is not in kvmisolate.slice: $(cat "/proc/$tb/cgroup")"
    release_ok rti-b
    expect_no_isolations
    # Released, then the daemon told to stop at once: it exits only once the units are gone.
    isolate_ok --cpus 2-3 --pid "$tc" --name rti-c
    release_ok rti-c
    daemon_stop
    local left
    left=$(kvmisolate_leftovers)
    [ -z "$left" ] || fail "left behind by a daemon stopped right after a release: $(paste -sd';' - <<<"$left")"
    daemon_start
    pid_alive "$ta" && pid_alive "$tc" || fail "a released target died"
    grep -q "kvmisolate.slice" "/proc/$ta/cgroup" "/proc/$tc/cgroup" && fail "a released target is still in kvmisolate's cgroups"
    stop_fake_vm "$ta"; stop_fake_vm "$tb"; stop_fake_vm "$tc"
    expect_no_leftovers
}
