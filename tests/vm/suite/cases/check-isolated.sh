# check-isolated: after `kvmisolate isolate` the partition findings clear (partition valid,
# CPUs held, no host task allowed there); induced faults show up: an IRQ moved back by hand
# onto an isolated CPU (irq-affinity names it), a CPU taken offline (partition-state and
# cpus-offline warn). IRQ affinities are put back afterwards. Then `bench --load` on the
# CPUs of its own isolation (`kvmisolate run --cpus 2-3 -- kvmisolate bench ...`, as a user
# measures isolated CPUs): exit 0, a sane result per CPU, its load only ever on the
# housekeeping CPUs while it runs, and nothing left behind (no load process, no temp file);
# the figures with and without --load go to the log.
# timeout: 300
ck_sev() { jq -r --arg i "$2" '[.findings[] | select(.id == $i)][0].severity // ""' <<<"$1"; }
IRQ_SAVE=
cleanup() {
    [ -n "$IRQ_SAVE" ] && [ -f "$IRQ_SAVE" ] || return 0
    local n v
    while read -r n v; do echo "$v" > "/proc/irq/$n/smp_affinity_list" 2>/dev/null || true; done < "$IRQ_SAVE"
}
run() {
    need_kvmisolate
    local pid j rc n irq=
    pid=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$pid" --partition root
    expect_isolation cpus-2-3 2-3 root "$pid"

    rc=0; j=$(kvmisolate check --json) || rc=$?
    [ "$(jq -r '."cpus-source"' <<<"$j")" = partitions ] || fail "cpus-source $(jq -r '."cpus-source"' <<<"$j"), want partitions"
    [ "$(jq -r .cpus <<<"$j")" = 2-3 ] || fail "audited CPUs $(jq -r .cpus <<<"$j"), want 2-3"
    [ "$(ck_sev "$j" partition-state)" = ok ] || fail "partition-state is $(ck_sev "$j" partition-state): $(jq -c '.findings[] | select(.id == "partition-state")' <<<"$j")"
    [ "$(ck_sev "$j" cpus-not-partitioned)" = ok ] || fail "cpus-not-partitioned is $(ck_sev "$j" cpus-not-partitioned)"
    [ "$(ck_sev "$j" cpus-offline)" = ok ] || fail "cpus-offline is $(ck_sev "$j" cpus-offline)"
    # Kernel threads created after the isolate (psimon) may be allowed everywhere; user tasks not.
    ! jq -e '.findings[] | select(.id == "threads-on-isolated-cpus") | .details[] | select(test("\\(task\\)"))' >/dev/null <<<"$j" \
        || fail "user tasks allowed on 2-3 after isolate: $(jq -c '.findings[] | select(.id == "threads-on-isolated-cpus") | .details' <<<"$j" | cut -c1-300)"
    [ "$rc" != 9 ] || fail "check exited 9 with the isolation in place: $(jq -c '[.findings[] | select(.severity == "error")]' <<<"$j")"
    note "isolated: worst $(jq -r .worst <<<"$j") (exit $rc), problems $(jq -c '[.findings[] | select(.severity == "warning" or .severity == "error") | .id]' <<<"$j")"

    # Fault 1: IRQs off 2-3 (what can be moved), then one moved back by hand.
    IRQ_SAVE=$KT_STATE/check-irqs.save; : > "$IRQ_SAVE"
    for n in $(ls /proc/irq | grep -E '^[0-9]+$'); do
        [ -e "/proc/irq/$n/smp_affinity_list" ] || continue
        echo "$n $(cat "/proc/irq/$n/smp_affinity_list")" >> "$IRQ_SAVE"
        if echo 0-1,4-5 > "/proc/irq/$n/smp_affinity_list" 2>/dev/null && [ -z "$irq" ] \
            && grep -qE "^ *$n:" /proc/interrupts; then irq=$n; fi
    done
    [ -n "$irq" ] || fail "no IRQ with a handler accepted a new affinity"
    j=$(kvmisolate check --json) || true
    note "IRQs moved off 2-3: irq-affinity $(ck_sev "$j" irq-affinity) $(jq -c '.findings[] | select(.id == "irq-affinity") | .details' <<<"$j" | cut -c1-200)"
    echo 2 > "/proc/irq/$irq/smp_affinity_list"
    j=$(kvmisolate check --json) || true
    [ "$(ck_sev "$j" irq-affinity)" = warning ] || fail "IRQ $irq moved onto CPU 2: irq-affinity is $(ck_sev "$j" irq-affinity)"
    jq -e --arg n "IRQ $irq " '.findings[] | select(.id == "irq-affinity") | .details[] | select(startswith($n))' >/dev/null <<<"$j" \
        || fail "irq-affinity does not name IRQ $irq: $(jq -c '.findings[] | select(.id == "irq-affinity") | .details' <<<"$j" | cut -c1-300)"
    note "IRQ $irq on CPU 2: $(jq -r --arg n "IRQ $irq " '.findings[] | select(.id == "irq-affinity") | .details[] | select(startswith($n))' <<<"$j")"
    cleanup; IRQ_SAVE=

    # Fault 2: CPU 3 offline.
    cpu_offline 3 || fail "the kernel refused to offline CPU 3"
    rc=0; j=$(kvmisolate check --json) || rc=$?
    [ "$(ck_sev "$j" cpus-offline)" = warning ] || fail "CPU 3 offline: cpus-offline is $(ck_sev "$j" cpus-offline)"
    case $(ck_sev "$j" partition-state) in
        warning|error) ;;
        *) fail "CPU 3 offline: partition-state is $(ck_sev "$j" partition-state)" ;;
    esac
    [ "$rc" -ge 8 ] || fail "CPU 3 offline: check exited $rc, want 8 or 9"
    note "CPU 3 offline (exit $rc): $(jq -r '[.findings[] | select(.id == "partition-state" or .id == "cpus-offline") | .found] | join("; ")' <<<"$j")"
    cpu_online 3
    release_ok cpus-2-3
    stop_fake_vm "$pid"
    bench_load
}

# bench_figures JSON: one line per CPU of a `bench --json` result.
bench_figures() {
    jq -r '.results[] | "CPU \(.cpu): \(.samples) samples, min \(."min-us") avg \(."avg-us" * 10 | round / 10) p50 \(."p50-us") p99 \(."p99-us") p99.9 \(."p99.9-us") max \(."max-us") us, overruns \(.overruns)"' <<<"$1"
}

# bench_sane JSON WHAT MIN-SAMPLES: a result per CPU of 2-3 whose every 200 us period of the
# 5 s was either measured or counted as an overrun (25000 ± 10 %), with at least MIN-SAMPLES
# samples and ordered figures. (Under TCG the guest's 6 CPUs share the host's cores: loading
# 4 of them starves the measured ones, whose periods then mostly overrun.)
bench_sane() {
    local j=$1 what=$2 min=$3
    [ "$(jq -r '[.results[].cpu] | map(tostring) | join(",")' <<<"$j")" = 2,3 ] \
        || fail "$what: results for CPUs $(jq -c '[.results[].cpu]' <<<"$j"), want 2,3"
    jq -e --argjson min "$min" '.results | all(.samples >= $min
        and (.samples + .overruns) >= 22500 and (.samples + .overruns) <= 27500
        and ."min-us" >= 0 and ."min-us" <= ."avg-us" and ."avg-us" <= ."max-us"
        and ."p50-us" <= ."p99-us" and ."p99-us" <= ."p99.9-us"
        and ."p99.9-us" <= ."max-us" + 1 and ."max-us" < 5000000)' >/dev/null <<<"$j" \
        || fail "$what: figures not sane: $(jq -c '[.results[] | del(.histogram, .interference)]' <<<"$j" | cut -c1-400)"
}

bench_load() {
    local out=$KT_STATE/bench.json bpid rc j t comm cpu allowed samples=0 bad= hk f k v
    hk=$(cpulist_minus "$(online_cpus)" 2-3)
    local wrap=(kvmisolate run -q --cpus 2-3 --partition isolated --)
    rc=0; j=$(timeout -k 5 60 "${wrap[@]}" kvmisolate bench --cpus 2-3 --duration 5s --json 2>"$KT_STATE/bench.err") || rc=$?
    [ "$rc" = 0 ] || fail "bench without --load exited $rc: $(head -c 300 "$KT_STATE/bench.err")"
    bench_sane "$j" "bench" 1000
    note "bench 2-3, 5 s, no load:"; bench_figures "$j" | sed 's/^/    /'

    wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "the first bench's isolation stayed"
    timeout -k 5 60 "${wrap[@]}" kvmisolate bench --cpus 2-3 --duration 5s --load --json > "$out" 2>"$KT_STATE/bench.err" &
    bpid=$!
    # Sample the load threads while they run: their allowed CPUs and the CPU they were last
    # on. The load saturates the housekeeping CPUs (and under TCG the guest's CPUs share the
    # host's cores), so the sampling shell runs SCHED_FIFO to get its turns.
    # No fork per round (pgrep only until the load's process is known, a builtin read as the
    # sleep): on a busy host a TCG guest's forks take long enough to starve the sampling.
    local seen=" " kp line kps= round=0 tick
    chrt -f -p 20 $$ || fail "cannot make the sampling shell SCHED_FIFO"
    exec {tick}<> <(:)
    while kill -0 "$bpid" 2>/dev/null; do
        if [[ $seen != *" load-"* ]] || [ $((round % 10)) = 0 ]; then
            kps=$(pgrep -x kvmisolate || true)
        fi
        round=$((round + 1))
        for kp in $kps; do
            for t in /proc/"$kp"/task/*; do
                read -r comm < "$t/comm" 2>/dev/null || continue
                case $comm in load-*) ;; *) continue ;; esac
                read -r line < "$t/stat" 2>/dev/null || continue
                read -ra f <<<"${line##*) }"
                cpu=${f[36]:-}
                allowed=
                while read -r k v; do
                    if [ "$k" = Cpus_allowed_list: ]; then allowed=$v; fi
                done < "$t/status" 2>/dev/null || true
                [ -n "$cpu" ] && [ -n "$allowed" ] || continue
                samples=$((samples + 1))
                [[ $seen == *" $comm "* ]] || seen+="$comm "
                cpulist_subset "$allowed" "$hk" || bad="$bad $comm allowed $allowed;"
                cpulist_subset "$cpu" "$hk" || bad="$bad $comm ran on CPU $cpu;"
            done
        done
        read -rt 0.2 -u "$tick" || true
    done
    exec {tick}<&-
    chrt -o -p 0 $$
    rc=0; wait "$bpid" || rc=$?
    j=$(cat "$out")
    [ "$rc" = 0 ] || fail "bench --load exited $rc: $(head -c 300 "$KT_STATE/bench.err")"
    [ "$(jq -r .load <<<"$j")" = true ] || fail "bench --load reports load $(jq -r .load <<<"$j")"
    bench_sane "$j" "bench --load" 50
    [ "$samples" -ge 6 ] || fail "only $samples sample(s) of load threads while bench --load ran (seen:$seen)"
    [ -z "$bad" ] || fail "load threads on isolated CPUs (housekeeping $hk):$bad"
    note "bench --load: $samples samples of load threads ($seen), all on housekeeping CPUs $hk"
    note "bench 2-3, 5 s, --load:"; bench_figures "$j" | sed 's/^/    /'
    [ "$(jq '.warnings | length' <<<"$j")" = 0 ] || note "bench --load warnings: $(jq -c .warnings <<<"$j")"
    # Nothing left behind.
    wait_for "[ \"\$(iso_count)\" = 0 ]" 20 0.5 || fail "bench's isolation stayed after it exited"
    ! pgrep -x kvmisolate >/dev/null || fail "a kvmisolate process is left after bench: $(pgrep -a -x kvmisolate)"
    ! ls /var/tmp/kvmisolate-bench-load-* /tmp/kvmisolate-bench-load-* >/dev/null 2>&1 \
        || fail "bench left its temp file: $(ls /var/tmp/kvmisolate-bench-load-* /tmp/kvmisolate-bench-load-* 2>/dev/null)"
    rm -f "$out"
}
