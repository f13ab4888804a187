// SPDX-License-Identifier: GPL-2.0-or-later
//
// Pure logic of the kvmisolate Plasma applet: what the compact and the full representation
// show for a view of the service, and which notifications a change deserves. No Qt or Plasma
// import, so node runs its unit tests (desktop/plasma/tests/logic.test.mjs); main.qml imports
// it as an ECMAScript module.
//
// An isolation record is what kvmisolated's Status() dictionary lists under `isolations`:
//   {name, cpus, target, state, 'state-reason', profile, tunings: [[name, state, reason,
//    original, current], ...], created}
// Every function that words something takes `tr`, the translation function (the applet passes
// Plasma's i18n); `%s` in a template is filled in order by fmt().

/**
 * Fills the `%s` of a (translated) template in order.
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
 * Parses a kernel cpulist ("2-5,7") into sorted CPU numbers; invalid parts are skipped.
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
 * @param {Function} tr translation
 * @returns {string} the label
 */
export function cpusLabel(list, tr) {
    return parseCpuList(list).length === 1 ? fmt(tr('CPU %s'), list) : fmt(tr('CPUs %s'), list);
}

/**
 * @param {object} iso an isolation record
 * @returns {boolean} whether it is degraded
 */
export function isDegraded(iso) {
    return iso.state === 'degraded';
}

/**
 * An object path as text, whatever form the D-Bus module decoded it to (a string, or an
 * object whose text is the path); '' when it is not one.
 *
 * @param {*} value the decoded value
 * @returns {string} the path
 */
export function objectPathText(value) {
    if (value === undefined || value === null)
        return '';
    const text = typeof value === 'object' && 'path' in value ? `${value.path}` : `${value}`;
    return text.startsWith('/') ? text : '';
}

/**
 * A value from the org.kvmisolate.client module as plain JavaScript: the module hands over
 * plain maps, lists, strings and numbers, but Qt may pass a list as an array-like sequence
 * object rather than an Array; those become Arrays, all the way down.
 *
 * @param {*} v the value
 * @returns {*} the plain value
 */
export function plain(v) {
    if (v === null || typeof v !== 'object')
        return v;
    if (Array.isArray(v) || typeof v.length === 'number')
        return Array.from(v, plain);
    const out = {};
    for (const k of Object.keys(v))
        out[k] = plain(v[k]);
    return out;
}

/**
 * A list as an Array: Qt may hand a list over as an array-like sequence object rather than an
 * Array; anything that is no list is an empty one.
 *
 * @param {*} v the list
 * @returns {Array} the Array
 */
export function listOf(v) {
    if (Array.isArray(v))
        return v;
    return v !== null && typeof v === 'object' && typeof v.length === 'number' ? Array.from(v) : [];
}

/**
 * Normalizes the Status() dictionary: a list of isolation records sorted
 * by name, every key present.
 *
 * @param {object|null} status the Status() dictionary (or null when unknown)
 * @returns {object[]} the records
 */
export function isolationsOf(status) {
    const list = plain(status?.isolations);
    if (!Array.isArray(list))
        return [];
    return list.map(i => ({
        name: `${i.name ?? ''}`,
        cpus: `${i.cpus ?? ''}`,
        target: `${i.target ?? ''}`,
        state: `${i.state ?? ''}`,
        'state-reason': `${i['state-reason'] ?? ''}`,
        profile: `${i.profile ?? ''}`,
        tunings: listOf(i.tunings),
        created: Number(i.created ?? 0),
        path: objectPathText(i['object-path']),
    })).sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * The summary line: what is isolated ("CPUs 2-5 · win11"), or that nothing is.
 *
 * @param {object[]} list the isolation records (an Array or an array-like)
 * @param {Function} tr translation
 * @returns {string} the line
 */
export function summary(list, tr) {
    const isolations = listOf(list);
    const withCpus = isolations.filter(i => parseCpuList(i.cpus).length > 0);
    if (withCpus.length === 0) {
        return isolations.length === 0
            ? tr('No CPUs isolated')
            : isolations.map(i => i.name).join(', ');
    }
    // Not flatMap: Qt's JavaScript engine (V4, Qt 6.11 too) has no Array.prototype.flatMap.
    const all = formatCpuList([].concat(...withCpus.map(i => parseCpuList(i.cpus))));
    const text = `${cpusLabel(all, tr)} · ${withCpus.map(i => i.name).join(', ')}`;
    return isolations.some(isDegraded) ? fmt(tr('%s (degraded)'), text) : text;
}

/**
 * What the compact representation (panel/tray icon) and the tooltip show.
 *
 * @param {{running: boolean, activatable: boolean, isolations: object[]}} view the view
 * @param {Function} tr translation
 * @returns {{status: string, icon: string, text: string, degraded: boolean, active: boolean}}
 *   status is the Plasma status name ("active", "needsattention", "passive")
 */
export function compactState(view, tr) {
    if (!view.running) {
        return {
            status: 'passive',
            icon: 'cpu',
            text: view.activatable ? tr('kvmisolated not running') : tr('kvmisolated not available'),
            degraded: false,
            active: false,
        };
    }
    const isolations = listOf(view.isolations);
    const degraded = isolations.some(isDegraded);
    const active = isolations.length > 0;
    let status = 'passive';
    if (degraded)
        status = 'needsattention';
    else if (active)
        status = 'active';
    return {
        status,
        icon: degraded ? 'dialog-warning' : 'cpu',
        text: summary(isolations, tr),
        degraded,
        active,
    };
}

/**
 * The one-line tunings summary: "profile realtime · tunings 7 applied, 1 failed".
 *
 * @param {object} iso an isolation record
 * @param {Function} tr translation
 * @returns {string} the line
 */
export function tuningsLine(iso, tr) {
    const counts = new Map();
    for (const t of listOf(iso.tunings))
        counts.set(t[1], (counts.get(t[1]) ?? 0) + 1);
    const words = { applied: tr('applied'), skipped: tr('skipped'), failed: tr('failed') };
    const parts = ['applied', 'skipped', 'failed']
        .filter(s => counts.has(s))
        .map(s => `${counts.get(s)} ${words[s]}`);
    const profile = fmt(tr('profile %s'), iso.profile || 'none');
    return parts.length ? `${profile} · ${tr('tunings')} ${parts.join(', ')}` : profile;
}

/**
 * The state line: "active", or "degraded: <the kernel's reason>".
 *
 * @param {object} iso an isolation record
 * @param {Function} tr translation
 * @returns {string} the line
 */
export function stateLine(iso, tr) {
    const reason = iso['state-reason'] ?? '';
    if (isDegraded(iso))
        return reason ? fmt(tr('degraded: %s'), reason) : tr('degraded');
    return iso.state === 'active' ? tr('active') : iso.state ?? '';
}

/**
 * A row of the full representation for one isolation.
 *
 * @param {object} iso an isolation record
 * @param {Function} tr translation
 * @returns {{name: string, title: string, target: string, state: string, tunings: string,
 *   degraded: boolean, releaseLabel: string}} the row
 */
export function isolationRow(iso, tr) {
    const cpus = parseCpuList(iso.cpus).length ? cpusLabel(iso.cpus, tr) : tr('no CPUs');
    return {
        name: iso.name,
        title: `${iso.name} — ${cpus}`,
        target: iso.target ?? '',
        state: stateLine(iso, tr),
        tunings: tuningsLine(iso, tr),
        degraded: isDegraded(iso),
        releaseLabel: fmt(tr('Release %s'), iso.name),
    };
}

/**
 * A preset's entry from a Presets row (name, cpus, target, profile, can-start, why-not).
 *
 * @param {Array} row the row
 * @param {Function} tr translation
 * @returns {{name: string, label: string, enabled: boolean, why: string}} the entry
 */
export function presetItem(row, tr) {
    const [name, cpus, target, , canStart, whyNot] = row;
    const what = cpus ? `${cpusLabel(cpus, tr)}, ${target}` : target;
    return {
        name,
        label: fmt(tr('Start %s (%s)'), name, what),
        enabled: Boolean(canStart),
        why: canStart ? '' : `${whyNot ?? ''}`,
    };
}

/**
 * The key an isolation is known by: its name and creation time.
 *
 * @param {object} iso an isolation record
 * @returns {string} the key
 */
export function isolationKey(iso) {
    return `${iso.name}@${iso.created ?? 0}`;
}

/**
 * The notifications a new view deserves: one per isolation that turned degraded since the
 * last view. `seen` (the keys already told, updated in place) forgets an isolation when it
 * recovers or goes, so each degradation is told once. With `primed` false (the first view of
 * a running service) nothing is told: what was degraded already is shown by the icon.
 *
 * @param {Set<string>} seen keys of isolations already told degraded
 * @param {object[]} isolations the isolation records now
 * @param {boolean} primed whether an earlier view of the running service was seen
 * @param {Function} tr translation
 * @returns {{title: string, body: string}[]} the notifications
 */
export function degradedNotices(seen, isolations, primed, tr) {
    const notices = [];
    const now = new Set();
    for (const iso of listOf(isolations).filter(isDegraded)) {
        const key = isolationKey(iso);
        now.add(key);
        if (seen.has(key) || !primed)
            continue;
        notices.push({
            title: fmt(tr('CPU isolation %s degraded'), iso.name),
            body: iso['state-reason'] ||
                fmt(tr('%s no longer hold what was asked for'), cpusLabel(iso.cpus, tr)),
        });
    }
    seen.clear();
    now.forEach(k => seen.add(k));
    return notices;
}

/**
 * The notification for a Released(name, path, reason) signal, or null when someone asked for
 * the release (reason `released`): only releases the service made by itself are news.
 *
 * @param {string} name the isolation
 * @param {string} reason the signal's reason
 * @param {Function} tr translation
 * @returns {{title: string, body: string}|null} the notification
 */
export function releasedNotice(name, reason, tr) {
    if (!reason || reason === 'released')
        return null;
    const why = {
        'target-exited': tr('its target exited'),
        'caller-disconnected': tr('the program that asked for it ended'),
        'restored-after-restart': tr('it was restored when the service restarted'),
    }[reason] ?? reason;
    return {
        title: fmt(tr('CPU isolation %s released'), name),
        body: fmt(tr('kvmisolated released it: %s.'), why),
    };
}

/**
 * The notification for a refused or failed call: the D-Bus error name and the service's (or
 * polkit's) sentence.
 *
 * @param {string} what what was tried ("Release win11")
 * @param {string} errorName the D-Bus error name ('' if none)
 * @param {string} message the error message
 * @param {Function} tr translation
 * @returns {{title: string, body: string}} the notification
 */
export function failureNotice(what, errorName, message, tr) {
    const denied = errorName === 'org.freedesktop.DBus.Error.AccessDenied' ||
        errorName === 'org.freedesktop.DBus.Error.InteractiveAuthorizationRequired';
    return {
        title: denied ? fmt(tr('%s: not authorized'), what) : fmt(tr('%s failed'), what),
        body: errorName ? `${message} (${errorName})` : `${message}`,
    };
}
