# polkit-group-rule: with the shipped example rule installed, alice (group kvm) isolates without
# a prompt; bob is still denied and cannot release alice's isolation; with the rule removed again
# alice is denied a new isolation but may still release her own.
run() {
    need_kvmisolate
    [ -f "$POLKIT_RULE_EXAMPLE" ] || fail "make install did not install $POLKIT_RULE_EXAMPLE"
    local before=$KT_STATE/pg-before.snap apid bpid rc
    apid=$(start_fake_vm_as alice 2)
    bpid=$(start_fake_vm_as bob 1)
    snapshot "$before"
    install -m 644 "$POLKIT_RULE_EXAMPLE" "$POLKIT_RULE"
    # polkitd reloads rules on inotify: retry while the old rules still answer "no"
    local i
    for i in $(seq 30); do
        rc=0; kvmi_as alice isolate --no-ask-password --cpus 2-3 --pid "$apid" || rc=$?
        [ "$rc" = 4 ] || break
        sleep 0.5
    done
    [ "$rc" = 0 ] || fail "alice (in kvm, rule installed) isolate exited $rc, want 0: $(tail -1 "$KT_STATE/last-output")"
    expect_isolation cpus-2-3 2-3 "$(iso_field cpus-2-3 partition)" "$apid"
    [ "$(iso_field cpus-2-3 owner-uid)" = 1000 ] || fail "owner-uid '$(iso_field cpus-2-3 owner-uid)', want 1000"
    rc=0; kvmi_as bob isolate --no-ask-password --cpus 4-5 --pid "$bpid" || rc=$?
    [ "$rc" = 4 ] || fail "bob (not in kvm) isolate exited $rc, want 4"
    rc=0; kvmi_as bob release --no-ask-password cpus-2-3 || rc=$?
    [ "$rc" = 4 ] || fail "bob releasing alice's isolation exited $rc, want 4"
    iso_exists cpus-2-3 || fail "bob's denied release removed alice's isolation"
    rm -f "$POLKIT_RULE"
    # once polkitd has dropped the rule, alice is denied a new isolation
    local probe
    probe=$(start_fake_vm_as alice 1 5)
    for i in $(seq 30); do
        rc=0; kvmi_as alice isolate --no-ask-password --cpus 4-5 --name alice-probe --pid "$probe" || rc=$?
        [ "$rc" = 0 ] && { release_ok alice-probe; sleep 0.5; continue; }
        break
    done
    [ "$rc" = 4 ] || fail "with the rule removed, alice's isolate exited $rc, want 4"
    rc=0; kvmi_as alice release --no-ask-password cpus-2-3 || rc=$?
    [ "$rc" = 0 ] || fail "alice releasing her own isolation (no rule) exited $rc, want 0"
    expect_no_isolations
    wait_restored "$before" --semantic
}
