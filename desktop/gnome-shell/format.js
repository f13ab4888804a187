// SPDX-License-Identifier: GPL-2.0-or-later
//
// Pure logic of the kvmisolate extension: what the toggle and the menu say for a set of
// isolations, and which notifications a change deserves. No GNOME Shell import, so gjs runs
// its unit tests (tests/format.test.js) without a shell.
//
// An isolation record is what kvmisolated's Status() dictionary lists under `isolations` (and
// the Isolation1 properties say), with the Status keys:
//   {name, cpus, target, state, 'state-reason', profile, tunings: [[name, state, reason,
//    original, current], ...], created}
// Every function takes the gettext function `_` so that the strings are translatable where
// they are written.

/**
 * Fills the `%s` of a (translated) template in order, like GNOME Shell's String.format,
 * without depending on the shell.
 *
 * @param {string} template the template
 * @param {...*} args the values
 * @returns {string} the text
 */
export function fmt(template, ...args) {
    let i = 0;
    return template.replace(/%s/g, () => `${args[i++] ?? ''}`);
}

/**
 * Parses a kernel cpulist ("2-5,7") into a sorted array of CPU numbers; invalid parts are
 * skipped (the service only sends valid lists).
 *
 * @param {string} text the cpulist
 * @returns {number[]} the CPUs
 */
export function parseCpuList(text) {
    const cpus = new Set();
    for (const part of (text ?? '').split(',')) {
        const m = /^\s*(\d+)(?:-(\d+))?\s*$/.exec(part);
        if (!m)
            continue;
        const lo = Number(m[1]);
        const hi = m[2] === undefined ? lo : Number(m[2]);
        for (let c = lo; c <= hi && c - lo < 8192; c++)
            cpus.add(c);
    }
    return [...cpus].sort((a, b) => a - b);
}

/**
 * Writes CPU numbers as a kernel cpulist ("2-5,7").
 *
 * @param {number[]} cpus the CPUs, any order
 * @returns {string} the cpulist
 */
export function formatCpuList(cpus) {
    const sorted = [...new Set(cpus)].sort((a, b) => a - b);
    const parts = [];
    for (let i = 0; i < sorted.length;) {
        let j = i;
        while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1)
            j++;
        parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
        i = j + 1;
    }
    return parts.join(',');
}

/**
 * "CPU 3" or "CPUs 2-5".
 *
 * @param {string} list a cpulist
 * @param {Function} _ gettext
 * @returns {string} the label
 */
export function cpusLabel(list, _) {
    const n = parseCpuList(list).length;
    return n === 1 ? fmt(_('CPU %s'), list) : fmt(_('CPUs %s'), list);
}

/**
 * Whether an isolation is degraded.
 *
 * @param {object} iso an isolation record
 * @returns {boolean}
 */
export function isDegraded(iso) {
    return iso.state === 'degraded';
}

/**
 * The toggle's subtitle: what is isolated ("CPUs 2-5 · win11"), or that nothing is.
 *
 * @param {object[]} isolations the isolation records
 * @param {Function} _ gettext
 * @returns {string} the subtitle
 */
export function subtitle(isolations, _) {
    const withCpus = isolations.filter(i => parseCpuList(i.cpus).length > 0);
    if (withCpus.length === 0) {
        return isolations.length === 0
            ? _('No CPUs isolated')
            : isolations.map(i => i.name).join(', ');
    }
    const all = formatCpuList(withCpus.flatMap(i => parseCpuList(i.cpus)));
    const names = withCpus.map(i => i.name).join(', ');
    const text = `${cpusLabel(all, _)} · ${names}`;
    return isolations.some(isDegraded) ? fmt(_('%s (degraded)'), text) : text;
}

/**
 * The toggle's subtitle when the service is not on the bus.
 *
 * @param {boolean} activatable whether the bus can start it on demand
 * @param {Function} _ gettext
 * @returns {string} the subtitle
 */
export function absentSubtitle(activatable, _) {
    return activatable ? _('kvmisolated not running') : _('kvmisolated not available');
}

/**
 * The one-line tunings summary: "profile realtime · 7 applied, 1 failed".
 *
 * @param {object} iso an isolation record
 * @param {Function} _ gettext
 * @returns {string} the line
 */
export function tuningsLine(iso, _) {
    const counts = new Map();
    for (const t of iso.tunings ?? [])
        counts.set(t[1], (counts.get(t[1]) ?? 0) + 1);
    const words = { applied: _('applied'), skipped: _('skipped'), failed: _('failed') };
    const parts = ['applied', 'skipped', 'failed']
        .filter(s => counts.has(s))
        .map(s => `${counts.get(s)} ${words[s]}`);
    const profile = fmt(_('profile %s'), iso.profile || 'none');
    return parts.length ? `${profile} · ${_('tunings')} ${parts.join(', ')}` : profile;
}

/**
 * The state line: "active", or "degraded: <the kernel's reason>".
 *
 * @param {object} iso an isolation record
 * @param {Function} _ gettext
 * @returns {string} the line
 */
export function stateLine(iso, _) {
    const reason = iso['state-reason'] ?? '';
    if (isDegraded(iso))
        return reason ? fmt(_('degraded: %s'), reason) : _('degraded');
    return iso.state === 'active' ? _('active') : iso.state ?? '';
}

/**
 * A menu row of one isolation: a title and the detail lines under it.
 *
 * @param {object} iso an isolation record
 * @param {Function} _ gettext
 * @returns {{title: string, details: string[], degraded: boolean}} the row
 */
export function isolationRow(iso, _) {
    const cpus = parseCpuList(iso.cpus).length ? cpusLabel(iso.cpus, _) : _('no CPUs');
    return {
        title: `${iso.name} — ${cpus}`,
        details: [iso.target ?? '', stateLine(iso, _), tuningsLine(iso, _)].filter(Boolean),
        degraded: isDegraded(iso),
    };
}

/**
 * A preset's menu item from a Presets row (name, cpus, target, profile, can-start, why-not).
 *
 * @param {Array} row the row
 * @param {Function} _ gettext
 * @returns {{name: string, label: string, sensitive: boolean}} the item
 */
export function presetItem(row, _) {
    const [name, cpus, target, , canStart, whyNot] = row;
    const what = cpus ? `${cpusLabel(cpus, _)}, ${target}` : target;
    const label = fmt(_('Start %s (%s)'), name, what);
    return { name, label: canStart ? label : `${label} — ${whyNot}`, sensitive: canStart };
}

/**
 * The key an isolation is known by: its name and creation time (a new isolation under the
 * same name is another one).
 *
 * @param {object} iso an isolation record
 * @returns {string} the key
 */
export function isolationKey(iso) {
    return `${iso.name}@${iso.created ?? 0}`;
}

/**
 * The notifications a new view of the isolations deserves: one per isolation that turned
 * degraded since the last view (`seen` remembers the degraded ones by key, and forgets them
 * when they recover or go, so each degradation is told once).
 *
 * @param {Set<string>} seen keys of isolations already told degraded (updated in place)
 * @param {object[]} isolations the isolation records now
 * @param {Function} _ gettext
 * @returns {{title: string, body: string}[]} the notifications
 */
export function degradedNotices(seen, isolations, _) {
    const notices = [];
    const now = new Set();
    for (const iso of isolations.filter(isDegraded)) {
        const key = isolationKey(iso);
        now.add(key);
        if (seen.has(key))
            continue;
        notices.push({
            title: fmt(_('CPU isolation %s degraded'), iso.name),
            body: iso['state-reason'] || fmt(_('%s no longer hold what was asked for'), cpusLabel(iso.cpus, _)),
        });
    }
    seen.clear();
    now.forEach(k => seen.add(k));
    return notices;
}

/**
 * The notification for a Released(name, path, reason) signal, or null when the release was
 * asked for by someone (reason `released`): only releases the service made by itself (the
 * target exited, the caller disconnected...) are news.
 *
 * @param {string} name the isolation
 * @param {string} reason the signal's reason
 * @param {Function} _ gettext
 * @returns {{title: string, body: string}|null} the notification
 */
export function releasedNotice(name, reason, _) {
    if (!reason || reason === 'released')
        return null;
    const why = {
        'target-exited': _('its target exited'),
        'caller-disconnected': _('the program that asked for it ended'),
        'restored-after-restart': _('it was restored when the service restarted'),
    }[reason] ?? reason;
    return {
        title: fmt(_('CPU isolation %s released'), name),
        body: fmt(_('kvmisolated released it: %s.'), why),
    };
}

/**
 * The notification for a refused or failed call: the D-Bus error name and the service's (or
 * polkit's) sentence, never swallowed.
 *
 * @param {string} what what was tried ("Release win11")
 * @param {string|null} errorName the remote error name, if any
 * @param {string} message the error message (remote prefix stripped)
 * @param {Function} _ gettext
 * @returns {{title: string, body: string}} the notification
 */
export function failureNotice(what, errorName, message, _) {
    const denied = errorName === 'org.freedesktop.DBus.Error.AccessDenied' ||
        errorName === 'org.freedesktop.DBus.Error.InteractiveAuthorizationRequired';
    return {
        title: denied ? fmt(_('%s: not authorized'), what) : fmt(_('%s failed'), what),
        body: errorName ? `${message} (${errorName})` : message,
    };
}
