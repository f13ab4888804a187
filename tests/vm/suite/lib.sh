# Helpers for the kvmisolate VM suite (sourced; bash; runs inside the guest as root).
# Reusable by later suites: as_user, all_affinities, snapshot/snapshot_diff, start_fake_vm,
# cpu_offline/cpu_online, wait_for, the cpulist helpers and the kvmisolate wrappers.

KT_DIR=${KT_DIR:-/usr/lib/kvmisolate-tests}
KT_STATE=${KT_STATE:-/run/kvmisolate-tests}
CG=${CG:-/sys/fs/cgroup}
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket
mkdir -p "$KT_STATE"
[ -e "$KT_STATE/tids-before-isolate" ] || : > "$KT_STATE/tids-before-isolate"

# kvmisolate's own cgroups (pids targets): kvmisolate.slice under systemd, /kvmisolate without.
KT_OWN_CGROUPS_RE="^$CG/kvmisolate(\\.slice)?/"

# ---------------------------------------------------------------------------------------------
# boot parameters (from the kernel command line, set by tests/vm/run)
# ---------------------------------------------------------------------------------------------
cmdline_param() { # NAME [DEFAULT]
    local w
    for w in $(cat /proc/cmdline); do
        case $w in "$1"=*) echo "${w#*=}"; return ;; esac
    done
    echo "${2:-}"
}
KT_MODE=${KT_MODE:-$(cmdline_param kvmisolate.mode systemd)}       # systemd | nosystemd
KT_KERNEL=${KT_KERNEL:-$(cmdline_param kvmisolate.kernel "$(uname -r)")}
export KT_MODE KT_KERNEL

have_systemd() { [ "$KT_MODE" = systemd ] && [ -d /run/systemd/system ]; }
# Remote partitions came with 6.7 (cpuset.cpus.exclusive). The daemon must detect them by the
# files present; the suite's *expectation* comes from the kernel it was booted with.
kernel_at_least() { # MAJOR MINOR
    local r ma mi; r=$(uname -r); ma=${r%%.*}; mi=${r#*.}; mi=${mi%%[!0-9]*}
    [ "$ma" -gt "$1" ] || { [ "$ma" -eq "$1" ] && [ "$mi" -ge "$2" ]; }
}
have_remote_partitions() { kernel_at_least 6 7; }
have_isolated_file() { [ -e "$CG/cpuset.cpus.isolated" ]; }

# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
note() { printf '  %s\n' "$*"; }
# fail WHY: end the current case as failed (run-case turns this into "FAIL name: WHY").
fail() {
    printf '%s\n' "$*" > "$KT_RESULT"
    exit 1
}
skip() {
    printf '%s\n' "$*" > "$KT_RESULT"
    exit 77
}
# check COND-DESCRIPTION CMD...: fail with the description unless CMD succeeds
check() { local what=$1; shift; "$@" || fail "$what"; }

# ---------------------------------------------------------------------------------------------
# cpulists
# ---------------------------------------------------------------------------------------------
# cpulist_expand "0-1,4" -> "0 1 4"
cpulist_expand() {
    local list=${1:-} part a b out=()
    [ -z "$list" ] && { echo; return; }
    IFS=, read -ra parts <<<"$list"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then a=${part%-*}; b=${part#*-}; for ((; a <= b; a++)); do out+=("$a"); done
        else out+=("$part"); fi
    done
    echo "${out[*]}"
}
# cpulist_compact "0 1 4 5" -> "0-1,4-5"
cpulist_compact() {
    local -a cpus; read -ra cpus <<<"$(tr ' ' '\n' <<<"$*" | sort -n | uniq | tr '\n' ' ')"
    local out= start= prev= c
    for c in "${cpus[@]}"; do
        if [ -z "$start" ]; then start=$c prev=$c; continue; fi
        if [ "$c" -eq $((prev + 1)) ]; then prev=$c; continue; fi
        out+="${out:+,}$start"; [ "$prev" != "$start" ] && out+="-$prev"
        start=$c prev=$c
    done
    [ -n "$start" ] && { out+="${out:+,}$start"; [ "$prev" != "$start" ] && out+="-$prev"; }
    echo "$out"
}
# cpulist_subset A B: every CPU of A is in B
cpulist_subset() {
    local c b=" $(cpulist_expand "$2") "
    for c in $(cpulist_expand "$1"); do [[ $b == *" $c "* ]] || return 1; done
}
cpulist_eq() { [ "$(cpulist_compact "$(cpulist_expand "$1")")" = "$(cpulist_compact "$(cpulist_expand "$2")")" ]; }
# cpulist_minus A B
cpulist_minus() {
    local c b=" $(cpulist_expand "$2") " out=()
    for c in $(cpulist_expand "$1"); do [[ $b == *" $c "* ]] || out+=("$c"); done
    cpulist_compact "${out[*]}"
}
online_cpus() { cat /sys/devices/system/cpu/online; }

# ---------------------------------------------------------------------------------------------
# waiting
# ---------------------------------------------------------------------------------------------
# wait_for COND [TIMEOUT_SECS (10)] [INTERVAL (0.2)]: eval COND until it succeeds
wait_for() {
    local cond=$1 t=${2:-10} iv=${3:-0.2} end
    end=$(( $(date +%s%N) / 1000000 + t * 1000 ))
    while :; do
        eval "$cond" && return 0
        [ $(( $(date +%s%N) / 1000000 )) -ge "$end" ] && return 1
        sleep "$iv"
    done
}

# ---------------------------------------------------------------------------------------------
# users
# ---------------------------------------------------------------------------------------------
# as_user USER CMD...: run CMD as USER, with the system bus address and no login session
# (setpriv: no PAM, no logind session). polkit sees such a caller as neither local nor active,
# so `auth_admin` applies, which without an agent (and with --no-ask-password) is a denial.
as_user() {
    local u=$1; shift
    setpriv --reuid="$u" --regid="$u" --init-groups --reset-env -- \
        env DBUS_SYSTEM_BUS_ADDRESS="$DBUS_SYSTEM_BUS_ADDRESS" "$@"
}

# ---------------------------------------------------------------------------------------------
# tasks and affinities
# ---------------------------------------------------------------------------------------------
PF_KTHREAD=$((0x00200000))
PF_NO_SETAFFINITY=$((0x04000000))

# all_affinities: one line per task (every /proc/*/task/*):
#   TID PID PPID KIND CPUS COMM
# KIND: user | kthread (movable kernel thread) | kpinned (kernel thread with PF_NO_SETAFFINITY:
# per-CPU kthreads and workqueue rescuers, which nobody can move). Tasks that vanish while
# being read are left out. No forks per task (bash builtins only), so it is cheap under TCG.
all_affinities() {
    {
        # Tasks that exit between the glob and the read make grep exit 2: not an error here.
        grep -s -H '' /proc/[0-9]*/task/[0-9]*/stat || true
        grep -s -H '^Cpus_allowed_list:' /proc/[0-9]*/task/[0-9]*/status || true
    } | awk -v PFK="$PF_KTHREAD" -v PFN="$PF_NO_SETAFFINITY" '
        function bit(v, b) { return int(v / b) % 2 }
        {
            c = index($0, ":"); path = substr($0, 1, c - 1); rest = substr($0, c + 1)
            split(path, pp, "/"); key = pp[3] " " pp[5]          # pid tid
            if (pp[6] == "status") { sub(/^Cpus_allowed_list:[ \t]*/, "", rest); cpus[key] = rest; next }
            o = index(rest, "("); e = 0
            for (i = length(rest); i > o; i--) if (substr(rest, i, 1) == ")") { e = i; break }
            comm = substr(rest, o + 1, e - o - 1); gsub(/ /, "_", comm)
            n = split(substr(rest, e + 2), f, " ")                # f[1] state, f[2] ppid, f[7] flags
            kind = "user"
            if (bit(f[7], PFK)) kind = bit(f[7], PFN) ? "kpinned" : "kthread"
            info[key] = f[2] " " kind; name[key] = comm
        }
        END {
            for (k in info) if (k in cpus) {
                split(k, kk, " ")
                split(info[k], ik, " ")
                printf "%s %s %s %s %s %s\n", kk[2], kk[1], ik[1], ik[2], cpus[k], name[k]
            }
        }' | sort -n
}

# affinity_offenders ALLOWED [EXCLUDE_PID...]: tasks (other than kpinned kthreads and the
# excluded processes' threads) allowed on a CPU outside ALLOWED. Prints "comm(tid):cpus".
affinity_offenders() {
    local allowed=$1; shift
    all_affinities | awk -v allowed="$allowed" -v ex=" $* " '
        function expand(list, set,   n, parts, i, ab, a, b) {
            n = split(list, parts, ",")
            for (i = 1; i <= n; i++) {
                if (split(parts[i], ab, "-") == 2) { a = ab[1] + 0; b = ab[2] + 0 } else { a = b = parts[i] + 0 }
                for (; a <= b; a++) set[a] = 1
            }
        }
        BEGIN { expand(allowed, ok) }
        phase != 2 { before[$1] = 1; next }
        $4 == "kpinned" { next }
        index(ex, " " $2 " ") { next }
        {
            delete c; expand($5, c)
            for (k in c) if (!(k in ok)) {
                what = $4
                if (had_before && !($1 in before)) {
                    # Linux resets a new kernel thread to the kthread housekeeping mask (all
                    # CPUs without isolcpus), ignoring cpuset partitions; kvmisolated pins such
                    # threads within moments of their creation. Marked for expect_isolation.
                    if ($4 == "kthread") { printf "LATE %s(%s):%s\n", $6, $1, $5; next }
                    what = what ", new since the isolate"
                }
                printf "%s(%s,%s):%s\n", $6, $1, what, $5; next
            }
        }' had_before="$([ -s "$KT_STATE/tids-before-isolate" ] && echo 1 || echo 0)" \
           "$KT_STATE/tids-before-isolate" phase=2 -
}
# task_cpus TID-or-PID
task_cpus() { awk '/^Cpus_allowed_list:/ {print $2}' "/proc/$1/status"; }
# threads_cpus PID: "comm:cpus" for each thread of PID
threads_cpus() {
    local t
    for t in /proc/"$1"/task/*; do
        printf '%s:%s\n' "$(cat "$t/comm")" "$(awk '/^Cpus_allowed_list:/ {print $2}' "$t/status")"
    done
}
affinity_summary() { # how many tasks of each kind are allowed where
    all_affinities | awk '{n[$4" "$5]++} END {for (k in n) printf "    %-8s %-12s %d tasks\n", substr(k,1,index(k," ")-1), substr(k,index(k," ")+1), n[k]}' | sort
}

pid_alive() { # a zombie is not alive
    local s
    { read -r s < "/proc/$1/stat"; } 2>/dev/null || return 1
    s=${s##*) }; [ "${s%% *}" != Z ]
}

# ---------------------------------------------------------------------------------------------
# the stand-in VM
# ---------------------------------------------------------------------------------------------
# start_fake_vm N [BUSY_PERCENT]: prints the pid of a process with N threads named vcpu0..
# (see fakevm.c; 2% busy by default: TCG emulates all vCPUs on one host thread). Tracked, killed
# by the case cleanup.
start_fake_vm() {
    local n=${1:-2} busy=${2:-2} f pid
    f=$(mktemp "$KT_STATE/fakevm.XXXXXX")
    chmod 666 "$f"
    if [ -n "${KT_FAKEVM_AS:-}" ]; then
        as_user "$KT_FAKEVM_AS" sh -c 'exec "$0" "$1" "$2" > "$3"' "$KT_DIR/fakevm" "$n" "$busy" "$f" > /dev/null 2>&1 < /dev/null &
    else
        "$KT_DIR/fakevm" "$n" "$busy" > "$f" 2>/dev/null < /dev/null &
    fi
    wait_for "[ -s '$f' ]" 10 0.05 || { echo "fakevm did not start" >&2; return 1; }
    pid=$(<"$f"); rm -f "$f"
    echo "$pid" >> "$KT_STATE/fakevms"
    wait_for "[ \$(ls /proc/$pid/task | wc -l) -ge $((n + 1)) ]" 10 0.05 || true
    echo "$pid"
}
# start_fake_vm_as USER N [BUSY_PERCENT]: the same, running as USER
start_fake_vm_as() { local u=$1; shift; KT_FAKEVM_AS=$u start_fake_vm "$@"; }
stop_fake_vm() { # PID: SIGTERM, wait until gone (or zombie)
    kill "$1" 2>/dev/null || true
    wait_for "! pid_alive $1" 10 0.1 || { kill -9 "$1" 2>/dev/null; wait_for "! pid_alive $1" 5 0.1; }
}
stop_all_fake_vms() {
    local p
    [ -f "$KT_STATE/fakevms" ] || return 0
    for p in $(cat "$KT_STATE/fakevms"); do stop_fake_vm "$p"; done
    rm -f "$KT_STATE/fakevms"
}

# ---------------------------------------------------------------------------------------------
# CPU hotplug
# ---------------------------------------------------------------------------------------------
cpu_offline() { echo 0 > "/sys/devices/system/cpu/cpu$1/online"; }
cpu_online() { echo 1 > "/sys/devices/system/cpu/cpu$1/online"; }
all_cpus_online() {
    local f
    for f in /sys/devices/system/cpu/cpu[0-9]*/online; do
        [ "$(cat "$f")" = 1 ] || echo 1 > "$f" 2>/dev/null || true
    done
}

# ---------------------------------------------------------------------------------------------
# snapshots of every value kvmisolate may change
# ---------------------------------------------------------------------------------------------
SNAP_SYSCTLS="vm/stat_interval kernel/timer_migration kernel/sched_rt_runtime_us kernel/watchdog_cpumask kernel/split_lock_mitigate kernel/numa_balancing"
# snapshot FILE: "PATH<TAB>VALUE" lines, sorted (an empty value is written "(empty)"). Covers every cpuset.* file and
# cgroup.subtree_control under the cgroup root (recursively), the workqueue masks, IRQ
# affinities, default_smp_affinity, THP, hugepage pools, the fair server (when debugfs is
# mounted), the CPUs' PM QoS resume latency limits, the cpufreq energy/performance
# preferences, kvmisolate's irqbalance drop-in and the sysctls above.
snapshot() {
    local out=$1 f v
    {
        while IFS= read -r -d '' f; do
            v=; IFS= read -r v 2>/dev/null < "$f" || true
            printf '%s\t%s\n' "$f" "${v:-(empty)}"
        # The daemon's own service cgroup comes and goes with D-Bus activation and idle exit.
        done < <(find "$CG" -path "$CG/system.slice/kvmisolated.service" -prune -o \
                 \( -name 'cpuset.*' -o -name cgroup.subtree_control \) -type f -print0 2>/dev/null)
        for f in /sys/devices/virtual/workqueue/cpumask /sys/devices/virtual/workqueue/cpumask_requested \
                 /sys/bus/workqueue/devices/writeback/cpumask /proc/irq/default_smp_affinity \
                 /proc/irq/*/smp_affinity_list /sys/kernel/mm/transparent_hugepage/enabled \
                 /sys/kernel/mm/transparent_hugepage/defrag /sys/kernel/mm/hugepages/*/nr_hugepages \
                 /sys/kernel/debug/sched/fair_server/cpu*/runtime \
                 /sys/devices/system/cpu/cpu[0-9]*/power/pm_qos_resume_latency_us \
                 /sys/devices/system/cpu/cpufreq/policy*/energy_performance_preference \
                 /run/systemd/system/irqbalance.service.d/50-kvmisolate.conf; do
            [ -e "$f" ] || continue
            v=; IFS= read -r v 2>/dev/null < "$f" || true
            printf '%s\t%s\n' "$f" "${v:-(empty)}"
        done
        for f in $SNAP_SYSCTLS; do
            [ -e "/proc/sys/$f" ] || continue
            v=; IFS= read -r v 2>/dev/null < "/proc/sys/$f" || true
            printf '%s\t%s\n' "/proc/sys/$f" "${v:-(empty)}"
        done
    } | LC_ALL=C sort > "$out"
}

# snapshot_diff A B [--semantic]: prints the differences that count, one per line, and returns
# 1 if there is any. Always tolerated: cgroups of kvmisolate's own subtree (kvmisolate.slice,
# /kvmisolate) that exist on one side only, as long as they hold nothing (partition member, no
# cpuset.cpus / cpuset.cpus.exclusive), and the derived files of that subtree.
# --semantic (used while a released target still lives in a delegated cgroup, where systemd
# keeps +cpuset on) also tolerates cgroup.subtree_control anywhere and cpuset files that appear
# or vanish with a controller being switched on/off if they hold default values.
snapshot_diff() {
    local a=$1 b=$2 sem=0
    [ "${3:-}" = --semantic ] && sem=1
    LC_ALL=C join -t "$(printf '\t')" -a1 -a2 -e '<absent>' -o 0,1.2,2.2 "$a" "$b" | \
    awk -F'\t' -v own="$KT_OWN_CGROUPS_RE" -v sem="$sem" '
        function base(p) { sub(/.*\//, "", p); return p }
        function isdefault(p, v,   n) {
            n = base(p)
            if (v == "<absent>") return 1
            if (n == "cpuset.cpus.partition") return v == "member"
            if (n == "cpuset.cpus" || n == "cpuset.cpus.exclusive" || n == "cpuset.mems") return v == "(empty)"
            if (n ~ /\.effective$/ || n == "cgroup.subtree_control") return 1
            return 0
        }
        $2 == $3 { next }
        {
            p = $1; va = $2; vb = $3; n = base(p)
            if (p ~ own) {
                if (n ~ /\.effective$/ || n == "cgroup.subtree_control" || n == "cpuset.mems") next
                if ((va == "<absent>" || vb == "<absent>") && isdefault(p, va) && isdefault(p, vb)) next
            }
            if (sem) {
                if (n == "cgroup.subtree_control") next
                if ((va == "<absent>" || vb == "<absent>") && isdefault(p, va) && isdefault(p, vb)) next
            }
            printf "%s: %s -> %s\n", p, va, vb; bad = 1
        }
        END { exit bad }'
}
# snapshot_same A B [--semantic]: returns 0 if equal; otherwise prints the diff (indented)
snapshot_same() {
    local d
    d=$(snapshot_diff "$@") && return 0
    printf '%s\n' "$d" | head -40 | sed 's/^/    diff: /'
    return 1
}
# a short "what differs" for a FAIL message
snapshot_diff_short() { snapshot_diff "$@" | head -5 | sed "s|$CG/||" | paste -sd ';' -; }

# ---------------------------------------------------------------------------------------------
# kvmisolate
# ---------------------------------------------------------------------------------------------
KVMI_TIMEOUT=${KVMI_TIMEOUT:-90}
# kvmi ARGS...: run the CLI (bounded); prints its stdout+stderr to $KT_STATE/last-output too
kvmi() {
    local rc=0
    echo "    \$ kvmisolate $*" >&2
    timeout -k 5 "$KVMI_TIMEOUT" kvmisolate "$@" > "$KT_STATE/last-output" 2>&1 || rc=$?
    sed 's/^/    | /' "$KT_STATE/last-output" >&2
    [ "$rc" = 0 ] || echo "    (exit $rc)" >&2
    return $rc
}
# kvmi_rc ARGS...: prints the exit code, never fails
kvmi_rc() { local rc=0; kvmi "$@" || rc=$?; echo "$rc"; }
last_output() { cat "$KT_STATE/last-output"; }

kstatus() { timeout -k 5 "$KVMI_TIMEOUT" kvmisolate status --json; }
# iso_field NAME KEY: a key of an isolation's entry in `status --json` ("" if no such isolation)
iso_field() {
    kstatus | jq -r --arg n "$1" --arg k "$2" \
        '.isolations[]? | select(.name == $n) | .[$k] | if type == "array" then join(" ") else . end // empty'
}
iso_count() { kstatus | jq '.isolations | length'; }
iso_exists() { [ -n "$(iso_field "$1" name)" ]; }
# iso_cgroups NAME: absolute cgroup directories the isolation made partitions
iso_cgroups() {
    local c
    for c in $(iso_field "$1" cgroups); do echo "$CG/${c#/}"; done
}
# partition_of DIR: cpuset.cpus.partition of a cgroup directory
partition_of() { cat "$1/cpuset.cpus.partition"; }
partition_valid() { # DIR [TYPE]
    local p; p=$(partition_of "$1") || return 1
    if [ -n "${2:-}" ]; then [ "$p" = "$2" ]; else [ "$p" = root ] || [ "$p" = isolated ]; fi
}
root_effective() { cat "$CG/cpuset.cpus.effective"; }

# release_all: best effort
release_all() { timeout -k 5 60 kvmisolate release --all >/dev/null 2>&1 || true; }

# ---------------------------------------------------------------------------------------------
# the daemon
# ---------------------------------------------------------------------------------------------
DAEMON=/usr/libexec/kvmisolated
DAEMON_LOG=$KT_STATE/kvmisolated.log
bus_has_name() {
    dbus-send --system --print-reply=literal --dest=org.freedesktop.DBus /org/freedesktop/DBus \
        org.freedesktop.DBus.NameHasOwner string:org.kvmisolate.Isolator1 2>/dev/null | grep -q true
}
daemon_pid() {
    if have_systemd; then
        local p; p=$(systemctl show -P MainPID kvmisolated.service 2>/dev/null)
        [ -n "$p" ] && [ "$p" != 0 ] && echo "$p"
    else
        [ -s "$KT_STATE/daemon.pid" ] && pid_alive "$(cat "$KT_STATE/daemon.pid")" && cat "$KT_STATE/daemon.pid"
    fi
    return 0
}
# daemon_start [VAR=VALUE...]: start kvmisolated (no-op under systemd if it runs already
# and no environment is given); waits until it owns its bus name.
daemon_start() {
    if have_systemd; then
        if [ $# -gt 0 ]; then
            systemctl set-environment "$@"
            systemctl restart kvmisolated.service
        else
            systemctl reset-failed kvmisolated.service 2>/dev/null || true
            # systemd may have restarted a crashed daemon (Restart=on-failure) before a test
            # environment was cleared: such a daemon must not serve the next case.
            local p; p=$(daemon_pid)
            if [ -n "$p" ] && tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -q '^KVMISOLATED_CRASH_'; then
                systemctl restart kvmisolated.service
            else
                systemctl start kvmisolated.service
            fi
        fi
    else
        [ -n "$(daemon_pid)" ] && [ $# -eq 0 ] && return 0
        [ -n "$(daemon_pid)" ] && daemon_stop
        env "$@" KVMISOLATED_LOG="${KVMISOLATED_LOG:-info}" "$DAEMON" --no-systemd --idle-timeout 0 \
            >> "$DAEMON_LOG" 2>&1 < /dev/null &
        echo $! > "$KT_STATE/daemon.pid"
    fi
    wait_for bus_has_name 20 0.1 || { echo "kvmisolated did not take its bus name" >&2; return 1; }
}
# daemon_clear_env: forget any test environment given to daemon_start (next start is clean)
daemon_clear_env() {
    if have_systemd; then
        systemctl unset-environment KVMISOLATED_CRASH_AFTER_STEP KVMISOLATED_CRASH_AFTER_TUNING 2>/dev/null || true
    fi
}
daemon_stop() {
    if have_systemd; then systemctl stop kvmisolated.service
    else
        local p; p=$(daemon_pid)
        [ -n "$p" ] && { kill "$p"; wait_for "! pid_alive $p" 10 0.1 || kill -9 "$p"; }
        rm -f "$KT_STATE/daemon.pid"
    fi
}
daemon_restart() { daemon_clear_env; daemon_stop || true; daemon_start; }
daemon_log_tail() { # N
    if have_systemd; then journalctl -q -u kvmisolated.service -n "${1:-20}" --no-pager -o cat 2>/dev/null
    else tail -n "${1:-20}" "$DAEMON_LOG" 2>/dev/null; fi
}

# ---------------------------------------------------------------------------------------------
# polkit
# ---------------------------------------------------------------------------------------------
POLKIT_RULE_EXAMPLE=/usr/share/doc/kvmisolate/50-kvmisolate.rules.example
POLKIT_RULE=/etc/polkit-1/rules.d/50-kvmisolate.rules
polkitd_running() { pgrep -x polkitd >/dev/null; }

# ---------------------------------------------------------------------------------------------
# assertions shared by the cases (they call fail)
# ---------------------------------------------------------------------------------------------
need_kvmisolate() {
    command -v kvmisolate >/dev/null || fail "kvmisolate is not installed in the VM (booted with --no-project?)"
    [ -x "$DAEMON" ] || fail "$DAEMON is not installed"
}
# kvmi_as USER ARGS...: the CLI as USER (bounded), output in last-output, returns its status
kvmi_as() {
    local u=$1 rc=0; shift
    echo "    $u\$ kvmisolate $*" >&2
    as_user "$u" timeout -k 5 "$KVMI_TIMEOUT" kvmisolate "$@" > "$KT_STATE/last-output" 2>&1 || rc=$?
    sed "s/^/    $u| /" "$KT_STATE/last-output" >&2
    [ "$rc" = 0 ] || echo "    (exit $rc)" >&2
    return $rc
}
# isolate_ok ARGS...: `kvmisolate isolate --no-ask-password ARGS` must succeed
isolate_ok() {
    local rc=0
    all_affinities | awk '{print $1}' > "$KT_STATE/tids-before-isolate"
    kvmi isolate --no-ask-password "$@" || rc=$?
    [ "$rc" = 0 ] || fail "kvmisolate isolate $* exited $rc: $(tail -1 "$KT_STATE/last-output")"
}
release_ok() {
    local rc=0
    kvmi release --no-ask-password "$@" || rc=$?
    [ "$rc" = 0 ] || fail "kvmisolate release $* exited $rc: $(tail -1 "$KT_STATE/last-output")"
}
# expect_rc WANT WHAT CMD...: CMD must exit WANT
expect_rc() {
    local want=$1 what=$2 rc=0; shift 2
    "$@" || rc=$?
    [ "$rc" = "$want" ] || fail "$what: exit $rc, want $want ($(tail -1 "$KT_STATE/last-output" 2>/dev/null))"
}
wait_state() { # NAME STATE [TIMEOUT]
    wait_for "[ \"\$(iso_field '$1' state)\" = '$2' ]" "${3:-10}" 0.3
}
# expect_isolation NAME CPUS PARTITION TARGET_PID...: the isolation is active and the kernel
# agrees: every cgroup it lists is a valid PARTITION, the root keeps only the other CPUs, the
# target's threads run on CPUS, every other task (but kernel threads nobody can move) on
# housekeeping CPUs, and for isolated partitions the root lists CPUS in cpuset.cpus.isolated.
expect_isolation() {
    local name=$1 cpus=$2 part=$3; shift 3
    local st hk cg offenders late p bad=
    wait_state "$name" active 10 || fail "$name: state '$(iso_field "$name" state)' ($(iso_field "$name" state-reason)), want active"
    hk=$(cpulist_minus "$(online_cpus)" "$(kstatus | jq -r '."isolated-cpus"')")
    [ "$(iso_field "$name" cpus)" = "$(cpulist_compact "$(cpulist_expand "$cpus")")" ] \
        || fail "$name: status cpus '$(iso_field "$name" cpus)', want $cpus"
    cg=$(iso_cgroups "$name")
    [ -n "$cg" ] || fail "$name: status lists no cgroups"
    for p in $cg; do
        [ -d "$p" ] || fail "$name: cgroup $p (from status) does not exist"
        [ "$(partition_of "$p")" = "$part" ] || fail "$name: ${p#"$CG"/}/cpuset.cpus.partition reads '$(partition_of "$p")', want '$part'"
        note "${p#"$CG"/}: partition $(partition_of "$p"), effective $(cat "$p/cpuset.cpus.effective")"
    done
    cpulist_subset "$cpus" "$(cpulist_minus "$(online_cpus)" "$(root_effective)")" \
        || fail "$name: root cpuset.cpus.effective is $(root_effective): $cpus not taken out"
    if [ "$part" = isolated ] && have_isolated_file; then
        cpulist_subset "$cpus" "$(cat "$CG/cpuset.cpus.isolated")" \
            || fail "$name: root cpuset.cpus.isolated is '$(cat "$CG/cpuset.cpus.isolated")', want it to list $cpus"
    fi
    for p in "$@"; do
        while IFS=: read -r comm c; do
            cpulist_subset "$c" "$cpus" || bad+="$comm:$c "
        done < <(threads_cpus "$p")
        [ -z "$bad" ] || fail "$name: target $p threads outside $cpus: $bad"
    done
    offenders=$(affinity_offenders "$(cpulist_minus "$(online_cpus)" "$cpus")" "$@" "${KT_EXTRA_TARGETS[@]}")
    late=$(grep '^LATE ' <<<"$offenders" | sed 's/^LATE //' || true)
    if [ -n "$late" ]; then
        # kthreads created after the isolation: the daemon re-pins them (re-checked up to 1 s
        # after their creation), so look again once that has passed
        sleep 1.5
        offenders=$(affinity_offenders "$(cpulist_minus "$(online_cpus)" "$cpus")" "$@" "${KT_EXTRA_TARGETS[@]}")
        late=$(grep '^LATE ' <<<"$offenders" | sed 's/^LATE //' || true)
        [ -z "$late" ] || fail "$name: kernel threads created after the isolation still allowed outside the housekeeping CPUs: $(echo $late | cut -c1-300)"
    fi
    offenders=$(grep -v '^LATE ' <<<"$offenders" || true)
    [ -z "$offenders" ] || fail "$name: tasks allowed outside the housekeeping CPUs: $(echo $offenders | cut -c1-600)"
    note "$name active on $cpus ($part); housekeeping per status: $hk; root effective $(root_effective)"
}
KT_EXTRA_TARGETS=()
# own_cgroups_settled: kvmisolate's own subtree holds no process any more
own_cgroups_settled() {
    local f
    for f in $(find "$CG/kvmisolate.slice" "$CG/kvmisolate" -name cgroup.procs 2>/dev/null); do
        [ -s "$f" ] && return 1
    done
    return 0
}
# wait_restored BEFORE [--semantic] [TIMEOUT]: snapshot until it equals BEFORE (restoring can
# be asynchronous: systemd realizes cgroups after a unit goes away); fail with the diff if not.
wait_restored() {
    local before=$1 sem= t=10 now=$KT_STATE/now.snap
    [ "${2:-}" = --semantic ] && { sem=--semantic; t=${3:-10}; } || t=${2:-10}
    if wait_for "snapshot '$now' && snapshot_diff '$before' '$now' $sem >/dev/null" "$t" 0.5; then return 0; fi
    snapshot_same "$before" "$now" $sem || true
    fail "not restored${sem:+ ($sem)}: $(snapshot_diff_short "$before" "$now" $sem)"
}
# kvmisolate_leftovers: prints what of kvmisolate's exists besides the service itself, one per
# line: its own cgroups (kvmisolate.slice, /kvmisolate), keeper slices, and loaded units of its
# (the slice, scopes, keepers) in `systemctl list-units`. Nothing once every isolation is
# released: the cgroup tree and the unit list are as they were.
kvmisolate_leftovers() {
    local d
    for d in "$CG/kvmisolate.slice" "$CG/kvmisolate"; do
        if [ -d "$d" ]; then echo "cgroup ${d#"$CG"}"; fi
    done
    find "$CG" -type d -name '*kvmisolate?x2dkeep*' 2>/dev/null | sed "s|^$CG|cgroup |" || true
    if have_systemd; then
        systemctl list-units --plain --no-legend 2>/dev/null | awk '{print $1}' \
            | grep -E '^kvmisolate\.slice$|^kvmisolate-.*\.scope$|kvmisolate\\x2dkeep' | sed 's/^/unit /' || true
    fi
    return 0
}
# expect_no_leftovers: fail unless kvmisolate_leftovers is empty (systemd may take a moment)
expect_no_leftovers() {
    wait_for "[ -z \"\$(kvmisolate_leftovers)\" ]" 10 0.3 \
        || fail "left behind after the last release: $(kvmisolate_leftovers | paste -sd ';' -)"
}
expect_no_isolations() {
    [ "$(iso_count)" = 0 ] || fail "status still lists isolations: $(kstatus | jq -c '[.isolations[].name]')"
}
# pid1_all_cpus: PID 1 (and kthreadd) allowed on every online CPU again
expect_pid1_all_cpus() {
    wait_for "cpulist_eq \"\$(task_cpus 1)\" \"\$(online_cpus)\"" 5 0.2 \
        || fail "PID 1 is allowed on $(task_cpus 1), not every online CPU ($(online_cpus))"
}

# ---------------------------------------------------------------------------------------------
# libvirt (the --libvirt image; cases marked "# needs: libvirt")
# ---------------------------------------------------------------------------------------------
VIRSH="virsh -q -c qemu:///system"

# domain_xml NAME OPTIN(0/1) VCPU-CPUS...: a disk-less QEMU domain (TCG) pinned like the
# recipe. Environment: EMU / IOT the emulator and iothread pins (0-1), HP=1 memory backed by
# hugepages, NUMA its <numatune> node, MEM its memory in MiB (32), PROFILE the opt-in's profile (none), META_EXTRA more
# attributes of the opt-in element.
domain_xml() {
    local name=$1 optin=$2; shift 2
    local i=0 pins=
    for c in "$@"; do pins+="<vcpupin vcpu='$i' cpuset='$c'/>"; i=$((i + 1)); done
    cat <<EOT
<domain type='qemu'>
  <name>$name</name>
  $([ "$optin" = 1 ] && echo "<metadata><kvmisolate:isolate xmlns:kvmisolate='https://kvmisolate.org/xmlns/libvirt/1' profile='${PROFILE:-none}' ${META_EXTRA:-}/></metadata>")
  <memory unit='MiB'>${MEM:-32}</memory>
  $([ -n "${HP:-}" ] && echo "<memoryBacking><hugepages/></memoryBacking>")
  $([ -n "${NUMA:-}" ] && echo "<numatune><memory mode='strict' nodeset='$NUMA'/></numatune>")
  <vcpu placement='static'>$#</vcpu>
  <iothreads>1</iothreads>
  <cputune>$pins<emulatorpin cpuset='${EMU:-0-1}'/><iothreadpin iothread='1' cpuset='${IOT:-0-1}'/></cputune>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
  </devices>
</domain>
EOT
}

define() { # NAME OPTIN VCPU-CPUS...
    domain_xml "$@" > "$KT_STATE/$1.xml"
    $VIRSH define "$KT_STATE/$1.xml" >/dev/null || fail "virsh define $1 failed"
}

scope_of() { # NAME: the domain's scope directory (machine-qemu\x2dID\x2dNAME.scope, escaped)
    local d u
    for d in "$CG"/machine.slice/machine-qemu*.scope; do
        [ -d "$d" ] || continue
        u=${d##*/}; u=${u//\\x2d/-}
        case $u in machine-qemu-*-"$1".scope) echo "$d"; return ;; esac
    done
    return 1
}

qemu_pid() { cat "/run/libvirt/qemu/$1.pid"; }

start_ok() { # NAME
    local out
    out=$(timeout -k 5 120 $VIRSH start "$1" 2>&1) || fail "virsh start $1 failed: $out"
}

destroy() { timeout -k 5 60 $VIRSH destroy "$1" >/dev/null 2>&1 || true; }

# lv_warm_up NAME: start and destroy NAME, a defined domain that does not opt in, so that what
# libvirt and systemd create once (machine.slice, its cpuset controller) is in a snapshot taken
# after; nothing may be isolated meanwhile
lv_warm_up() {
    start_ok "$1"
    [ "$(iso_count)" = 0 ] || fail "a domain without the opt-in ($1) was isolated"
    destroy "$1"
    wait_for "! scope_of $1 >/dev/null" 20 0.5 || fail "$1's scope stayed"
}

# start_refused NAME REASON: `virsh start NAME` fails, and its error carries REASON (the words of
# kvmisolate's hook)
start_refused() {
    local out rc=0
    out=$(timeout -k 5 120 $VIRSH start "$1" 2>&1) || rc=$?
    [ "$rc" != 0 ] || fail "$1 started; kvmisolate's hook should have refused it ($2)"
    grep -qF "$2" <<<"$out" || fail "virsh start $1 failed without kvmisolate's reason ($2): $out"
    note "$1 refused: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
}

# lv_need: skip unless this boot has libvirt and systemd, fail if the hook is not installed
lv_need() {
    need_kvmisolate
    command -v virsh >/dev/null || skip "no libvirt in this image (tests/vm/run --libvirt)"
    have_systemd || skip "needs systemd (libvirt's machine scopes)"
    [ -x /etc/libvirt/hooks/qemu.d/kvmisolate ] || fail "make install did not install /etc/libvirt/hooks/qemu.d/kvmisolate"
    timeout -k 5 60 $VIRSH version >/dev/null 2>&1 || fail "libvirtd does not answer"
}

# lv_forget NAME...: destroy and undefine (cleanup; never fails)
lv_forget() {
    local d
    for d in "$@"; do
        timeout -k 5 30 $VIRSH destroy "$d" >/dev/null 2>&1
        timeout -k 5 30 $VIRSH undefine "$d" >/dev/null 2>&1
    done
    return 0
}

# host_threads_off CPUS EXCLUDED-PIDS...: every task but the domains' QEMUs and per-CPU
# kthreads is off CPUS
host_threads_off() {
    local cpus=$1 offenders late; shift
    offenders=$(affinity_offenders "$(cpulist_minus "$(online_cpus)" "$cpus")" "$@")
    late=$(grep '^LATE ' <<<"$offenders" | sed 's/^LATE //' || true)
    [ -z "$late" ] || note "kernel threads created later, allowed everywhere by the kernel: $(echo $late | cut -c1-200)"
    offenders=$(grep -v '^LATE ' <<<"$offenders" || true)
    [ -z "$offenders" ] || fail "tasks allowed on $cpus: $(echo $offenders | cut -c1-600)"
    note "every host task is off $cpus"
}
