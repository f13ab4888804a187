# two-isolations: 2-3 and 4-5 at once (CPU 0-1 left to the host), released independently in both
# orders; after each release what is left equals the state of the remaining isolation alone.
run() {
    need_kvmisolate
    local s0=$KT_STATE/ti-0.snap sa=$KT_STATE/ti-a.snap sb=$KT_STATE/ti-b.snap a b
    snapshot "$s0"
    a=$(start_fake_vm 2); b=$(start_fake_vm 2)
    # B alone, to know what "only B" looks like
    isolate_ok --cpus 4-5 --pid "$b"
    snapshot "$sb"
    release_ok cpus-4-5
    wait_restored "$s0" --semantic
    # A then B; release A first (creation order)
    isolate_ok --cpus 2-3 --pid "$a"
    snapshot "$sa"
    isolate_ok --cpus 4-5 --pid "$b"
    KT_EXTRA_TARGETS=("$b"); expect_isolation cpus-2-3 2-3 "$(iso_field cpus-2-3 partition)" "$a"
    KT_EXTRA_TARGETS=("$a"); expect_isolation cpus-4-5 4-5 "$(iso_field cpus-4-5 partition)" "$b"
    KT_EXTRA_TARGETS=()
    cpulist_eq "$(root_effective)" 0-1 || fail "root cpuset.cpus.effective $(root_effective) with both, want 0-1"
    [ "$(kstatus | jq -r '."isolated-cpus"')" = 2-5 ] || fail "isolated-cpus $(kstatus | jq -r '."isolated-cpus"'), want 2-5"
    release_ok cpus-2-3
    [ "$(iso_field cpus-4-5 state)" = active ] || fail "releasing cpus-2-3 left cpus-4-5 $(iso_field cpus-4-5 state)"
    wait_restored "$sb" --semantic
    release_ok cpus-4-5
    wait_restored "$s0" --semantic
    # A then B; release B first (reverse order)
    isolate_ok --cpus 2-3 --pid "$a"
    isolate_ok --cpus 4-5 --pid "$b"
    release_ok cpus-4-5
    [ "$(iso_field cpus-2-3 state)" = active ] || fail "releasing cpus-4-5 left cpus-2-3 $(iso_field cpus-2-3 state)"
    wait_restored "$sa" --semantic
    release_ok cpus-2-3
    expect_no_isolations
    stop_fake_vm "$a"; stop_fake_vm "$b"; wait_for own_cgroups_settled 10 || true
    wait_restored "$s0"
}
