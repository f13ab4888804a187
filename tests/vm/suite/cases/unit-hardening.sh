# unit-hardening: the installed kvmisolated.service scores at most 2.6 in `systemd-analyze
# security` (the table and score are logged; 3.2 before the issue 12 hardening; the goal of 2.5
# is missed by CAP_SYS_NICE alone, which pinning kernel threads needs: without it 2.5), the running service holds only CAP_SYS_ADMIN,
# CAP_SYS_NICE, CAP_DAC_OVERRIDE and CAP_NET_ADMIN, sees a private /dev, and may write under /run/systemd only
# in the irqbalance drop-in directory. (That the job still works under this unit is what every
# other case shows.)
run() {
    need_kvmisolate
    local out score pid caps
    out=$(systemd-analyze security --no-pager kvmisolated.service 2>&1) || true
    printf '%s\n' "$out" | grep -v '✓' | sed 's/^/    /' >&2
    score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for kvmisolated.service: \([0-9.]*\).*/\1/p')
    [ -n "$score" ] || fail "systemd-analyze security gave no score: $(printf '%s' "$out" | tail -2)"
    note "systemd-analyze security kvmisolated.service: $score"
    awk -v s="$score" 'BEGIN { exit !(s <= 2.6) }' || fail "exposure $score, want at most 2.6"
    daemon_start
    pid=$(daemon_pid)
    [ -n "$pid" ] || fail "kvmisolated is not running"
    caps=$(awk '/^CapBnd:/ {print $2}' "/proc/$pid/status")
    # CAP_DAC_OVERRIDE (1), CAP_NET_ADMIN (12), CAP_SYS_ADMIN (21), CAP_SYS_NICE (23)
    [ "$((16#$caps))" = $(( (1 << 1) | (1 << 12) | (1 << 21) | (1 << 23) )) ] \
        || fail "bounding set $caps ($(capsh --decode="$caps" 2>/dev/null)), want only cap_dac_override,cap_net_admin,cap_sys_admin,cap_sys_nice"
    [ ! -e "/proc/$pid/root/dev/sda" ] && [ ! -e "/proc/$pid/root/dev/vda" ] && [ -e "/proc/$pid/root/dev/null" ] \
        || fail "the service sees the host's devices (PrivateDevices=)"
    local rw ro
    rw=$(awk '$5 == "/run/systemd/system/irqbalance.service.d" {print $6}' "/proc/$pid/mountinfo" | tail -1)
    ro=$(awk '$5 == "/run" {print $6}' "/proc/$pid/mountinfo" | tail -1)
    [[ ${rw:-} == rw* ]] || fail "the irqbalance drop-in directory is not writable for the service (mount options '${rw:-none}')"
    [[ ${ro:-} == ro* ]] || fail "/run is writable for the service (mount options '${ro:-none}')"
    note "bounding set $caps; /run $ro; drop-in directory $rw"
}
