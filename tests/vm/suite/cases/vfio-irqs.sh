# vfio-irqs: the vfio-irqs tuning on real libvirt domains. TCG has no VFIO devices, so what is
# checked is the path a domain takes to the tuning and its skip reason: a domain (vCPUs 3-4,
# emulator 2) opted in by metadata with vfio-irqs='vcpu' → `virsh start` isolates it with
# vfio-irqs selected, `status` names it skipped because the domain has no PCI <hostdev>, while
# irq-affinity is applied; `virsh destroy` → restored. A domain without the opt-in isolated by
# `kvmisolate isolate --vm D --vfio-irqs vcpu --tunings irq-affinity`: the same report;
# released → restored. `--vfio-irqs` without `--vm` → exit 3 naming --vm, nothing changed; a bad
# metadata value (vfio-irqs='gpu') → `virsh start` refused naming vfio-irqs. The placement
# itself is covered by unit tests over a fake sysfs (service/src/tunings/fixtures/vfio).
# needs: libvirt
# timeout: 600

# vf_tuning NAME TUNING FIELD(1 state, 2 reason): a field of isolation NAME's tuning TUNING
vf_tuning() {
    kstatus | jq -r --arg n "$1" --arg t "$2" --argjson i "$3" \
        '.isolations[] | select(.name == $n) | .tunings[] | select(.[0] == $t) | .[$i]'
}

# vf_expect_skip NAME: vfio-irqs is reported skipped for the missing hostdev, irq-affinity applied
vf_expect_skip() {
    local st why
    st=$(vf_tuning "$1" vfio-irqs 1); why=$(vf_tuning "$1" vfio-irqs 2)
    [ "$st" = skipped ] || fail "$1: vfio-irqs is '$st' ($why), want skipped"
    grep -qF "has no assigned PCI device" <<<"$why" || fail "$1: vfio-irqs skipped for another reason: $why"
    [ "$(vf_tuning "$1" irq-affinity 1)" = applied ] || fail "$1: irq-affinity is '$(vf_tuning "$1" irq-affinity 1)'"
    kvmisolate status | grep -q "vfio-irqs" || fail "$1: the human status does not name vfio-irqs"
    note "$1: vfio-irqs $st: $why"
}

cleanup() {
    local d
    for d in kvmi-vf kvmi-vf2 kvmi-vf3; do
        timeout -k 5 30 kvmisolate release "libvirt-$d" >/dev/null 2>&1 || true
        timeout -k 5 30 $VIRSH destroy "$d" >/dev/null 2>&1 || true
        timeout -k 5 30 $VIRSH undefine "$d" >/dev/null 2>&1 || true
    done
    KT_EXTRA_TARGETS=()
}

run() {
    lv_need
    have_remote_partitions || skip "needs remote partitions (6.7+)"
    local before=$KT_STATE/vf-before.snap rc out

    # Warm-up (what libvirt makes once belongs in the snapshot).
    EMU=2 define kvmi-vf2 0 3 4
    lv_warm_up kvmi-vf2
    snapshot "$before"

    # 1. Opted in by metadata with vfio-irqs='vcpu'.
    EMU=2 PROFILE=default META_EXTRA="vfio-irqs='vcpu'" define kvmi-vf 1 3 4
    start_ok kvmi-vf
    wait_state libvirt-kvmi-vf active 30 || fail "libvirt-kvmi-vf: state '$(iso_field libvirt-kvmi-vf state)'"
    vf_expect_skip libvirt-kvmi-vf
    destroy kvmi-vf
    wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "still isolated 20 s after virsh destroy"
    wait_restored "$before" 20

    # 2. No opt-in: isolate --vm with --vfio-irqs.
    start_ok kvmi-vf2
    rc=0; out=$(kvmisolate isolate --vm kvmi-vf2 --vfio-irqs vcpu --tunings irq-affinity 2>&1) || rc=$?
    [ "$rc" = 0 ] || fail "isolate --vm kvmi-vf2 --vfio-irqs vcpu exited $rc: $out"
    vf_expect_skip libvirt-kvmi-vf2
    kvmisolate release libvirt-kvmi-vf2 >/dev/null || fail "release libvirt-kvmi-vf2 failed"
    destroy kvmi-vf2
    wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "still isolated after release"
    wait_restored "$before" 20

    # 3. Bad input: --vfio-irqs without --vm; a metadata value that is not a placement.
    rc=0; out=$(kvmisolate isolate --cpus 2-3 --pid $$ --vfio-irqs vcpu 2>&1) || rc=$?
    [ "$rc" = 3 ] || fail "--vfio-irqs with --pid exited $rc, want 3 (bad request): $out"
    grep -q -- "--vm" <<<"$out" || fail "--vfio-irqs with --pid: the error does not name --vm: $out"
    EMU=2 PROFILE=default META_EXTRA="vfio-irqs='gpu'" define kvmi-vf3 1 3 4
    start_refused kvmi-vf3 "vfio-irqs"
    [ "$(iso_count)" = 0 ] || fail "a refused start left an isolation"
    wait_restored "$before" 20
}
