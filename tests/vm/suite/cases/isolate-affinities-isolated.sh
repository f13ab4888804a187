# isolate-affinities-isolated: like isolate-affinities with --partition isolated: also the root's
# cpuset.cpus.isolated lists 2-3 (where the kernel has that file, 6.8+) and the unbound
# workqueue mask leaves them (where cpumask_requested exists).
run() {
    need_kvmisolate
    local pid wq
    pid=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$pid" --partition isolated
    expect_isolation cpus-2-3 2-3 isolated "$pid"
    if [ -e /sys/devices/virtual/workqueue/cpumask_requested ]; then
        wq=$(cat /sys/devices/virtual/workqueue/cpumask)
        # 0-1,4-5 of 6 CPUs = 0x33
        [ "$((16#$wq & 16#0c))" = 0 ] || fail "unbound workqueue mask $wq still has CPUs 2-3"
        note "workqueue cpumask $wq (requested $(cat /sys/devices/virtual/workqueue/cpumask_requested))"
    fi
    release_ok cpus-2-3
    expect_no_isolations
    if have_isolated_file; then
        [ -z "$(cat "$CG/cpuset.cpus.isolated")" ] || fail "root cpuset.cpus.isolated is '$(cat "$CG/cpuset.cpus.isolated")' after release"
    fi
}
