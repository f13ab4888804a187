# kernel-duties: measures, without kvmisolate, what the running kernel itself does for a
# partition of CPUs 2-3 of each type (root, isolated), made by hand (a child of the root cgroup
# holding one sleeping process): how many unbound kernel threads (movable, not PF_NO_SETAFFINITY)
# are left allowed on 2-3, whether kthreadd is, the unbound workqueue mask, whether a kthread
# made during the partition (psimon from a PSI trigger) avoids 2-3, and, once the partition is
# gone, how many kthreads did not get their affinity back. Prints the figures (lines
# "duties: ..."); kvmisolate's kthread handling (service/src/kthreads.rs) and the default
# partition type rest on them (docs/ARCHITECTURE.md, "Kernel duties"). It fails only if the
# hand-made partition does not form or does not go away cleanly.
M=/sys/fs/cgroup/kt-duties
cleanup() {
    exec 7>&- 2>/dev/null || true
    [ -d "$M" ] || return 0
    echo member > "$M/cpuset.cpus.partition" 2>/dev/null
    local p; for p in $(cat "$M/cgroup.procs" 2>/dev/null); do echo "$p" > /sys/fs/cgroup/cgroup.procs 2>/dev/null; kill "$p" 2>/dev/null; done
    rmdir "$M" 2>/dev/null || true
}
# unbound kthreads (TID COMM CPUS) allowed on a CPU of $1
kthreads_on() {
    all_affinities | awk '$4 == "kthread" {print $1, $6, $5}' | while read -r tid comm cpus; do
        local c hit=0
        for c in $(cpulist_expand "$1"); do
            [[ ",$(cpulist_expand "$cpus" | tr ' ' ','), " == *",$c,"* ]] && { hit=1; break; }
        done
        [ "$hit" = 1 ] && echo "$tid $comm $cpus"
    done
    return 0
}
kthread_affinities() { all_affinities | awk '$4 == "kthread" {print $1, $6, $5}'; }
wq_mask() { cat /sys/devices/virtual/workqueue/cpumask 2>/dev/null || echo none; }
new_kthread_cpus() { # a psimon made now: its CPUs (empty if PSI is missing)
    [ -e /proc/pressure/cpu ] || return 0
    local old p
    old=" $( { pgrep -x psimon || true; } | tr '\n' ' ')"
    exec 7>/proc/pressure/cpu
    printf 'some 150000 1000000\n' >&7 2>/dev/null || { exec 7>&-; return 0; }
    sleep 1.5
    for p in $(pgrep -x psimon); do
        [[ "$old" == *" $p "* ]] && continue
        task_cpus "$p"; break
    done
    exec 7>&-
}
measure() { # TYPE
    local t=$1 before=$KT_STATE/duties-before.$1 after=$KT_STATE/duties-after.$1 sub had_cpuset=0 left n kd newk changed
    kthread_affinities | sort > "$before"
    sub=$(cat /sys/fs/cgroup/cgroup.subtree_control)
    [[ " $sub " == *" cpuset "* ]] && had_cpuset=1
    echo +cpuset > /sys/fs/cgroup/cgroup.subtree_control
    mkdir "$M"
    [ -e "$M/cpuset.cpus.exclusive" ] && echo 2-3 > "$M/cpuset.cpus.exclusive"
    echo 2-3 > "$M/cpuset.cpus"
    sleep 1000 & local sp=$!
    echo "$sp" > "$M/cgroup.procs"
    echo "$t" > "$M/cpuset.cpus.partition" || fail "writing $t to a hand-made partition failed"
    [ "$(cat "$M/cpuset.cpus.partition")" = "$t" ] || fail "hand-made $t partition reads back '$(cat "$M/cpuset.cpus.partition")'"
    sleep 1 # 7.0+ updates the housekeeping masks from a workqueue
    left=$(kthreads_on 2-3)
    n=$(grep -c . <<<"$left" || true)
    kd=$(task_cpus 2)
    newk=$(new_kthread_cpus)
    note "duties: $(uname -r) $t partition 2-3: unbound kthreads left on 2-3: $n$([ "$n" -gt 0 ] && printf ' (%s...)' "$(awk '{print $2}' <<<"$left" | head -6 | paste -sd, -)"); kthreadd $kd; wq cpumask $(wq_mask); new kthread ${newk:-n/a}; timer_migration $(cat /proc/sys/kernel/timer_migration 2>/dev/null); cpuset.cpus.isolated $(cat /sys/fs/cgroup/cpuset.cpus.isolated 2>/dev/null); sys cpu/isolated '$(cat /sys/devices/system/cpu/isolated 2>/dev/null)'"
    echo member > "$M/cpuset.cpus.partition"
    echo "$sp" > /sys/fs/cgroup/cgroup.procs; kill "$sp"; wait "$sp" 2>/dev/null || true
    rmdir "$M"
    [ "$had_cpuset" = 1 ] || echo -cpuset > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    sleep 1
    kthread_affinities | sort > "$after"
    changed=$(join "$before" "$after" | awk '$3 != $5 {print $2 ":" $3 "->" $5}')
    note "duties: $(uname -r) $t partition gone: kthreads not back to their affinity: $(grep -c . <<<"$changed" || true)$([ -n "$changed" ] && printf ' (%s)' "$(head -6 <<<"$changed" | paste -sd' ' -)"); wq cpumask $(wq_mask)"
}
run() {
    measure root
    measure isolated
}
