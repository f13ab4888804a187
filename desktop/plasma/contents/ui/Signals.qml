// SPDX-License-Identifier: GPL-2.0-or-later
//
// The service's signals (Backend.qml loads this; SignalWatcher needs Plasma 6.7's
// org.kde.plasma.workspace.dbus): `changed` for any PropertiesChanged of the manager or of an
// isolation and for InterfacesAdded/Removed, `released` for Released(name, path, reason).

pragma ComponentBehavior: Bound

import QtQuick
import org.kde.plasma.workspace.dbus as DBus

Item {
    id: root

    property string service
    property string path
    // The isolations' object paths.
    property var paths: []

    signal changed()
    signal released(string name, string reason)

    DBus.SignalWatcher {
        busType: DBus.BusType.System
        service: root.service
        path: root.path
        iface: "org.kvmisolate.Isolator1"
        function dbusReleased(name, objectPath, reason) {
            root.released(name, reason);
            root.changed();
        }
    }

    DBus.SignalWatcher {
        busType: DBus.BusType.System
        service: root.service
        path: root.path
        iface: "org.freedesktop.DBus.Properties"
        function dbusPropertiesChanged(iface, changedProperties, invalidated) {
            root.changed();
        }
    }

    DBus.SignalWatcher {
        busType: DBus.BusType.System
        service: root.service
        path: root.path
        iface: "org.freedesktop.DBus.ObjectManager"
        function dbusInterfacesAdded(objectPath, interfaces) {
            root.changed();
        }
        function dbusInterfacesRemoved(objectPath, interfaces) {
            root.changed();
        }
    }

    Instantiator {
        model: root.paths
        delegate: DBus.SignalWatcher {
            required property string modelData
            busType: DBus.BusType.System
            service: root.service
            path: modelData
            iface: "org.freedesktop.DBus.Properties"
            function dbusPropertiesChanged(iface, changedProperties, invalidated) {
                root.changed();
            }
        }
    }
}
