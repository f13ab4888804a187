# libvirt: real libvirtd and QEMU (TCG, no disk: the guests sit in SeaBIOS) with kvmisolate's
# hook. A domain pinned like the low-latency recipe (vCPUs 3-4, emulator 2, iothread 0-1) that
# opts in by metadata: `virsh start` → vCPU and emulator leaves `isolated`, every host thread
# off 2-4, the iothread still on 0-1; `virsh destroy` → restored; `kill -9` of QEMU → released
# by itself, also with libvirtd killed first (no hook runs); two domains on disjoint CPUs at
# once; an overlapping third, and one whose two vCPUs share a CPU, refused at start with
# kvmisolate's reason in virsh's error;
# hugepages="auto" reserved at prepare (a lease with partition "none" saying what it reserves)
# and returned. On a kernel without remote partitions (6.1): opted-in domains refused at start
# with kvmisolate's reason and nothing changed, others start, `isolate --vm` exits 6.
# needs: libvirt
# timeout: 900
# VIRSH, domain_xml, define, scope_of, qemu_pid, start_ok, destroy: lib.sh (libvirt).

# check_domain NAME CPUS ISOLATED-LEAVES...: the isolation is active with CPUS, the leaves named
# are valid `isolated` partitions whose threads run on their pins; every other leaf (the
# iothread, a housekeeping emulator) is still a member and its threads run on 0-1.
check_domain() {
    local name=$1 cpus=$2 iso=libvirt-$1 scope pid leaf base t c; shift 2
    local want=" $* "
    wait_state "$iso" active 30 || fail "$iso: state '$(iso_field "$iso" state)' after virsh start"
    [ "$(iso_field "$iso" cpus)" = "$cpus" ] || fail "$iso: cpus '$(iso_field "$iso" cpus)', want $cpus"
    [ "$(iso_field "$iso" target)" = "libvirt:$name" ] || fail "$iso: target '$(iso_field "$iso" target)'"
    scope=$(scope_of "$name") || fail "no scope for $name under machine.slice"
    pid=$(qemu_pid "$name")
    for leaf in "$scope"/libvirt/*/; do
        leaf=${leaf%/}; base=${leaf##*/}
        if [[ $want == *" $base "* ]]; then
            [ "$(partition_of "$leaf")" = isolated ] || fail "${leaf#"$CG"/}: partition '$(partition_of "$leaf")', want isolated"
            for t in $(cat "$leaf/cgroup.threads"); do
                c=$(task_cpus "$t" 2>/dev/null) || continue
                cpulist_eq "$c" "$(cat "$leaf/cpuset.cpus")" || fail "${leaf#"$CG"/}: thread $t allowed on $c, pinned to $(cat "$leaf/cpuset.cpus")"
            done
            note "${leaf#"$CG"/}: $(partition_of "$leaf") on $(cat "$leaf/cpuset.cpus.effective")"
        else
            [ "$(partition_of "$leaf")" = member ] || fail "${leaf#"$CG"/}: partition '$(partition_of "$leaf")', want member"
            for t in $(cat "$leaf/cgroup.threads"); do
                c=$(task_cpus "$t" 2>/dev/null) || continue
                cpulist_eq "$c" 0-1 || fail "$base thread $t allowed on $c, want 0-1"
            done
            note "$base: member, threads on 0-1"
        fi
    done
    KT_EXTRA_TARGETS+=("$pid")
}

# refused KERNEL-OUTPUT: the output names kvmisolate's reason for a kernel without remote
# partitions (the feature and the kernel version that has it)
refused_for_kernel() { grep -q "remote cpuset partitions\|needs remote partitions" <<<"$1" && grep -q "Linux 6.7+" <<<"$1"; }

# On a kernel without remote partitions (6.1) a domain cannot be isolated in place: what the
# user sees. An opted-in domain does not start (virsh start shows kvmisolate's reason), also
# with hugepages="auto" (nothing reserved), and nothing is left changed; a domain that does
# not opt in starts as usual; `kvmisolate isolate --vm` of it fails the same way (exit 6).
refusal_without_remote_partitions() {
    local before=$1 rc dom pool=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
    EMU=2 define kvmi-a 1 3 4
    HP=1 EMU=2 define kvmi-h 1 3 4   # hugepages="auto" is the opt-in's default
    for dom in kvmi-a kvmi-h; do
        start_refused "$dom" "this kernel ($(uname -r)) cannot isolate a libvirt domain in place: it needs remote cpuset partitions (cpuset.cpus.exclusive, Linux 6.7+)"
        ! scope_of "$dom" >/dev/null || fail "$dom's scope exists after the refused start"
        [ "$(iso_count)" = 0 ] || fail "the refused start of $dom left isolations: $(kstatus | jq -c '[.isolations[].name]')"
        wait_restored "$before" 10
    done
    note "hugepage pool $(cat "$pool") (nothing reserved), no isolation, every value as before"

    # A domain that does not opt in starts; `isolate --vm` of it is refused with the reason.
    EMU=2 define kvmi-n 0 3 4
    start_ok kvmi-n
    [ "$(iso_count)" = 0 ] || fail "a domain without the opt-in was isolated"
    local running=$KT_STATE/lv-running.snap
    snapshot "$running"
    rc=0
    kvmi isolate --no-ask-password --vm kvmi-n || rc=$?
    [ "$rc" = 6 ] || fail "kvmisolate isolate --vm kvmi-n exited $rc, want 6 (host cannot do it): $(tail -1 "$KT_STATE/last-output")"
    refused_for_kernel "$(last_output)" || fail "isolate --vm kvmi-n failed without the reason: $(last_output)"
    [ "$(iso_count)" = 0 ] || fail "the refused isolate --vm left an isolation"
    wait_restored "$running" 10
    note "isolate --vm kvmi-n: exit 6, nothing changed"
    destroy kvmi-n
    wait_for "! scope_of kvmi-n >/dev/null" 20 0.5 || fail "kvmi-n's scope stayed"
    wait_restored "$before" 20
}

# hook_timing NAME: how long the installed hook takes for a domain that does not opt in (every
# start of every domain pays it) and for `prepare` of NAME, which opts in (a Status() call and
# the checks; nothing reserved without hugepages). Printed, not asserted (TCG).
hook_timing() {
    local hook=/etc/libvirt/hooks/qemu.d/kvmisolate xml plain t0 ms i
    xml=$($VIRSH dumpxml "$1") || fail "virsh dumpxml $1 failed"
    plain=$(sed '/<metadata>/,/<\/metadata>/d' <<<"$xml")
    for what in baseline plain optin; do
        local all=()
        for i in 1 2 3 4 5; do
            t0=$(date +%s%N)
            if [ $what = baseline ]; then
                kvmisolate --version >/dev/null || fail "kvmisolate --version failed"
            elif [ $what = plain ]; then
                "$hook" "$1" prepare begin - <<<"$plain" || fail "the hook failed for a domain that does not opt in"
            else
                "$hook" "$1" prepare begin - <<<"$xml" || fail "the hook's prepare of $1 failed"
            fi
            all+=($(( ($(date +%s%N) - t0) / 1000000 )))
        done
        ms=$(printf '%s\n' "${all[@]}" | sort -n | sed -n 3p)
        case $what in
            baseline) note "kvmisolate --version (process start, the floor): median $ms ms of 5 (${all[*]} ms)" ;;
            *) note "hook prepare, $what domain: median $ms ms of 5 (${all[*]} ms)" ;;
        esac
    done
    [ "$(iso_count)" = 0 ] || fail "the hook's prepare alone made an isolation"
}

# live_repin NAME: a live `virsh vcpupin NAME 0 5` (vCPU 0 from 3 to 5, a CPU outside the
# isolation) and `virsh emulatorpin NAME 0-1`: either nothing changes (refused before the leaf is
# written: the isolation stays `active`) or the leaf's cpuset.cpus changed — whether virsh
# reports success or not — and the isolation turns `degraded` naming the re-pin; never an
# `active` isolation whose partition no longer matches the pins. Pinned back afterwards.
live_repin() {
    local iso=libvirt-$1 what cmd back leaf out rc
    for what in vcpu emulator; do
        if [ $what = vcpu ]; then cmd=(vcpupin "$1" 0 5 --live); back=(vcpupin "$1" 0 3 --live); leaf=vcpu0
        else cmd=(emulatorpin "$1" 0-1 --live); back=(emulatorpin "$1" 2 --live); leaf=emulator; fi
        local dir before_cpus
        dir=$(scope_of "$1")/libvirt/$leaf
        before_cpus=$(cat "$dir/cpuset.cpus")
        rc=0; out=$(timeout -k 5 60 $VIRSH "${cmd[@]}" 2>&1) || rc=$?
        if [ "$rc" != 0 ] && [ "$(cat "$dir/cpuset.cpus")" = "$before_cpus" ]; then
            note "virsh ${cmd[*]} refused (exit $rc: $(head -1 <<<"$out")); $leaf keeps $before_cpus"
            [ "$(iso_field "$iso" state)" = active ] || fail "after a refused ${cmd[0]} that changed nothing: state $(iso_field "$iso" state) ($(iso_field "$iso" state-reason))"
            continue
        fi
        # libvirt 11.3 on 6.12 writes the leaf's cpuset.cpus first and then fails to set the
        # thread's affinity (EINVAL): the leaf is changed although virsh reports an error
        [ "$rc" = 0 ] || note "virsh ${cmd[*]} failed (exit $rc: $(head -1 <<<"$out")) but $leaf is now on $(cat "$dir/cpuset.cpus")"
        wait_state "$iso" degraded 15 || fail "after virsh ${cmd[*]} (leaf $leaf now on $(cat "$(scope_of "$1")/libvirt/$leaf/cpuset.cpus"), partition '$(cat "$(scope_of "$1")/libvirt/$leaf/cpuset.cpus.partition")') the isolation is $(iso_field "$iso" state), want degraded"
        iso_field "$iso" state-reason | grep -q 'vcpupin' || fail "degraded without naming the re-pin: $(iso_field "$iso" state-reason)"
        note "virsh ${cmd[*]}: degraded: $(iso_field "$iso" state-reason | cut -c1-200)"
        timeout -k 5 60 $VIRSH "${back[@]}" >/dev/null 2>&1 || note "virsh ${back[*]} failed"
        [ "$(cat "$dir/cpuset.cpus")" = "$before_cpus" ] || echo "$before_cpus" > "$dir/cpuset.cpus" || true
        wait_state "$iso" active 15 || note "pinned back: state $(iso_field "$iso" state) ($(iso_field "$iso" state-reason | cut -c1-200))"
    done
}

run() {
    lv_need

    # Warm-up, so that the "before" snapshot holds what libvirt makes once.
    define kvmi-warm 0 3 4
    lv_warm_up kvmi-warm
    local before=$KT_STATE/lv-before.snap
    snapshot "$before"
    all_affinities | awk '{print $1}' > "$KT_STATE/tids-before-isolate"
    if ! have_remote_partitions; then
        refusal_without_remote_partitions "$before"
        return
    fi

    # 1. virsh start / virsh destroy
    EMU=2 define kvmi-a 1 3 4
    hook_timing kvmi-a
    start_ok kvmi-a
    check_domain kvmi-a 2-4 vcpu0 vcpu1 emulator
    host_threads_off 2-4 "$(qemu_pid kvmi-a)"
    live_repin kvmi-a
    destroy kvmi-a
    wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "still isolated 20 s after virsh destroy"
    wait_restored "$before" 20

    # 2. QEMU killed: released by the service whether or not a hook runs
    start_ok kvmi-a
    wait_state libvirt-kvmi-a active 30 || fail "not isolated on the second start"
    kill -9 "$(qemu_pid kvmi-a)"
    wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "still isolated 20 s after QEMU was killed"
    wait_restored "$before" 20
    note "kill -9 of QEMU: released and restored"

    # 2b. libvirtd dead too: no hook can run, the service still sees the scope go
    start_ok kvmi-a
    wait_state libvirt-kvmi-a active 30 || fail "not isolated on the third start"
    local qpid
    qpid=$(qemu_pid kvmi-a)
    systemctl kill -s KILL libvirtd.service
    wait_for "! systemctl -q is-active libvirtd.service" 10 0.2 || fail "libvirtd survived SIGKILL"
    kill -9 "$qpid"
    wait_for "[ \"\$(iso_count)\" = 0 ]" 30 0.5 || fail "still isolated 30 s after QEMU died with libvirtd dead"
    wait_restored "$before" 20
    note "libvirtd and QEMU killed: released and restored without a hook"
    timeout -k 5 60 $VIRSH list --all >/dev/null 2>&1 || fail "libvirtd did not come back"

    # 3. two domains on disjoint CPUs; an overlapping third is refused at start
    start_ok kvmi-a
    define kvmi-b 1 5
    start_ok kvmi-b
    check_domain kvmi-a 2-4 vcpu0 vcpu1 emulator
    check_domain kvmi-b 5 vcpu0
    host_threads_off 2-5 "$(qemu_pid kvmi-a)" "$(qemu_pid kvmi-b)"
    define kvmi-c 1 4
    start_refused kvmi-c "CPU 4 is already held by isolation 'libvirt-kvmi-a'"
    [ "$(iso_count)" = 2 ] || fail "the refused start changed the isolations ($(iso_count))"
    destroy kvmi-b
    wait_for "[ \"\$(iso_count)\" = 1 ]" 20 0.5 || fail "kvmi-b still isolated after destroy"
    # Two vCPUs pinned to one CPU: refused at prepare (a partition needs CPUs of its own), not
    # started unisolated.
    define kvmi-s 1 5 5
    start_refused kvmi-s "vcpu0 and vcpu1 are both pinned to CPU 5"
    [ "$(iso_count)" = 1 ] || fail "the refused start changed the isolations ($(iso_count))"
    destroy kvmi-a
    wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "still isolated after destroying both"
    wait_restored "$before" 20

    # 4. hugepages="auto" with <memoryBacking><hugepages/>: 32 MiB = 16 pages of 2M reserved at
    # prepare (QEMU maps them), returned at release; <numatune> binds the memory to node 0, so
    # the pages are reserved in node 0's pool
    local pool=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages orig
    local npool=/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages norig
    orig=$(cat "$pool"); norig=$(cat "$npool")
    HP=1 NUMA=0 define kvmi-h 1 5
    start_ok kvmi-h
    [ "$(cat "$pool")" = $((orig + 16)) ] || fail "hugepage pool $(cat "$pool"), want $((orig + 16))"
    [ "$(cat "$npool")" = $((norig + 16)) ] || fail "node 0's hugepage pool $(cat "$npool"), want $((norig + 16))"
    grep -q "@0" <<<"$(iso_field hugepages-kvmi-h description)" || fail "the reservation is not on node 0: $(iso_field hugepages-kvmi-h description)"
    iso_exists hugepages-kvmi-h || fail "no hugepages-kvmi-h reservation in status"
    [ "$(iso_field hugepages-kvmi-h target)" = reservation:kvmi-h ] || fail "reservation target '$(iso_field hugepages-kvmi-h target)'"
    check_domain kvmi-h 5 vcpu0
    note "hugepages: pool $orig -> $(cat "$pool") while kvmi-h runs"
    # The reservation holds no partition, and status says so.
    [ "$(iso_field hugepages-kvmi-h partition)" = none ] || fail "reservation partition '$(iso_field hugepages-kvmi-h partition)', want none"
    [ -z "$(iso_field hugepages-kvmi-h cpus)" ] || fail "reservation cpus '$(iso_field hugepages-kvmi-h cpus)'"
    [[ "$(iso_field hugepages-kvmi-h description)" == "reserves 16 hugepages of 2M "*"; holds no CPUs and no partition" ]] \
        || fail "reservation description '$(iso_field hugepages-kvmi-h description)'"
    kvmi status || fail "kvmisolate status failed"
    last_output | grep -qE '^hugepages-kvmi-h +- +none ' || fail "status row of hugepages-kvmi-h: $(last_output | grep '^hugepages-kvmi-h')"
    last_output | grep -qF "  hugepages-kvmi-h: reserves 16 hugepages of 2M" || fail "status does not say what hugepages-kvmi-h reserves"
    note "status: hugepages-kvmi-h partition none: $(iso_field hugepages-kvmi-h description)"
    destroy kvmi-h
    wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "still listed after destroying kvmi-h: $(kstatus | jq -c '[.isolations[].name]')"
    wait_restored "$before" 20
}

cleanup() {
    lv_forget kvmi-warm kvmi-a kvmi-b kvmi-c kvmi-s kvmi-h kvmi-n
    KT_EXTRA_TARGETS=()
}
