# check-vm: `kvmisolate check --vm NAME` on real libvirt domains. A recipe-pinned domain
# (vCPUs 3-4, emulator 2, iothread 0-1, opted in by metadata with profile "realtime"): defined
# but not running → reported not running, its pins fine (also for an unprivileged user, through
# libvirt's read-only socket); after `virsh start` (the hook isolates it) → the audited CPUs
# are the domain's isolated leaves 2-4, all of them `isolated` partitions, exit 0: no warning
# or error at all (IRQs whose move is pending or that the kernel refused are information,
# printed). Induced faults: a second
# domain whose vCPU shares the emulator's CPU → vm-shared-cpus; a third backed by hugepages the
# pool cannot hold → vm-hugepages error; an IRQ moved by hand onto vCPU CPU 3 → irq-affinity
# names it. The domain lacks the guest side `plan` writes: vm-guest-side is information naming
# <pmu state='off'/> with the fix.
# needs: libvirt
# timeout: 600
ck_sev() { jq -r --arg i "$2" '[.findings[] | select(.id == $i)][0].severity // ""' <<<"$1"; }
ck_found() { jq -r --arg i "$2" '[.findings[] | select(.id == $i)][0].found // ""' <<<"$1"; }
problems() { jq -c '[.findings[] | select(.severity == "warning" or .severity == "error") | "\(.severity) \(.id): \(.found)"]' <<<"$1"; }
IRQ_SAVE=

restore_irqs() {
    local n v
    [ -n "$IRQ_SAVE" ] && [ -f "$IRQ_SAVE" ] || return 0
    while read -r n v; do echo "$v" > "/proc/irq/$n/smp_affinity_list" 2>/dev/null || true; done < "$IRQ_SAVE"
    IRQ_SAVE=
}

cleanup() {
    local d
    # IRQs first, back to what the isolation set, which its release then restores.
    restore_irqs
    for d in kvmi-ck kvmi-ck2 kvmi-ck3; do
        timeout -k 5 30 $VIRSH destroy "$d" >/dev/null 2>&1 || true
        timeout -k 5 30 $VIRSH undefine "$d" >/dev/null 2>&1 || true
    done
    KT_EXTRA_TARGETS=()
}

run() {
    lv_need
    have_remote_partitions || skip "needs remote partitions (6.7+)"
    local j rc out

    # 1. Defined, not running.
    EMU=2 PROFILE=realtime define kvmi-ck 1 3 4
    rc=0; j=$(kvmisolate check --vm kvmi-ck --json) || rc=$?
    [ "$(jq -r .vm.running <<<"$j")" = false ] || fail "not started yet, but vm.running is $(jq -r .vm.running <<<"$j")"
    [ "$(jq -r '.vm."opted-in"' <<<"$j")" = true ] || fail "opted in by metadata, but vm.opted-in is $(jq -r '.vm."opted-in"' <<<"$j")"
    [ "$(jq -r '.vm."pinned-cpus"' <<<"$j")" = 2-4 ] || fail "pinned CPUs $(jq -r '.vm."pinned-cpus"' <<<"$j"), want 2-4"
    [ "$(jq -r .vm.source <<<"$j")" = "virsh dumpxml" ] || fail "XML from $(jq -r .vm.source <<<"$j"), want virsh dumpxml"
    ck_found "$j" vm-domain | grep -q "not running" || fail "vm-domain: $(ck_found "$j" vm-domain)"
    for id in vm-optin vm-vcpu-pins vm-shared-cpus vm-smt-siblings; do
        [ "$(ck_sev "$j" "$id")" = ok ] || fail "not running: $id is $(ck_sev "$j" "$id"): $(ck_found "$j" "$id")"
    done
    ! jq -e '.findings[] | select(.id == "vm-partitions")' >/dev/null <<<"$j" || fail "vm-partitions for a domain that does not run"
    note "not running (exit $rc): $(ck_found "$j" vm-domain); $(jq -r '.findings[] | select(.id == "vm-vcpu-pins") | .details | join(", ")' <<<"$j")"
    note "not running, left: $(problems "$j" | cut -c1-600)"
    # Unprivileged: libvirt's read-only socket.
    rc=0; out=$(as_user alice kvmisolate check --vm kvmi-ck --json 2>&1) || rc=$?
    [ "$(jq -r .vm.source <<<"$out" 2>/dev/null)" = "virsh dumpxml" ] \
        || fail "as alice: check --vm exited $rc without the domain: $(head -c 300 <<<"$out")"
    note "as alice (exit $rc): vm-vcpu-pins $(ck_sev "$out" vm-vcpu-pins), $(jq '.unreadable | length' <<<"$out") file(s) unreadable"
    # An unknown domain: an error naming it and what was tried.
    rc=0; out=$(kvmisolate check --vm kvmi-nope 2>&1) || rc=$?
    [ "$rc" = 5 ] || fail "unknown domain: exit $rc, want 5: $out"
    grep -q 'libvirt domain "kvmi-nope" not found' <<<"$out" || fail "unknown domain: $out"
    note "unknown domain: $(head -c 300 <<<"$out")"

    # 2. Started: the hook isolates it.
    start_ok kvmi-ck
    wait_state libvirt-kvmi-ck active 30 || fail "libvirt-kvmi-ck: state '$(iso_field libvirt-kvmi-ck state)' after virsh start"
    KT_EXTRA_TARGETS+=("$(qemu_pid kvmi-ck)")
    rc=0; j=$(kvmisolate check --vm kvmi-ck --json) || rc=$?
    [ "$(jq -r .vm.running <<<"$j")" = true ] || fail "started, but vm.running is $(jq -r .vm.running <<<"$j")"
    [ "$(jq -r '."cpus-source"' <<<"$j")" = vm ] || fail "cpus-source $(jq -r '."cpus-source"' <<<"$j"), want vm"
    [ "$(jq -r .cpus <<<"$j")" = 2-4 ] || fail "audited CPUs $(jq -r .cpus <<<"$j"), want 2-4"
    [ "$(ck_sev "$j" vm-partitions)" = ok ] || fail "vm-partitions $(ck_sev "$j" vm-partitions): $(jq -c '.findings[] | select(.id == "vm-partitions")' <<<"$j")"
    [ "$(ck_sev "$j" daemon-isolations)" = ok ] || fail "daemon-isolations $(ck_sev "$j" daemon-isolations): $(ck_found "$j" daemon-isolations)"
    [ "$rc" = 0 ] || fail "check --vm exited $rc with the domain isolated: $(problems "$j")"
    ! jq -e '.findings[] | select((.id | startswith("vm-")) and (.severity == "warning" or .severity == "error"))' >/dev/null <<<"$j" \
        || fail "domain findings with the domain isolated: $(problems "$j")"
    note "running (exit $rc): $(ck_found "$j" vm-partitions)"
    # The guest side the plan would add (no <pmu state='off'/>, <locked/>...): information, with the fix.
    [ "$(ck_sev "$j" vm-guest-side)" = info ] || fail "vm-guest-side $(ck_sev "$j" vm-guest-side), want info: $(jq -c '.findings[] | select(.id == "vm-guest-side")' <<<"$j")"
    jq -e '.findings[] | select(.id == "vm-guest-side") | select(.fix | contains("kvmisolate plan")) | .details[] | select(. == "<features><pmu state='"'"'off'"'"'/>")' >/dev/null <<<"$j" \
        || fail "vm-guest-side does not name <pmu> and the fix: $(jq -c '.findings[] | select(.id == "vm-guest-side")' <<<"$j")"
    jq -r '.findings[] | select(.severity == "info") | .id as $i | .details[] | "    info \($i): \(.)"' <<<"$j" | awk 'NR <= 20'  # reads it all: no SIGPIPE for jq under pipefail

    # 3a. A second domain, its vCPU on the emulator's CPU.
    EMU=5 define kvmi-ck2 1 5
    rc=0; j=$(kvmisolate check --vm kvmi-ck2 --json) || rc=$?
    [ "$(ck_sev "$j" vm-shared-cpus)" = warning ] || fail "vCPU and emulator on CPU 5: vm-shared-cpus is $(ck_sev "$j" vm-shared-cpus)"
    jq -e '.findings[] | select(.id == "vm-shared-cpus") | .details[] | select(startswith("emulator shares CPU 5"))' >/dev/null <<<"$j" \
        || fail "vm-shared-cpus does not name the emulator: $(jq -c '.findings[] | select(.id == "vm-shared-cpus")' <<<"$j")"
    [ "$rc" -ge 8 ] || fail "shared CPU: exit $rc, want 8 or 9"
    note "kvmi-ck2 (exit $rc): $(jq -r '.findings[] | select(.id == "vm-shared-cpus") | .details[0]' <<<"$j")"

    # 3b. Hugepages the pool cannot hold (not opted in: nothing reserves them).
    local pool=/sys/kernel/mm/hugepages/hugepages-2048kB free
    free=$(cat "$pool/free_hugepages")
    HP=1 MEM=$(( (free + 64) * 2 )) define kvmi-ck3 0 5
    rc=0; j=$(kvmisolate check --vm kvmi-ck3 --json) || rc=$?
    [ "$(ck_sev "$j" vm-hugepages)" = error ] || fail "pool of $free free pages: vm-hugepages is $(ck_sev "$j" vm-hugepages): $(ck_found "$j" vm-hugepages)"
    [ "$rc" = 9 ] || fail "hugepages short: exit $rc, want 9"
    note "kvmi-ck3 (exit $rc): $(ck_found "$j" vm-hugepages)"

    # 3c. An IRQ moved by hand onto vCPU CPU 3 of the running domain.
    local n irq=
    IRQ_SAVE=$KT_STATE/check-vm-irqs.save; : > "$IRQ_SAVE"
    for n in $(ls /proc/irq | grep -E '^[0-9]+$'); do
        [ -e "/proc/irq/$n/smp_affinity_list" ] || continue
        grep -qE "^ *$n:" /proc/interrupts || continue
        echo "$n $(cat "/proc/irq/$n/smp_affinity_list")" >> "$IRQ_SAVE"
        if echo 3 > "/proc/irq/$n/smp_affinity_list" 2>/dev/null; then irq=$n; break; fi
    done
    [ -n "$irq" ] || fail "no IRQ with a handler accepted CPU 3"
    rc=0; j=$(kvmisolate check --vm kvmi-ck --json) || rc=$?
    [ "$(ck_sev "$j" irq-affinity)" = warning ] || fail "IRQ $irq on CPU 3: irq-affinity is $(ck_sev "$j" irq-affinity)"
    jq -e --arg n "IRQ $irq " '.findings[] | select(.id == "irq-affinity") | .details[] | select(startswith($n))' >/dev/null <<<"$j" \
        || fail "irq-affinity does not name IRQ $irq: $(jq -c '.findings[] | select(.id == "irq-affinity") | .details' <<<"$j" | cut -c1-300)"
    [ "$rc" -ge 8 ] || fail "IRQ on CPU 3: exit $rc, want 8 or 9"
    note "IRQ $irq on CPU 3 (exit $rc): $(jq -r --arg n "IRQ $irq " '.findings[] | select(.id == "irq-affinity") | .details[] | select(startswith($n))' <<<"$j")"
    cleanup
    wait_for "[ \"\$(iso_count)\" = 0 ]" 30 0.5 || fail "still isolated after destroying kvmi-ck: $(kstatus | jq -c '[.isolations[].name]')"
}
