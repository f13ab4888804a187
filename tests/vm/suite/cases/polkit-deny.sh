# polkit-deny: bob (no rule, no session, no agent) is denied by the real polkitd with exit 4 and
# the D-Bus error name, and nothing changes.
run() {
    need_kvmisolate
    local before=$KT_STATE/pd-before.snap now=$KT_STATE/pd-now.snap pid rc=0
    pid=$(start_fake_vm_as bob 2)
    snapshot "$before"
    kvmi_as bob isolate --no-ask-password --cpus 2-3 --pid "$pid" || rc=$?
    [ "$rc" = 4 ] || fail "bob's isolate exited $rc, want 4 (not authorized)"
    grep -qE 'AccessDenied|InteractiveAuthorizationRequired' "$KT_STATE/last-output" \
        || fail "the message does not name AccessDenied/InteractiveAuthorizationRequired: $(tail -1 "$KT_STATE/last-output")"
    expect_no_isolations
    snapshot "$now"
    snapshot_same "$before" "$now" || fail "a denied isolate changed: $(snapshot_diff_short "$before" "$now")"
    # release needs authorization too (nothing of bob's to release: denied or not found, never success)
    rc=0; kvmi_as bob release --no-ask-password --all || rc=$?
    note "bob's release --all with nothing active: exit $rc"
}
