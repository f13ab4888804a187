// SPDX-License-Identifier: GPL-2.0-or-later
//
// kvmisolated on the system bus, followed by signals only: the manager object's
// PropertiesChanged and Released, the ObjectManager's InterfacesAdded/Removed (through
// Gio.DBusObjectManagerClient), each isolation's PropertiesChanged, and the name's owner (both
// proxies follow it; nothing is auto-started by watching). No polling.
//
// The proxies are built from the project's own introspection XML: the installed
// /usr/share/dbus-1/interfaces/org.kvmisolate.Isolator1.xml (the one the service was built
// with), else the copy packed with the extension.

import Gio from 'gi://Gio';
import GLib from 'gi://GLib';

export const BUS_NAME = 'org.kvmisolate.Isolator1';
export const OBJECT_PATH = '/org/kvmisolate/Isolator1';
export const MANAGER_IFACE = 'org.kvmisolate.Isolator1';
export const ISOLATION_IFACE = 'org.kvmisolate.Isolation1';
const XML_NAME = 'org.kvmisolate.Isolator1.xml';
const SYSTEM_XML = `/usr/share/dbus-1/interfaces/${XML_NAME}`;

/**
 * The interface descriptions, from the system's interface file or the extension's copy.
 *
 * @param {string} extensionDir the extension's directory
 * @returns {{manager: Gio.DBusInterfaceInfo, isolation: Gio.DBusInterfaceInfo}}
 */
export function loadInterfaces(extensionDir) {
    const tried = [];
    for (const path of [SYSTEM_XML, `${extensionDir}/dbus/${XML_NAME}`]) {
        try {
            const [, bytes] = GLib.file_get_contents(path);
            const node = Gio.DBusNodeInfo.new_for_xml(new TextDecoder().decode(bytes));
            const manager = node.lookup_interface(MANAGER_IFACE);
            const isolation = node.lookup_interface(ISOLATION_IFACE);
            if (manager && isolation) {
                manager.cache_build();
                isolation.cache_build();
                return { manager, isolation };
            }
            tried.push(`${path}: no ${MANAGER_IFACE}/${ISOLATION_IFACE}`);
        } catch (e) {
            tried.push(`${path}: ${e.message}`);
        }
    }
    throw new Error(`kvmisolate: no usable interface description (${tried.join('; ')})`);
}

/**
 * A cached property's value, unpacked.
 *
 * @param {Gio.DBusProxy|null} proxy the proxy
 * @param {string} name the property
 * @param {*} fallback the value when it is not known
 * @returns {*} the value
 */
function unpack(proxy, name, fallback) {
    const v = proxy?.get_cached_property(name);
    return v ? v.deepUnpack() : fallback;
}

/** The service's state and its calls. */
export class IsolatorClient {
    /**
     * Starts following the service.
     *
     * @param {{manager: Gio.DBusInterfaceInfo, isolation: Gio.DBusInterfaceInfo}} interfaces
     *   the interface descriptions (loadInterfaces)
     * @param {{changed: Function, released: Function, failed: Function}} callbacks
     *   changed(): anything changed; released(name, reason): the Released signal;
     *   failed(what, errorName, message): a call failed
     */
    constructor(interfaces, callbacks) {
        this._interfaces = interfaces;
        this._callbacks = callbacks;
        this._cancellable = new Gio.Cancellable();
        this._handlers = [];
        this._activatable = false;
        this._manager = null;
        this._objects = null;
        this._start();
    }

    _connect(obj, signal, fn) {
        this._handlers.push([obj, obj.connect(signal, fn)]);
    }

    _changed() {
        this._callbacks.changed();
    }

    // Initializes OBJ (a Gio.AsyncInitable), then READY(obj) and a re-render.
    _initAsync(obj, what, ready) {
        obj.init_async(GLib.PRIORITY_DEFAULT, this._cancellable, (o, res) => {
            try {
                o.init_finish(res);
            } catch (e) {
                if (!e.matches(Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED))
                    logError(e, `kvmisolate: ${what}`);
                return;
            }
            ready(o);
            this._changed();
        });
    }

    _start() {
        const manager = new Gio.DBusProxy({
            g_connection: Gio.DBus.system,
            g_name: BUS_NAME,
            g_object_path: OBJECT_PATH,
            g_interface_name: MANAGER_IFACE,
            g_interface_info: this._interfaces.manager,
            g_flags: Gio.DBusProxyFlags.DO_NOT_AUTO_START,
        });
        this._initAsync(manager, 'manager proxy', p => {
            this._manager = p;
            this._connect(p, 'g-properties-changed', () => this._changed());
            this._connect(p, 'notify::g-name-owner', () => {
                this._refreshActivatable();
                this._changed();
            });
            this._connect(p, 'g-signal', (_p, _sender, signal, params) => {
                if (signal !== 'Released')
                    return;
                const [name, , reason] = params.deepUnpack();
                this._callbacks.released(name, reason);
            });
        });

        const objects = new Gio.DBusObjectManagerClient({
            connection: Gio.DBus.system,
            flags: Gio.DBusObjectManagerClientFlags.DO_NOT_AUTO_START,
            name: BUS_NAME,
            object_path: OBJECT_PATH,
        });
        this._initAsync(objects, 'object manager', o => {
            this._objects = o;
            this._connect(o, 'object-added', () => this._changed());
            this._connect(o, 'object-removed', () => this._changed());
            this._connect(o, 'interface-proxy-properties-changed', () => this._changed());
            this._connect(o, 'notify::name-owner', () => this._changed());
        });
        this._refreshActivatable();
    }

    // Whether the bus can start the service on demand (it exits when idle).
    _refreshActivatable() {
        Gio.DBus.system.call('org.freedesktop.DBus', '/org/freedesktop/DBus',
            'org.freedesktop.DBus', 'ListActivatableNames', null, new GLib.VariantType('(as)'),
            Gio.DBusCallFlags.NONE, -1, this._cancellable, (c, res) => {
                try {
                    const [names] = c.call_finish(res).deepUnpack();
                    this._activatable = names.includes(BUS_NAME);
                } catch (e) {
                    if (e.matches(Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED))
                        return;
                    this._activatable = false;
                }
                this._changed();
            });
    }

    /** @returns {boolean} whether the service is on the bus now */
    get running() {
        return Boolean(this._manager?.g_name_owner);
    }

    /** @returns {boolean} whether the bus starts it on demand */
    get activatable() {
        return this._activatable;
    }

    /** @returns {Array[]} the Presets rows */
    get presets() {
        return this.running ? unpack(this._manager, 'Presets', []) : [];
    }

    /** @returns {object[]} the isolation records (Status keys), by name */
    get isolations() {
        if (!this._objects || !this.running)
            return [];
        const records = [];
        for (const obj of this._objects.get_objects()) {
            const p = obj.get_interface(ISOLATION_IFACE);
            if (!p)
                continue;
            if (!p.get_interface_info())
                p.set_interface_info(this._interfaces.isolation);
            records.push({
                name: unpack(p, 'Name', ''),
                cpus: unpack(p, 'Cpus', ''),
                target: unpack(p, 'Target', ''),
                state: unpack(p, 'State', ''),
                'state-reason': unpack(p, 'StateReason', ''),
                profile: unpack(p, 'Profile', ''),
                tunings: unpack(p, 'Tunings', []),
                created: unpack(p, 'Created', 0),
                path: p.g_object_path,
            });
        }
        return records.sort((a, b) => a.name.localeCompare(b.name));
    }

    /**
     * Calls METHOD on the manager with interactive authorization allowed (the desktop's polkit
     * agent asks when a rule wants a password); a failure goes to `failed`.
     *
     * @param {string} method the method
     * @param {GLib.Variant|null} args its arguments
     * @param {string} what for people ("Release win11")
     */
    call(method, args, what) {
        Gio.DBus.system.call(BUS_NAME, OBJECT_PATH, MANAGER_IFACE, method, args, null,
            Gio.DBusCallFlags.ALLOW_INTERACTIVE_AUTHORIZATION, -1, this._cancellable,
            (c, res) => {
                try {
                    c.call_finish(res);
                } catch (e) {
                    if (e.matches(Gio.IOErrorEnum, Gio.IOErrorEnum.CANCELLED))
                        return;
                    const name = Gio.DBusError.get_remote_error(e);
                    Gio.DBusError.strip_remote_error(e);
                    this._callbacks.failed(what, name, e.message);
                }
            });
    }

    /** Drops every handler, proxy and pending call. */
    destroy() {
        this._cancellable.cancel();
        for (const [obj, id] of this._handlers)
            obj.disconnect(id);
        this._handlers = [];
        this._manager = null;
        this._objects = null;
    }
}
