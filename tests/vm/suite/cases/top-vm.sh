# top-vm: `kvmisolate top --vm` on a real libvirt domain (nested QEMU under TCG, so its vCPU
# threads are named "CPU N/TCG"): vCPUs pinned to CPUs 3 and 4, the emulator to 2, not opted
# in, and a busy load process pinned to CPU 3. The threads come from the domain's cgroup
# leaves (vCPU 0 on CPU 3, vCPU 1 on 4, the emulator threads apart), the traced CPUs are 3-4,
# CPU 3's "ran instead" lists the load, and when the vCPU woke, the load is the main offender.
# vCPU 0's preemptions lie between its nr_involuntary_switches (/proc/TID/sched) while the load
# ran (3 s inside top's 8 s window) and around top's window. `check --vm` of the running domain
# carries the 5 s sample ("vm-measured": p99 X us). Then the domain opted in and started again,
# so the hook isolates it: the load is gone from CPU 3 and the offenders, and vCPU 0's time
# lost drops (both figures printed). No instance of ours is left and the top-level tracing
# settings are unchanged.
# needs: libvirt
# timeout: 500
TRACE=/sys/kernel/tracing
LOAD=

settings() {
    local f
    for f in tracing_on current_tracer set_event tracing_cpumask buffer_size_kb; do
        printf '%s: %s\n' "$f" "$(tr '\n' ' ' < "$TRACE/$f")"
    done
}
ours() { ls "$TRACE/instances" | grep '^kvmisolate-top-' || true; }
tracing() { local i; i=$(ours | grep -v -- '-wake$' | head -1); [ -n "$i" ] && [ "$(cat "$TRACE/instances/$i/tracing_on" 2>/dev/null)" = 1 ]; }
invol() { awk '/^nr_involuntary_switches/ {print $3}' "/proc/$1/sched"; }
vcpu0() { jq -r ".threads[] | select(.vcpu == 0) | $2" "$1"; }

cleanup() {
    [ -n "$LOAD" ] && kill "$LOAD" 2>/dev/null
    LOAD=
    lv_forget kvmi-top
}

run() {
    lv_need
    [ -d "$TRACE/instances" ] || skip "no tracefs at $TRACE"
    local before j rc
    before=$(settings)
    EMU=2 define kvmi-top 0 3 4
    start_ok kvmi-top
    taskset -c 3 sh -c 'while :; do :; done' &
    LOAD=$!
    sleep 2
    local tid na n0 n1 nb top_pid p j2
    tid=$(head -1 "$(scope_of kvmi-top)/libvirt/vcpu0/cgroup.threads")
    [ -n "$tid" ] || fail "no thread in kvmi-top's vcpu0 leaf"
    j=$KT_STATE/top-vm.json
    # The load runs only between the two inner reads of the kernel's count, inside top's window.
    kill -STOP "$LOAD"
    na=$(invol "$tid")
    kvmisolate top --vm kvmi-top --duration 8 --json > "$j" 2> "$KT_STATE/top.err" &
    top_pid=$!
    wait_for tracing 60 0.05 || fail "top --vm did not start tracing: $(tail -3 "$KT_STATE/top.err")"
    n0=$(invol "$tid")
    kill -CONT "$LOAD"
    sleep 3
    kill -STOP "$LOAD"
    n1=$(invol "$tid")
    tracing || fail "top stopped tracing before the load did (its window ended early)"
    rc=0; wait "$top_pid" || rc=$?
    nb=$(invol "$tid")
    kill -CONT "$LOAD"
    [ "$rc" = 0 ] || fail "top --vm exited $rc: $(tail -3 "$KT_STATE/top.err")"
    p=$(vcpu0 "$j" .preemptions)
    note "vCPU 0 (tid $tid) preemptions: top $p; nr_involuntary_switches +$((n1 - n0)) while the load ran inside top's window, +$((nb - na)) around it"
    [ "$(vcpu0 "$j" .tid)" = "$tid" ] || fail "top's vCPU 0 is tid $(vcpu0 "$j" .tid), the vcpu0 leaf holds $tid"
    [ "$p" -ge $((n1 - n0)) ] && [ "$p" -le $((nb - na)) ] \
        || fail "preemptions: top says $p, the kernel counted $((n1 - n0)) inside top's window and $((nb - na)) around it"
    note "threads: $(jq -c '[.threads[] | "\(.name) \(.role) CPU \(.cpu)"]' "$j")"
    note "$(jq -r .verdict.line "$j")"
    note "vCPU 0: $(jq -r '.threads[] | select(.vcpu == 0) | "wake-ups \(.wakeup.samples), p99 \(.wakeup."p99-us") max \(.wakeup."max-us") us, preemptions \(.preemptions), lost \(."lost-us" / 1000) ms"' "$j")"
    note "top offender: $(jq -r '.offenders[0] // {} | "\(.what) on CPU \(.cpu) (\(.kind))"' "$j")"
    [ "$(jq -r '.threads[] | select(.vcpu == 0) | .name' "$j")" ] || fail "no vCPU 0 thread found"
    jq -r '.threads[] | select(.vcpu == 0) | .name' "$j" | grep -Eq '^CPU 0/(TCG|KVM)$' \
        || fail "vCPU 0's thread is named $(jq -r '.threads[] | select(.vcpu == 0) | .name' "$j")"
    [ "$(jq -r '.threads[] | select(.vcpu == 0) | .cpu' "$j")" = 3 ] || fail "vCPU 0 not on CPU 3: $(jq -c '.threads' "$j" | head -c 400)"
    [ "$(jq -r '.threads[] | select(.vcpu == 1) | .cpu' "$j")" = 4 ] || fail "vCPU 1 not on CPU 4"
    jq -e '.threads[] | select(.role == "emulator")' "$j" >/dev/null || fail "no emulator thread"
    [ "$(jq -r .cpus "$j")" = 3-4 ] || fail "traced CPUs $(jq -r .cpus "$j"), want 3-4"
    jq -e --arg l "($LOAD)" '."cpu-details"[] | select(.cpu == 3) | .tasks[] | select(.what | endswith($l))' "$j" >/dev/null \
        || fail "CPU 3's tasks do not list the load: $(jq -c '."cpu-details"[] | select(.cpu == 3)' "$j" | head -c 600)"
    if [ "$(jq -r '.threads[] | select(.vcpu == 0) | .wakeup.samples' "$j")" -gt 0 ]; then
        jq -r '.offenders[0].what' "$j" | grep -q "($LOAD)" || fail "main offender $(jq -c '.offenders[0]' "$j"), want the load $LOAD"
    fi
    [ -z "$(ours)" ] || fail "instance left: $(ours)"

    rc=0; kvmisolate check --vm kvmi-top --json > "$KT_STATE/check.json" || rc=$?
    note "check --vm (exit $rc): $(jq -r '.findings[] | select(.id == "vm-measured") | .found' "$KT_STATE/check.json")"
    jq -r '.findings[] | select(.id == "vm-measured") | .found' "$KT_STATE/check.json" | grep -Eq '^measured for [0-9]+ s: (vCPU wake-up delay p99 [0-9]+ us|no vCPU wake-up)' \
        || fail "check --vm has no measured line: $(jq -c '.findings[] | select(.id == "vm-measured")' "$KT_STATE/check.json")"
    [ -z "$(ours)" ] || fail "instance left after check: $(ours)"

    # Isolated by the hook: the same domain opted in, started again.
    lv_forget kvmi-top
    wait_for "! scope_of kvmi-top >/dev/null" 30 0.5 || fail "kvmi-top's scope stayed"
    EMU=2 define kvmi-top 1 3 4
    start_ok kvmi-top
    wait_state libvirt-kvmi-top active 60 || fail "libvirt-kvmi-top: state $(iso_field libvirt-kvmi-top state) ($(iso_field libvirt-kvmi-top state-reason))"
    sleep 2
    j2=$KT_STATE/top-vm-isolated.json
    kvmisolate top --vm kvmi-top --duration 5 --json > "$j2" 2> "$KT_STATE/top.err" \
        || fail "top --vm (isolated) exited $?: $(tail -3 "$KT_STATE/top.err")"
    note "isolated by the hook: $(jq -r .verdict.line "$j2")"
    note "  vCPU 0: $(jq -r '.threads[] | select(.vcpu == 0) | "wake-ups \(.wakeup.samples), p99 \(.wakeup."p99-us") max \(.wakeup."max-us") us, preemptions \(.preemptions), lost \(."lost-us" / 1000) ms"' "$j2"); top offender: $(jq -r '.offenders[0] // {} | "\(.what) on CPU \(.cpu) (\(.kind))"' "$j2")"
    ! jq -e --arg l "($LOAD)" '."cpu-details"[].tasks[] | select(.what | endswith($l))' "$j2" >/dev/null \
        || fail "the load still runs on a vCPU's CPU once isolated: $(jq -c '."cpu-details"' "$j2" | head -c 600)"
    ! jq -e --arg l "($LOAD)" '.offenders[] | select(.what | endswith($l))' "$j2" >/dev/null \
        || fail "the load is still an offender once isolated"
    note "  vCPU 0 time lost: $(vcpu0 "$j" '."lost-us" / 1000') ms in 8 s not isolated (the load ran 3 s of it), $(vcpu0 "$j2" '."lost-us" / 1000') ms in 5 s isolated"
    awk -v a="$(vcpu0 "$j" '."lost-us"')" -v b="$(vcpu0 "$j2" '."lost-us"')" 'BEGIN {exit !(b < a)}' \
        || fail "vCPU 0's time lost did not drop: $(vcpu0 "$j" '."lost-us"') us before, $(vcpu0 "$j2" '."lost-us"') us isolated"
    destroy kvmi-top
    wait_for '[ "$(iso_count)" = 0 ]' 60 0.5 || fail "the hook did not release libvirt-kvmi-top when the domain stopped"
    [ -z "$(ours)" ] || fail "instance left: $(ours)"
    [ "$(settings)" = "$before" ] || fail "top-level tracing changed: $(diff <(echo "$before") <(settings) | tr '\n' ' ')"
}
