# kthreads-repinned: kernel threads created after an isolation end up on the housekeeping CPUs.
# Linux resets every new kthread to all CPUs (partitions ignored); kvmisolated follows
# kthreadd's forks through the proc connector (a BPF filter passes only those) and pins them.
# Trigger: a PSI trigger written to /proc/pressure/cpu (the kernel drops its last byte: end it
# with a newline) makes the kernel start a `psimon` kthread
# (closing the file stops it again). Also: the daemon's listener thread exists only while an
# isolation does, and ordinary forks do not wake it.
cleanup() { exec 7>&- 2>/dev/null || true; }
listener_tid() { # the daemon's "kthreads" thread, if any
    local d t; d=$(daemon_pid); [ -n "$d" ] || return 0
    for t in /proc/"$d"/task/*; do [ "$(cat "$t/comm" 2>/dev/null)" = kthreads ] && basename "$t"; done; return 0
}
switches() { awk '/^(non)?voluntary_ctxt_switches:/ {n += $2} END {print n + 0}' "/proc/$(daemon_pid)/task/$1/status"; }
new_psimon() { # OLD_LIST: a psimon pid (child of kthreadd) not in OLD_LIST
    local p
    for p in $(pgrep -x psimon); do
        [[ " $1 " == *" $p "* ]] && continue
        [ "$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null)" = 2 ] && { echo "$p"; return 0; }
    done
    return 1
}
run() {
    need_kvmisolate
    [ -e /proc/pressure/cpu ] || skip "no PSI in this kernel"
    local before=$KT_STATE/kt-before.snap pid hk lt s0 s1 i old p cpus
    snapshot "$before"
    daemon_start
    [ -z "$(listener_tid)" ] || fail "the daemon follows kthreads with no isolation (thread $(listener_tid))"
    pid=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$pid"
    expect_isolation cpus-2-3 2-3 "$(iso_field cpus-2-3 partition)" "$pid"
    hk=$(cpulist_minus "$(online_cpus)" 2-3)
    lt=$(listener_tid)
    [ -n "$lt" ] || fail "no kthreads listener thread in the daemon during an isolation"
    # ordinary forks must not wake the listener. It wakes, rightly, for each kthread the kernel
    # makes (a kworker when a pool grows) and re-checks 10 ms, 100 ms and 1 s later: measure
    # once it has been quiet for 1.5 s, and again if kthreadd made a thread meanwhile.
    local k0 k1 attempt quiet
    for attempt in 1 2 3 4 5; do
        quiet=0
        for i in $(seq 1 8); do
            s0=$(switches "$lt"); sleep 1.5; s1=$(switches "$lt")
            [ "$s0" = "$s1" ] && { quiet=1; break; }
        done
        [ "$quiet" = 1 ] || fail "the kthreads listener never stayed quiet for 1.5 s (context switches still rising: $s1)"
        k0=$(ps -o pid= --ppid 2 | tr -d ' ' | sort)
        s0=$(switches "$lt")
        for i in $(seq 1 100); do /bin/true; done
        sleep 0.5
        s1=$(switches "$lt")
        k1=$(ps -o pid= --ppid 2 | tr -d ' ' | sort)
        [ "$s0" = "$s1" ] && break
        [ "$k0" != "$k1" ] || fail "100 ordinary forks woke the kthreads listener ($s0 -> $s1 context switches; no kthread was created meanwhile)"
        note "attempt $attempt: the kernel made kthread(s) $(comm -13 <(echo "$k0") <(echo "$k1") | tr '\n' ' ')meanwhile ($s0 -> $s1), measuring again"
        [ "$attempt" != 5 ] || fail "kthreads kept being created during 5 measurements; cannot tell whether forks wake the listener"
    done
    note "100 ordinary forks: listener context switches $s0 -> $s1"
    for i in 1 2 3; do
        old=" $( { pgrep -x psimon || true; } | tr '\n' ' ')"
        exec 7>/proc/pressure/cpu
        printf 'some 150000 1000000\n' >&7 || fail "writing a PSI trigger failed"
        wait_for "new_psimon '$old' >/dev/null" 5 0.05 || fail "round $i: no new psimon kthread appeared"
        p=$(new_psimon "$old")
        wait_for "cpulist_subset \"\$(task_cpus $p)\" '$hk'" 3 0.05 \
            || fail "round $i: new kthread psimon($p) allowed on $(task_cpus "$p"), want within $hk"
        sleep 1.2   # past the last re-check: the kernel must not have widened it again
        cpus=$(task_cpus "$p")
        cpulist_subset "$cpus" "$hk" || fail "round $i: psimon($p) widened again to $cpus"
        note "round $i: new psimon($p) on $cpus"
        exec 7>&-
    done
    [ "$(switches "$lt")" != "$s1" ] || fail "the listener never woke for the new kthreads"
    daemon_log_tail 40 | grep -i 'kernel thread' | tail -3 | sed 's/^/    daemon: /' || true
    release_ok cpus-2-3
    expect_no_isolations
    wait_for "[ -z \"\$(listener_tid)\" ]" 5 0.1 || fail "the kthreads listener still runs with no isolation"
    stop_fake_vm "$pid"; wait_for own_cgroups_settled 10 || true
    wait_restored "$before"
}
