# status: `kvmisolate status --json` answers (D-Bus activation or the started daemon), with the
# documented keys and a kernel-support that matches this kernel and boot.
run() {
    need_kvmisolate
    local j
    j=$(kstatus) || fail "kvmisolate status --json failed: $j"
    jq -e . >/dev/null <<<"$j" || fail "status --json is not JSON: $(head -c 200 <<<"$j")"
    local k
    for k in version isolated-cpus housekeeping-cpus online-cpus kernel-support isolations warnings; do
        jq -e --arg k "$k" 'has($k)' >/dev/null <<<"$j" || fail "status --json lacks '$k'"
    done
    [ "$(jq -r '."online-cpus"' <<<"$j")" = 0-5 ] || fail "online-cpus $(jq -r '."online-cpus"' <<<"$j"), want 0-5"
    [ "$(jq '.isolations | length' <<<"$j")" = 0 ] || fail "isolations at start: $(jq -c .isolations <<<"$j")"
    [ "$(jq -r '."kernel-support"."cgroup-v2"' <<<"$j")" = true ] || fail "kernel-support.cgroup-v2 is not true: $(jq -c '."kernel-support"' <<<"$j")"
    local want_remote=false want_systemd=false
    have_remote_partitions && want_remote=true
    have_systemd && want_systemd=true
    [ "$(jq -r '."kernel-support"."remote-partitions"' <<<"$j")" = "$want_remote" ] \
        || fail "kernel-support.remote-partitions is $(jq -r '."kernel-support"."remote-partitions"' <<<"$j") on $(uname -r), want $want_remote"
    [ "$(jq -r '."kernel-support".systemd' <<<"$j")" = "$want_systemd" ] \
        || fail "kernel-support.systemd is $(jq -r '."kernel-support".systemd' <<<"$j"), want $want_systemd"
    jq -e '."kernel-support"."partition-types" | index("root")' >/dev/null <<<"$j" \
        || fail "partition-types lacks root: $(jq -c '."kernel-support"."partition-types"' <<<"$j")"
    note "kernel-support: $(jq -c '."kernel-support" | del(.files)' <<<"$j")"
    kvmi status || fail "kvmisolate status (human) failed"
    [ -s "$KT_STATE/last-output" ] || fail "kvmisolate status printed nothing"
    as_user bob kvmisolate status --json >/dev/null || fail "reading the status as an unprivileged user failed"
}
