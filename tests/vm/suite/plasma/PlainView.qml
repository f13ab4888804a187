// SPDX-License-Identifier: GPL-2.0-or-later
//
// The applet's popup without PlasmaExtras.Representation, for tst_applet.qml on Plasma 6.3
// (whose Representation loads only inside a Plasma shell): the installed Summary.qml over the
// installed Isolations.qml, with the same compact state FullView.qml computes.

import QtQuick
import QtQuick.Layouts
import "file:///usr/share/plasma/plasmoids/org.kvmisolate.applet/contents/ui" as Ui
import "file:///usr/share/plasma/plasmoids/org.kvmisolate.applet/contents/ui/logic.mjs" as Logic

ColumnLayout {
    id: plain

    required property var backend

    readonly property var compact: Logic.compactState({
        running: backend.running,
        activatable: backend.activatable,
        isolations: backend.isolations,
    }, t => t)

    Ui.Summary {
        Layout.fillWidth: true
        compact: plain.compact
    }

    Ui.Isolations {
        Layout.fillWidth: true
        Layout.fillHeight: true
        backend: plain.backend
    }
}
