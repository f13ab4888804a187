# release-restores: snapshot, isolate, release: every recorded value is back (while the target
# still runs, semantically; once it is gone, byte for byte), PID 1 may run everywhere again and
# the journal under /run/kvmisolate is empty. Task affinities of kthreads are not compared (the
# kernel re-widens some, e.g. irq/9-acpi, by its own rules).
run() {
    need_kvmisolate
    local before=$KT_STATE/rr-before.snap during=$KT_STATE/rr-during.snap pid
    pid=$(start_fake_vm 2)
    snapshot "$before"
    isolate_ok --cpus 2-3 --pid "$pid"
    snapshot "$during"
    snapshot_diff "$before" "$during" >/dev/null && fail "isolating changed nothing the snapshot sees"
    note "isolating changed $(snapshot_diff "$before" "$during" | wc -l) values"
    release_ok cpus-2-3
    expect_no_isolations
    wait_restored "$before" --semantic
    expect_pid1_all_cpus
    cpulist_eq "$(root_effective)" "$(online_cpus)" || fail "root cpuset.cpus.effective $(root_effective) after release"
    stop_fake_vm "$pid"
    wait_for own_cgroups_settled 10 || true
    wait_restored "$before"
    local left
    left=$(ls /run/kvmisolate/isolations/ 2>/dev/null || true)
    [ -z "$left" ] || fail "journal records left after release: $left"
}
