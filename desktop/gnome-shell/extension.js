// SPDX-License-Identifier: GPL-2.0-or-later
//
// kvmisolate in GNOME Shell's Quick Settings: a "CPU isolation" toggle (checked while any
// isolation is active; subtitle "CPUs 2-5 · win11"; a warning style while one is degraded)
// whose menu lists each isolation with a Release item, the administrator's presets with a
// Start item each, and Release all; a panel icon while something is isolated; notifications
// when an isolation degrades, when the service releases one by itself, and when a call is
// refused. All state comes from the service's signals (client.js); format.js words it.

import Clutter from 'gi://Clutter';
import GObject from 'gi://GObject';
import Gio from 'gi://Gio';
import GLib from 'gi://GLib';
import St from 'gi://St';

import { Extension, gettext as _ } from 'resource:///org/gnome/shell/extensions/extension.js';
import * as Main from 'resource:///org/gnome/shell/ui/main.js';
import * as MessageTray from 'resource:///org/gnome/shell/ui/messageTray.js';
import * as PopupMenu from 'resource:///org/gnome/shell/ui/popupMenu.js';
import { QuickMenuToggle, SystemIndicator } from 'resource:///org/gnome/shell/ui/quickSettings.js';

import { IsolatorClient, loadInterfaces } from './client.js';
import * as Format from './format.js';

const IsolationToggle = GObject.registerClass(
class IsolationToggle extends QuickMenuToggle {
    constructor(gicon) {
        super({ title: _('CPU isolation'), gicon, toggleMode: false });
        this.name = 'kvmisolate-toggle';
        this.menu.setHeader(gicon, _('CPU isolation'));
        this._isolations = new PopupMenu.PopupMenuSection();
        this._presets = new PopupMenu.PopupMenuSection();
        this.menu.addMenuItem(this._isolations);
        this.menu.addMenuItem(new PopupMenu.PopupSeparatorMenuItem());
        this.menu.addMenuItem(this._presets);
        this._releaseAll = new PopupMenu.PopupMenuItem(_('Release all'));
        this._releaseAll.name = 'kvmisolate-release-all';
        this.menu.addMenuItem(this._releaseAll);
        this._releaseAll.connect('activate', () => this._actions?.releaseAll());
        // The toggle shows state; clicking it opens the menu that acts.
        this.connect('clicked', () => this.menu.open());
    }

    /**
     * Shows `view` (see Indicator._render); `actions` are called by the items.
     *
     * @param {object} view what to show
     * @param {object} actions release(name), releaseAll(), start(name)
     */
    update(view, actions) {
        this.checked = view.active;
        this.subtitle = view.subtitle;
        this.menu.setHeader(this.gicon, _('CPU isolation'), view.subtitle);
        if (view.degraded)
            this.add_style_class_name('kvmisolate-degraded');
        else
            this.remove_style_class_name('kvmisolate-degraded');

        this._isolations.removeAll();
        for (const iso of view.isolations) {
            const row = Format.isolationRow(iso, _);
            const item = new PopupMenu.PopupBaseMenuItem({ reactive: false, can_focus: false });
            item.name = `kvmisolate-row-${iso.name}`;
            const box = new St.BoxLayout({ orientation: Clutter.Orientation.VERTICAL, x_expand: true });
            box.add_child(new St.Label({ text: row.title }));
            for (const line of row.details) {
                box.add_child(new St.Label({
                    text: line,
                    style_class: 'kvmisolate-row-detail',
                }));
            }
            item.add_child(box);
            this._isolations.addMenuItem(item);
            const release = new PopupMenu.PopupMenuItem(_('Release %s').format(iso.name));
            release.name = `kvmisolate-release-${iso.name}`;
            release.connect('activate', () => actions.release(iso.name));
            this._isolations.addMenuItem(release);
        }
        if (view.isolations.length === 0) {
            const none = new PopupMenu.PopupMenuItem(view.subtitle, { reactive: false });
            none.name = 'kvmisolate-none';
            this._isolations.addMenuItem(none);
        }

        this._presets.removeAll();
        for (const row of view.presets) {
            const p = Format.presetItem(row, _);
            const item = new PopupMenu.PopupMenuItem(p.label);
            item.name = `kvmisolate-preset-${p.name}`;
            item.setSensitive(p.sensitive);
            item.connect('activate', () => actions.start(p.name));
            this._presets.addMenuItem(item);
        }
        this._releaseAll.visible = view.isolations.length > 0;
        this._actions = actions;
    }
});

const Indicator = GObject.registerClass(
class Indicator extends SystemIndicator {
    constructor(extension) {
        super();
        this._gicon = Gio.icon_new_for_string(`${extension.path}/icons/kvmisolate-symbolic.svg`);
        this._indicator = this._addIndicator();
        this._indicator.gicon = this._gicon;
        this._indicator.name = 'kvmisolate-indicator';
        this._indicator.visible = false;
        this._toggle = new IsolationToggle(this._gicon);
        this.quickSettingsItems.push(this._toggle);

        this._seenDegraded = new Set();
        this._primed = false;
        this._source = null;
        this._actions = {
            release: name => this._client.call('Release', new GLib.Variant('(s)', [name]),
                _('Release %s').format(name)),
            releaseAll: () => this._client.call('ReleaseAll', null, _('Release all')),
            start: name => this._client.call('StartPreset', new GLib.Variant('(s)', [name]),
                _('Start %s').format(name)),
        };
        this._client = new IsolatorClient(loadInterfaces(extension.path), {
            changed: () => this._render(),
            released: (name, reason) => {
                const n = Format.releasedNotice(name, reason, _);
                if (n)
                    this._notify(n);
            },
            failed: (what, errorName, message) =>
                this._notify(Format.failureNotice(what, errorName, message, _)),
        });
        this._render();
    }

    _render() {
        const client = this._client;
        if (!client)
            return;
        const running = client.running;
        const isolations = client.isolations;
        const view = {
            active: isolations.length > 0,
            degraded: isolations.some(Format.isDegraded),
            subtitle: running ? Format.subtitle(isolations, _)
                : Format.absentSubtitle(client.activatable, _),
            isolations,
            presets: client.presets,
        };
        this._indicator.visible = view.active;
        this._toggle.reactive = running || client.activatable;
        this._toggle.update(view, this._actions);
        // Each degradation is told once; what was already degraded when the extension first
        // saw the service is shown by the toggle's style, not announced.
        const notices = Format.degradedNotices(this._seenDegraded, isolations, _);
        if (running && this._primed)
            notices.forEach(n => this._notify(n));
        if (running)
            this._primed = true;
    }

    _notify({ title, body }) {
        if (!this._source) {
            this._source = new MessageTray.Source({ title: _('CPU isolation'), icon: this._gicon });
            this._source.connect('destroy', () => {
                this._source = null;
            });
            Main.messageTray.add(this._source);
        }
        const notification = new MessageTray.Notification({
            source: this._source,
            title,
            body,
            urgency: MessageTray.Urgency.HIGH,
        });
        this._source.addNotification(notification);
    }

    destroy() {
        this._client?.destroy();
        this._client = null;
        this._source?.destroy();
        this._source = null;
        // Quick Settings put the toggle's menu into its own overlay: it goes with it only
        // when destroyed here (the enable/disable x20 test counts the actors).
        this._toggle.menu.destroy();
        this.quickSettingsItems.forEach(item => item.destroy());
        this.quickSettingsItems = [];
        super.destroy();
    }
});

export default class KvmisolateExtension extends Extension {
    enable() {
        this._indicator = new Indicator(this);
        Main.panel.statusArea.quickSettings.addExternalIndicator(this._indicator);
    }

    disable() {
        this._indicator?.destroy();
        this._indicator = null;
    }
}
