// SPDX-License-Identifier: GPL-2.0-or-later
//
// kvmisolated on the system bus, for the applet (main.qml) and its VM test: the service's
// state, refreshed on its signals, its calls, and the notifications changes deserve.
//
// Everything goes through Plasma's org.kde.plasma.workspace.dbus module (plasma-workspace):
//  - DBusServiceWatcher (Plasma 6.3+) follows the bus name: the absent state and the recovery
//    when the name gets an owner again; nothing is auto-started by watching.
//  - Signals.qml (SignalWatcher, Plasma 6.7+; loaded by a Loader, so the applet still loads on
//    6.3) follows PropertiesChanged of the manager and of each isolation, the ObjectManager's
//    InterfacesAdded/Removed and Released. Each signal re-reads Status() (one call). Without
//    it (Plasma 6.3) the state is read when the name changes owner and when the popup opens.
//  - SystemBus.asyncCall for Status(), Presets, ListActivatableNames and the actions. The
//    module's calls never set ALLOW_INTERACTIVE_AUTHORIZATION (checked in 6.3.6 and 6.7.4), so
//    polkit answers without asking: a rule that allows (the example one for group kvm) works,
//    one that wants a password gives a notification that says so.

import QtQuick
import org.kde.plasma.workspace.dbus as DBus

import "logic.mjs" as Logic

Item {
    id: backend

    readonly property string busName: "org.kvmisolate.Isolator1"
    readonly property string objectPath: "/org/kvmisolate/Isolator1"
    readonly property string managerIface: "org.kvmisolate.Isolator1"

    // The translation function the logic words things with (the applet passes i18n).
    property var translate: null

    function tr(text: string): string {
        return translate ? translate(text) : text;
    }

    readonly property bool running: watcher.registered
    property bool activatable: false
    property var isolations: []
    property var presets: []
    // Whether signals are followed (SignalWatcher loaded).
    readonly property bool live: signals.status === Loader.Ready
    // How many Status() replies were applied (the VM test waits on it).
    property int refreshes: 0

    // A notification the applet raises (title, body); the applet also sends it to the
    // session's notification server.
    signal notice(string title, string body)
    // A call's outcome: ok, or the D-Bus error name and message.
    signal callFinished(string what, bool ok, string errorName, string message)

    property var seenDegraded: new Set()
    property bool primed: false
    property int generation: 0

    DBus.DBusServiceWatcher {
        id: watcher
        busType: DBus.BusType.System
        watchedService: backend.busName
        onRegisteredChanged: {
            backend.primed = false;
            backend.refresh();
        }
    }

    Loader {
        id: signals
        source: "Signals.qml"
        onLoaded: {
            item.service = backend.busName;
            item.path = backend.objectPath;
            item.paths = Qt.binding(() => backend.isolations.map(i => i.path).filter(p => p !== ""));
            item.changed.connect(backend.refresh);
            item.released.connect(backend.onReleased);
        }
    }

    function call(message, done) {
        const reply = DBus.SystemBus.asyncCall(message);
        reply.finished.connect(() => done(reply));
    }

    function refresh() {
        const gen = ++generation;
        call({
            service: "org.freedesktop.DBus",
            path: "/org/freedesktop/DBus",
            iface: "org.freedesktop.DBus",
            member: "ListActivatableNames",
            arguments: [],
        }, reply => {
            if (!reply.isError)
                activatable = (reply.value ?? []).indexOf(busName) >= 0;
        });
        if (!watcher.registered) {
            apply(gen, null, []);
            return;
        }
        call({ service: busName, path: objectPath, iface: managerIface, member: "Status", arguments: [] }, reply => {
            const status = reply.isError ? null : reply.value;
            call({
                service: busName,
                path: objectPath,
                iface: "org.freedesktop.DBus.Properties",
                member: "Get",
                arguments: [managerIface, "Presets"],
                signature: "ss",
            }, presetsReply => {
                const rows = presetsReply.isError ? [] : presetsReply.value;
                apply(gen, status, Array.isArray(rows) ? rows : []);
            });
        });
    }

    // Applies one view, unless a newer refresh started meanwhile.
    function apply(gen, status, rows) {
        if (gen !== generation)
            return;
        const list = running ? Logic.isolationsOf(status) : [];
        isolations = list;
        presets = running ? rows.map(r => Logic.presetItem(r, t => tr(t))) : [];
        const notices = Logic.degradedNotices(seenDegraded, list, primed, t => tr(t));
        if (running && status !== null)
            primed = true;
        notices.forEach(n => notice(n.title, n.body));
        refreshes++;
    }

    function onReleased(name, reason) {
        const n = Logic.releasedNotice(name, reason, t => tr(t));
        if (n)
            notice(n.title, n.body);
    }

    function act(member, args, what) {
        call({
            service: busName,
            path: objectPath,
            iface: managerIface,
            member: member,
            arguments: args,
            signature: args.length ? "s" : "",
        }, reply => {
            if (reply.isError) {
                const n = Logic.failureNotice(what, reply.error.name, reply.error.message, t => tr(t));
                notice(n.title, n.body);
                callFinished(what, false, reply.error.name, reply.error.message);
            } else {
                callFinished(what, true, "", "");
            }
            if (!live)
                refresh();
        });
    }

    function release(name) {
        act("Release", [name], Logic.fmt(tr("Release %s"), name));
    }

    function releaseAll() {
        act("ReleaseAll", [], tr("Release all"));
    }

    function start(name) {
        act("StartPreset", [name], Logic.fmt(tr("Start %s"), name));
    }

    Component.onCompleted: refresh()
}
