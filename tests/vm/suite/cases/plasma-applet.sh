# plasma-applet: the Plasma 6 applet (desktop/plasma, installed by `make install` into
# /usr/share/plasma/plasmoids/org.kvmisolate.applet) in Debian's Plasma, as alice, on the real
# system bus with the real polkitd and kvmisolated:
#   - kpackagetool6 installs the package from its directory and lists it; qmllint against
#     the real Plasma modules (its findings printed);
#   - plasmoidviewer loads the applet headless (offscreen, Qt Quick's software renderer)
#     without a QML error;
#   - the applet's QML module org.kvmisolate.client (C++, QtDBus; built on the host against its
#     Qt) loads in the image's newer Qt;
#   - qmltestrunner runs plasma/tst_applet.qml, which loads the applet's Backend.qml and
#     FullView.qml (the popup) as installed, while this side acts with the CLI:
#     an isolation made with `kvmisolate isolate` shows within 1 s of the CLI's return
#     (the applet follows signals); Release from the popup's button, three ways:
#       - no agent, no polkit rule: refused (a notification with polkit's answer; still
#         isolated; answered AccessDenied, as the CLI's call with ALLOW_INTERACTIVE_AUTHORIZATION
#         is, where the same call without the flag gets InteractiveAuthorizationRequired);
#       - a real polkit agent registered for the applet's process (polkit's pkttyagent, as
#         alice, in a pseudo-terminal driven by plasma/ttyagent.py; root given a password for
#         the case, restored after): the agent prints its prompt for org.kvmisolate.release
#         with the action's message and asks for root's password; a wrong one → AUTHENTICATION
#         FAILED, the call refused AccessDenied with a notification, still isolated; the right
#         one → AUTHENTICATION COMPLETE, released, gone from the popup;
#       - the agent gone, the example rule: released without a prompt;
#     a configured preset (alice's unit, CPUs 4-5) started from the popup's Start button
#     (isolated for alice, the summary "CPUs 4-5 · game", the button disabled while it runs),
#     then "Release all" with another isolation of root's → nothing left, the button hidden;
#     a CPU of an isolation offline raises exactly one notification; the
#     service stopped → "kvmisolated not running", activated again → back;
#   - the popup grabbed as PNG artifacts (active, degraded), their size checked.
# needs: plasma
# timeout: 900

PRUN=/run/kvmi-plasma
PLOG=$KT_STATE/plasma-test.log
APPLET=/usr/share/plasma/plasmoids/org.kvmisolate.applet
AGENT_LOG=$KT_STATE/ttyagent.log
SHADOW_SAVED=$KT_STATE/shadow.saved
CONF=/etc/kvmisolate/kvmisolate.toml
ROOT_PW=kvmi-plasma-root

as_alice_qt() {
    setpriv --reuid=alice --regid=alice --init-groups --reset-env -- \
        env HOME=/home/alice XDG_RUNTIME_DIR="$PRUN" DBUS_SYSTEM_BUS_ADDRESS="$DBUS_SYSTEM_BUS_ADDRESS" \
        QT_QPA_PLATFORM=offscreen QT_QUICK_BACKEND=software LANG=C.UTF-8 "$@"
}

# wait_line PATTERN SECS: the driver printed a "KT PATTERN..." line
wait_line() {
    wait_for "grep -q 'KT $1' '$PLOG'" "$2" 0.2
}
line() { grep -m1 "KT $1" "$PLOG" | sed 's/.*KT //'; }

# png_artifact NAME: the driver's grab as an artifact, checked to be a real picture
png_artifact() {
    local f=/tmp/kvmi-plasma-$1.png w h size
    [ -s "$f" ] || fail "no screenshot $f"
    [ "$(head -c 8 "$f" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$f is not a PNG"
    w=$(od -An -tu1 -j16 -N4 "$f" | awk '{print $1*16777216+$2*65536+$3*256+$4}')
    h=$(od -An -tu1 -j20 -N4 "$f" | awk '{print $1*16777216+$2*65536+$3*256+$4}')
    size=$(stat -c %s "$f")
    note "screenshot $1: ${w}x${h}, $size bytes"
    [ "$w" -ge 400 ] && [ "$h" -ge 400 ] || fail "screenshot $1 is ${w}x${h}, want at least 400x400"
    [ "$size" -gt 8000 ] || fail "screenshot $1 is only $size bytes: not a real picture"
    echo "KVMISOLATE-ARTIFACT-BEGIN plasma-$1.png"
    base64 -w 76 "$f"
    echo "KVMISOLATE-ARTIFACT-END"
}

cleanup() {
    if [ -s "$KT_RESULT" ] && [ -s "$PLOG" ]; then
        echo "  qmltestrunner's output (last lines):"
        tail -40 "$PLOG" | sed 's/^/    qml| /'
    fi
    [ -s "$KT_STATE/plasma-test.pid" ] && kill -- "-$(cat "$KT_STATE/plasma-test.pid")" 2>/dev/null
    pkill -u alice -x qmltestrunner 2>/dev/null || true
    pkill -u alice -x plasmoidviewer 2>/dev/null || true
    [ -s "$KT_STATE/ttyagent.pid" ] && kill "$(cat "$KT_STATE/ttyagent.pid")" 2>/dev/null
    [ -s "$SHADOW_SAVED" ] && cat "$SHADOW_SAVED" > /etc/shadow
    systemctl stop kvmi-game.service 2>/dev/null || true
    rm -f "$KT_STATE/plasma-test.pid" "$KT_STATE/ttyagent.pid" "$SHADOW_SAVED" "$POLKIT_RULE" "$CONF"
    all_cpus_online
    daemon_restart >/dev/null 2>&1 || true
}

run() {
    need_kvmisolate
    command -v qmltestrunner >/dev/null || [ -x /usr/lib/qt6/bin/qmltestrunner ] \
        || skip "no Plasma in this image (tests/vm/run --plasma)"
    have_systemd || skip "needs systemd (systemctl stop)"
    local qtr=/usr/lib/qt6/bin/qmltestrunner pid pid2 pid3 t_cli seen lat out rc f agent_pid_q

    [ -f "$APPLET/metadata.json" ] || fail "make install did not install the applet into $APPLET"
    f=$(ls /usr/lib/*/qt6/qml/org/kvmisolate/client/libkvmisolateclient.so 2>/dev/null | head -1)
    [ -n "$f" ] || fail "make install did not install the org.kvmisolate.client QML module"
    note "QML module: $f ($(stat -c %s "$f") bytes)"
    install -d -o alice -g alice -m 700 "$PRUN"
    note "plasma-workspace $(dpkg-query -W -f '${Version}' plasma-workspace), Qt $(dpkg-query -W -f '${Version}' libqt6core6t64 2>/dev/null || dpkg-query -W -f '${Version}' libqt6core6)"

    # kpackagetool6 installs the package from its directory (as from the source tree).
    out=$(as_alice_qt kpackagetool6 --type Plasma/Applet --install "$APPLET" 2>&1) \
        || fail "kpackagetool6 --install failed: $out"
    as_alice_qt kpackagetool6 --type Plasma/Applet --list 2>&1 | grep -q 'org.kvmisolate.applet' \
        || fail "kpackagetool6 --list does not list org.kvmisolate.applet"
    [ -f /home/alice/.local/share/plasma/plasmoids/org.kvmisolate.applet/contents/ui/logic.mjs ] \
        || fail "kpackagetool6 did not install logic.mjs"
    as_alice_qt kpackagetool6 --type Plasma/Applet --remove org.kvmisolate.applet >/dev/null 2>&1 \
        || fail "kpackagetool6 --remove failed"
    note "kpackagetool6: installed, listed and removed from $APPLET"

    # qmllint against the real modules: printed, not judged (Plasma's modules ship no full
    # type information for everything).
    out=$(cd "$APPLET/contents/ui" && /usr/lib/qt6/bin/qmllint ./*.qml 2>&1) && rc=0 || rc=$?
    note "qmllint (Plasma's modules): exit $rc, $(grep -c '^Warning' <<<"$out") warnings"
    grep '^Warning' <<<"$out" | sort | uniq -c | sort -rn | head -12 | sed 's/^/    qmllint| /'

    # The service on the bus (it exits when idle; the driver waits for it too).
    kvmi status >/dev/null || fail "kvmisolate status failed"

    # plasmoidviewer loads the applet (headless); no QML error about its files.
    as_alice_qt timeout -k 5 40 dbus-run-session -- plasmoidviewer -a org.kvmisolate.applet \
        > "$KT_STATE/plasmoidviewer.log" 2>&1 && rc=0 || rc=$?
    [ "$rc" = 124 ] || [ "$rc" = 0 ] || { tail -20 "$KT_STATE/plasmoidviewer.log" | sed 's/^/    pv| /'; fail "plasmoidviewer exited $rc"; }
    if grep -E 'org\.kvmisolate\.applet|kvmisolate' "$KT_STATE/plasmoidviewer.log" | grep -i -E 'error|not installed|is not a type|unavailable|failed'; then
        fail "plasmoidviewer reported errors about the applet"
    fi
    note "plasmoidviewer ran the applet for 40 s, no error about it ($(wc -l < "$KT_STATE/plasmoidviewer.log") log lines)"

    # A preset for the popup's Start button: alice's own delegated unit (in her user-1000.slice),
    # CPUs 4-5 (as in the gnome-shell case).
    mkdir -p "${CONF%/*}"
    printf '[isolation.game]\ncpus = "4-5"\nunit = "kvmi-game.service"\nprofile = "none"\n' > "$CONF"
    systemd-run --quiet --unit=kvmi-game.service --slice=user-1000.slice -p User=alice -p Delegate=yes sleep infinity \
        || fail "could not start the preset's unit"
    daemon_restart || fail "kvmisolated did not restart with the preset"

    # The driver, on a session bus of its own.
    rm -f "$POLKIT_RULE" /tmp/kvmi-plasma-*.png
    : > "$PLOG"; chmod 666 "$PLOG"
    as_alice_qt setsid dbus-run-session -- "$qtr" -input "$KT_DIR/plasma/tst_applet.qml" \
        > "$PLOG" 2>&1 < /dev/null &
    echo $! > "$KT_STATE/plasma-test.pid"
    wait_line STARTED 300 || fail "the driver did not start within 300 s"
    note "driver: $(line STARTED)"
    if grep -q 'KT PLAIN-VIEW' "$PLOG"; then note "driver: $(line PLAIN-VIEW)"; fi
    # The service exits when idle: have it on the bus now (the driver follows by itself).
    kvmi status >/dev/null || fail "kvmisolate status failed"
    wait_line READY 120 || fail "the driver did not see the service within 120 s"
    note "driver: $(line READY)"

    # 1. CLI isolate → in the applet within 1 s of the CLI's return.
    pid=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$pid" --name web --partition root
    t_cli=$(date +%s%3N)
    wait_line 'SEEN web' 60 || fail "web not seen by the applet within 60 s"
    seen=$(line 'SEEN web' | awk '{print $3}')
    lat=$((seen - t_cli))
    if [ "$lat" -lt 0 ]; then
        # The service's signals reach the applet while the CLI is still printing and exiting.
        note "web shown by the applet $((-lat)) ms before the CLI returned"
    else
        note "web shown by the applet $lat ms after the CLI returned"
    fi
    [ "$lat" -le 1000 ] || fail "the applet showed web $lat ms after the CLI returned, want within 1 s"

    # 2. Release from the popup: denied, then allowed with the example rule.
    wait_line DENIED 90 || fail "no refused Release"
    note "without a rule: $(line DENIED); $(line 'NOTICE Release web')"
    iso_exists web || fail "web released although polkit refused"
    # What the applet's answer proves: the same Release as alice with the CLI, without and with
    # ALLOW_INTERACTIVE_AUTHORIZATION (--no-ask-password clears it; stdin not a terminal, so no
    # text agent): kvmisolated tells them apart by the flag alone.
    kvmi_as alice release --no-ask-password web < /dev/null && fail "the CLI's Release allowed without a rule"
    grep -q 'InteractiveAuthorizationRequired' "$KT_STATE/last-output" \
        || fail "without the flag, expected InteractiveAuthorizationRequired: $(tail -1 "$KT_STATE/last-output")"
    kvmi_as alice release web < /dev/null && fail "the CLI's Release allowed without a rule"
    grep -q 'AccessDenied' "$KT_STATE/last-output" && ! grep -q 'InteractiveAuthorizationRequired' "$KT_STATE/last-output" \
        || fail "with the flag, expected AccessDenied: $(tail -1 "$KT_STATE/last-output")"
    grep -q 'KT DENIED org.freedesktop.DBus.Error.AccessDenied' "$PLOG" \
        || fail "the applet's Release was not answered like a call with the flag: $(line DENIED)"
    note "the applet's Release carried ALLOW_INTERACTIVE_AUTHORIZATION (answered AccessDenied like the CLI's call with the flag, not InteractiveAuthorizationRequired like the one without)"
    iso_exists web || fail "web released although polkit refused"

    # 2b. A real polkit agent: polkit's pkttyagent, as alice, registered for the applet's
    # process (--process: the qmltestrunner that owns the applet's bus connection), in a
    # pseudo-terminal of its own (plasma/ttyagent.py types the passwords). The Release needs
    # org.kvmisolate.release, auth_admin for a caller outside any session: polkit has the agent
    # ask for root's password (Debian's admins are the sudo group, empty here: root).
    agent_pid_q=$(pgrep -u alice -x qmltestrunner | head -1)
    [ -n "$agent_pid_q" ] || fail "no qmltestrunner process of alice's"
    cp -a /etc/shadow "$SHADOW_SAVED"
    echo "root:$ROOT_PW" | chpasswd || fail "chpasswd failed"
    : > "$AGENT_LOG"; chmod 666 "$AGENT_LOG"
    as_user alice python3 "$KT_DIR/plasma/ttyagent.py" "$AGENT_LOG" "$agent_pid_q" "not-$ROOT_PW" "$ROOT_PW" \
        > "$KT_STATE/ttyagent.out" 2>&1 &
    wait_for "grep -q '^KTA PID' '$AGENT_LOG'" 10 0.1 || fail "ttyagent.py did not start: $(cat "$KT_STATE/ttyagent.out")"
    sed -n 's/^KTA PID //p' "$AGENT_LOG" | head -1 > "$KT_STATE/ttyagent.pid"
    wait_for "grep -q 'KTA REGISTERED' '$AGENT_LOG'" 30 0.2 \
        || { sed 's/^/    agent| /' "$AGENT_LOG" "$KT_STATE/ttyagent.out"; fail "pkttyagent did not register within 30 s"; }
    note "pkttyagent (as alice, in a pty) registered for the applet's process $agent_pid_q"
    pid2=$(start_fake_vm 1)
    isolate_ok --cpus 4 --pid "$pid2" --name ask --partition root
    # Answered with a wrong password: refused, web stays.
    wait_line REFUSED 90 || { sed 's/^/    agent| /' "$AGENT_LOG"; fail "no refused Release with the agent"; }
    note "wrong password: $(line REFUSED)"
    tr -d '\r' < "$AGENT_LOG" | sed 's/\x1b\[[0-9;]*m//g' | grep -v '^$' | sed 's/^/    agent| /'
    grep -q 'AUTHENTICATING FOR org.kvmisolate.release' "$AGENT_LOG" \
        || fail "the agent was not asked for org.kvmisolate.release"
    grep -q 'Authentication is required to end a CPU isolation that another user created' "$AGENT_LOG" \
        || fail "the agent's prompt lacks the action's message"
    grep -q 'Authenticating as: .*root' "$AGENT_LOG" || fail "the agent did not ask for root's password"
    [ "$(grep -c 'KTA ANSWER' "$AGENT_LOG")" = 1 ] || fail "want exactly one password prompt so far"
    grep -q 'AUTHENTICATION FAILED' "$AGENT_LOG" || fail "the agent did not report the failed authentication"
    grep -q 'KT REFUSED org.freedesktop.DBus.Error.AccessDenied notices=2 Release web: not authorized' "$PLOG" \
        || fail "the refusal was not AccessDenied with a notification: $(line REFUSED)"
    iso_exists web || fail "web released although the password was wrong"
    note "the agent asked for org.kvmisolate.release (root's password); the wrong one refused, web still isolated"
    release_ok ask
    # Answered with the right password: released.
    wait_line 'RELEASED web' 90 || { sed 's/^/    agent| /' "$AGENT_LOG"; fail "Release from the popup did not release web with the right password"; }
    iso_exists web && fail "web still isolated after the authenticated Release"
    [ "$(grep -c 'KTA ANSWER' "$AGENT_LOG")" = 2 ] || fail "want a second password prompt"
    grep -q 'AUTHENTICATION COMPLETE' "$AGENT_LOG" || fail "the agent did not report the authentication complete"
    grep -q -- "$ROOT_PW" "$AGENT_LOG" && fail "a password was echoed on the agent's terminal"
    tr -d '\r' < "$AGENT_LOG" | sed 's/\x1b\[[0-9;]*m//g' | grep -v '^$' | awk 'f; /AUTHENTICATION FAILED/ {f = 1}' | sed 's/^/    agent| /'
    note "the right password: the agent reported AUTHENTICATION COMPLETE, web released, gone from the applet"
    kill "$(cat "$KT_STATE/ttyagent.pid")" 2>/dev/null
    wait_for "grep -q 'KTA EXIT' '$AGENT_LOG'" 10 0.2 || fail "the agent did not stop"
    cat "$SHADOW_SAVED" > /etc/shadow; rm -f "$SHADOW_SAVED" "$KT_STATE/ttyagent.pid"
    stop_fake_vm "$pid"

    # 2c. No agent, the example rule: Release of go from the popup works without a prompt.
    install -D -m 0644 "$POLKIT_RULE_EXAMPLE" "$POLKIT_RULE"
    sleep 2
    isolate_ok --cpus 4 --pid "$pid2" --name go --partition root
    wait_line 'RELEASED go' 90 || fail "Release from the popup did not release go with the rule"
    iso_exists go && fail "go still isolated after the allowed Release"
    note "with the example rule: released, nobody asked"
    stop_fake_vm "$pid2"

    # 2d. The preset from the popup, then Release all (the example rule still in place).
    wait_line 'PRESET-ACTIVE game' 90 || fail "the preset was not started from the popup"
    note "$(line 'PRESET-ACTIVE game')"
    [ "$(iso_field game cpus)" = 4-5 ] && [ "$(iso_field game target)" = unit:kvmi-game.service ] \
        || fail "preset isolation: $(kstatus | jq -c '.isolations[] | select(.name == "game")')"
    [ "$(iso_field game owner-uid)" = 1000 ] || fail "preset started by uid $(iso_field game owner-uid), want alice"
    pid2=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$pid2" --name web2 --partition root
    wait_line 'RELEASED-ALL' 90 || fail "Release all from the popup did not empty the applet"
    note "$(line 'RELEASED-ALL')"
    iso_exists game && fail "game still isolated after Release all"
    iso_exists web2 && fail "web2 still isolated after Release all"
    stop_fake_vm "$pid2"
    systemctl stop kvmi-game.service

    # 3. A CPU of an isolation offline → exactly one notification.
    pid3=$(start_fake_vm 2)
    isolate_ok --cpus 2-3 --pid "$pid3" --name deg --partition root
    cpu_offline 3 || fail "could not offline CPU 3"
    wait_state deg degraded 20 || fail "deg not degraded after CPU 3 went offline"
    wait_line DEGRADED 90 || fail "the driver saw no degraded isolation"
    note "$(line DEGRADED)"
    wait_line 'GRAB degraded' 60 || fail "no degraded screenshot"
    cpu_online 3
    release_ok deg
    stop_fake_vm "$pid3"

    # 4. The service stopped → absent; a CLI call activates it → back.
    systemctl stop kvmisolated.service
    wait_line ABSENT 60 || fail "the applet did not follow the service stopping"
    kvmi status >/dev/null || fail "kvmisolate status did not activate the service"
    wait_line BACK 60 || fail "the applet did not follow the service coming back"
    note "service stop/start followed"

    f=$(cat "$KT_STATE/plasma-test.pid")
    wait_for "! kill -0 $f 2>/dev/null" 60 0.5 || fail "qmltestrunner did not finish"
    grep -E '^Totals:' "$PLOG" | sed 's/^/  /'
    grep -q '^FAIL!' "$PLOG" && fail "the driver failed: $(grep -A2 -m1 '^FAIL!' "$PLOG" | tr '\n' ' ')"
    grep -qE '^Totals: [0-9]+ passed, 0 failed' "$PLOG" || fail "the driver did not pass"
    png_artifact active
    png_artifact degraded
}
