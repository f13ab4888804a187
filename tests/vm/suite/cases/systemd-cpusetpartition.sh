# systemd-cpusetpartition (systemd 261+ only): a unit that sets CPUSetPartition= has its
# cpuset.cpus.partition written by systemd itself, so `isolate --unit` of it is refused (exit 6
# naming CPUSetPartition= and the way out) and nothing changes. Then a measurement for the
# choice documented in docs/ARCHITECTURE.md: what systemd makes of a transient scope with
# AllowedCPUs=2-3 CPUSetPartition=root in a slice of its own (the read-back, and whether it
# survives a daemon-reload), printed as "cpusetpartition: ..." lines.
U=kvmisolate-test-cspvm.service
S=kvmicsp.slice  # no dash: a dash nests slices (a-b.slice is inside a.slice)
cleanup() {
    local u
    for u in "$U" kvmisolate-test-cspscope.scope "$S"; do
        systemctl stop "$u" 2>/dev/null || true; systemctl reset-failed "$u" 2>/dev/null || true
    done
}
run() {
    need_kvmisolate
    local v before=$KT_STATE/csp-before.snap rc cg
    v=$(systemctl --version | awk 'NR==1 {print $2}')
    [ "${v%%.*}" -ge 261 ] 2>/dev/null || skip "systemd $v has no CPUSetPartition= (261+)"
    systemd-run --quiet --unit="$U" -p Delegate=yes -p AllowedCPUs=4-5 -p CPUSetPartition=member "$KT_DIR/fakevm" 2
    wait_for "[ \"\$(systemctl show -P MainPID $U)\" != 0 ]" 10 || fail "$U did not start"
    note "systemd $v: $U CPUSetPartition='$(systemctl show -P CPUSetPartition "$U")', dbus.service (unset) '$(systemctl show -P CPUSetPartition dbus.service)'"
    sleep 0.5
    snapshot "$before"
    rc=$(kvmi_rc isolate --cpus 4-5 --unit "$U")
    [ "$rc" = 6 ] || fail "isolate --unit of a unit with CPUSetPartition= exited $rc, want 6: $(last_output)"
    last_output | grep -q 'CPUSetPartition=' || fail "the refusal does not name CPUSetPartition=: $(last_output)"
    note "refused: $(last_output | head -2 | paste -sd' ' -)"
    [ "$(iso_count)" = 0 ] || fail "an isolation exists after the refusal"
    wait_restored "$before" --semantic || fail "the refusal changed: $(snapshot_diff_short "$before" "$KT_STATE/now.snap")"
    systemctl stop "$U"

    # measurement: systemd's own partition for a scope of ours
    systemd-run --quiet --scope --unit=kvmisolate-test-cspscope --slice="$S" -p AllowedCPUs=2-3 \
        -p CPUSetPartition=root sleep 300 &
    wait_for "systemctl -q is-active kvmisolate-test-cspscope.scope" 10 || fail "scope did not start"
    cg=$CG/$S/kvmisolate-test-cspscope.scope
    note "cpusetpartition: scope AllowedCPUs=2-3 CPUSetPartition=root: partition '$(cat "$cg/cpuset.cpus.partition" 2>/dev/null)', slice partition '$(cat "$CG/$S/cpuset.cpus.partition" 2>/dev/null)', slice cpus '$(cat "$CG/$S/cpuset.cpus" 2>/dev/null)', root effective $(root_effective), pid 1 on $(task_cpus 1)"
    systemctl daemon-reload
    sleep 1
    note "cpusetpartition: after daemon-reload: partition '$(cat "$cg/cpuset.cpus.partition" 2>/dev/null)'"
    systemctl stop kvmisolate-test-cspscope.scope "$S"
}
