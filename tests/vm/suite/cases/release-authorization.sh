# release-authorization: an isolation is released only by its owner or with
# org.kvmisolate.release. Without the polkit rule, bob's `release NAME`, `release --all`
# (Isolator1.ReleaseAll) and a direct Isolation1.Release on the object are each denied with
# the right exit status, and the isolation (owned by root) stays, partition and all; alice
# (group kvm, no rule either) is denied the same. root then releases it: restored, and nothing
# of kvmisolate's is left in the cgroup tree or the unit list.
run() {
    need_kvmisolate
    local before=$KT_STATE/ra-before.snap pid path rc u
    rm -f "$POLKIT_RULE"
    snapshot "$before"
    pid=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$pid" --name held
    expect_isolation held 2-3 "$(iso_field held partition)" "$pid"
    path=$(iso_field held object-path)
    [ -n "$path" ] || fail "status gives no object path for 'held'"
    for u in bob alice; do
        rc=0; kvmi_as "$u" release --no-ask-password held || rc=$?
        [ "$rc" = 4 ] || fail "$u: release held exited $rc, want 4 (not authorized)"
        rc=0; kvmi_as "$u" release --no-ask-password --all || rc=$?
        [ "$rc" = 4 ] || fail "$u: release --all exited $rc, want 4 (not authorized)"
        grep -Eq 'AccessDenied|InteractiveAuthorizationRequired|denied|authentication' "$KT_STATE/last-output" \
            || fail "$u: release --all gave no authorization error: $(tail -1 "$KT_STATE/last-output")"
        rc=0
        as_user "$u" timeout -k 5 30 dbus-send --system --print-reply --dest=org.kvmisolate.Isolator1 \
            "$path" org.kvmisolate.Isolation1.Release > "$KT_STATE/last-output" 2>&1 || rc=$?
        sed "s/^/    $u| /" "$KT_STATE/last-output" >&2
        [ "$rc" != 0 ] || fail "$u: Isolation1.Release on $path succeeded"
        grep -Eq 'AccessDenied|InteractiveAuthorizationRequired' "$KT_STATE/last-output" \
            || fail "$u: Isolation1.Release failed without an authorization error: $(tail -1 "$KT_STATE/last-output")"
        iso_exists held || fail "$u's denied release removed the isolation"
        expect_isolation held 2-3 "$(iso_field held partition)" "$pid"
    done
    release_ok held
    expect_no_isolations
    stop_fake_vm "$pid"
    wait_for own_cgroups_settled 10 || true
    wait_restored "$before"
    expect_no_leftovers
}
