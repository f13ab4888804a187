# unit-target (systemd only): isolate 4-5 for a VM started as a transient service (Delegate=yes,
# like libvirt's machine scopes): the unit's own cgroup becomes the partition, in place. Where the
# kernel has no remote partitions (6.1) this cannot work (the unit's parent, system.slice, is no
# partition root): the request must be refused with exit 6 and nothing changed.
# Then the same for a service that is NOT delegated: kvmisolate starts a keeper slice next to it
# (system-kvmisolate\x2dkeep\x2d<name>.slice, AllowedMemoryNodes=) so systemd keeps +cpuset on
# in system.slice and the root; daemon-reload and an unrelated unit starting/stopping must leave
# the isolation active; a daemon SIGKILLed with the isolation active adopts it (keeper kept);
# one SIGKILLed right after starting the keeper restores everything at its next start; release
# stops the keeper and every file is back byte for byte. A control run stops the keeper behind
# kvmisolate's back and reports what a daemon-reload then does.
# timeout: 360
U=kvmisolate-test-fakevm.service
U2=kvmisolate-test-plainvm.service
KEEPER='system-kvmisolate\x2dkeep\x2dcpus\x2d4\x2d5.slice'
cleanup() {
    daemon_clear_env
    local u
    for u in "$U" "$U2" kvmisolate-test-unrelated.service; do
        systemctl stop "$u" 2>/dev/null || true; systemctl reset-failed "$u" 2>/dev/null || true
    done
}
keeper_state() { systemctl show -P ActiveState "$KEEPER" 2>/dev/null || echo unknown; }
plain_still_active() { # WHAT
    local cg
    cg=$(iso_cgroups cpus-4-5 | head -1)
    partition_valid "$cg" || fail "after $1: ${cg#"$CG"/} partition reads '$(partition_of "$cg")'"
    [ "$(iso_field cpus-4-5 state)" = active ] || fail "after $1: state $(iso_field cpus-4-5 state) ($(iso_field cpus-4-5 state-reason))"
    grep -qw cpuset "$CG/system.slice/cgroup.subtree_control" || fail "after $1: +cpuset gone from system.slice"
    [ "$(keeper_state)" = active ] || fail "after $1: keeper $KEEPER is $(keeper_state)"
    note "after $1: valid, keeper active"
}
# the non-delegated half (remote partitions only)
run_plain() {
    local before=$KT_STATE/ut-plain-before.snap pid rc=0 oldpid
    systemd-run --quiet --unit="$U2" "$KT_DIR/fakevm" 2
    wait_for "[ \"\$(systemctl show -P MainPID $U2)\" != 0 ]" 10 || fail "$U2 did not start"
    pid=$(systemctl show -P MainPID "$U2")
    [ "$(systemctl show -P Delegate "$U2")" = no ] || fail "$U2 is delegated"
    sleep 0.5
    snapshot "$before"
    grep -qw cpuset "$CG/system.slice/cgroup.subtree_control" \
        && note "system.slice already has +cpuset before the isolate (something else asks for it)"

    # 1. crash right after the keeper started (step 1): the next start restores everything
    daemon_start KVMISOLATED_CRASH_AFTER_STEP=1 || fail "the daemon did not start with the crash hook"
    oldpid=$(daemon_pid)
    kvmi isolate --no-ask-password --cpus 4-5 --unit "$U2" || rc=$?
    [ "$rc" != 0 ] || fail "isolate succeeded although the daemon should have crashed after the keeper"
    wait_for "[ \"\$(daemon_pid)\" != '$oldpid' ]" 10 0.2 || fail "the daemon did not crash after step 1"
    # systemd may have restarted it (Restart=) with the crash hook still in its environment
    # before the hook is cleared (seen with systemd 262): restart it clean
    daemon_restart || fail "the daemon did not start again after the crash"
    [ "$(iso_count)" = 0 ] || fail "after the crash at step 1: $(iso_count) isolations"
    wait_for "[ \"\$(keeper_state)\" != active ]" 10 0.3 || fail "the keeper survived the replay"
    wait_restored "$before"
    note "crash after starting the keeper: replay stopped it, all restored"

    # 2. isolate; reload, unrelated unit; SIGKILL and adoption
    isolate_ok --cpus 4-5 --unit "$U2"
    expect_isolation cpus-4-5 4-5 "$(iso_field cpus-4-5 partition)" "$pid"
    [ "$(iso_cgroups cpus-4-5 | head -1)" = "$CG/system.slice/$U2" ] || fail "partitioned $(iso_cgroups cpus-4-5), want system.slice/$U2"
    [ -d "$CG/system.slice/$KEEPER" ] || fail "no keeper cgroup system.slice/$KEEPER"
    plain_still_active "the isolate"
    systemctl daemon-reload; sleep 1; plain_still_active "daemon-reload"
    systemd-run --quiet --unit=kvmisolate-test-unrelated sleep 30
    sleep 1; plain_still_active "starting an unrelated unit"
    systemctl stop kvmisolate-test-unrelated.service; sleep 1; plain_still_active "stopping it"
    systemctl daemon-reload; sleep 1; plain_still_active "a second daemon-reload"
    oldpid=$(daemon_pid)
    kill -9 "$oldpid"
    wait_for "[ \"\$(daemon_pid)\" != '$oldpid' ]" 10 0.2 || true
    daemon_start || fail "the daemon did not start again after SIGKILL"
    [ "$(iso_count)" = 1 ] || fail "after SIGKILL: $(iso_count) isolations, want cpus-4-5 adopted"
    plain_still_active "SIGKILL of the daemon and its restart (adopted)"
    expect_isolation cpus-4-5 4-5 "$(iso_field cpus-4-5 partition)" "$pid"

    # 3. release: keeper gone, every file back while the unit still runs
    release_ok cpus-4-5
    expect_no_isolations
    wait_for "[ \"\$(keeper_state)\" != active ]" 10 0.3 || fail "release left the keeper $(keeper_state)"
    [ ! -d "$CG/system.slice/$KEEPER" ] || fail "release left the keeper's cgroup"
    wait_restored "$before"
    [ "$(systemctl is-active "$U2")" = active ] || fail "releasing stopped $U2"

    # 4. control: with the keeper stopped behind kvmisolate's back, a daemon-reload drops +cpuset
    isolate_ok --cpus 4-5 --unit "$U2"
    systemctl stop "$KEEPER"; systemctl daemon-reload; sleep 1
    if wait_state cpus-4-5 degraded 5; then
        note "control: keeper stopped + daemon-reload -> degraded ($(iso_field cpus-4-5 state-reason | cut -c1-160))"
    else
        note "control: keeper stopped + daemon-reload -> still $(iso_field cpus-4-5 state) (something else keeps +cpuset)"
    fi
    release_ok cpus-4-5
    wait_restored "$before"
    systemctl stop "$U2"
}
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
    run_plain
    wait_restored "$before0" --semantic
}
