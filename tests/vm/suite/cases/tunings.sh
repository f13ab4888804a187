# tunings: the host tunings that come with an isolation, on the real kernel.
#  1. realtime profile + 64M of hugepages on 2-3: every tuning the VM's kernel has is changed as
#     specified (sysctls, IRQs off 2-3 but the ones the kernel refuses to move, which must be
#     reported, default_smp_affinity, workqueue masks, THP, RT throttling, the fair server when
#     the kernel has it, split-lock mitigation and NUMA balancing off, the PM QoS resume
#     latency limit of 2-3 only) and the governor and energy/performance preference are
#     skipped cleanly (no cpufreq in the VM);
#  2. a second isolation (default profile plus split-lock, numa-balancing, cpu-idle) on 4:
#     host-wide values follow the union; releasing the first brings back its own values (RT
#     throttling, THP, hugepages, the limits of 2-3) while the shared ones follow the second;
#     releasing the second restores every value byte for byte;
#  3. hugepages: more than the VM's memory is refused with a clear error; more than
#     MemAvailable minus the margin is refused naming that cap, before the pool is touched; the
#     pool is unchanged both times;
#  4. the daemon SIGKILLed after the N-th tuning write: started again, the isolation is complete
#     (adopted, every tuning in force), then released to the original values; the same with
#     split-lock, numa-balancing and cpu-idle alone, killed between the per-CPU writes;
#  5. (systemd) irqbalance running: it is restarted with the isolated CPUs banned, and again
#     without the ban on release.
# timeout: 300
cleanup() {
    [ -e "$KT_STATE/tu-mounted-debugfs" ] && umount /sys/kernel/debug 2>/dev/null && rm -f "$KT_STATE/tu-mounted-debugfs"
    daemon_clear_env
    daemon_restart >/dev/null 2>&1 || true
    if have_systemd; then systemctl stop irqbalance.service 2>/dev/null || true; fi
}

# mask_has_any FILE CPU...: the hex mask in FILE has one of the CPUs set
mask_has_any() {
    local hex c idx nib
    hex=$(tr -d ',\n' < "$1"); shift
    for c in "$@"; do
        idx=$(( ${#hex} - 1 - c / 4 ))
        [ "$idx" -ge 0 ] || continue
        nib=$(( 16#${hex:$idx:1} ))
        (( (nib >> (c % 4)) & 1 )) && return 0
    done
    return 1
}
# tuning NAME FIELD: a field (state reason original current) of isolation NAME's tuning FIELD
tuning() {
    local i
    case $3 in state) i=1 ;; reason) i=2 ;; original) i=3 ;; current) i=4 ;; esac
    kstatus | jq -r --arg n "$1" --arg t "$2" --argjson i "$i" \
        '.isolations[] | select(.name == $n) | .tunings[] | select(.[0] == $t) | .[$i]'
}
pmqos() { cat "/sys/devices/system/cpu/cpu$1/power/pm_qos_resume_latency_us"; }
# pmqos_are VALUE CPU...: the PM QoS resume latency limit of each CPU is VALUE
pmqos_are() {
    local want=$1 c; shift
    for c in "$@"; do
        [ "$(pmqos "$c")" = "$want" ] || fail "pm_qos_resume_latency_us of CPU $c is $(pmqos "$c"), expected $want"
    done
}
# sysctl_if NAME VALUE TUNING ISOLATION: NAME is VALUE where the kernel has it, else TUNING is
# skipped with a reason naming it
sysctl_if() {
    if [ -e "/proc/sys/$1" ]; then
        sysctl_is "$1" "$2"
    else
        [ "$(tuning "$4" "$3" state)" = skipped ] || fail "$3 without /proc/sys/$1: $(tuning "$4" "$3" state)"
        [[ $(tuning "$4" "$3" reason) == *"${1//\//.}"* ]] || fail "$3's reason does not name ${1//\//.}: $(tuning "$4" "$3" reason)"
    fi
}
sysctl_is() { # NAME VALUE
    local v; v=$(cat "/proc/sys/$1")
    [ "$v" = "$2" ] || fail "/proc/sys/$1 is $v, expected $2"
}
wq_mask() { # the mask the unbound workqueues were asked to use
    if [ -e /sys/devices/virtual/workqueue/cpumask_requested ]; then
        echo /sys/devices/virtual/workqueue/cpumask_requested
    else
        echo /sys/devices/virtual/workqueue/cpumask
    fi
}
# expect_irqs_off NAME CPUS...: every IRQ is off CPUS, or named in NAME's irq-affinity reason
expect_irqs_off() {
    local name=$1 f n reason moved=0 kept=0; shift
    reason=$(tuning "$name" irq-affinity reason)
    for f in /proc/irq/*/smp_affinity_list; do
        n=${f#/proc/irq/}; n=${n%%/*}
        local hit=0 c
        for c in "$@"; do cpulist_subset "$c" "$(cat "$f")" && hit=1; done
        if [ "$hit" = 1 ]; then
            [[ $reason == *"IRQ $n "* ]] || fail "IRQ $n is still allowed on $(cat "$f") and not reported: $reason"
            kept=$((kept + 1))
        else
            moved=$((moved + 1))
        fi
    done
    mask_has_any /proc/irq/default_smp_affinity "$@" && fail "default_smp_affinity $(cat /proc/irq/default_smp_affinity) still has $*"
    note "IRQs off $*: $moved; left (reported by the service): $kept"
}

run() {
    need_kvmisolate
    local before=$KT_STATE/tu-before.snap pid pid2 hp0 hp wd0 rt0 thp0 n rc
    local pool=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
    # The fair server lives in debugfs, which the image does not mount.
    if ! mountpoint -q /sys/kernel/debug && mount -t debugfs none /sys/kernel/debug 2>/dev/null; then
        touch "$KT_STATE/tu-mounted-debugfs"
    fi
    daemon_restart
    pid=$(start_fake_vm 2); pid2=$(start_fake_vm 1)
    snapshot "$before"
    hp0=$(cat $pool); wd0=$(cat /proc/sys/kernel/watchdog_cpumask); rt0=$(cat /proc/sys/kernel/sched_rt_runtime_us)
    thp0=$(cat /sys/kernel/mm/transparent_hugepage/enabled)
    local sl0=absent nb0=absent q0
    [ -e /proc/sys/kernel/split_lock_mitigate ] && sl0=$(cat /proc/sys/kernel/split_lock_mitigate)
    [ -e /proc/sys/kernel/numa_balancing ] && nb0=$(cat /proc/sys/kernel/numa_balancing)
    [ -e /sys/devices/system/cpu/cpu2/power/pm_qos_resume_latency_us ] \
        || fail "no pm_qos_resume_latency_us for CPU 2: the cpu-idle tuning cannot be exercised"
    q0=$(pmqos 2)
    note "before: kernel.split_lock_mitigate=$sl0 kernel.numa_balancing=$nb0 pm_qos_resume_latency_us(2-4)=$(pmqos 2)/$(pmqos 3)/$(pmqos 4) cpuidle states of CPU 2: $(cat /sys/devices/system/cpu/cpu2/cpuidle/state*/name 2>/dev/null | tr '\n' ' ')"

    # 1. realtime + hugepages
    isolate_ok --name tu-a --cpus 2-3 --pid "$pid" --tunings realtime --hugepages 64M
    sysctl_is vm/stat_interval 120
    sysctl_is kernel/timer_migration 0
    sysctl_is kernel/sched_rt_runtime_us -1
    cpulist_eq "$(cat /proc/sys/kernel/watchdog_cpumask)" "$(cpulist_minus "$wd0" 2-3)" \
        || fail "watchdog_cpumask is $(cat /proc/sys/kernel/watchdog_cpumask), expected $wd0 without 2-3"
    expect_irqs_off tu-a 2 3
    mask_has_any "$(wq_mask)" 2 3 && fail "the unbound workqueue mask $(cat "$(wq_mask)") still has 2-3"
    mask_has_any /sys/bus/workqueue/devices/writeback/cpumask 2 3 && fail "the writeback workqueue mask still has 2-3"
    grep -q '\[never\]' /sys/kernel/mm/transparent_hugepage/enabled || fail "THP enabled: $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
    grep -q '\[never\]' /sys/kernel/mm/transparent_hugepage/defrag || fail "THP defrag: $(cat /sys/kernel/mm/transparent_hugepage/defrag)"
    hp=$(cat $pool); [ "$hp" = $((hp0 + 32)) ] || fail "hugepage pool is $hp, expected $hp0 + 32"
    [ "$(tuning tu-a hugepages state)" = applied ] || fail "hugepages: $(tuning tu-a hugepages state): $(tuning tu-a hugepages reason)"
    [ "$(tuning tu-a cpu-governor state)" = skipped ] || fail "the governor should be skipped without cpufreq: $(tuning tu-a cpu-governor state)"
    note "cpu-governor: $(tuning tu-a cpu-governor reason)"
    sysctl_if kernel/split_lock_mitigate 0 split-lock tu-a
    sysctl_if kernel/numa_balancing 0 numa-balancing tu-a
    pmqos_are 20 2 3
    pmqos_are "$q0" 0 1 4 5
    [ "$(tuning tu-a cpu-idle state)" = applied ] || fail "cpu-idle: $(tuning tu-a cpu-idle state): $(tuning tu-a cpu-idle reason)"
    [ "$(tuning tu-a energy-perf state)" = skipped ] || fail "energy-perf without cpufreq: $(tuning tu-a energy-perf state)"
    [[ $(tuning tu-a energy-perf reason) == *energy_performance_preference* ]] || fail "energy-perf's reason: $(tuning tu-a energy-perf reason)"
    note "energy-perf: $(tuning tu-a energy-perf reason)"
    note "after isolate: split-lock $(tuning tu-a split-lock state) ($(tuning tu-a split-lock original) -> $(tuning tu-a split-lock current)), numa-balancing $(tuning tu-a numa-balancing state) ($(tuning tu-a numa-balancing original) -> $(tuning tu-a numa-balancing current)), cpu-idle $(tuning tu-a cpu-idle current)"
    if [ -d /sys/kernel/debug/sched/fair_server ]; then
        for n in 2 3; do
            [ "$(cat /sys/kernel/debug/sched/fair_server/cpu$n/runtime)" = 0 ] || fail "fair server runtime of CPU $n: $(cat /sys/kernel/debug/sched/fair_server/cpu$n/runtime)"
        done
        [ "$(cat /sys/kernel/debug/sched/fair_server/cpu0/runtime)" != 0 ] || fail "the fair server of CPU 0 was changed"
    else
        [ "$(tuning tu-a fair-server state)" = skipped ] || fail "fair-server without the 6.12 files: $(tuning tu-a fair-server state)"
        note "fair-server: $(tuning tu-a fair-server reason)"
    fi

    # 2. a second isolation: the union, then back in order
    isolate_ok --name tu-b --cpus 4 --pid "$pid2" --tunings irq-affinity,irqbalance,workqueue-unbound,workqueue-writeback,vmstat-interval,timer-migration,watchdog-cpumask,energy-perf,cpu-governor,split-lock,numa-balancing,cpu-idle
    pmqos_are 20 2 3 4
    cpulist_eq "$(cat /proc/sys/kernel/watchdog_cpumask)" "$(cpulist_minus "$wd0" 2-4)" \
        || fail "with two isolations watchdog_cpumask is $(cat /proc/sys/kernel/watchdog_cpumask), expected $wd0 without 2-4"
    mask_has_any /sys/bus/workqueue/devices/writeback/cpumask 2 3 4 && fail "writeback mask with two isolations: $(cat /sys/bus/workqueue/devices/writeback/cpumask)"
    expect_irqs_off tu-b 2 3 4
    release_ok tu-a
    sysctl_is kernel/sched_rt_runtime_us "$rt0"
    [ "$(cat /sys/kernel/mm/transparent_hugepage/enabled)" = "$thp0" ] || fail "THP not restored: $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
    [ "$(cat $pool)" = "$hp0" ] || fail "hugepage pool $(cat $pool) after release, expected $hp0"
    sysctl_is vm/stat_interval 120
    sysctl_if kernel/split_lock_mitigate 0 split-lock tu-b
    sysctl_if kernel/numa_balancing 0 numa-balancing tu-b
    pmqos_are "$q0" 2 3
    pmqos_are 20 4
    cpulist_eq "$(cat /proc/sys/kernel/watchdog_cpumask)" "$(cpulist_minus "$wd0" 4)" \
        || fail "after releasing tu-a watchdog_cpumask is $(cat /proc/sys/kernel/watchdog_cpumask), expected $wd0 without 4"
    mask_has_any /sys/bus/workqueue/devices/writeback/cpumask 2 3 || fail "writeback mask did not get 2-3 back"
    release_ok tu-b
    wait_restored "$before" --semantic

    # 3. hugepages the VM cannot have
    rc=$(kvmi_rc isolate --no-ask-password --name tu-c --cpus 2-3 --pid "$pid" --hugepages 64G)
    [ "$rc" = 6 ] || fail "64G of hugepages on a 2G VM: exit $rc, expected 6: $(last_output)"
    grep -q "memory in all" "$KT_STATE/last-output" || fail "no clear error for 64G: $(last_output)"
    local avail_mb
    avail_mb=$(awk '/^MemAvailable:/ {print int($2/1024)}' /proc/meminfo)
    local total_mb
    total_mb=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
    local ask=$(( (avail_mb + total_mb) / 2 / 2 * 2 ))
    rc=$(kvmi_rc isolate --no-ask-password --name tu-c --cpus 2-3 --pid "$pid" --hugepages "${ask}M")
    [ "$rc" = 6 ] || fail "${ask}M of hugepages (MemAvailable ${avail_mb}M): exit $rc, expected 6: $(last_output)"
    # more than MemAvailable minus the margin is refused before the pool is touched
    grep -q "MemAvailable" "$KT_STATE/last-output" || fail "no message naming the cap (MemAvailable minus a margin): $(last_output)"
    note "asked ${ask}M of ${total_mb}M: $(grep -o 'only [0-9]* MiB can be taken now: MemAvailable [0-9]* MiB minus a margin of [0-9]* MiB' "$KT_STATE/last-output" | head -1)"
    expect_no_isolations
    [ "$(cat $pool)" = "$hp0" ] || fail "hugepage pool $(cat $pool) after the failed requests, expected $hp0"
    wait_restored "$before" --semantic

    # 4. SIGKILL between tuning writes
    for n in 1 4 9; do
        daemon_start KVMISOLATED_CRASH_AFTER_TUNING="$n" || fail "write $n: the daemon did not start with the crash hook"
        rc=$(kvmi_rc isolate --no-ask-password --name tu-k --cpus 2-3 --pid "$pid" --tunings realtime)
        [ "$rc" != 0 ] || fail "write $n: isolate succeeded although the daemon should have crashed"
        daemon_clear_env
        daemon_start || fail "write $n: the daemon did not start again"
        iso_exists tu-k || fail "write $n: the isolation was not adopted after the crash"
        sysctl_is vm/stat_interval 120
        sysctl_is kernel/sched_rt_runtime_us -1
        sysctl_is kernel/timer_migration 0
        expect_irqs_off tu-k 2 3
        release_ok tu-k
        wait_restored "$before" --semantic
        note "crash after tuning write $n: adopted with every tuning in force, then restored"
    done
    # split-lock, numa-balancing, cpu-idle alone: write 3 is CPU 2's limit (CPU 3's where the
    # kernel lacks one of the sysctls), so the kill falls between the per-CPU writes.
    for n in 1 3; do
        daemon_start KVMISOLATED_CRASH_AFTER_TUNING="$n" || fail "write $n: the daemon did not start with the crash hook"
        rc=$(kvmi_rc isolate --no-ask-password --name tu-k --cpus 2-3 --pid "$pid" --tunings split-lock,numa-balancing,cpu-idle)
        [ "$rc" != 0 ] || fail "write $n: isolate succeeded although the daemon should have crashed"
        note "killed after write $n: split_lock_mitigate=$(cat /proc/sys/kernel/split_lock_mitigate 2>/dev/null || echo absent) numa_balancing=$(cat /proc/sys/kernel/numa_balancing 2>/dev/null || echo absent) pm_qos 2/3=$(pmqos 2)/$(pmqos 3)"
        daemon_clear_env
        daemon_start || fail "write $n: the daemon did not start again"
        iso_exists tu-k || fail "write $n: the isolation was not adopted after the crash"
        sysctl_if kernel/split_lock_mitigate 0 split-lock tu-k
        sysctl_if kernel/numa_balancing 0 numa-balancing tu-k
        pmqos_are 20 2 3
        release_ok tu-k
        pmqos_are "$q0" 2 3
        wait_restored "$before" --semantic
        note "crash after write $n of split-lock/numa-balancing/cpu-idle: adopted complete, then restored"
    done

    # 5. irqbalance
    if have_systemd && systemctl start irqbalance.service 2>/dev/null; then
        # What systemd runs irqbalance with (its own process rewrites /proc/PID/environ, so
        # systemd's view is the one to check) and when it last (re)started it.
        local dropin=/run/systemd/system/irqbalance.service.d/50-kvmisolate.conf t0 t1
        ib_env() { systemctl show -P Environment irqbalance.service; }
        ib_started() { systemctl show -P ExecMainStartTimestampMonotonic irqbalance.service; }
        t0=$(ib_started)
        isolate_ok --name tu-i --cpus 2-3 --pid "$pid"
        [ -f "$dropin" ] || fail "no irqbalance drop-in"
        grep -qw 'IRQBALANCE_BANNED_CPULIST=2-3' <<<"$(ib_env)" || fail "irqbalance.service has no ban: $(ib_env)"
        t1=$(ib_started)
        [ "$t1" != "$t0" ] || fail "irqbalance was not restarted with the ban"
        [ "$(systemctl is-active irqbalance.service)" = active ] || fail "irqbalance is $(systemctl is-active irqbalance.service) after the restart"
        [ "$(tuning tu-i irqbalance state)" = applied ] || fail "irqbalance tuning: $(tuning tu-i irqbalance state)"
        release_ok tu-i
        [ ! -e "$dropin" ] || fail "the irqbalance drop-in is left after release"
        grep -q IRQBALANCE_BANNED_CPULIST <<<"$(ib_env)" && fail "irqbalance.service still has the ban: $(ib_env)"
        [ "$(ib_started)" != "$t1" ] || fail "irqbalance was not restarted without the ban"
        systemctl stop irqbalance.service
        note "irqbalance restarted with IRQBALANCE_BANNED_CPULIST=2-3, and without it on release"
    fi

    stop_fake_vm "$pid"; stop_fake_vm "$pid2"
    wait_for own_cgroups_settled 10 || true
    # irqbalance moved IRQs (its job): compare everything else byte for byte.
    if have_systemd; then
        grep -v '/proc/irq/' "$before" > "$before.noirq"
        snapshot "$KT_STATE/tu-after.snap"
        grep -v '/proc/irq/' "$KT_STATE/tu-after.snap" > "$KT_STATE/tu-after.noirq"
        snapshot_same "$before.noirq" "$KT_STATE/tu-after.noirq" || fail "not restored at the end"
    else
        wait_restored "$before"
    fi
}
