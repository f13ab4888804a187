# target-exit-autorelease: an isolation with the default --until exit ends by itself within
# 10 s of its target exiting, and everything is restored.
run() {
    need_kvmisolate
    local before=$KT_STATE/te-before.snap pid t0
    snapshot "$before"
    pid=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$pid"
    expect_isolation cpus-2-3 2-3 "$(iso_field cpus-2-3 partition)" "$pid"
    t0=$(date +%s%N)
    kill -9 "$pid"
    wait_for "[ \"\$(iso_count)\" = 0 ]" 10 0.2 || fail "isolation still listed 10 s after the target exited (state $(iso_field cpus-2-3 state))"
    note "released $(( ($(date +%s%N) - t0) / 1000000 )) ms after the target died"
    wait_for own_cgroups_settled 10 || true
    wait_restored "$before"
    expect_pid1_all_cpus
}
