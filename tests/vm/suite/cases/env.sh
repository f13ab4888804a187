# env: the harness itself: cgroup2 with cpuset, 6 CPUs, the system bus, polkitd, the test
# users, jq and the stand-in VM. Needs nothing of kvmisolate.
run() {
    [ "$(stat -f -c %T "$CG")" = cgroup2fs ] || fail "$CG is not a cgroup2 mount ($(stat -f -c %T "$CG"))"
    grep -qw cpuset "$CG/cgroup.controllers" || fail "no cpuset controller: $(cat "$CG/cgroup.controllers")"
    [ -e "$CG/cpuset.cpus.effective" ] || fail "root has no cpuset.cpus.effective"
    [ "$(online_cpus)" = 0-5 ] || fail "online CPUs $(online_cpus), want 0-5 (-smp 6)"
    [ -S /run/dbus/system_bus_socket ] || fail "no system bus socket"
    dbus-send --system --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
        org.freedesktop.DBus.ListNames >/dev/null || fail "the system bus does not answer"
    polkitd_running || fail "polkitd is not running"
    wait_for "dbus-send --system --print-reply=literal --dest=org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.NameHasOwner string:org.freedesktop.PolicyKit1 | grep -q true" 20 \
        || fail "polkitd does not own org.freedesktop.PolicyKit1"
    [ "$(id -u alice)" = 1000 ] && id -nG alice | grep -qw kvm || fail "user alice (1000, in kvm) missing"
    [ "$(id -u bob)" = 1001 ] && ! id -nG bob | grep -qw kvm || fail "user bob (1001, not in kvm) missing"
    [ "$(as_user bob id -u)" = 1001 ] || fail "as_user bob does not run as bob"
    command -v jq >/dev/null || fail "jq missing"
    if have_systemd; then
        [ -d "$CG/system.slice" ] || fail "no system.slice"
        systemctl is-active --quiet multi-user.target || fail "multi-user.target is not active"
        local failed; failed=$(systemctl --failed --plain --no-legend | awk '{print $1}' | paste -sd' ' -)
        [ -z "$failed" ] || fail "failed units: $failed"
    fi
    local pid n
    pid=$(start_fake_vm 3)
    n=$(ls /proc/"$pid"/task | wc -l)
    [ "$n" = 4 ] || fail "fakevm 3 has $n tasks, want 4"
    [ "$(all_affinities | awk -v p="$pid" '$2 == p' | wc -l)" = 4 ] || fail "all_affinities misses fakevm threads"
    all_affinities | awk '$4 == "kpinned"' | grep -q 'migration/0' || fail "all_affinities does not flag migration/0 as kpinned"
    stop_fake_vm "$pid"
    note "kpinned kthreads: $(all_affinities | awk '$4 == "kpinned"' | wc -l), movable kthreads: $(all_affinities | awk '$4 == "kthread"' | wc -l), user tasks: $(all_affinities | awk '$4 == "user"' | wc -l)"
    local a=$KT_STATE/env-a.snap b=$KT_STATE/env-b.snap
    snapshot "$a"; snapshot "$b"
    snapshot_same "$a" "$b" || fail "two snapshots in a row differ"
    note "snapshot: $(wc -l < "$a") values"
}
