# release-restores: snapshot, isolate, release: every recorded value is back (while the target
# still runs, semantically; once it is gone, byte for byte), PID 1 may run everywhere again and
# the journal under /run/kvmisolate is empty. Unbound kthreads (kthreadd and its children but IRQ
# threads, which follow their IRQ, restored through /proc/irq) that lived through the isolation
# are allowed exactly where they were before it (7.x widens back nothing kvmisolated narrowed),
# and the kthread ledger (/run/kvmisolate/kthreads-narrowed) is gone.
kthreads_now() { # TID COMM CPUS of movable kthreads but IRQ threads, sorted for join
    all_affinities | awk '$4 == "kthread" && ($3 == 2 || $1 == 2) && $6 !~ /^irq\// {print $1, $6, $5}' | sort
}
run() {
    need_kvmisolate
    local before=$KT_STATE/rr-before.snap during=$KT_STATE/rr-during.snap pid
    pid=$(start_fake_vm 2)
    snapshot "$before"
    kthreads_now > "$KT_STATE/rr-kthreads-before"
    isolate_ok --cpus 2-3 --pid "$pid"
    snapshot "$during"
    snapshot_diff "$before" "$during" >/dev/null && fail "isolating changed nothing the snapshot sees"
    note "isolating changed $(snapshot_diff "$before" "$during" | wc -l) values"
    release_ok cpus-2-3
    expect_no_isolations
    wait_restored "$before" --semantic
    expect_pid1_all_cpus
    local changed
    changed=$(kthreads_now | join - "$KT_STATE/rr-kthreads-before" | awk '$3 != $5 {print $2 "(" $1 "):" $5 "->" $3}')
    [ -z "$changed" ] || fail "kthreads not back where they were: $(head -8 <<<"$changed" | paste -sd' ' -)"
    [ ! -e /run/kvmisolate/kthreads-narrowed ] || fail "kthread ledger left: $(head -3 /run/kvmisolate/kthreads-narrowed | paste -sd';' -)"
    cpulist_eq "$(root_effective)" "$(online_cpus)" || fail "root cpuset.cpus.effective $(root_effective) after release"
    stop_fake_vm "$pid"
    wait_for own_cgroups_settled 10 || true
    wait_restored "$before"
    local left
    left=$(ls /run/kvmisolate/isolations/ 2>/dev/null || true)
    [ -z "$left" ] || fail "journal records left after release: $left"
}
