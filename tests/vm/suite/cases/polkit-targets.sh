# polkit-targets: the target decides the action, with the real polkitd and the shipped example
# rule. alice (group kvm) isolates her own process without a password; a root process, bob's
# process, alice's together with root's, a system unit (systemd) and a system libvirt domain
# need org.kvmisolate.isolate-any: denied with exit 4 and nothing changed (snapshot), also for
# a set-uid program alice runs (real uid hers, effective root). The hook's `libvirt-`/`hugepages-` names
# are refused to her (exit 3). In the example's group kvmisolate-any the same calls work;
# each release restores everything.
# timeout: 300
U=kvmisolate-test-system.service
SUID=/usr/local/bin/kvmisolate-test-suid-sleep
cleanup() {
    rm -f "$POLKIT_RULE"
    [ -f "$KT_STATE/suid.pid" ] && kill "$(cat "$KT_STATE/suid.pid")" 2>/dev/null
    rm -f "$SUID" "$KT_STATE/suid.pid"
    gpasswd -d alice kvmisolate-any >/dev/null 2>&1
    groupdel kvmisolate-any >/dev/null 2>&1
    if have_systemd; then systemctl stop "$U" 2>/dev/null; systemctl reset-failed "$U" 2>/dev/null; fi
    return 0
}

# suid_running PID: PID runs with real uid 1000 and effective uid 0
suid_running() { awk '/^Uid:/ {exit !($2 == 1000 && $3 == 0)}' "/proc/$1/status" 2>/dev/null; }

# denied WHAT ARGS...: alice's `isolate ARGS` exits 4 and changes nothing
denied() {
    local what=$1 rc=0; shift
    kvmi_as alice isolate --no-ask-password --until release "$@" || rc=$?
    [ "$rc" = 4 ] || fail "$what: alice's isolate exited $rc, want 4 (not authorized)"
    grep -qE 'AccessDenied|InteractiveAuthorizationRequired' "$KT_STATE/last-output" \
        || fail "$what: no authorization error named: $(tail -1 "$KT_STATE/last-output")"
    expect_no_isolations
    snapshot "$KT_STATE/pt-now.snap"
    snapshot_same "$BEFORE" "$KT_STATE/pt-now.snap" || fail "$what: a denied isolate changed $(snapshot_diff_short "$BEFORE" "$KT_STATE/pt-now.snap")"
    note "$what: denied, nothing changed"
}

# granted NAME WHAT ARGS...: alice's `isolate --name NAME ARGS` works; then released, restored
granted() {
    local name=$1 what=$2 rc=0; shift 2
    kvmi_as alice isolate --no-ask-password --until release --name "$name" "$@" || rc=$?
    [ "$rc" = 0 ] || fail "$what: alice's isolate exited $rc, want 0: $(tail -1 "$KT_STATE/last-output")"
    [ "$(iso_field "$name" owner-uid)" = 1000 ] || fail "$what: owner-uid '$(iso_field "$name" owner-uid)', want 1000"
    note "$what: isolated ($(iso_field "$name" target))"
    rc=0; kvmi_as alice release --no-ask-password "$name" || rc=$?
    [ "$rc" = 0 ] || fail "$what: alice's release exited $rc"
    expect_no_isolations
    wait_restored "$BEFORE" --semantic 20
}

run() {
    need_kvmisolate
    polkitd_running || fail "polkitd is not running"
    [ -f "$POLKIT_RULE_EXAMPLE" ] || fail "make install did not install $POLKIT_RULE_EXAMPLE"
    local apid rpid bpid spid i rc
    apid=$(start_fake_vm_as alice 1)
    rpid=$(start_fake_vm 1)
    bpid=$(start_fake_vm_as bob 1)
    # a set-uid program alice runs: real uid alice, effective root
    install -m 4755 -o root "$(command -v sleep)" "$SUID"
    spid=$(as_user alice sh -c '"$0" 300 < /dev/null > /dev/null 2>&1 & echo $!' "$SUID")
    echo "$spid" > "$KT_STATE/suid.pid"
    wait_for "suid_running $spid" 5 0.1 || note "the set-uid program did not start as uid 1000/euid 0"
    if have_systemd; then
        systemctl stop "$U" 2>/dev/null || true; systemctl reset-failed "$U" 2>/dev/null || true
        systemd-run --quiet --unit="$U" -p Delegate=yes "$KT_DIR/fakevm" 1 \
            || fail "systemd-run $U failed"
    fi
    BEFORE=$KT_STATE/pt-before.snap
    snapshot "$BEFORE"
    install -m 644 "$POLKIT_RULE_EXAMPLE" "$POLKIT_RULE"
    # polkitd reloads rules on inotify: wait until the rule answers for alice's own process
    for i in $(seq 30); do
        rc=0; kvmi_as alice isolate --no-ask-password --until release --cpus 2 --name own --pid "$apid" || rc=$?
        [ "$rc" = 4 ] || break
        sleep 0.5
    done
    [ "$rc" = 0 ] || fail "alice isolating her own process (example rule) exited $rc, want 0: $(tail -1 "$KT_STATE/last-output")"
    expect_isolation own 2 "$(iso_field own partition)" "$apid"
    release_ok own
    wait_restored "$BEFORE" --semantic 20

    denied "root's process" --cpus 2 --pid "$rpid"
    denied "bob's process" --cpus 2 --pid "$bpid"
    denied "her own process with root's" --cpus 2 --pid "$apid" --pid "$rpid"
    denied "a libvirt domain" --vm kvmisolate-test-domain
    if suid_running "$spid"; then
        denied "her set-uid process (uid 1000, euid 0)" --cpus 2 --pid "$spid"
    else
        note "the set-uid program is not running as 1000/0 (nosuid?): that check is left to the unit tests"
    fi
    if have_systemd; then
        denied "a system unit" --cpus 4-5 --unit "$U"
    fi
    for n in libvirt-x hugepages-x; do
        rc=0; kvmi_as alice isolate --no-ask-password --cpus 2 --name "$n" --pid "$apid" || rc=$?
        [ "$rc" = 3 ] || fail "alice taking the hook's name $n exited $rc, want 3"
        grep -q "reserved for the libvirt hook" "$KT_STATE/last-output" || fail "no reason given for $n: $(tail -1 "$KT_STATE/last-output")"
    done
    expect_no_isolations

    # The example's isolate-any group.
    groupadd -f kvmisolate-any && gpasswd -a alice kvmisolate-any >/dev/null || fail "cannot add alice to kvmisolate-any"
    granted theirs "root's process (isolate-any)" --cpus 2 --pid "$rpid"
    granted bobs "bob's process (isolate-any)" --cpus 2 --pid "$bpid"
    if have_systemd && have_remote_partitions; then
        granted sysunit "a system unit (isolate-any)" --cpus 4-5 --unit "$U"
    fi
    return 0
}
