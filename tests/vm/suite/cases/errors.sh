# errors: refused requests exit with the documented codes (3 bad request, 5 not found, 2 usage)
# and change nothing.
run() {
    need_kvmisolate
    local before=$KT_STATE/er-before.snap now=$KT_STATE/er-now.snap p q
    p=$(start_fake_vm 1); q=$(start_fake_vm 1)
    snapshot "$before"
    unchanged() { snapshot "$now"; snapshot_same "$before" "$now" || fail "$1 changed: $(snapshot_diff_short "$before" "$now")"; }
    expect_rc 3 "--cpus 9 (no such CPU)" kvmi isolate --no-ask-password --cpus 9 --pid "$p"; unchanged "--cpus 9"
    expect_rc 3 "--cpus 0-5 (every CPU)" kvmi isolate --no-ask-password --cpus 0-5 --pid "$p"; unchanged "--cpus 0-5"
    expect_rc 3 "--cpus 0 (CPU 0 reserved by default)" kvmi isolate --no-ask-password --cpus 0 --pid "$p"; unchanged "--cpus 0"
    expect_rc 3 "--cpus 5-2 (bad list)" kvmi isolate --no-ask-password --cpus 5-2 --pid "$p"; unchanged "--cpus 5-2"
    expect_rc 3 "--cpus 1,,2 (bad list)" kvmi isolate --no-ask-password --cpus 1,,2 --pid "$p"; unchanged "--cpus 1,,2"
    expect_rc 3 "--name a/b (bad name)" kvmi isolate --no-ask-password --cpus 2-3 --name a/b --pid "$p"; unchanged "--name a/b"
    expect_rc 5 "--pid of no process" kvmi isolate --no-ask-password --cpus 2-3 --pid 4000000; unchanged "--pid 4000000"
    expect_rc 5 "release of no isolation" kvmi release --no-ask-password no-such-isolation; unchanged "release no-such-isolation"
    expect_rc 2 "isolate without --cpus (usage)" kvmi isolate --no-ask-password --pid "$p"; unchanged "isolate without --cpus"
    cpu_offline 5
    local off=$KT_STATE/er-off.snap; snapshot "$off"
    expect_rc 3 "--cpus 5 while CPU 5 is offline" kvmi isolate --no-ask-password --cpus 5 --pid "$p"
    snapshot "$now"; snapshot_same "$off" "$now" || fail "--cpus 5 (offline) changed: $(snapshot_diff_short "$off" "$now")"
    grep -q 5 "$KT_STATE/last-output" || note "warning: the offline-CPU message does not name CPU 5"
    cpu_online 5
    wait_restored "$before" 10
    # with an active isolation: overlap and a duplicate name
    isolate_ok --cpus 2-3 --pid "$p"
    local during=$KT_STATE/er-during.snap; snapshot "$during"
    expect_rc 3 "--cpus 3-4 overlapping cpus-2-3" kvmi isolate --no-ask-password --cpus 3-4 --name other --pid "$q"
    expect_rc 3 "--name cpus-2-3 again (name exists)" kvmi isolate --no-ask-password --cpus 4-5 --name cpus-2-3 --pid "$q"
    snapshot "$now"; snapshot_same "$during" "$now" || fail "refused requests next to an active isolation changed: $(snapshot_diff_short "$during" "$now")"
    [ "$(iso_count)" = 1 ] || fail "$(iso_count) isolations, want 1"
    release_ok cpus-2-3
    wait_restored "$before" --semantic
}
