# sigkill-during-isolate: for N = 1, 2, ...: the daemon SIGKILLs itself right after the N-th
# journalled step of an Isolate (KVMISOLATED_CRASH_AFTER_STEP=N); started again it must end
# either fully isolated (the isolation adopted, active, partition valid) or fully restored
# (snapshot equal to before). Stops at the first N where Isolate completes (N > steps).
# One stand-in VM serves every round (compared semantically while it runs); once it is gone at
# the end, the snapshot must equal the one from before byte for byte.
# timeout: 480
MAX_STEPS=${KT_MAX_CRASH_STEPS:-40}
cleanup() { daemon_clear_env; daemon_restart >/dev/null 2>&1 || true; }
run() {
    need_kvmisolate
    local before=$KT_STATE/sk-before.snap pid n rc cnt outcomes=() oldpid newpid
    daemon_clear_env
    daemon_restart
    pid=$(start_fake_vm 2)
    snapshot "$before"
    for n in $(seq 1 "$MAX_STEPS"); do
        daemon_start KVMISOLATED_CRASH_AFTER_STEP="$n" || fail "step $n: the daemon did not start with the crash hook"
        oldpid=$(daemon_pid)
        rc=0; kvmi isolate --no-ask-password --cpus 2-3 --pid "$pid" || rc=$?
        if [ "$rc" = 0 ]; then
            [ "$n" -gt 1 ] || fail "isolate succeeded with KVMISOLATED_CRASH_AFTER_STEP=1: the crash hook is not honoured"
            note "N=$n: isolate completed: the isolate has $((n - 1)) journalled steps"
            daemon_clear_env
            expect_isolation cpus-2-3 2-3 "$(iso_field cpus-2-3 partition)" "$pid"
            release_ok cpus-2-3
            stop_fake_vm "$pid"; wait_for own_cgroups_settled 10 || true
            wait_restored "$before"
            note "outcomes: ${outcomes[*]}"
            return 0
        fi
        # the daemon must really have died (not merely refused)
        wait_for "[ \"\$(daemon_pid)\" != '$oldpid' ]" 10 0.2 \
            || fail "step $n: isolate exited $rc but the daemon ($oldpid) still runs: $(tail -1 "$KT_STATE/last-output")"
        daemon_clear_env
        daemon_start || fail "step $n: the daemon did not start again after the crash"
        newpid=$(daemon_pid)
        cnt=$(iso_count) || fail "step $n: status failed after restart"
        if [ "$cnt" = 1 ]; then
            iso_exists cpus-2-3 || fail "step $n: an unexpected isolation after restart: $(kstatus | jq -c '[.isolations[].name]')"
            pid_alive "$pid" || fail "step $n: the target died"
            expect_isolation cpus-2-3 2-3 "$(iso_field cpus-2-3 partition)" "$pid"
            outcomes+=("$n:isolated")
            release_ok cpus-2-3
        elif [ "$cnt" = 0 ]; then
            outcomes+=("$n:restored")
        else
            fail "step $n: $cnt isolations after restart"
        fi
        wait_restored "$before" --semantic 10
        pid_alive "$pid" || fail "step $n: the stand-in VM died"
        note "N=$n: crashed (exit $rc, daemon $oldpid -> $newpid), then ${outcomes[-1]#*:}"
    done
    fail "isolate still crashes with KVMISOLATED_CRASH_AFTER_STEP=$MAX_STEPS (more steps than expected?)"
}
