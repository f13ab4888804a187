// SPDX-License-Identifier: GPL-2.0-or-later
//
// The applet's full representation: Summary.qml in Plasma's popup heading over
// Isolations.qml. A separate file so that the VM test can show it next to a Backend and grab
// it (on Plasma 6.7+; Plasma 6.3's Representation loads only inside a Plasma shell, so there
// the test shows the two parts in a plain layout).

pragma ComponentBehavior: Bound

import QtQuick
import QtQuick.Layouts
import org.kde.plasma.extras as PlasmaExtras
import org.kde.kirigami as Kirigami

import "logic.mjs" as Logic

PlasmaExtras.Representation {
    id: view

    required property Backend backend
    property var translate: null

    function tr(text: string): string {
        return translate ? translate(text) : text;
    }

    readonly property var compact: Logic.compactState({
        running: backend.running,
        activatable: backend.activatable,
        isolations: backend.isolations,
    }, t => view.tr(t))

    Layout.minimumWidth: Kirigami.Units.gridUnit * 18
    Layout.minimumHeight: Kirigami.Units.gridUnit * 12
    implicitWidth: Kirigami.Units.gridUnit * 24
    implicitHeight: Kirigami.Units.gridUnit * 20

    header: PlasmaExtras.PlasmoidHeading {
        Summary {
            anchors.fill: parent
            compact: view.compact
            tr: view.tr
        }
    }

    Isolations {
        anchors.fill: parent
        backend: view.backend
        tr: view.tr
    }
}
