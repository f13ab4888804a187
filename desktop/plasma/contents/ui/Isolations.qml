// SPDX-License-Identifier: GPL-2.0-or-later
//
// The popup's body: one block per isolation (name and CPUs, target, state with the reason,
// tunings line, Release NAME), Release all, a Start button per configured preset (disabled
// with the reason while its name or CPUs are in use) and the last error. Like Summary.qml,
// loadable outside a Plasma shell.

pragma ComponentBehavior: Bound

import QtQuick
import QtQuick.Layouts
import org.kde.plasma.components as PlasmaComponents3
import org.kde.kirigami as Kirigami

import "logic.mjs" as Logic

PlasmaComponents3.ScrollView {
    id: list

    required property Backend backend
    property var tr: text => text

    ColumnLayout {
        width: list.width - Kirigami.Units.largeSpacing * 2
        spacing: Kirigami.Units.smallSpacing

        Repeater {
            model: list.backend.isolations
            delegate: ColumnLayout {
                id: block
                required property var modelData
                readonly property var row: Logic.isolationRow(modelData, t => list.tr(t))
                objectName: "isolation-" + row.name
                Layout.fillWidth: true
                spacing: 0

                PlasmaComponents3.Label {
                    text: block.row.title
                    font.bold: true
                }
                PlasmaComponents3.Label {
                    text: block.row.target
                    opacity: 0.8
                }
                PlasmaComponents3.Label {
                    text: block.row.state
                    color: block.row.degraded ? Kirigami.Theme.negativeTextColor : Kirigami.Theme.textColor
                    wrapMode: Text.Wrap
                    Layout.fillWidth: true
                }
                PlasmaComponents3.Label {
                    text: block.row.tunings
                    opacity: 0.8
                }
                PlasmaComponents3.Button {
                    objectName: "release-" + block.row.name
                    text: block.row.releaseLabel
                    icon.name: "edit-undo"
                    onClicked: list.backend.release(block.row.name)
                }
            }
        }

        PlasmaComponents3.Button {
            objectName: "release-all"
            visible: list.backend.isolations.length > 0
            text: list.tr("Release all")
            icon.name: "edit-clear-all"
            onClicked: list.backend.releaseAll()
        }

        Kirigami.Separator {
            visible: list.backend.presets.length > 0
            Layout.fillWidth: true
        }

        Repeater {
            model: list.backend.presets
            delegate: PlasmaComponents3.Button {
                required property var modelData
                objectName: "start-" + modelData.name
                Layout.fillWidth: true
                text: modelData.enabled ? modelData.label : modelData.label + " — " + modelData.why
                enabled: modelData.enabled
                icon.name: "media-playback-start"
                onClicked: list.backend.start(modelData.name)
            }
        }

        PlasmaComponents3.Label {
            visible: list.backend.running && list.backend.lastError !== ""
            Layout.fillWidth: true
            wrapMode: Text.Wrap
            color: Kirigami.Theme.negativeTextColor
            text: list.backend.lastError
        }
    }
}
