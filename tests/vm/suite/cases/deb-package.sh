# deb-package: kvmisolate's Debian package, as a user installs, upgrades and removes it (only
# in a guest booted with tests/vm/run --deb, which installs the package with dpkg -i before
# the suite; make test-vm-deb). Checks:
#  1. the installation started nothing (no unit active, no daemon, the bus name free);
#  2. upgrade (the same tree packaged with Debian revision + 1) while an isolation of 2-3 is
#     active: the running daemon is not restarted (same pid, its old binary deleted), the
#     isolation stays active; `systemctl restart kvmisolated` runs the new binary, which adopts
#     the isolation from its journal (still active, partition valid, same cgroups);
#  3. `apt-get remove` with that isolation active releases it first: every snapshot value back
#     (semantically while the target runs, byte for byte once it is gone), the journal empty,
#     the service stopped, the programs gone; the libvirt hook (a conffile, kept until purge)
#     exits 0 without kvmisolate;
#  4. the first package is installed again (the suite's state), and that starts nothing.
# timeout: 300
DEBS=$KT_DIR/deb

installed_version() { dpkg-query -W -f='${Version}' kvmisolate 2>/dev/null; }
nothing_running() {
    local why=
    [ "$(systemctl is-active kvmisolated.service 2>/dev/null)" = active ] && why+="unit active; "
    pgrep -x kvmisolated >/dev/null && why+="kvmisolated running ($(pgrep -x kvmisolated | paste -sd, -)); "
    bus_has_name && why+="bus name owned; "
    echo "$why"
}
cleanup() {
    # Whatever happened, leave the first package installed (the next cases use it).
    if [ "$(installed_version)" != "$(dpkg-deb -f "$DEBS/kvmisolate.deb" Version)" ]; then
        DEBIAN_FRONTEND=noninteractive dpkg -i "$DEBS/kvmisolate.deb" >/dev/null 2>&1
    fi
}

run() {
    [ -f "$DEBS/kvmisolate.deb" ] || skip "not booted with tests/vm/run --deb"
    have_systemd || skip "the package's scripts are checked under systemd"
    local v1 v2 out pid before during old new cgs
    v1=$(dpkg-deb -f "$DEBS/kvmisolate.deb" Version)
    v2=$(dpkg-deb -f "$DEBS/kvmisolate-upgrade.deb" Version)

    # 1. install started nothing
    [ "$(installed_version)" = "$v1" ] || fail "installed version '$(installed_version)', want $v1"
    grep -qx 'unit inactive' "$KT_STATE/deb-install.state" \
        && grep -qx 'pids ' "$KT_STATE/deb-install.state" \
        && grep -qx 'bus free' "$KT_STATE/deb-install.state" \
        || fail "dpkg -i started something: $(paste -sd';' "$KT_STATE/deb-install.state")"
    note "after dpkg -i: $(paste -sd';' "$KT_STATE/deb-install.state")"
    need_kvmisolate

    # 2. upgrade with an active isolation
    pid=$(start_fake_vm 2)
    before=$KT_STATE/deb-before.snap during=$KT_STATE/deb-during.snap
    snapshot "$before"
    isolate_ok --cpus 2-3 --pid "$pid"
    expect_isolation cpus-2-3 2-3 root "$pid"
    cgs=$(iso_cgroups cpus-2-3)
    snapshot "$during"
    old=$(daemon_pid)
    [ -n "$old" ] || fail "no daemon pid while isolating"
    out=$(DEBIAN_FRONTEND=noninteractive dpkg -i "$DEBS/kvmisolate-upgrade.deb" 2>&1) \
        || fail "dpkg -i of $v2 failed: $(tail -3 <<<"$out" | paste -sd' ' -)"
    sed 's/^/    dpkg| /' <<<"$out"
    [ "$(installed_version)" = "$v2" ] || fail "after the upgrade: version '$(installed_version)', want $v2"
    [ "$(daemon_pid)" = "$old" ] || fail "the upgrade restarted kvmisolated (pid $old -> $(daemon_pid)) while it held an isolation"
    readlink "/proc/$old/exe" | grep -q '(deleted)' \
        || fail "the running daemon is not the old binary: $(readlink "/proc/$old/exe")"
    grep -q 'keeps running the previous version' <<<"$out" || fail "the upgrade did not say the daemon keeps running"
    expect_isolation cpus-2-3 2-3 root "$pid"
    note "upgraded $v1 -> $v2 with cpus-2-3 active: daemon $old kept ($(readlink "/proc/$old/exe"))"
    systemctl restart kvmisolated.service
    wait_for bus_has_name 20 0.1 || fail "the new daemon did not take its bus name"
    new=$(daemon_pid)
    [ -n "$new" ] && [ "$new" != "$old" ] || fail "systemctl restart gave no new daemon ($old -> '$new')"
    [ "$(readlink "/proc/$new/exe")" = /usr/libexec/kvmisolated ] \
        || fail "the new daemon runs $(readlink "/proc/$new/exe")"
    expect_isolation cpus-2-3 2-3 root "$pid"
    [ "$(iso_cgroups cpus-2-3)" = "$cgs" ] || fail "adopted isolation's cgroups $(iso_cgroups cpus-2-3), were $cgs"
    note "new daemon $new (/usr/libexec/kvmisolated of $v2) adopted cpus-2-3"

    # 3. removal with the isolation active: released first, everything restored
    if command -v apt-get >/dev/null; then
        out=$(DEBIAN_FRONTEND=noninteractive apt-get remove -y kvmisolate 2>&1) \
            || fail "apt-get remove failed: $(tail -5 <<<"$out" | paste -sd' ' -)"
    else
        out=$(dpkg -r kvmisolate 2>&1) || fail "dpkg -r failed: $(tail -5 <<<"$out" | paste -sd' ' -)"
    fi
    sed 's/^/    remove| /' <<<"$out" | grep -v '^    remove| \(Reading\|Building\|(Reading\)' || true
    grep -q 'releasing the active isolations' <<<"$out" || fail "removal did not release the isolations first"
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' kvmisolate 2>/dev/null)" = "rc " ] \
        || fail "after removal the package is '$(dpkg-query -W -f='${db:Status-Abbrev}' kvmisolate 2>/dev/null)', want rc"
    [ ! -e /usr/bin/kvmisolate ] && [ ! -e /usr/libexec/kvmisolated ] || fail "programs left after removal"
    local running; running=$(nothing_running)
    [ -z "$running" ] || fail "after removal: $running"
    [ -z "$(ls -A /run/kvmisolate/isolations 2>/dev/null)" ] \
        || fail "journal records left after removal: $(ls /run/kvmisolate/isolations)"
    wait_restored "$before" --semantic
    expect_pid1_all_cpus
    cpulist_eq "$(root_effective)" "$(online_cpus)" || fail "root cpuset.cpus.effective $(root_effective) after removal"
    stop_fake_vm "$pid"
    wait_for own_cgroups_settled 10 || true
    wait_restored "$before"
    [ -x /etc/libvirt/hooks/qemu.d/kvmisolate ] || fail "the libvirt hook (a conffile) went with remove; it stays until purge"
    /etc/libvirt/hooks/qemu.d/kvmisolate some-domain prepare begin - </dev/null \
        || fail "the libvirt hook fails once kvmisolate is removed (libvirt would refuse every domain)"
    note "apt-get remove: isolation released, every value restored, service stopped, hook inert"

    # 4. back to the first package; that starts nothing either
    out=$(DEBIAN_FRONTEND=noninteractive dpkg -i "$DEBS/kvmisolate.deb" 2>&1) \
        || fail "reinstalling $v1 failed: $(tail -3 <<<"$out" | paste -sd' ' -)"
    [ "$(installed_version)" = "$v1" ] || fail "reinstalled version '$(installed_version)'"
    running=$(nothing_running)
    [ -z "$running" ] || fail "dpkg -i after removal started something: $running"
}
