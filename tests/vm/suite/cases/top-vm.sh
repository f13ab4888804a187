# top-vm: `kvmisolate top --vm` on a real libvirt domain (nested QEMU under TCG, so its vCPU
# threads are named "CPU N/TCG"): vCPUs pinned to CPUs 3 and 4, the emulator to 2, not opted
# in, and a busy load process pinned to CPU 3. The threads come from the domain's cgroup
# leaves (vCPU 0 on CPU 3, vCPU 1 on 4, the emulator threads apart), the traced CPUs are 3-4,
# CPU 3's "ran instead" lists the load, and when the vCPU woke, the load is the main offender.
# `check --vm` of the running domain carries the 5 s sample ("vm-measured": p99 X us). No
# instance of ours is left and the top-level tracing settings are unchanged.
# needs: libvirt
# timeout: 400
TRACE=/sys/kernel/tracing
LOAD=

settings() {
    local f
    for f in tracing_on current_tracer set_event tracing_cpumask buffer_size_kb; do
        printf '%s: %s\n' "$f" "$(tr '\n' ' ' < "$TRACE/$f")"
    done
}
ours() { ls "$TRACE/instances" | grep '^kvmisolate-top-' || true; }

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
    j=$KT_STATE/top-vm.json
    kvmisolate top --vm kvmi-top --duration 5 --json > "$j" 2> "$KT_STATE/top.err" \
        || fail "top --vm exited $?: $(tail -3 "$KT_STATE/top.err")"
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
    jq -r '.findings[] | select(.id == "vm-measured") | .found' "$KT_STATE/check.json" | grep -Eq '^measured for 5 s: (vCPU wake-up delay p99 [0-9]+ us|no vCPU wake-up)' \
        || fail "check --vm has no measured line: $(jq -c '.findings[] | select(.id == "vm-measured")' "$KT_STATE/check.json")"
    [ -z "$(ours)" ] || fail "instance left after check: $(ours)"
    [ "$(settings)" = "$before" ] || fail "top-level tracing changed: $(diff <(echo "$before") <(settings) | tr '\n' ' ')"
}
