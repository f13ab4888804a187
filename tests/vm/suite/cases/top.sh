# top: `kvmisolate top --pid` on a stand-in VM: fakevm with one thread named "CPU 0/KVM",
# busy 30% of every 10 ms, pinned to CPU 3, and a busy load process pinned to CPU 3 too.
# Not isolated: `top --duration 8 --json --plot` names the load process as the main offender
# (kind task, CPU 3), reports preemptions between the thread's nonvoluntary_ctxt_switches
# while the load ran (3 s inside top's window) and around top's window, counts the local
# timer without tracing it, and draws the SVG; `--timers` traces it (count and time). While
# top runs: two instances, CPU 3's events unfiltered in one limited to CPU 3, the thread's
# wake-ups pid-filtered in the other. Then the instances' life: none of ours is left after a
# normal exit, after SIGINT, and after SIGKILL once the next run has started (it says it
# removed both); the top-level tracing settings are unchanged throughout.
# Isolated (`isolate --cpus 3 --pid`): the load no longer shows on CPU 3 and the time lost
# drops (both figures printed); `--name` finds the same thread; `--compare` of the two runs;
# as a user: exit 4. Started under a taskset, top keeps to those CPUs minus the traced one.
# Figures: top's own CPU time per window, and a pipe ping-pong on CPU 3 timed with and without
# top (wall clock under TCG: noisy; the overhead figure is `tests/vm/run --bench-top`'s).
# timeout: 420
TRACE=/sys/kernel/tracing
LOAD=

top_settings() { # what a user of the top-level buffer would check
    local f
    for f in tracing_on current_tracer set_event tracing_cpumask buffer_size_kb trace_clock; do
        printf '%s: %s\n' "$f" "$(tr '\n' ' ' < "$TRACE/$f")"
    done
    printf 'other instances: %s\n' "$(ls "$TRACE/instances" | { grep -v '^kvmisolate-top-' || true; } | tr '\n' ' ')"
    printf 'trace lines: %s\n' "$(grep -vc '^#' "$TRACE/trace" || true)"
}
ours() { ls "$TRACE/instances" | grep '^kvmisolate-top-' || true; }
# the instance of the traced CPUs' events (the other, NAME-wake, has the threads' wake-ups)
cpu_inst() { ours | grep -v -- '-wake$' | head -1; }
tracing() { local i; i=$(cpu_inst); [ -n "$i" ] && [ "$(cat "$TRACE/instances/$i/tracing_on" 2>/dev/null)" = 1 ]; }
nivcsw() { awk '/^nonvoluntary_ctxt_switches/ {print $2}' "/proc/$1/task/$2/status"; }
vcpu() { jq -r ".threads[] | select(.vcpu == 0) | $2" "$1"; }

cleanup() {
    [ -n "$LOAD" ] && kill "$LOAD" 2>/dev/null
    LOAD=
}

pingpong() { # seconds for 20000 64-byte writes through a pipe, both ends on CPU 3
    local t0 t1
    t0=$(date +%s.%N)
    taskset -c 3 sh -c 'dd if=/dev/zero bs=64 count=20000 2>/dev/null | cat > /dev/null'
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'
}

run() {
    need_kvmisolate
    [ -d "$TRACE/instances" ] || skip "no tracefs at $TRACE"
    local before pid tid n0 n1 j1 j2 p d rc top_pid out tol
    before=$(top_settings)
    pid=$(FAKEVM_QEMU_NAMES=1 start_fake_vm 1 30)
    tid=$(ls "/proc/$pid/task" | grep -vx "$pid" | head -1)
    [ "$(cat "/proc/$pid/task/$tid/comm")" = "CPU 0/KVM" ] || fail "fakevm's thread is named $(cat "/proc/$pid/task/$tid/comm")"
    taskset -pc 3 "$tid" >/dev/null
    taskset -pc 2 "$pid" >/dev/null
    taskset -c 3 sh -c 'while :; do :; done' &
    LOAD=$!
    sleep 1

    # 1. Not isolated.
    j1=$KT_STATE/top-before.json
    # The kernel's count over a window inside top's: the load (the only thing that preempts
    # the thread) runs only between the two reads of nonvoluntary_ctxt_switches, well inside
    # top's window, so how fast the shell sees top start and stop does not matter.
    kill -STOP "$LOAD"
    na=$(nivcsw "$pid" "$tid")
    kvmisolate top --pid "$pid" --duration 8 --json --plot "$KT_STATE/top.svg" > "$j1" 2> "$KT_STATE/top.err" &
    top_pid=$!
    wait_for tracing 30 0.02 \
        || fail "top did not start tracing: $(tail -3 "$KT_STATE/top.err")"
    n0=$(nivcsw "$pid" "$tid")
    kill -CONT "$LOAD"
    sleep 3
    kill -STOP "$LOAD"
    n1=$(nivcsw "$pid" "$tid")
    tracing || fail "top stopped tracing before the load did (its window ended early)"
    wait_for '[ -z "$(ours)" ]' 60 0.02 || fail "top's instances stayed: $(ours)"
    rc=0; wait "$top_pid" || rc=$?
    nb=$(nivcsw "$pid" "$tid")
    kill -CONT "$LOAD"
    [ "$rc" = 0 ] || fail "top --pid exited $rc: $(tail -3 "$KT_STATE/top.err")"
    [ "$(vcpu "$j1" .name)" = "CPU 0/KVM" ] || fail "no vCPU 0 thread in top's threads: $(jq -c '[.threads[] | {name, role}]' "$j1")"
    [ "$(vcpu "$j1" .tid)" = "$tid" ] || fail "vCPU 0 is tid $(vcpu "$j1" .tid), want $tid"
    [ "$(vcpu "$j1" .wakeup.samples)" -gt 0 ] || fail "no wake-up of the vCPU thread seen"
    p=$(vcpu "$j1" .preemptions)
    note "not isolated: $(jq -r .verdict.line "$j1")"
    note "  vCPU 0: $(vcpu "$j1" '"wake-ups \(.wakeup.samples), p50 \(.wakeup."p50-us") p99 \(.wakeup."p99-us") max \(.wakeup."max-us") us, preemptions \(.preemptions), lost \(."lost-us" / 1000) ms, migrations \(.migrations)"')"
    # The kernel's count (nonvoluntary_ctxt_switches) bounds top's: at least what it counted
    # while the load ran (inside top's window), at most what it counted from before top
    # started to after it exited (around top's window). Exact: no tolerance.
    note "  preemptions: top $p; nonvoluntary_ctxt_switches +$((n1 - n0)) while the load ran inside top's window, +$((nb - na)) around it"
    [ "$((n1 - n0))" -gt 0 ] || fail "the load preempted the thread $((n1 - n0)) times: nothing to compare"
    [ "$p" -ge $((n1 - n0)) ] && [ "$p" -le $((nb - na)) ] \
        || fail "preemptions: top says $p, the kernel counted $((n1 - n0)) inside top's window and $((nb - na)) around it"
    note "  top offender: $(jq -r '.offenders[0] | "\(.what) on CPU \(.cpu), \(."wait-us" / 1000) ms (\(.kind)); fix: \(.fix)"' "$j1")"
    jq -r '.offenders[0].what' "$j1" | grep -q "($LOAD)" || fail "the main offender is $(jq -c '.offenders[0]' "$j1"), want the load process $LOAD"
    [ "$(jq -r '.offenders[0].kind' "$j1")" = task ] || fail "offender kind $(jq -r '.offenders[0].kind' "$j1"), want task"
    [ "$(jq -r '.offenders[0].cpu' "$j1")" = 3 ] || fail "offender CPU $(jq -r '.offenders[0].cpu' "$j1"), want 3"
    jq -e --arg l "($LOAD)" '."cpu-details"[] | select(.cpu == 3) | .tasks[] | select(.what | endswith($l))' "$j1" >/dev/null \
        || fail "CPU 3's tasks do not list the load: $(jq -c '."cpu-details"[] | select(.cpu == 3)' "$j1")"
    note "  CPU 3 IRQs: $(jq -c '[."cpu-details"[] | select(.cpu == 3) | .irqs[] | "\(.what) x\(.count)"]' "$j1"), softirqs: $(jq -c '[."cpu-details"[] | select(.cpu == 3) | .softirqs[] | "\(.what) x\(.count)"]' "$j1")"
    note "  cost: $(jq -r '.cost | "\(.events) events, \(.bytes / 1024 | floor) KiB, \(."cpu-ms") ms CPU, lost pages \(."lost-pages")"' "$j1") in $(jq -r '."duration-s"' "$j1") s"
    # Without --timers the local timer is counted, not traced (the tick runs on CPU 3: HZ/s).
    [ "$(jq -r '."timers-traced"' "$j1")" = false ] || fail "timers-traced: $(jq -r '."timers-traced"' "$j1"), want false"
    [ "$(jq -r '."cpu-details"[] | select(.cpu == 3) | .tick.count' "$j1")" -gt 0 ] \
        || fail "no local timer interrupt counted on CPU 3: $(jq -c '."cpu-details"[] | select(.cpu == 3) | .tick' "$j1")"
    head -c 200 "$KT_STATE/top.svg" | grep -q '<svg' || fail "no SVG written"
    grep -q 'CPU 0/KVM' "$KT_STATE/top.svg" || fail "the SVG has no line for CPU 0/KVM"
    [ -z "$(ours)" ] || fail "instance(s) left after a normal exit: $(ours)"
    [ "$(top_settings)" = "$before" ] || fail "top-level tracing changed: $(diff <(echo "$before") <(top_settings) | tr '\n' ' ')"

    # --timers: the local timer traced too, its time known.
    kvmisolate top --pid "$pid" --timers --duration 2 --json > "$KT_STATE/top-timers.json" 2> "$KT_STATE/top.err" \
        || fail "top --timers exited $?: $(tail -3 "$KT_STATE/top.err")"
    [ "$(jq -r '."timers-traced"' "$KT_STATE/top-timers.json")" = true ] || fail "--timers: timers-traced is not true"
    jq -e '."cpu-details"[] | select(.cpu == 3) | .tick | .count > 0 and ."us" > 0' "$KT_STATE/top-timers.json" >/dev/null \
        || fail "--timers: CPU 3's local timer: $(jq -c '."cpu-details"[] | select(.cpu == 3) | .tick' "$KT_STATE/top-timers.json")"
    note "  --timers: CPU 3 $(jq -r '."cpu-details"[] | select(.cpu == 3) | .tick | "local timer x\(.count), \(.us) us"' "$KT_STATE/top-timers.json")"

    # 2. SIGINT: prints the figures, removes the instance.
    kvmisolate top --pid "$pid" > "$KT_STATE/top-int.out" 2>&1 &
    top_pid=$!
    wait_for '[ -n "$(ours)" ]' 20 0.2 || fail "no instance while top runs"
    local i w
    wait_for '[ "$(ours | wc -l)" = 2 ]' 20 0.2 || fail "want two instances while top runs, have: $(ours)"
    for i in $(ours); do
        note "while running: instance $i, cpumask $(cat "$TRACE/instances/$i/tracing_cpumask"), events: $(grep -l 1 "$TRACE/instances/$i"/events/*/*/enable | awk -F/ '{print $(NF-1)}' | tr '\n' ' ')"
    done
    i=$TRACE/instances/$(cpu_inst); w=$TRACE/instances/$(cpu_inst)-wake
    # The traced CPU's own events: that CPU only (8 = CPU 3), unfiltered; the local timer only
    # with --timers. The threads' wake-ups: every CPU, filtered by pid.
    [ "$(sed 's/^[0,]*//' "$i/tracing_cpumask")" = 8 ] || fail "cpumask of $i: $(cat "$i/tracing_cpumask"), want CPU 3 only"
    [ "$(cat "$i/events/sched/sched_switch/filter")" = none ] || fail "sched_switch filtered: $(cat "$i/events/sched/sched_switch/filter")"
    [ "$(cat "$i/events/sched/sched_waking/enable")" = 0 ] || fail "sched_waking enabled in $i"
    [ "$(cat "$i/events/irq_vectors/local_timer_entry/enable" 2>/dev/null || echo 0)" = 0 ] || fail "local timer traced without --timers"
    [ "$(cat "$w/events/sched/sched_switch/enable")" = 0 ] || fail "sched_switch enabled in $w"
    grep -q "pid == $tid\|pid >= " "$w/events/sched/sched_waking/filter" || fail "sched_waking filter: $(cat "$w/events/sched/sched_waking/filter")"
    note "  sched_waking filter: $(cat "$w/events/sched/sched_waking/filter")"
    sleep 2
    kill -INT "$top_pid"
    rc=0; wait "$top_pid" || rc=$?
    [ "$rc" = 0 ] || fail "top exited $rc on SIGINT: $(tail -3 "$KT_STATE/top-int.out")"
    grep -q 'goal < 1000 us' "$KT_STATE/top-int.out" || fail "no verdict after SIGINT: $(tail -5 "$KT_STATE/top-int.out")"
    [ -z "$(ours)" ] || fail "instance left after SIGINT: $(ours)"
    sed 's/^/    | /' "$KT_STATE/top-int.out" | head -40

    # 3. SIGKILL: the instance stays; the next start removes it.
    kvmisolate top --pid "$pid" > /dev/null 2>&1 &
    top_pid=$!
    wait_for '[ -n "$(ours)" ]' 20 0.2 || fail "no instance while top runs"
    sleep 1
    kill -KILL "$top_pid"; wait "$top_pid" 2>/dev/null || true
    [ -n "$(ours)" ] || fail "SIGKILL left no instance (nothing to test)"
    note "after SIGKILL: $(ours) stays"
    kvmisolate top --pid "$pid" --duration 1 --json > /dev/null 2> "$KT_STATE/top-next.err" \
        || fail "top after a SIGKILLed run exited $?: $(tail -3 "$KT_STATE/top-next.err")"
    [ "$(grep -c 'removed the tracefs instance' "$KT_STATE/top-next.err")" = 2 ] || fail "the next run did not say it removed both stale instances: $(cat "$KT_STATE/top-next.err")"
    [ -z "$(ours)" ] || fail "instance left after the next run: $(ours)"
    [ "$(top_settings)" = "$before" ] || fail "top-level tracing changed: $(diff <(echo "$before") <(top_settings) | tr '\n' ' ')"

    # 4. Overhead on the traced CPU (worst case: a pipe ping-pong there), without the load.
    kill "$LOAD"; LOAD=
    # Alternated three times, the best of each (TCG is noisy).
    local t_off=999 t_on=999 t i aff
    for i in 1 2 3; do
        t=$(pingpong); t_off=$(awk -v a="$t_off" -v b="$t" 'BEGIN {print (b < a) ? b : a}')
        # under a taskset that includes the traced CPU: top keeps to the rest of it
        taskset -c 1-3 kvmisolate top --pid "$pid" --duration 60 --json > "$KT_STATE/top-pp.json" 2>/dev/null &
        top_pid=$!
        wait_for tracing 20 0.2 \
            || fail "no instance tracing while top runs"
        sleep 2  # past the start-up (enabling the events patches kernel text: slow under TCG)
        t=$(pingpong); t_on=$(awk -v a="$t_on" -v b="$t" 'BEGIN {print (b < a) ? b : a}')
        aff=$(taskset -pc "$top_pid" | sed 's/.*: //')
        kill -INT "$top_pid"; wait "$top_pid" || true
    done
    note "top ran on CPUs $aff (started under taskset -c 1-3: kept to 1-2, off the traced CPU 3)"
    cpulist_eq "$aff" 1-2 || fail "top's affinity is $aff under taskset -c 1-3 tracing CPU 3, want 1-2"
    note "overhead: pipe ping-pong on CPU 3 (20000 writes, best of 3) $t_off s without top, $t_on s with it ($(awk -v a="$t_off" -v b="$t_on" 'BEGIN {printf "%+.1f%%", (b - a) / a * 100}')); top's last window: $(jq -r '.cost | "\(.events) events, \(."cpu-ms") ms CPU"' "$KT_STATE/top-pp.json") in $(jq -r '."duration-s"' "$KT_STATE/top-pp.json") s"
    taskset -c 3 sh -c 'while :; do :; done' &
    LOAD=$!

    # 5. Isolated: the load is moved off CPU 3 by the kernel.
    isolate_ok --cpus 3 --pid "$pid"
    wait_state cpus-3 active 20 || fail "cpus-3: state $(iso_field cpus-3 state)"
    sleep 1
    j2=$KT_STATE/top-after.json
    kvmisolate top --pid "$pid" --duration 5 --json > "$j2" 2> "$KT_STATE/top.err" \
        || fail "top --pid (isolated) exited $?: $(tail -3 "$KT_STATE/top.err")"
    note "isolated: $(jq -r .verdict.line "$j2")"
    note "  vCPU 0: $(vcpu "$j2" '"wake-ups \(.wakeup.samples), p99 \(.wakeup."p99-us") max \(.wakeup."max-us") us, preemptions \(.preemptions), lost \(."lost-us" / 1000) ms"'); top offender: $(jq -r '.offenders[0] // {} | "\(.what) (\(.kind))"' "$j2")"
    ! jq -e --arg l "($LOAD)" '."cpu-details"[].tasks[] | select(.what | endswith($l))' "$j2" >/dev/null \
        || fail "the load still runs on CPU 3 once isolated: $(jq -c '."cpu-details"' "$j2")"
    ! jq -e --arg l "($LOAD)" '.offenders[] | select(.what | endswith($l))' "$j2" >/dev/null \
        || fail "the load is still an offender once isolated"
    awk -v a="$(vcpu "$j1" '."lost-us"')" -v b="$(vcpu "$j2" '."lost-us"')" 'BEGIN {exit !(b < a)}' \
        || fail "time lost did not drop: $(vcpu "$j1" '."lost-us"') us before, $(vcpu "$j2" '."lost-us"') us isolated"
    kvmisolate top --name cpus-3 --duration 1 --json > "$KT_STATE/top-name.json" 2> "$KT_STATE/top.err" \
        || fail "top --name cpus-3 exited $?: $(tail -3 "$KT_STATE/top.err")"
    [ "$(vcpu "$KT_STATE/top-name.json" .tid)" = "$tid" ] || fail "top --name did not find the vCPU thread: $(jq -c '[.threads[] | {name, tid}]' "$KT_STATE/top-name.json")"
    release_ok cpus-3
    kvmisolate top --compare "$j1" "$j2" > "$KT_STATE/top-compare.out" || fail "top --compare exited $?"
    grep -q '^CPU 0/KVM (vcpu)' "$KT_STATE/top-compare.out" || fail "compare: $(head -5 "$KT_STATE/top-compare.out")"
    sed 's/^/    | /' "$KT_STATE/top-compare.out"

    # 6. Not root.
    rc=0; out=$(as_user alice kvmisolate top --pid "$pid" --duration 1 2>&1) || rc=$?
    [ "$rc" = 4 ] || fail "as alice: exit $rc, want 4: $out"
    grep -q 'run it as root' <<<"$out" || fail "as alice: $out"
    [ -z "$(ours)" ] || fail "instance left: $(ours)"
    [ "$(top_settings)" = "$before" ] || fail "top-level tracing changed"
}
