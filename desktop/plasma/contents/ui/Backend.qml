// SPDX-License-Identifier: GPL-2.0-or-later
//
// kvmisolated on the system bus, for the applet (main.qml) and its VM test: the service's
// state, its calls, and the notifications changes deserve.
//
// The bus is the org.kvmisolate.client module's (desktop/plasma/plugin, QtDBus): it follows the
// bus name (the absent state and the recovery when the name gets an owner again), re-reads
// Status() on the service's signals (no polling), and sends the actions with
// ALLOW_INTERACTIVE_AUTHORIZATION, so that Plasma's polkit agent asks when a rule wants a
// password. Plasma's own org.kde.plasma.workspace.dbus module cannot set that flag (and has
// signals only from 6.7 on). Here: its values as records (logic.mjs), and the notifications.

import QtQuick
import org.kvmisolate.client as Client

import "logic.mjs" as Logic

Item {
    id: backend

    // The translation function the logic words things with (the applet passes i18n).
    property var translate: null

    function tr(text: string): string {
        return translate ? translate(text) : text;
    }

    readonly property bool running: client.available
    readonly property bool activatable: client.activatable
    readonly property var isolations: running ? Logic.isolationsOf(client.status) : []
    readonly property var presets: running ? Logic.plain(client.presets).map(r => Logic.presetItem(r, t => backend.tr(t))) : []
    // Whether the service's signals are followed.
    readonly property bool live: client.live
    // How many state reads were applied (the VM test waits on it).
    readonly property int refreshes: client.refreshes
    // Why the state could not be read ('' when it could).
    readonly property string lastError: client.lastError

    // A notification the applet raises (title, body); the applet also sends it to the
    // session's notification server.
    signal notice(string title, string body)
    // A call's outcome: ok, or the D-Bus error name and message.
    signal callFinished(string what, bool ok, string errorName, string message)

    property var seenDegraded: new Set()
    property bool primed: false

    Client.Isolator {
        id: client

        onAvailableChanged: backend.primed = false
        onStatusChanged: {
            // From the client's values, not from `isolations` (its binding may not have run yet).
            const now = client.available ? Logic.isolationsOf(client.status) : [];
            const notices = Logic.degradedNotices(backend.seenDegraded, now, backend.primed, t => backend.tr(t));
            if (client.available && client.statusKnown)
                backend.primed = true;
            notices.forEach(n => backend.notice(n.title, n.body));
        }
        onReleased: (name, path, reason) => {
            const n = Logic.releasedNotice(name, reason, t => backend.tr(t));
            if (n)
                backend.notice(n.title, n.body);
        }
        onFinished: (what, ok, errorName, message) => {
            if (!ok) {
                const n = Logic.failureNotice(what, errorName, message, t => backend.tr(t));
                backend.notice(n.title, n.body);
            }
            backend.callFinished(what, ok, errorName, message);
        }
    }

    function refresh() {
        client.refresh();
    }

    function release(name) {
        client.release(name, Logic.fmt(tr("Release %s"), name));
    }

    function releaseAll() {
        client.releaseAll(tr("Release all"));
    }

    function start(name) {
        client.startPreset(name, Logic.fmt(tr("Start %s"), name));
    }
}
