# unit-target (systemd only): isolate 4-5 for a VM started as a transient service (Delegate=yes,
# like libvirt's machine scopes): the unit's own cgroup becomes the partition, in place. Where the
# kernel has no remote partitions (6.1) this cannot work (the unit's parent, system.slice, is no
# partition root): the request must be refused with exit 6 and nothing changed.
U=kvmisolate-test-fakevm.service
cleanup() { systemctl stop "$U" 2>/dev/null || true; systemctl reset-failed "$U" 2>/dev/null || true; }
run() {
    need_kvmisolate
    local before0=$KT_STATE/ut-before0.snap before=$KT_STATE/ut-before.snap now=$KT_STATE/ut-now.snap pid cg rc=0
    snapshot "$before0"
    systemd-run --quiet --unit="$U" -p Delegate=yes "$KT_DIR/fakevm" 2
    wait_for "[ \"\$(systemctl show -P MainPID $U)\" != 0 ]" 10 || fail "$U did not start"
    pid=$(systemctl show -P MainPID "$U")
    sleep 0.5
    snapshot "$before"
    if ! have_remote_partitions; then
        kvmi isolate --no-ask-password --cpus 4-5 --unit "$U" || rc=$?
        [ "$rc" = 6 ] || fail "isolating a unit without remote partitions ($(uname -r)) exited $rc, want 6"
        note "refused as expected: $(tail -1 "$KT_STATE/last-output")"
        snapshot "$now"
        snapshot_same "$before" "$now" || fail "the refused request changed: $(snapshot_diff_short "$before" "$now")"
        return 0
    fi
    isolate_ok --cpus 4-5 --unit "$U"
    [ "$(iso_field cpus-4-5 target)" = "unit:$U" ] || note "status target: '$(iso_field cpus-4-5 target)'"
    expect_isolation cpus-4-5 4-5 "$(iso_field cpus-4-5 partition)" "$pid"
    cg=$(iso_cgroups cpus-4-5 | head -1)
    [ "${cg#"$CG"/}" = "system.slice/$U" ] || fail "partitioned cgroup ${cg#"$CG"/}, want system.slice/$U (in place)"
    release_ok cpus-4-5
    expect_no_isolations
    wait_restored "$before" --semantic
    [ "$(systemctl is-active "$U")" = active ] || fail "releasing stopped the unit"
    systemctl stop "$U"
    wait_restored "$before0" --semantic
}
