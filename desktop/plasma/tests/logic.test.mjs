// SPDX-License-Identifier: GPL-2.0-or-later
//
// Unit tests of the applet's pure logic (contents/ui/logic.mjs), no Plasma needed:
//   node --test desktop/plasma/tests/

import { test } from 'node:test';
import assert from 'node:assert/strict';

import * as L from '../contents/ui/logic.mjs';

const tr = s => s;

/**
 * A Status() isolation entry as the D-Bus module decodes it.
 *
 * @param {string} name the isolation's name
 * @param {string} cpus its cpulist
 * @param {object} extra keys to override
 * @returns {object} the entry
 */
function iso(name, cpus, extra = {}) {
    return {
        name, cpus, target: `unit:${name}.service`, state: 'active', 'state-reason': '',
        profile: 'default', created: 1, tunings: [], path: `/org/kvmisolate/Isolator1/isolation/${name}`,
        ...extra,
    };
}

test('cpulists', () => {
    assert.deepEqual(L.parseCpuList('2-5,7'), [2, 3, 4, 5, 7]);
    assert.deepEqual(L.parseCpuList(''), []);
    assert.deepEqual(L.parseCpuList(undefined), []);
    assert.deepEqual(L.parseCpuList('3,1-2,x,9-8'), [1, 2, 3]);
    assert.equal(L.formatCpuList([7, 2, 3, 4, 5, 3]), '2-5,7');
    assert.equal(L.formatCpuList([]), '');
    assert.equal(L.fmt('%s of %s', 1, 'x'), '1 of x');
    assert.equal(L.cpusLabel('3', tr), 'CPU 3');
    assert.equal(L.cpusLabel('2-3', tr), 'CPUs 2-3');
});

test('isolationsOf normalizes and sorts what Status() gave', () => {
    assert.deepEqual(L.isolationsOf(null), []);
    assert.deepEqual(L.isolationsOf({}), []);
    const got = L.isolationsOf({
        isolations: [
            { name: 'b', cpus: '4', 'object-path': '/org/kvmisolate/Isolator1/isolation/b' },
            { name: 'a', cpus: '2-3', state: 'degraded', 'state-reason': 'CPU 3 offline', created: 7,
                tunings: [['thp', 'applied', '', 'always', 'never']], 'object-path': { path: '/p/a' } },
        ],
    });
    assert.deepEqual(got.map(i => i.name), ['a', 'b']);
    assert.equal(got[0]['state-reason'], 'CPU 3 offline');
    assert.equal(got[0].created, 7);
    assert.equal(got[0].path, '/p/a');
    assert.equal(got[1].path, '/org/kvmisolate/Isolator1/isolation/b');
    assert.equal(got[1].state, '');
    assert.deepEqual(got[1].tunings, []);
    assert.equal(L.objectPathText('not a path'), '');
    assert.equal(L.objectPathText(null), '');
});

test('plain turns Qt\'s array-like sequences into Arrays', () => {
    assert.deepEqual(L.plain({ 0: 'a', 1: 'b', length: 2 }), ['a', 'b']);
    assert.deepEqual(L.plain({ isolations: { 0: { name: 'x', tunings: { length: 0 } }, length: 1 } }),
        { isolations: [{ name: 'x', tunings: [] }] });
    assert.equal(L.plain(null), null);
    assert.deepEqual(L.isolationsOf({ isolations: { 0: { name: 'w', cpus: '2' }, length: 1 } })
        .map(i => i.name), ['w']);
    assert.deepEqual(L.isolationsOf({ isolations: 'nonsense' }), []);
    // An array-like Qt sequence object.
    const seq = { 0: iso('web', '2-3'), length: 1 };
    assert.equal(L.summary(seq, tr), 'CPUs 2-3 · web');
    assert.equal(L.compactState({ running: true, activatable: true, isolations: seq }, tr).text, 'CPUs 2-3 · web');
    assert.deepEqual(L.listOf(null), []);
    assert.deepEqual(L.listOf('ab'), []);
    assert.deepEqual(L.isolationsOf(null), []);
});

test('summary', () => {
    assert.equal(L.summary([], tr), 'No CPUs isolated');
    assert.equal(L.summary([iso('win11', '2-5')], tr), 'CPUs 2-5 · win11');
    assert.equal(L.summary([iso('a', '3')], tr), 'CPU 3 · a');
    assert.equal(L.summary([iso('a', '2-3'), iso('b', '4-5')], tr), 'CPUs 2-5 · a, b');
    assert.equal(L.summary([iso('w', '2-3', { state: 'degraded' })], tr), 'CPUs 2-3 · w (degraded)');
    assert.equal(L.summary([iso('hugepages-w', '', { target: 'reservation:w' })], tr), 'hugepages-w');
});

test('compact state: absent, idle, active, degraded', () => {
    assert.deepEqual(L.compactState({ running: false, activatable: true, isolations: [] }, tr), {
        status: 'passive', icon: 'cpu', text: 'kvmisolated not running', degraded: false, active: false,
    });
    assert.equal(L.compactState({ running: false, activatable: false, isolations: [] }, tr).text,
        'kvmisolated not available');
    assert.deepEqual(L.compactState({ running: true, activatable: true, isolations: [] }, tr), {
        status: 'passive', icon: 'cpu', text: 'No CPUs isolated', degraded: false, active: false,
    });
    const active = L.compactState({ running: true, isolations: [iso('vm', '2-3')] }, tr);
    assert.equal(active.status, 'active');
    assert.equal(active.active, true);
    const degraded = L.compactState({
        running: true, isolations: [iso('vm', '2-3', { state: 'degraded' }), iso('x', '4')],
    }, tr);
    assert.equal(degraded.status, 'needsattention');
    assert.equal(degraded.icon, 'dialog-warning');
    assert.equal(degraded.text, 'CPUs 2-4 · vm, x (degraded)');
});

test('isolation rows', () => {
    const tunings = [
        ['irq-affinity', 'applied', '', '0-5', '0-1'],
        ['vmstat-interval', 'applied', '', '1', '120'],
        ['governor', 'skipped', 'no cpufreq', '', ''],
        ['thp', 'failed', 'EBUSY', 'always', 'always'],
    ];
    assert.deepEqual(L.isolationRow(iso('win11', '2-5', { profile: 'realtime', tunings }), tr), {
        name: 'win11',
        title: 'win11 — CPUs 2-5',
        target: 'unit:win11.service',
        state: 'active',
        tunings: 'profile realtime · tunings 2 applied, 1 skipped, 1 failed',
        degraded: false,
        releaseLabel: 'Release win11',
    });
    const d = L.isolationRow(iso('w', '2-3', {
        state: 'degraded', 'state-reason': 'CPU 3 offline', profile: '',
    }), tr);
    assert.equal(d.state, 'degraded: CPU 3 offline');
    assert.equal(d.degraded, true);
    assert.equal(d.tunings, 'profile none');
    assert.equal(L.stateLine(iso('w', '2', { state: 'degraded' }), tr), 'degraded');
    assert.equal(L.stateLine(iso('w', '2', { state: 'restoring' }), tr), 'restoring');
    assert.equal(L.isolationRow(iso('r', '', { target: 'reservation:r' }), tr).title, 'r — no CPUs');
});

test('presets', () => {
    assert.deepEqual(L.presetItem(['win11', '2-5', 'unit:win11.service', 'default', true, ''], tr), {
        name: 'win11', label: 'Start win11 (CPUs 2-5, unit:win11.service)', enabled: true, why: '',
    });
    assert.deepEqual(L.presetItem(['db', '', 'libvirt:db', 'none', false, 'CPUs 2-3 are held by vm'], tr), {
        name: 'db', label: 'Start db (libvirt:db)', enabled: false, why: 'CPUs 2-3 are held by vm',
    });
});

test('degraded notices: told once, not for what was degraded before, again after a recovery', () => {
    const seen = new Set();
    const deg = iso('vm', '2-3', { state: 'degraded', 'state-reason': 'CPU 3 offline' });
    // First view of the service: already degraded, shown by the icon only.
    assert.deepEqual(L.degradedNotices(seen, [deg], false, tr), []);
    assert.deepEqual(L.degradedNotices(seen, [deg], true, tr), []);
    // Recovers, degrades again: told.
    assert.deepEqual(L.degradedNotices(seen, [iso('vm', '2-3')], true, tr), []);
    assert.deepEqual(L.degradedNotices(seen, [deg], true, tr), [
        { title: 'CPU isolation vm degraded', body: 'CPU 3 offline' },
    ]);
    assert.deepEqual(L.degradedNotices(seen, [deg], true, tr), []);
    // A new isolation under the same name (another creation time) is another one.
    const again = { ...deg, created: 2, 'state-reason': '' };
    assert.deepEqual(L.degradedNotices(seen, [again], true, tr), [
        { title: 'CPU isolation vm degraded', body: 'CPUs 2-3 no longer hold what was asked for' },
    ]);
    // Gone: forgotten.
    assert.deepEqual(L.degradedNotices(seen, [], true, tr), []);
    assert.equal(seen.size, 0);
});

test('released and failure notices', () => {
    assert.equal(L.releasedNotice('vm', 'released', tr), null);
    assert.equal(L.releasedNotice('vm', '', tr), null);
    assert.deepEqual(L.releasedNotice('vm', 'target-exited', tr), {
        title: 'CPU isolation vm released', body: 'kvmisolated released it: its target exited.',
    });
    assert.equal(L.releasedNotice('vm', 'something-new', tr).body,
        'kvmisolated released it: something-new.');
    assert.deepEqual(L.failureNotice('Release vm', 'org.freedesktop.DBus.Error.AccessDenied', 'no', tr), {
        title: 'Release vm: not authorized', body: 'no (org.freedesktop.DBus.Error.AccessDenied)',
    });
    assert.equal(L.failureNotice('Release vm',
        'org.freedesktop.DBus.Error.InteractiveAuthorizationRequired', 'x', tr).title,
    'Release vm: not authorized');
    assert.deepEqual(L.failureNotice('Start db', 'org.kvmisolate.Error.Busy', 'CPUs held', tr), {
        title: 'Start db failed', body: 'CPUs held (org.kvmisolate.Error.Busy)',
    });
    assert.deepEqual(L.failureNotice('Start db', '', 'timeout', tr), { title: 'Start db failed', body: 'timeout' });
});

test('uses nothing Qt\'s JavaScript engine lacks (node has it, V4 does not)', async () => {
    const { readFile } = await import('node:fs/promises');
    const source = await readFile(new URL('../contents/ui/logic.mjs', import.meta.url), 'utf8');
    const code = source.replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
    for (const missing of ['.flatMap(', '.flat(', 'Object.fromEntries(', '.findLast(', '.toSorted('])
        assert.ok(!code.includes(missing), `logic.mjs uses ${missing}`);
});
