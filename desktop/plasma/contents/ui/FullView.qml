// SPDX-License-Identifier: GPL-2.0-or-later
//
// The applet's full representation: the summary, one block per isolation (name and CPUs,
// target, state with the reason, tunings line, Release NAME), Release all, and a Start button
// per configured preset (disabled with the reason while its name or CPUs are in use). A
// separate file so that the VM test can show it next to a Backend and grab it.

pragma ComponentBehavior: Bound

import QtQuick
import QtQuick.Layouts
import org.kde.plasma.components as PlasmaComponents3
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
        RowLayout {
            anchors.fill: parent
            Kirigami.Icon {
                source: view.compact.icon
                Layout.preferredWidth: Kirigami.Units.iconSizes.medium
                Layout.preferredHeight: Kirigami.Units.iconSizes.medium
            }
            ColumnLayout {
                Layout.fillWidth: true
                spacing: 0
                Kirigami.Heading {
                    level: 3
                    text: view.tr("CPU isolation")
                }
                PlasmaComponents3.Label {
                    objectName: "summary"
                    Layout.fillWidth: true
                    text: view.compact.text
                    color: view.compact.degraded ? Kirigami.Theme.negativeTextColor : Kirigami.Theme.textColor
                    wrapMode: Text.Wrap
                }
            }
        }
    }

    PlasmaComponents3.ScrollView {
        anchors.fill: parent

        ColumnLayout {
            width: view.width - Kirigami.Units.largeSpacing * 2
            spacing: Kirigami.Units.smallSpacing

            Repeater {
                model: view.backend.isolations
                delegate: ColumnLayout {
                    id: block
                    required property var modelData
                    readonly property var row: Logic.isolationRow(modelData, t => view.tr(t))
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
                        onClicked: view.backend.release(block.row.name)
                    }
                }
            }

            PlasmaComponents3.Button {
                objectName: "release-all"
                visible: view.backend.isolations.length > 0
                text: view.tr("Release all")
                icon.name: "edit-clear-all"
                onClicked: view.backend.releaseAll()
            }

            Kirigami.Separator {
                visible: view.backend.presets.length > 0
                Layout.fillWidth: true
            }

            Repeater {
                model: view.backend.presets
                delegate: PlasmaComponents3.Button {
                    required property var modelData
                    objectName: "start-" + modelData.name
                    Layout.fillWidth: true
                    text: modelData.enabled ? modelData.label : modelData.label + " — " + modelData.why
                    enabled: modelData.enabled
                    icon.name: "media-playback-start"
                    onClicked: view.backend.start(modelData.name)
                }
            }

            PlasmaComponents3.Label {
                visible: view.backend.running && view.backend.lastError !== ""
                Layout.fillWidth: true
                wrapMode: Text.Wrap
                color: Kirigami.Theme.negativeTextColor
                text: view.backend.lastError
            }
        }
    }
}
