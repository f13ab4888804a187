// SPDX-License-Identifier: GPL-2.0-or-later
//
// kvmisolate in the Plasma panel or system tray: an icon that says whether CPUs are isolated
// (attention status and a warning icon while an isolation is degraded; passive while nothing
// is isolated or the service is away), a tooltip with the summary, and a popup (FullView.qml)
// with each isolation and its Release, Release all and the configured presets. The state and
// the calls are Backend.qml's; logic.mjs words everything and decides the notifications,
// which go to the session's notification server (org.freedesktop.Notifications).

pragma ComponentBehavior: Bound

import QtQuick
import org.kde.plasma.plasmoid
import org.kde.plasma.core as PlasmaCore
import org.kde.kirigami as Kirigami
import org.kde.plasma.workspace.dbus as DBus

import "logic.mjs" as Logic

PlasmoidItem {
    id: root

    readonly property var tr: text => i18n(text)
    readonly property var compact: Logic.compactState({
        running: isolator.running,
        activatable: isolator.activatable,
        isolations: isolator.isolations,
    }, tr)

    Plasmoid.icon: compact.icon
    Plasmoid.status: {
        if (compact.status === "needsattention")
            return PlasmaCore.Types.NeedsAttentionStatus;
        return compact.status === "active" ? PlasmaCore.Types.ActiveStatus : PlasmaCore.Types.PassiveStatus;
    }
    toolTipMainText: i18n("CPU isolation")
    toolTipSubText: compact.text

    Backend {
        id: isolator
        translate: root.tr
        onNotice: (title, body) => root.notify(title, body)
    }

    // The popup re-reads the state when it opens (cheap; the signals keep it current anyway).
    onExpandedChanged: {
        if (expanded && !isolator.live)
            isolator.refresh();
    }

    function notify(title, body) {
        // Notify(app_name, replaces_id, app_icon, summary, body, actions, hints, timeout)
        DBus.SessionBus.asyncCall({
            service: "org.freedesktop.Notifications",
            path: "/org/freedesktop/Notifications",
            iface: "org.freedesktop.Notifications",
            member: "Notify",
            arguments: [i18n("CPU isolation"), 0, "cpu", title, body, [], {}, -1],
            signature: "susssasa{sv}i",
        });
        console.info("kvmisolate-applet: notification:", title, "|", body);
    }

    compactRepresentation: Kirigami.Icon {
        source: root.compact.icon
        active: mouse.containsMouse
        MouseArea {
            id: mouse
            anchors.fill: parent
            hoverEnabled: true
            onClicked: root.expanded = !root.expanded
        }
    }

    fullRepresentation: FullView {
        backend: isolator
        translate: root.tr
    }
}
