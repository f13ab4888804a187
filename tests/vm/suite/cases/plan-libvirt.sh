# plan-libvirt: `kvmisolate plan` for this VM's own topology (booted with 4 cores of 2 threads)
# is what sysfs says (human, --json, --libvirt); `--apply --dry-run` on a domain XML without
# CPU elements shows a diff of CPU elements only and changes nothing; `--apply --hugepages`
# writes it (with FILE.bak); the domain defined and started under libvirt gets exactly the
# plan's pins and its memory's 2M pages reserved by the hook on the plan's NUMA node, its
# vCPU and emulator leaves become `isolated` partitions through the opt-in metadata the plan
# wrote, every host task leaves the guest's CPUs, and `kvmisolate check --cpus <the plan's
# CPUs>` reports nothing worse than information; `virsh destroy` → everything restored. Then
# the same with `--fifo`: SCHED_FIFO vCPUs, the realtime profile, check still clean.
# The guest-side half: the planned domain (with a virtio disk) gets `<pmu state='off'/>`,
# `<locked/>`, `<nosharepages/>` and its disk on I/O thread 1 with io='threads'; libvirt
# defines and starts it and QEMU's command line carries each (pmu=off, mem-merge=off,
# mem-lock, the disk on iothread1 with aio threads); `check --vm` then finds nothing of the
# guest side missing (information before the apply). tsc-deadline and `--guest windows`: TCG's
# `-cpu max` has no tsc_deadline_timer, so plan omits the feature here (asserted) and a
# cpuinfo with the flag added (KVMISOLATE_PROC_ROOT) makes it require it. Each such domain is
# defined (libvirt validates it) and its dumpxml keeps every element; its start is tried: it
# either starts, and QEMU's command line then carries tsc-deadline=on, or hv-stimer(-direct),
# hv-time and HPET off (libvirt 11/QEMU 10 and libvirt 12/QEMU 11 start both under TCG,
# 2026-12-04; whether TCG's guest makes use of the Hyper-V features is not measured here), or
# the refusal must name the feature TCG lacks (the case prints which).
# needs: libvirt
# smp: 8,sockets=1,cores=4,threads=2
# timeout: 600

DOM=kvmi-plan
RT=kvmi-plan-rt
TSC=kvmi-plan-tsc
WIN=kvmi-plan-win
IMAGES=/var/lib/libvirt/images   # where libvirt's QEMU user may open a disk image

# A domain with no CPU element at all (no disk: it sits in SeaBIOS).
bare_domain() { # NAME
    cat <<EOT
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>32</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
  </devices>
</domain>
EOT
}

# disk_domain NAME: bare_domain with a virtio disk (a sparse raw file), for the I/O thread
disk_domain() {
    truncate -s 8M "$IMAGES/$1.img"
    bare_domain "$1" | sed "s|    <memballoon model='none'/>|    <disk type='file' device='disk'>\\n      <driver name='qemu' type='raw'/>\\n      <source file='$IMAGES/$1.img'/>\\n      <target dev='vda' bus='virtio'/>\\n    </disk>\\n&|"
}

# has_elements FILE WHAT PATTERN...: every extended regex is in FILE, else fail naming WHAT
has_elements() {
    local file=$1 what=$2 p
    shift 2
    for p in "$@"; do
        grep -qE "$p" "$file" || fail "$what has no $p: $(grep -vE '^ *$' "$file" | head -c 1500)"
    done
}

# GUEST_SIDE: what plan --apply writes for any guest; HYPERV: and for --guest windows
GUEST_SIDE=("<pmu state='off'/>" "<locked/>" "<nosharepages/>" "<driver name='qemu' type='raw' io='threads' iothread='1'/>")
HYPERV=("<hyperv mode='custom'>" "<relaxed state='on'/>" "<vapic state='on'/>" "<spinlocks state='on' retries='8191'/>"
    "<vpindex state='on'/>" "<synic state='on'/>" "<stimer state='on'>" "<direct state='on'/>" "<frequencies state='on'/>"
    "<tlbflush state='on'/>" "<ipi state='on'/>" "<timer name='hpet' present='no'/>" "<timer name='hypervclock' present='yes'/>")
TSC_FEATURE="<feature policy='require' name='tsc-deadline'/>"

# try_start NAME: start the defined domain NAME; START_RESULT is "started" or "refused: WHY"
# (libvirt's error, which names what TCG lacks); a started domain is destroyed and its
# isolation waited out
try_start() {
    local out
    if out=$(timeout -k 5 120 $VIRSH start "$1" 2>&1); then
        START_RESULT=started
        START_CMD=$(tr '\0' ' ' < "/proc/$(qemu_pid "$1")/cmdline")
        destroy "$1"
        wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "still isolated 20 s after virsh destroy $1"
    else
        START_RESULT="refused: $(tr '\n' ' ' <<<"$out" | cut -c1-400)"
    fi
}

# sysfs_cores: one line per core, its CPUs (thread_siblings_list), sorted, unique
sysfs_cores() {
    local c
    for c in $(cpulist_expand "$(online_cpus)"); do
        cat "/sys/devices/system/cpu/cpu$c/topology/thread_siblings_list"
    done | sort -u
}

# pins_of KIND: "ID CPULIST" lines from virsh vcpupin / iothreadinfo (ID and the last field),
# or the CPU list alone from emulatorpin; lists compacted
pins_of() {
    local line id cpus
    timeout -k 5 30 $VIRSH "$1" "$DOM" | while read -r line; do
        [ -n "$line" ] || continue
        id=${line%%[ :]*}; cpus=${line##*[ :]}
        cpus=$(cpulist_compact "$(cpulist_expand "$cpus")")
        if [ "$1" = emulatorpin ]; then echo "$cpus"; else echo "$id $cpus"; fi
    done
}

# env_irq DETAIL HOUSEKEEPING: whether an IRQ that `check` reports as information is one
# this guest cannot do anything about (prints why): (a) allowed only on housekeeping CPUs but
# still effective on an isolated one: x86 moves an IO-APIC interrupt when it next fires, and
# this guest's legacy devices (i8042, rtc) never fire; (b) delivered on housekeeping CPUs only
# and refused by the kernel when its own affinity is written back (IRQ 0, the IO-APIC timer).
env_irq() {
    local n aff eff
    n=$(sed -n 's/^IRQ \([0-9]*\)[ :].*/\1/p' <<<"$1")
    [ -n "$n" ] && [ -d "/proc/irq/$n" ] || return 1
    aff=$(cat "/proc/irq/$n/smp_affinity_list")
    eff=$(cat "/proc/irq/$n/effective_affinity_list" 2>/dev/null || echo "$aff")
    if cpulist_subset "$aff" "$2"; then
        echo "IRQ $n ($(grep -E "^ *$n:" /proc/interrupts | awk '{print $NF}')) allowed on $aff, still effective on $eff until its next interrupt ($(grep -E "^ *$n:" /proc/interrupts | awk '{s = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; print s}') so far)"
        return 0
    fi
    if cpulist_subset "$eff" "$2" && ! echo "$aff" > "/proc/irq/$n/smp_affinity_list" 2>/dev/null; then
        echo "IRQ $n ($(grep -E "^ *$n:" /proc/interrupts | awk '{print $NF}')) cannot be moved (writing its affinity fails) and is delivered on $eff"
        return 0
    fi
    return 1
}

# check_clean CPUS HOUSEKEEPING: `kvmisolate check --cpus CPUS` exits 0 (nothing worse than
# information), and the IRQs it reports as information (a move pending, one the kernel refused
# to move) are what /proc says (env_irq)
check_clean() {
    local iso=$1 hk=$2 rc=0 detail why
    kvmi check --cpus "$iso" || rc=$?
    timeout -k 5 60 kvmisolate check --cpus "$iso" --json > "$KT_STATE/check.json" 2>/dev/null || true
    jq -e .findings "$KT_STATE/check.json" >/dev/null || fail "check --json printed no findings"
    [ "$rc" = 0 ] || fail "kvmisolate check --cpus $iso exited $rc: $(jq -r '.findings[] | select(.severity == "warning" or .severity == "error") | "\(.id): \(.found) \(.details)"' "$KT_STATE/check.json" | cut -c1-800)"
    while IFS= read -r detail; do
        why=$(env_irq "$detail" "$hk") || fail "check --cpus $iso calls this unavoidable, /proc does not: $detail"
        note "check's information: $why"
    done < <(jq -r '.findings[] | select(.id == "irq-move-pending" or .id == "irq-unmovable") | .details[]' "$KT_STATE/check.json")
    note "kvmisolate check --cpus $iso: exit 0"
}

run() {
    lv_need
    have_remote_partitions || skip "needs remote partitions (6.7+) to isolate a libvirt domain"
    local plan=$KT_STATE/plan.json xml=$KT_STATE/$DOM.xml orig=$KT_STATE/$DOM.orig.xml
    local threads cores online
    online=$(online_cpus)
    cores=$(sysfs_cores | wc -l)
    threads=$(( $(cpulist_expand "$online" | wc -w) / cores ))
    note "topology (sysfs): CPUs $online, $cores cores: $(sysfs_cores | paste -sd ' ' -)"
    [ "$threads" -ge 2 ] || note "no SMT in this boot (tests/vm/run boots this case with '# smp:' above)"

    # 1. the plan, three ways
    kvmi plan || fail "kvmisolate plan exited $?: $(tail -1 "$KT_STATE/last-output")"
    grep -q "^Host: .*$(cpulist_expand "$online" | wc -w) CPUs online ($online), $cores cores" "$KT_STATE/last-output" \
        || fail "plan's Host line does not describe sysfs ($online, $cores cores): $(grep '^Host' "$KT_STATE/last-output")"
    timeout -k 5 30 kvmisolate plan --json > "$plan" || fail "kvmisolate plan --json failed"
    jq -c . "$plan" | cut -c1-400 | sed 's/^/  json: /' || true
    j() { jq -r "$1" "$plan"; }
    [ "$(j .version)" = 1 ] || fail "plan --json version $(j .version)"
    [ "$(j .host.online)" = "$online" ] || fail "plan says online $(j .host.online), sysfs $online"
    [ "$(j .host.cores)" = "$cores" ] || fail "plan says $(j .host.cores) cores, sysfs $cores"
    [ "$(j .host.threads_per_core)" = "$threads" ] || fail "plan says $(j .host.threads_per_core) threads per core, sysfs $threads"
    local l3; l3=$(cat /sys/devices/system/cpu/cpu0/cache/index3/shared_cpu_list 2>/dev/null || true)
    if [ -n "$l3" ]; then
        [ "$(j '.host.l3[0].cpus')" = "$l3" ] || fail "plan's L3 $(j '.host.l3[0].cpus'), sysfs $l3"
    fi
    if [ -d /sys/devices/system/node/node0 ]; then
        [ "$(j '.host.nodes[0].cpus')" = "$(cat /sys/devices/system/node/node0/cpulist)" ] \
            || fail "plan's node 0 $(j '.host.nodes[0].cpus'), sysfs $(cat /sys/devices/system/node/node0/cpulist)"
    fi
    local hk iso emu vcpus iot nv
    hk=$(j .housekeeping) iso=$(j .isolate) emu=$(j .emulator.cpus)
    vcpus=$(cpulist_compact "$(j '.vcpus[].cpu')") iot=$(j '.iothreads[0].cpus')
    nv=$(j '.vcpus | length')
    note "plan: housekeeping $hk, isolate $iso (emulator $emu, vCPUs $vcpus), iothread $iot"
    [ "$(j .emulator.mode)" = separate ] || fail "emulator mode $(j .emulator.mode), want separate (the default)"
    cpulist_eq "$(cpulist_compact "$(cpulist_expand "$hk") $(cpulist_expand "$iso")")" "$online" \
        || fail "housekeeping $hk + isolate $iso is not every online CPU ($online)"
    [ -z "$(cpulist_minus "$hk" "$(cpulist_minus "$hk" "$iso")")" ] || fail "housekeeping $hk and isolate $iso overlap"
    cpulist_eq "$(cpulist_compact "$(cpulist_expand "$emu") $(cpulist_expand "$vcpus")")" "$iso" \
        || fail "emulator $emu + vCPUs $vcpus is not the isolated set $iso"
    [ "$(cpulist_expand "$vcpus" | wc -w)" = "$nv" ] || fail "two vCPUs share a CPU: $(jq -c .vcpus "$plan")"
    cpulist_subset "$iot" "$hk" || fail "iothread on $iot, not on housekeeping $hk"
    local core
    while read -r core; do # no core is split between host and guest, nor between emulator and vCPUs
        for part in "$hk" "$emu" "$vcpus"; do
            if ! cpulist_subset "$core" "$part" && [ -n "$(cpulist_minus "$core" "$(cpulist_minus "$core" "$part")")" ]; then
                fail "core $core is split (part of $part)"
            fi
        done
    done < <(sysfs_cores)
    [ "$(j '.guest_topology.threads')" = "$threads" ] || fail "guest threads $(j '.guest_topology.threads'), host $threads"
    [ $(( $(j '.guest_topology.sockets') * $(j '.guest_topology.dies') * $(j '.guest_topology.cores') * $(j '.guest_topology.threads') )) = "$nv" ] \
        || fail "guest topology $(jq -c .guest_topology "$plan") does not make $nv vCPUs"

    kvmi plan --libvirt || fail "kvmisolate plan --libvirt failed"
    local lv=$KT_STATE/plan-libvirt.out; cp "$KT_STATE/last-output" "$lv"
    grep -q "<vcpu placement='static'>$nv</vcpu>" "$lv" || fail "plan --libvirt has no <vcpu> $nv"
    grep -q "<emulatorpin cpuset='$emu'/>" "$lv" || fail "plan --libvirt has no emulatorpin $emu"
    grep -q '<kvmisolate:isolate xmlns:kvmisolate="https://kvmisolate.org/xmlns/libvirt/1"' "$lv" \
        || fail "plan --libvirt has no opt-in metadata"

    # 2. --apply --dry-run, then --apply (a domain with a virtio disk, for the I/O thread)
    disk_domain "$DOM" > "$xml"; cp "$xml" "$orig"
    # The guest side is missing before: check --vm says so, as information with the fix.
    local cj
    cj=$(timeout -k 5 60 kvmisolate check --vm "$DOM" --domain-xml "$orig" --json 2>/dev/null) || true
    [ "$(jq -r '.findings[] | select(.id == "vm-guest-side") | .severity' <<<"$cj")" = info ] \
        || fail "check --vm of the bare domain: vm-guest-side $(jq -c '.findings[] | select(.id == "vm-guest-side")' <<<"$cj")"
    jq -e '.findings[] | select(.id == "vm-guest-side") | select(.fix | contains("kvmisolate plan")) | .details[] | select(. == "<features><pmu state='"'"'off'"'"'/>")' >/dev/null <<<"$cj" \
        || fail "vm-guest-side does not name <pmu> or the fix: $(jq -c '.findings[] | select(.id == "vm-guest-side")' <<<"$cj")"
    note "check --vm before the apply: $(jq -r '.findings[] | select(.id == "vm-guest-side") | "\(.found): \(.details | join("; "))"' <<<"$cj")"
    kvmi plan --hugepages --apply "$xml" --dry-run || fail "plan --apply --dry-run failed"
    local diffout=$KT_STATE/plan.diff; cp "$KT_STATE/last-output" "$diffout"
    cmp -s "$xml" "$orig" || fail "--dry-run changed $xml"
    [ ! -e "$xml.bak" ] || fail "--dry-run wrote $xml.bak"
    local allowed="^[+-] *(</?(metadata|memoryBacking|hugepages|nosharepages|locked|vcpu|iothreads|cputune|vcpupin|emulatorpin|iothreadpin|vcpusched|numatune|cpu|topology|cache|features|pmu|driver)[ />]|<memory mode=|<kvmisolate:isolate |<feature policy='require' name='tsc-deadline'/>)"
    local other
    other=$(grep -E '^[+-]' "$diffout" | grep -vE '^(\+\+\+|---) ' | grep -vE "$allowed" || true)
    [ -z "$other" ] || fail "the dry-run diff touches more than CPU elements: $(echo $other | cut -c1-300)"
    grep -qE '^\+ *<vcpupin ' "$diffout" || fail "the dry-run diff adds no vcpupin"
    kvmi plan --hugepages --apply "$xml" || fail "plan --apply failed"
    cmp -s "$xml.bak" "$orig" || fail "$xml.bak is not the original"
    cmp -s "$xml" "$orig" && fail "--apply did not change $xml"
    diff -u "$orig" "$xml" | tail -n +3 > "$KT_STATE/applied.diff" || true
    tail -n +3 "$diffout" | diff -q - "$KT_STATE/applied.diff" >/dev/null \
        || fail "what --apply wrote differs from what --dry-run showed"
    # Nothing of the original is lost (the disk's <driver> gains attributes).
    ! diff "$orig" "$xml" | grep '^<' | grep -vq "^< *<driver name='qemu' type='raw'/>$" \
        || fail "--apply removed lines: $(diff "$orig" "$xml" | grep '^<' | head -3)"
    has_elements "$xml" "the applied XML" "${GUEST_SIDE[@]}"
    if grep -qw tsc_deadline_timer /proc/cpuinfo; then
        has_elements "$xml" "the applied XML (this CPU has tsc_deadline_timer)" "$TSC_FEATURE"
    else
        ! grep -q tsc-deadline "$xml" || fail "plan requires tsc-deadline on a CPU without tsc_deadline_timer"
        note "this CPU (TCG -cpu max) has no tsc_deadline_timer: plan does not require tsc-deadline"
    fi
    note "--apply: $(grep -c '^+' "$KT_STATE/applied.diff") lines added, only the disk's <driver> line rewritten, $xml.bak kept"

    # The guest here is TCG (no nested KVM): libvirt refuses host-passthrough for a 'qemu'
    # domain, so only for this environment the CPU mode becomes 'maximum' (same topology).
    local def=$KT_STATE/$DOM.define.xml
    sed "s/mode='host-passthrough'/mode='maximum'/" "$xml" > "$def"

    # 3. warm-up (what libvirt and systemd create once is in the "before" snapshot)
    bare_domain kvmi-pwarm > "$KT_STATE/kvmi-pwarm.xml"
    $VIRSH define "$KT_STATE/kvmi-pwarm.xml" >/dev/null || fail "virsh define kvmi-pwarm failed"
    lv_warm_up kvmi-pwarm
    local before=$KT_STATE/plan-before.snap
    snapshot "$before"
    all_affinities | awk '{print $1}' > "$KT_STATE/tids-before-isolate"

    # 4. define + start the planned domain
    local out
    out=$(timeout -k 5 60 $VIRSH define "$def" 2>&1) || fail "virsh define of the planned domain failed: $out"
    start_ok "$DOM"
    local name=libvirt-$DOM
    wait_state "$name" active 30 || fail "$name: state '$(iso_field "$name" state)' after virsh start"
    [ "$(iso_field "$name" cpus)" = "$iso" ] || fail "$name: cpus '$(iso_field "$name" cpus)', plan isolates $iso"
    note "$name: $(iso_field "$name" state), profile $(iso_field "$name" profile), warnings: $(iso_field "$name" warnings)"
    # --hugepages: the domain's 32 MiB in 2M pages, reserved by the hook on the plan's node
    local node; node=$(j .numa_node)
    [ "$(iso_field "hugepages-$DOM" partition)" = none ] || fail "no hugepage reservation for $DOM: $(kstatus | jq -c '[.isolations[].name]')"
    iso_field "hugepages-$DOM" description | grep -q "reserves 16 hugepages of 2M (32M:2M@$node)" \
        || fail "reservation: $(iso_field "hugepages-$DOM" description), want 16 pages of 2M on node $node"
    [ "$(cat /sys/devices/system/node/node$node/hugepages/hugepages-2048kB/nr_hugepages)" -ge 16 ] || fail "node $node's pool holds fewer than 16 pages"
    note "hugepages: $(iso_field "hugepages-$DOM" description)"

    # libvirt's pins are the plan's
    local want got
    want=$(jq -r '.vcpus[] | "\(.vcpu) \(.cpu)"' "$plan")
    got=$(pins_of vcpupin)
    [ "$got" = "$want" ] || fail "virsh vcpupin: $(echo $got), plan: $(echo $want)"
    got=$(pins_of emulatorpin)
    [ "$got" = "$emu" ] || fail "virsh emulatorpin: $got, plan: $emu"
    want=$(jq -r '.iothreads[] | "\(.iothread) \(.cpus)"' "$plan")
    got=$(pins_of iothreadinfo)
    [ "$got" = "$want" ] || fail "virsh iothreadinfo: $(echo $got), plan: $(echo $want)"
    note "virsh: vcpupin, emulatorpin and iothreadinfo match the plan"

    # the guest side reached libvirt and QEMU
    timeout -k 5 30 $VIRSH dumpxml "$DOM" > "$KT_STATE/$DOM.live.xml" || fail "virsh dumpxml $DOM failed"
    has_elements "$KT_STATE/$DOM.live.xml" "the running domain's XML" "<pmu state='off'/>" "<locked/>" "<nosharepages/>" "io='threads'" "iothread='1'"
    local cmd; cmd=$(tr '\0' ' ' < "/proc/$(qemu_pid "$DOM")/cmdline")
    note "QEMU: $(grep -oE -- "-cpu [^ ]+|mem-merge=[a-z]+|mem-lock=[a-z]+|-object [^ ]*iothread[^ ]*|-blockdev [^ ]*|-device [^ ]*virtio-blk[^ ]*" <<<"$cmd" | paste -sd ' ' - | cut -c1-900)"
    grep -qE -- "-cpu [^ ]*pmu=off" <<<"$cmd" || fail "QEMU's -cpu has no pmu=off: $(grep -oE -- '-cpu [^ ]+' <<<"$cmd")"
    grep -q "mem-merge=off" <<<"$cmd" || fail "QEMU has no mem-merge=off (<nosharepages/>)"
    grep -q "mem-lock=on" <<<"$cmd" || fail "QEMU has no mem-lock=on (<locked/>)"
    grep -qE '"iothread":"iothread1"|iothread=iothread1' <<<"$cmd" || fail "the virtio disk is not on iothread1"
    grep -qE '"aio":"threads"|aio=threads' <<<"$cmd" || fail "the disk's aio is not threads"
    note "QEMU runs with pmu=off, mem-merge=off, mem-lock=on, the disk on iothread1 with aio threads"

    # the leaves: cpuset.cpus = the pins; vCPUs and emulator isolated, the iothread a member
    local scope leaf v c
    scope=$(scope_of "$DOM") || fail "no scope for $DOM under machine.slice"
    for v in $(jq -r '.vcpus[].vcpu' "$plan"); do
        leaf=$scope/libvirt/vcpu$v
        c=$(jq -r ".vcpus[] | select(.vcpu == $v) | .cpu" "$plan")
        [ "$(cat "$leaf/cpuset.cpus")" = "$c" ] || fail "vcpu$v/cpuset.cpus $(cat "$leaf/cpuset.cpus"), plan $c"
        [ "$(partition_of "$leaf")" = isolated ] || fail "vcpu$v: partition '$(partition_of "$leaf")', want isolated"
    done
    cpulist_eq "$(cat "$scope/libvirt/emulator/cpuset.cpus")" "$emu" || fail "emulator/cpuset.cpus $(cat "$scope/libvirt/emulator/cpuset.cpus"), plan $emu"
    [ "$(partition_of "$scope/libvirt/emulator")" = isolated ] || fail "emulator: partition '$(partition_of "$scope/libvirt/emulator")', want isolated"
    cpulist_eq "$(cat "$scope/libvirt/iothread1/cpuset.cpus")" "$iot" || fail "iothread1/cpuset.cpus $(cat "$scope/libvirt/iothread1/cpuset.cpus"), plan $iot"
    [ "$(partition_of "$scope/libvirt/iothread1")" = member ] || fail "iothread1: partition '$(partition_of "$scope/libvirt/iothread1")', want member"
    note "leaves: vcpu0-$((nv - 1)) and emulator isolated on their pins, iothread1 a member on $iot"
    KT_EXTRA_TARGETS+=("$(qemu_pid "$DOM")")
    host_threads_off "$iso" "$(qemu_pid "$DOM")"

    kvmi status >/dev/null || fail "kvmisolate status failed"

    # 5. kvmisolate check on the plan's CPUs, and of the domain's guest side
    check_clean "$iso" "$hk"
    cj=$(timeout -k 5 60 kvmisolate check --vm "$DOM" --json 2>/dev/null) || true
    [ "$(jq -r '.findings[] | select(.id == "vm-guest-side") | .severity' <<<"$cj")" = ok ] \
        || fail "check --vm $DOM after the apply: $(jq -c '.findings[] | select(.id == "vm-guest-side")' <<<"$cj")"
    note "check --vm $DOM: $(jq -r '.findings[] | select(.id == "vm-guest-side") | .found' <<<"$cj")"

    # 6. destroy: everything back
    destroy "$DOM"
    wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "still isolated 20 s after virsh destroy"
    wait_restored "$before" 20
    note "virsh destroy: released, every value restored"

    # 7. --fifo: <vcpusched> and the realtime profile, without which the hook refuses FIFO
    # vCPUs (RT throttling on): the domain starts, its vCPUs run SCHED_FIFO, RT throttling is
    # off while it runs, check stays clean (rt-throttling ok), destroy restores everything
    bare_domain "$RT" > "$KT_STATE/$RT.xml"
    kvmi plan --fifo --apply "$KT_STATE/$RT.xml" || fail "plan --fifo --apply failed"
    grep -q "scheduler='fifo'" "$KT_STATE/$RT.xml" || fail "plan --fifo wrote no <vcpusched>"
    sed "s/mode='host-passthrough'/mode='maximum'/" "$KT_STATE/$RT.xml" > "$KT_STATE/$RT.define.xml"
    out=$(timeout -k 5 60 $VIRSH define "$KT_STATE/$RT.define.xml" 2>&1) || fail "virsh define $RT failed: $out"
    start_ok "$RT"
    wait_state "libvirt-$RT" active 30 || fail "libvirt-$RT: state '$(iso_field "libvirt-$RT" state)'"
    [ "$(iso_field "libvirt-$RT" profile)" = realtime ] || fail "libvirt-$RT: profile '$(iso_field "libvirt-$RT" profile)', want realtime"
    [ "$(cat /proc/sys/kernel/sched_rt_runtime_us)" = -1 ] || fail "RT throttling still on ($(cat /proc/sys/kernel/sched_rt_runtime_us)) with FIFO vCPUs"
    scope=$(scope_of "$RT") || fail "no scope for $RT"
    local t policy
    for t in $(cat "$scope"/libvirt/vcpu*/cgroup.threads); do
        policy=$(chrt -p "$t" | sed -n 's/.*scheduling policy: //p')
        [ "$policy" = SCHED_FIFO ] || fail "vCPU thread $t runs $policy, want SCHED_FIFO"
    done
    note "$RT: profile realtime, vCPU threads SCHED_FIFO, sched_rt_runtime_us -1"
    KT_EXTRA_TARGETS=("$(qemu_pid "$RT")")
    check_clean "$iso" "$hk"
    [ "$(jq -r '.findings[] | select(.id == "rt-throttling") | .severity' "$KT_STATE/check.json")" = ok ] \
        || fail "check's rt-throttling: $(jq -c '.findings[] | select(.id == "rt-throttling")' "$KT_STATE/check.json")"
    destroy "$RT"
    wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "still isolated 20 s after virsh destroy $RT"
    wait_restored "$before" 20
    note "virsh destroy $RT: released, every value restored"

    # 8. tsc-deadline and --guest windows: defined by libvirt with every element kept; started
    # where TCG can (else the refusal names the feature)
    local fakeproc=$KT_STATE/proc-tsc res
    mkdir -p "$fakeproc"
    if grep -qw tsc_deadline_timer /proc/cpuinfo; then
        cp /proc/cpuinfo "$fakeproc/cpuinfo"
    else
        sed -E 's/^(flags[[:space:]]*:)/\1 tsc_deadline_timer/' /proc/cpuinfo > "$fakeproc/cpuinfo"
    fi
    disk_domain "$TSC" > "$KT_STATE/$TSC.xml"
    KVMISOLATE_PROC_ROOT=$fakeproc kvmi plan --apply "$KT_STATE/$TSC.xml" || fail "plan --apply with tsc_deadline_timer failed"
    has_elements "$KT_STATE/$TSC.xml" "the plan with tsc_deadline_timer" "$TSC_FEATURE" "${GUEST_SIDE[@]}"
    sed "s/mode='host-passthrough'/mode='maximum'/" "$KT_STATE/$TSC.xml" > "$KT_STATE/$TSC.define.xml"
    out=$(timeout -k 5 60 $VIRSH define "$KT_STATE/$TSC.define.xml" 2>&1) || fail "virsh define $TSC (tsc-deadline required) failed: $out"
    timeout -k 5 30 $VIRSH dumpxml --inactive "$TSC" > "$KT_STATE/$TSC.dump.xml"
    has_elements "$KT_STATE/$TSC.dump.xml" "virsh dumpxml $TSC" "policy='require' name='tsc-deadline'" "<pmu state='off'/>"
    try_start "$TSC"; res=$START_RESULT
    case $res in
        started)
            grep -qE -- "-cpu [^ ]*tsc-deadline=on" <<<"$START_CMD" || fail "$TSC started without tsc-deadline=on: $(grep -oE -- '-cpu [^ ]+' <<<"$START_CMD")"
            note "$TSC: defined and started with tsc-deadline required: $(grep -oE -- '-cpu [^ ]+' <<<"$START_CMD")" ;;
        refused:*tsc*|refused:*TSC*) note "$TSC: defined (dumpxml keeps the feature); start $res" ;;
        *) fail "$TSC: start $res (want started, or a refusal naming tsc-deadline)" ;;
    esac

    disk_domain "$WIN" > "$KT_STATE/$WIN.xml"
    kvmi plan --guest windows --apply "$KT_STATE/$WIN.xml" || fail "plan --guest windows --apply failed"
    has_elements "$KT_STATE/$WIN.xml" "the --guest windows plan" "${HYPERV[@]}" "${GUEST_SIDE[@]}"
    sed "s/mode='host-passthrough'/mode='maximum'/" "$KT_STATE/$WIN.xml" > "$KT_STATE/$WIN.define.xml"
    out=$(timeout -k 5 60 $VIRSH define "$KT_STATE/$WIN.define.xml" 2>&1) || fail "virsh define $WIN (Hyper-V enlightenments) failed: $out"
    timeout -k 5 30 $VIRSH dumpxml --inactive "$WIN" > "$KT_STATE/$WIN.dump.xml"
    has_elements "$KT_STATE/$WIN.dump.xml" "virsh dumpxml $WIN" "<hyperv mode='custom'>" "<stimer state='on'>" "<direct state='on'/>" \
        "<spinlocks state='on' retries='8191'/>" "<ipi state='on'/>" "<timer name='hypervclock' present='yes'/>" "<timer name='hpet' present='no'/>"
    cj=$(timeout -k 5 60 kvmisolate check --vm "$WIN" --json 2>/dev/null) || true
    [ "$(jq -r '.findings[] | select(.id == "vm-guest-side") | .severity' <<<"$cj")" = ok ] \
        || fail "check --vm $WIN: $(jq -c '.findings[] | select(.id == "vm-guest-side")' <<<"$cj")"
    try_start "$WIN"; res=$START_RESULT
    case $res in
        started)
            local p
            for p in "-cpu [^ ]*hv[-_]stimer" "-cpu [^ ]*hv[-_]stimer[-_]direct" "-cpu [^ ]*hv[-_]time" "hpet=off|-no-hpet"; do
                grep -qE -- "$p" <<<"$START_CMD" || fail "$WIN started, but QEMU's command line has no $p: $(grep -oE -- '-(cpu|machine) [^ ]+' <<<"$START_CMD" | paste -sd ' ' -)"
            done
            note "$WIN: defined and started with the Hyper-V enlightenments: $(grep -oE -- '-(cpu|machine) [^ ]+' <<<"$START_CMD" | paste -sd ' ' - | cut -c1-700)" ;;
        refused:*hv*|refused:*hyperv*|refused:*Hyper*|refused:*KVM*|refused:*kvm*) note "$WIN: defined (dumpxml keeps every enlightenment); start $res" ;;
        *) fail "$WIN: start $res (want started, or a refusal naming the Hyper-V features)" ;;
    esac
    wait_restored "$before" 20
}

cleanup() {
    lv_forget "$DOM" "$RT" "$TSC" "$WIN" kvmi-pwarm
    rm -f "$IMAGES/$DOM.img" "$IMAGES/$TSC.img" "$IMAGES/$WIN.img"
    KT_EXTRA_TARGETS=()
}
