# libvirt-names: the hook's names are one-to-one. Two domains whose names differ only in their
# last (56th) character got one hugepage reservation name before (`hugepages-` and the first 54
# characters): both start isolated with their own hugepages, and destroying one leaves the
# other's isolation and pool as they were; destroying the second restores everything. The same
# for `kvmi win` and `kvmi_win` (one machine name for libvirt: the service tells their scopes
# apart by libvirt's pid files). A broken
# /etc/kvmisolate/kvmisolate.toml does not stop a domain that does not opt in (the error is
# logged), but does stop one that opts in, with the file's error. Needs a kernel with remote
# partitions (6.7+).
# needs: libvirt
# timeout: 600
CONF=/etc/kvmisolate/kvmisolate.toml
LONG=$(printf 'n%.0s' $(seq 55))
A=${LONG}a
B=${LONG}b
cleanup() {
    lv_forget "$A" "$B" "kvmi win" kvmi_win kvmi-plain kvmi-opt kvmi-nwarm
    if [ -f "$KT_STATE/conf.saved" ]; then mv "$KT_STATE/conf.saved" "$CONF"; else rm -f "$CONF"; fi
    return 0
}

pool() { cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages; }

run() {
    lv_need
    have_remote_partitions || skip "needs remote partitions (Linux 6.7+) to isolate a domain in place"
    [ -f "$CONF" ] && cp "$CONF" "$KT_STATE/conf.saved"
    define kvmi-nwarm 0 3 4
    lv_warm_up kvmi-nwarm
    local before=$KT_STATE/ln-before.snap orig
    snapshot "$before"
    orig=$(pool)

    # 1. the two long names: vCPUs on 2-3 and 4-5, 32 MiB of 2M hugepages each
    HP=1 define "$A" 1 2 3
    HP=1 define "$B" 1 4 5
    start_ok "$A"
    start_ok "$B"
    local ia ib ra rb
    ia=$(kstatus | jq -r --arg t "libvirt:$A" '.isolations[] | select(.target == $t) | .name')
    ib=$(kstatus | jq -r --arg t "libvirt:$B" '.isolations[] | select(.target == $t) | .name')
    ra=$(kstatus | jq -r --arg t "reservation:$A" '.isolations[] | select(.target == $t) | .name')
    rb=$(kstatus | jq -r --arg t "reservation:$B" '.isolations[] | select(.target == $t) | .name')
    note "names: $ia, $ib, $ra, $rb"
    [ -n "$ia" ] && [ -n "$ib" ] && [ -n "$ra" ] && [ -n "$rb" ] || fail "not every domain has its isolation and reservation: $(kstatus | jq -c '[.isolations[] | [.name, .target]]')"
    [ "$ra" != "$rb" ] && [ "$ia" != "$ib" ] || fail "two domains share a name"
    wait_state "$ia" active 30 || fail "$A: state '$(iso_field "$ia" state)'"
    wait_state "$ib" active 30 || fail "$B: state '$(iso_field "$ib" state)'"
    [ "$(iso_field "$ia" cpus)" = 2-3 ] || fail "$ia: cpus '$(iso_field "$ia" cpus)', want 2-3"
    [ "$(iso_field "$ib" cpus)" = 4-5 ] || fail "$ib: cpus '$(iso_field "$ib" cpus)', want 4-5"
    [ "$(pool)" = $((orig + 32)) ] || fail "hugepage pool $(pool), want $((orig + 32))"
    host_threads_off 2-5 "$(qemu_pid "$A")" "$(qemu_pid "$B")"

    destroy "$A"
    wait_for "! iso_exists '$ia'" 20 0.5 || fail "$ia still there after virsh destroy"
    wait_for "! iso_exists '$ra'" 20 0.5 || fail "$ra still there after virsh destroy"
    iso_exists "$ib" || fail "destroying $A released $B's isolation"
    iso_exists "$rb" || fail "destroying $A released $B's reservation"
    [ "$(iso_field "$ib" state)" = active ] || fail "$ib: state '$(iso_field "$ib" state)' after the other left"
    [ "$(pool)" = $((orig + 16)) ] || fail "hugepage pool $(pool) after $A left, want $((orig + 16)) ($B's)"
    host_threads_off 4-5 "$(qemu_pid "$B")"
    note "$A destroyed: $B keeps 4-5 and its 16 pages"
    destroy "$B"
    wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "still isolated after both were destroyed"
    wait_restored "$before" 20
    note "both destroyed: restored"

    # 1b. `kvmi win` and `kvmi_win`: one machine name for libvirt (qemu-N-kvmiwin), one
    # isolation name for the hook before; the service tells the scopes apart by libvirt's pid
    # files, the hook's names differ
    define "kvmi win" 1 2 3
    define kvmi_win 1 4 5
    start_ok "kvmi win"
    start_ok kvmi_win
    local is iu
    wait_for "[ \"\$(iso_count)\" = 2 ]" 30 0.5 || fail "not both isolated: $(kstatus | jq -c '[.isolations[] | [.name, .target, .cpus]]')"
    is=$(kstatus | jq -r '.isolations[] | select(.target == "libvirt:kvmi win") | .name')
    iu=$(kstatus | jq -r '.isolations[] | select(.target == "libvirt:kvmi_win") | .name')
    [ -n "$is" ] && [ -n "$iu" ] && [ "$is" != "$iu" ] || fail "names: '$is' '$iu'"
    [ "$(iso_field "$is" cpus)" = 2-3 ] && [ "$(iso_field "$iu" cpus)" = 4-5 ] || fail "cpus: $(iso_field "$is" cpus) $(iso_field "$iu" cpus)"
    note "'kvmi win' -> $is on 2-3, kvmi_win -> $iu on 4-5"
    destroy "kvmi win"
    wait_for "! iso_exists '$is'" 20 0.5 || fail "$is still there after virsh destroy"
    iso_exists "$iu" || fail "destroying 'kvmi win' released kvmi_win's isolation"
    [ "$(iso_field "$iu" state)" = active ] || fail "$iu: state '$(iso_field "$iu" state)'"
    destroy kvmi_win
    wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "still isolated after both were destroyed"
    wait_restored "$before" 20

    # 2. a broken configuration file
    mkdir -p /etc/kvmisolate
    printf '[vm.kvmi-opt]\nprofile = "none"\n[vm.broken\n' > "$CONF"
    define kvmi-plain 0 4
    start_ok kvmi-plain
    [ "$(iso_count)" = 0 ] || fail "a domain without the opt-in was isolated"
    note "kvmi-plain (no opt-in) started with a broken $CONF"
    destroy kvmi-plain
    define kvmi-opt 0 4
    start_refused kvmi-opt "kvmisolate.toml"
    [ "$(iso_count)" = 0 ] || fail "the refused start made an isolation"
    wait_restored "$before" 20
}
