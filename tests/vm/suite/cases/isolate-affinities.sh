# isolate-affinities: isolate 2-3 for a stand-in VM (pids target, root partition): the kernel
# moves every other task to 0-1,4-5 (but per-CPU/unmovable kthreads), the target runs on 2-3,
# the partition reads back "root". Then release.
run() {
    need_kvmisolate
    local pid
    pid=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$pid" --partition root
    expect_isolation cpus-2-3 2-3 root "$pid"
    [ "$(iso_field cpus-2-3 partition)" = root ] || fail "status partition '$(iso_field cpus-2-3 partition)', want root"
    [ "$(iso_field cpus-2-3 owner-uid)" = 0 ] || fail "owner-uid '$(iso_field cpus-2-3 owner-uid)', want 0"
    [ "$(iso_field cpus-2-3 release-when)" = target-exits ] || fail "release-when '$(iso_field cpus-2-3 release-when)', want target-exits (the default)"
    release_ok cpus-2-3
    expect_no_isolations
}
