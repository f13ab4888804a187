# restart-caller-gone: `--until disconnect` leases survive a daemon restart honestly. Two such
# leases; the daemon stops (SIGTERM: they stay, journalled); the caller of one dies while it is
# down. At the next start that lease is released at once (its caller's bus name is gone) and
# restored, the other is adopted and still ends when its caller does. Nothing of kvmisolate's
# is left after.
cleanup() {
    [ -n "${CLI_A:-}" ] && kill -9 "$CLI_A" 2>/dev/null
    [ -n "${CLI_B:-}" ] && kill -9 "$CLI_B" 2>/dev/null
    daemon_start >/dev/null 2>&1 || true
}
run() {
    need_kvmisolate
    local before=$KT_STATE/rc-before.snap va vb
    snapshot "$before"
    va=$(start_fake_vm 1)
    vb=$(start_fake_vm 1)
    kvmisolate isolate --no-ask-password --name gone --cpus 2 --pid "$va" --until disconnect \
        > "$KT_STATE/cli-a.log" 2>&1 &
    CLI_A=$!
    kvmisolate isolate --no-ask-password --name stays --cpus 3 --pid "$vb" --until disconnect \
        > "$KT_STATE/cli-b.log" 2>&1 &
    CLI_B=$!
    wait_for "iso_exists gone && iso_exists stays" 30 0.3 \
        || fail "the two --until disconnect isolations did not appear: $(cat "$KT_STATE/cli-a.log" "$KT_STATE/cli-b.log")"
    [ "$(iso_field gone release-when)" = caller-disconnects ] || fail "release-when '$(iso_field gone release-when)'"
    daemon_stop
    ls /run/kvmisolate/isolations/gone.json /run/kvmisolate/isolations/stays.json >/dev/null \
        || fail "the journal lost the leases when the daemon stopped: $(ls /run/kvmisolate/isolations)"
    partition_valid "$CG/$(jq -r '.partitions[0]' /run/kvmisolate/isolations/gone.json)" \
        || fail "the partition went with the daemon"
    # The caller dies while nobody listens (SIGKILL: it cannot call anything on its way out).
    kill -9 "$CLI_A"; wait "$CLI_A" 2>/dev/null || true; CLI_A=
    daemon_start
    wait_for "! iso_exists gone" 20 0.3 || fail "the lease whose caller left while the daemon was down is still held"
    iso_exists stays || fail "the lease whose caller is still there was dropped"
    expect_isolation stays 3 "$(iso_field stays partition)" "$vb"
    daemon_log_tail 30 | grep -q "left while kvmisolated was down" \
        || note "(log line about the departed caller not found)"
    kill -INT "$CLI_B"
    wait_for "! iso_exists stays" 20 0.3 || { kill -9 "$CLI_B"; fail "the adopted lease did not end with its caller"; }
    wait "$CLI_B" 2>/dev/null || true; CLI_B=
    stop_fake_vm "$va"; stop_fake_vm "$vb"
    wait_for own_cgroups_settled 10 || true
    wait_restored "$before"
    expect_no_leftovers
}
