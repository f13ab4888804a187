# polkit-tune-host: host-wide risk is its own action. With the shipped example rule alice
# (group kvm) isolates her own process, but `--tunings realtime` (RT throttling off) and a
# hugepage pool larger than half of what the host can spare need org.kvmisolate.tune-host:
# denied (exit 4), nothing changed; in the example's group kvmisolate-tune both work and are
# restored on release. A pool beyond MemAvailable minus the margin is refused to everyone
# (root too) with exit 6 naming MemAvailable, nothing changed.
# timeout: 300
cleanup() {
    rm -f "$POLKIT_RULE"
    gpasswd -d alice kvmisolate-tune >/dev/null 2>&1
    groupdel kvmisolate-tune >/dev/null 2>&1
    return 0
}

# mem_kib FIELD: a /proc/meminfo field in KiB
mem_kib() { awk -v f="$1:" '$1 == f {print $2}' /proc/meminfo; }

run() {
    need_kvmisolate
    polkitd_running || fail "polkitd is not running"
    local apid before=$KT_STATE/th-before.snap now=$KT_STATE/th-now.snap i rc total avail margin cap spare big huge
    apid=$(start_fake_vm_as alice 1)
    snapshot "$before"
    install -m 644 "$POLKIT_RULE_EXAMPLE" "$POLKIT_RULE"
    for i in $(seq 30); do
        rc=0; kvmi_as alice isolate --no-ask-password --until release --cpus 2 --name small --hugepages 8M --pid "$apid" || rc=$?
        [ "$rc" = 4 ] || break
        sleep 0.5
    done
    [ "$rc" = 0 ] || fail "alice with a small pool (isolate only) exited $rc, want 0: $(tail -1 "$KT_STATE/last-output")"
    release_ok small
    wait_restored "$before" --semantic 20

    # the daemon's rule: cap = MemAvailable - max(256 MiB, MemTotal/16); spare = cap/2
    total=$(mem_kib MemTotal); avail=$(mem_kib MemAvailable)
    margin=$(( total / 16 > 262144 ? total / 16 : 262144 ))
    cap=$(( avail - margin )); spare=$(( cap / 2 ))
    big=$(( (spare / 1024 + 64) / 2 * 2 ))       # MiB, whole 2M pages, above spare
    huge=$(( (cap / 1024 + 128) / 2 * 2 ))       # MiB, above the cap
    note "MemTotal $((total / 1024)) MiB, MemAvailable $((avail / 1024)) MiB: cap $((cap / 1024)) MiB, spare $((spare / 1024)) MiB; asking ${big}M and ${huge}M"
    [ "$big" -lt $(( cap / 1024 - 32 )) ] || skip "too little memory for a pool between spare and cap"

    for args in "--tunings realtime" "--tunings rt-throttling" "--hugepages ${big}M --hugepages-best-effort"; do
        rc=0; kvmi_as alice isolate --no-ask-password --until release --cpus 2 --name risky $args --pid "$apid" || rc=$?
        [ "$rc" = 4 ] || fail "alice's isolate $args without tune-host exited $rc, want 4"
        expect_no_isolations
        snapshot "$now"
        snapshot_same "$before" "$now" || fail "denied $args changed $(snapshot_diff_short "$before" "$now")"
        note "$args: denied without tune-host, nothing changed"
    done

    groupadd -f kvmisolate-tune && gpasswd -a alice kvmisolate-tune >/dev/null || fail "cannot add alice to kvmisolate-tune"
    rc=0; kvmi_as alice isolate --no-ask-password --until release --cpus 2 --name rt --tunings realtime --pid "$apid" || rc=$?
    [ "$rc" = 0 ] || fail "alice's --tunings realtime with tune-host exited $rc: $(tail -1 "$KT_STATE/last-output")"
    [ "$(cat /proc/sys/kernel/sched_rt_runtime_us)" = -1 ] || fail "RT throttling still on: $(cat /proc/sys/kernel/sched_rt_runtime_us)"
    release_ok rt
    wait_restored "$before" --semantic 20
    note "realtime with tune-host: applied, restored"
    rc=0; kvmi_as alice isolate --no-ask-password --until release --cpus 2 --name bigpool --hugepages "${big}M" --hugepages-best-effort --pid "$apid" || rc=$?
    [ "$rc" = 0 ] || fail "alice's ${big}M pool with tune-host exited $rc: $(tail -1 "$KT_STATE/last-output")"
    note "pool with tune-host: $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages) pages"
    release_ok bigpool
    wait_restored "$before" --semantic 30

    # beyond the cap: nobody, not even root
    rc=0; kvmi isolate --no-ask-password --cpus 2 --name huge --hugepages "${huge}M" --pid "$apid" || rc=$?
    [ "$rc" = 6 ] || fail "root's ${huge}M pool exited $rc, want 6"
    grep -q "MemAvailable" "$KT_STATE/last-output" || fail "the error does not explain the cap: $(tail -1 "$KT_STATE/last-output")"
    expect_no_isolations
    snapshot "$now"
    snapshot_same "$before" "$now" || fail "a refused pool changed $(snapshot_diff_short "$before" "$now")"
    note "${huge}M: refused to root, $(grep -o 'only [0-9]* MiB can be taken now' "$KT_STATE/last-output")"
}
