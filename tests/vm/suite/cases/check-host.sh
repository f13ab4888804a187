# check-host: `kvmisolate check` on the un-isolated host, as root and as an unprivileged user:
# no isolation found (info), cgroup v2 + cpuset fine, kernel features match the kernel; with
# --cpus 2-3: not partitioned (error, exit 9), host tasks and IRQs allowed there (warnings);
# --vm of a domain libvirt does not have (no libvirt in the base image) is exit 5 naming the
# domain and what was tried; bad --cpus is a usage error.
# timeout: 90
ck_sev() { # JSON ID: severity of the first finding ID ("" if none)
    jq -r --arg i "$2" '[.findings[] | select(.id == $i)][0].severity // ""' <<<"$1"
}
run() {
    need_kvmisolate
    local j rc want
    rc=0; j=$(kvmisolate check --json) || rc=$?
    jq -e '.version == 1' >/dev/null <<<"$j" || fail "check --json has no version 1: $(head -c 200 <<<"$j")"
    [ "$(jq -r '."cpus-source"' <<<"$j")" = none ] || fail "cpus-source $(jq -r '."cpus-source"' <<<"$j"), want none"
    [ "$(ck_sev "$j" no-isolation)" = info ] || fail "no-isolation finding missing"
    [ "$(ck_sev "$j" cgroup-v2)" = ok ] || fail "cgroup-v2 is $(ck_sev "$j" cgroup-v2)"
    [ "$(ck_sev "$j" cpuset-controller)" = ok ] || fail "cpuset-controller is $(ck_sev "$j" cpuset-controller)"
    want=ok; kernel_at_least 6 8 || want=info
    [ "$(ck_sev "$j" kernel-features)" = "$want" ] || fail "kernel-features is $(ck_sev "$j" kernel-features) on $(uname -r), want $want"
    # which isolation duties this kernel does itself, and what still takes boot parameters
    [ "$(ck_sev "$j" kernel-duties)" = info ] || fail "kernel-duties is '$(ck_sev "$j" kernel-duties)', want info"
    local duties r
    duties=$(jq -r '[.findings[] | select(.id == "kernel-duties")][0] | .found + " | " + (.details | join(" | "))' <<<"$j")
    r=$(uname -r); grep -q "Linux ${r%%.*}\.$(cut -d. -f2 <<<"$r" | tr -dc 0-9):" <<<"$duties" || fail "kernel-duties does not name this kernel: $duties"
    grep -q 'nohz_full, rcu_nocbs, isolcpus=managed_irq' <<<"$duties" || fail "kernel-duties does not list the boot-only parameters: $duties"
    if kernel_at_least 7 0; then
        grep -q 'unbound kthreads: with isolated partitions the kernel' <<<"$duties" || fail "7.x: kthreads not the kernel's with isolated partitions: $duties"
    else
        grep -q 'unbound kthreads: with isolated partitions the kernel moves the existing ones; kvmisolated pins new ones' <<<"$duties" || fail "$(uname -r): kthread duty wrong: $duties"
    fi
    note "kernel-duties: $(cut -c1-300 <<<"$duties")"
    [ -z "$(ck_sev "$j" irq-affinity)" ] || fail "CPU checks ran with nothing to audit"
    want=0; [ "$(jq -r .worst <<<"$j")" = warning ] && want=8
    [ "$rc" = "$want" ] || fail "exit $rc with worst $(jq -r .worst <<<"$j"), want $want"
    note "no isolation: worst $(jq -r .worst <<<"$j"), findings $(jq -c '[.findings[] | select(.severity != "ok") | .id]' <<<"$j")"

    rc=0; j=$(kvmisolate check --cpus 2-3 --json) || rc=$?
    [ "$rc" = 9 ] || fail "check --cpus 2-3 on an un-isolated host exited $rc, want 9"
    [ "$(ck_sev "$j" cpus-not-partitioned)" = error ] || fail "cpus-not-partitioned is $(ck_sev "$j" cpus-not-partitioned)"
    [ "$(ck_sev "$j" threads-on-isolated-cpus)" = warning ] || fail "threads-on-isolated-cpus is $(ck_sev "$j" threads-on-isolated-cpus)"
    jq -e '[.findings[] | select(.id == "threads-on-isolated-cpus") | .details[] | select(startswith("1 "))] | length > 0' >/dev/null <<<"$j" \
        || fail "PID 1 is not among the threads allowed on 2-3"
    [ "$(ck_sev "$j" irq-affinity)" = warning ] || fail "irq-affinity is $(ck_sev "$j" irq-affinity)"
    [ "$(ck_sev "$j" cpus-offline)" = ok ] || fail "cpus-offline is $(ck_sev "$j" cpus-offline)"
    note "--cpus 2-3: $(jq -c '[.findings[] | select(.severity == "error" or .severity == "warning") | .id]' <<<"$j")"

    kvmi check --cpus 2-3 || true
    head -1 "$KT_STATE/last-output" | grep -q 'CPUs 2-3 (from --cpus)' || fail "human output does not start with the summary"
    grep -q '^  ERROR    cpus-not-partitioned' "$KT_STATE/last-output" || fail "the summary has no line for cpus-not-partitioned"

    rc=0; j=$(as_user bob kvmisolate check --cpus 2-3 --json) || rc=$?
    [ "$rc" = 9 ] || fail "check as bob exited $rc, want 9"
    jq -e '.findings | length > 10' >/dev/null <<<"$j" || fail "check as bob gave few findings"
    note "as bob: unreadable $(jq -c '[.unreadable[].path]' <<<"$j" | cut -c1-200)"

    expect_rc 5 "check --vm" kvmi check --vm win10
    grep -q 'libvirt domain "win10" not found' "$KT_STATE/last-output" || fail "--vm of an unknown domain does not name it: $(last_output)"
    grep -q '/etc/libvirt/qemu/win10.xml' "$KT_STATE/last-output" || fail "--vm of an unknown domain does not say what was tried: $(last_output)"
    expect_rc 2 "check --cpus 5-2" kvmi check --cpus 5-2
}
