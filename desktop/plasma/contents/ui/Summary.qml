// SPDX-License-Identifier: GPL-2.0-or-later
//
// The popup's heading: the applet's icon, "CPU isolation" and the one-line summary. Plain
// Kirigami and Plasma components, so it loads outside a Plasma shell too (the VM test on
// Plasma 6.3, whose PlasmaExtras.Representation needs the shell's org.kde.plasma.plasmoid).

import QtQuick
import QtQuick.Layouts
import org.kde.plasma.components as PlasmaComponents3
import org.kde.kirigami as Kirigami

RowLayout {
    id: summary

    // Logic.compactState of the backend: icon, text, degraded.
    required property var compact
    property var tr: text => text

    Kirigami.Icon {
        source: summary.compact.icon
        Layout.preferredWidth: Kirigami.Units.iconSizes.medium
        Layout.preferredHeight: Kirigami.Units.iconSizes.medium
    }
    ColumnLayout {
        Layout.fillWidth: true
        spacing: 0
        Kirigami.Heading {
            level: 3
            text: summary.tr("CPU isolation")
        }
        PlasmaComponents3.Label {
            objectName: "summary"
            Layout.fillWidth: true
            text: summary.compact.text
            color: summary.compact.degraded ? Kirigami.Theme.negativeTextColor : Kirigami.Theme.textColor
            wrapMode: Text.Wrap
        }
    }
}
