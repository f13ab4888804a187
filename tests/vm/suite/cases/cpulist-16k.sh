# cpulist-16k: the longest CPU list a caller may send (16 KiB of `1-8191,1-8191,...`) costs the
# daemon no noticeable work before authorization: alice (no rule: denied by polkit after the
# parse) and root (parsed, then refused: CPUs not available), three times each and four at
# once, all answered with their error while `kvmisolate status` keeps answering. What is
# asserted is the daemon's own CPU time (utime+stime of its process) per call: under 300 ms
# even under TCG, where the old parser (~0.9 s of CPU per list natively) needed several
# seconds. Wall times (dominated under TCG by the CLI's start and polkitd) are printed next to
# those of the same calls with a short list.
# timeout: 300
WATCHER=
cleanup() {
    # the status loop ends with the case, whatever happened
    touch "$KT_STATE/c16-stop"
    [ -n "$WATCHER" ] && { kill "$WATCHER" 2>/dev/null; wait "$WATCHER" 2>/dev/null; }
    rm -f "$KT_STATE/c16-stop"
    return 0
}
ms_now() { echo $(( $(date +%s%N) / 1000000 )); }
# cpu_ticks PID: utime+stime of PID in clock ticks
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# the_daemon: the daemon's pid (under systemd or started by hand)
the_daemon() { local p; p=$(daemon_pid); [ -n "$p" ] || p=$(pgrep -xo kvmisolated || true); echo "$p"; }

# timed WANT-RC USER ARGS...: runs the CLI as USER (root: kvmi), checks its exit status,
# prints the wall time in ms
timed() {
    local want=$1 u=$2 t0 rc=0; shift 2
    t0=$(ms_now)
    if [ "$u" = root ]; then kvmi "$@" >/dev/null 2>&1 || rc=$?; else kvmi_as "$u" "$@" >/dev/null 2>&1 || rc=$?; fi
    [ "$rc" = "$want" ] || fail "$u: exit $rc, want $want: $(tail -1 "$KT_STATE/last-output" | cut -c1-300)"
    echo $(( $(ms_now) - t0 ))
}

run() {
    need_kvmisolate
    local apid list before=$KT_STATE/c16-before.snap now=$KT_STATE/c16-now.snap dpid t0 t i rc c0 c1 calls=0 pids=()
    apid=$(start_fake_vm_as alice 1)
    list=$(printf '1-8191,%.0s' $(seq 2339))1-8191
    [ ${#list} -le 16384 ] || fail "the list is ${#list} bytes"
    note "list: ${#list} bytes"
    snapshot "$before"
    kstatus >/dev/null || fail "status does not answer"
    dpid=$(the_daemon)
    [ -n "$dpid" ] || fail "no daemon pid"

    # baseline: the same calls with a short list
    t=$(timed 4 alice isolate --no-ask-password --cpus 2 --name small --pid "$apid")
    note "alice, short list (denied): ${t} ms"
    t=$(timed 3 root isolate --no-ask-password --cpus 6 --name small --pid "$apid")
    note "root, short list (CPU 6 does not exist): ${t} ms"

    # status keeps answering meanwhile
    rm -f "$KT_STATE/c16-stop" "$KT_STATE/c16-status"
    ( while [ ! -e "$KT_STATE/c16-stop" ]; do
          t0=$(ms_now); rc=0
          timeout -k 2 20 kvmisolate status --json >/dev/null 2>&1 || rc=$?
          if [ "$rc" = 0 ]; then echo $(( $(ms_now) - t0 )) >> "$KT_STATE/c16-status"; else echo fail >> "$KT_STATE/c16-status"; fi
      done ) &
    WATCHER=$!

    c0=$(cpu_ticks "$dpid")
    for i in 1 2 3; do
        t=$(timed 4 alice isolate --no-ask-password --cpus "$list" --name big --pid "$apid")
        note "alice, 16 KiB list (denied after the parse): ${t} ms"
        t=$(timed 3 root isolate --no-ask-password --cpus "$list" --name big --pid "$apid")
        grep -q "not exist" "$KT_STATE/last-output" || fail "root's 16 KiB list: not the CPUs named: $(tail -1 "$KT_STATE/last-output" | cut -c1-300)"
        [ "$(wc -c < "$KT_STATE/last-output")" -lt 4000 ] || fail "the error repeats the whole list ($(wc -c < "$KT_STATE/last-output") bytes)"
        note "root, 16 KiB list (parsed, refused): ${t} ms"
        calls=$((calls + 2))
    done
    t0=$(ms_now)
    for i in 1 2 3 4; do
        ( rc=0; as_user alice timeout -k 5 60 kvmisolate isolate --no-ask-password --cpus "$list" --name "big$i" --pid "$apid" >/dev/null 2>&1 || rc=$?
          echo "$rc" > "$KT_STATE/c16-rc$i" ) &
        pids+=($!)
    done
    wait "${pids[@]}" || true
    t=$(( $(ms_now) - t0 ))
    c1=$(cpu_ticks "$dpid")
    calls=$((calls + 4))
    for i in 1 2 3 4; do
        [ "$(cat "$KT_STATE/c16-rc$i")" = 4 ] || fail "concurrent call $i: exit $(cat "$KT_STATE/c16-rc$i"), want 4"
    done
    note "four concurrent 16 KiB lists answered within ${t} ms"
    touch "$KT_STATE/c16-stop"; wait "$WATCHER" 2>/dev/null || true; WATCHER=
    ! grep -q fail "$KT_STATE/c16-status" || fail "status failed while the lists were parsed"
    local st_n st_worst
    st_n=$(wc -l < "$KT_STATE/c16-status")
    st_worst=$(sort -n "$KT_STATE/c16-status" | tail -1)
    note "status answered $st_n times meanwhile, slowest ${st_worst} ms"
    [ "$st_n" -ge 2 ] || fail "status answered only $st_n times"
    [ "$(the_daemon)" = "$dpid" ] || fail "the daemon restarted during the case (pid $dpid -> $(the_daemon))"
    local per=$(( (c1 - c0) * 1000 / $(getconf CLK_TCK) / calls ))
    note "daemon CPU time: $(( (c1 - c0) * 1000 / $(getconf CLK_TCK) )) ms for $calls calls with the 16 KiB list (${per} ms each)"
    [ "$per" -lt 300 ] || fail "the daemon spent ${per} ms of CPU per 16 KiB list"
    expect_no_isolations
    snapshot "$now"
    snapshot_same "$before" "$now" || fail "refused lists changed $(snapshot_diff_short "$before" "$now")"
}
