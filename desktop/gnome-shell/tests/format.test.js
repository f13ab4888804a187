// SPDX-License-Identifier: GPL-2.0-or-later
//
// Unit tests of format.js (no shell needed): gjs -m tests/format.test.js
// Exit status 0 when every test passes; each failure is printed with what was expected.

import System from 'system';

import * as F from '../format.js';

const _ = s => s;
let failures = 0;
let count = 0;

/**
 * Records a failure unless ACTUAL and EXPECTED are the same JSON.
 *
 * @param {*} actual what the code gave
 * @param {*} expected what it should give
 * @param {string} what the test's name
 */
function eq(actual, expected, what) {
    count++;
    const a = JSON.stringify(actual);
    const e = JSON.stringify(expected);
    if (a !== e) {
        failures++;
        print(`FAIL ${what}\n  got:      ${a}\n  expected: ${e}`);
    }
}

/**
 * A Status() isolation as `kvmisolate status --json` prints it.
 *
 * @param {string} name the isolation's name
 * @param {string} cpus its cpulist
 * @param {object} extra keys to override
 * @returns {object} the record
 */
function iso(name, cpus, extra = {}) {
    return {
        name, cpus, target: `unit:${name}.service`, state: 'active', 'state-reason': '',
        profile: 'default', created: 1, tunings: [], ...extra,
    };
}

// cpulists
eq(F.parseCpuList('2-5,7'), [2, 3, 4, 5, 7], 'parse range and single');
eq(F.parseCpuList(''), [], 'parse empty');
eq(F.parseCpuList('3,1-2,x,9-8'), [1, 2, 3], 'parse skips junk and reversed ranges');
eq(F.formatCpuList([7, 2, 3, 4, 5, 3]), '2-5,7', 'format merges and sorts');
eq(F.formatCpuList([]), '', 'format empty');
eq(F.fmt('%s of %s', 1, 'x'), '1 of x', 'fmt fills in order');

// subtitle
eq(F.subtitle([], _), 'No CPUs isolated', 'subtitle: nothing');
eq(F.subtitle([iso('win11', '2-5')], _), 'CPUs 2-5 · win11', 'subtitle: one');
eq(F.subtitle([iso('a', '3')], _), 'CPU 3 · a', 'subtitle: one CPU');
eq(F.subtitle([iso('a', '2-3'), iso('b', '4-5')], _), 'CPUs 2-5 · a, b', 'subtitle: union');
eq(F.subtitle([iso('w', '2-3', { state: 'degraded' })], _), 'CPUs 2-3 · w (degraded)',
    'subtitle: degraded');
eq(F.subtitle([iso('hugepages-w', '', { target: 'reservation:w' })], _), 'hugepages-w',
    'subtitle: a reservation holds no CPUs');
eq(F.absentSubtitle(true, _), 'kvmisolated not running', 'absent, activatable');
eq(F.absentSubtitle(false, _), 'kvmisolated not available', 'absent, not installed');

// rows
const tunings = [
    ['irq-affinity', 'applied', '', '0-5', '0-1'],
    ['vmstat-interval', 'applied', '', '1', '120'],
    ['governor', 'skipped', 'no cpufreq', '', ''],
    ['thp', 'failed', 'EBUSY', 'always', 'always'],
];
eq(F.isolationRow(iso('win11', '2-5', { profile: 'realtime', tunings }), _), {
    title: 'win11 — CPUs 2-5',
    details: ['unit:win11.service', 'active',
        'profile realtime · tunings 2 applied, 1 skipped, 1 failed'],
    degraded: false,
}, 'row: active with tunings');
eq(F.isolationRow(iso('w', '2-3', {
    state: 'degraded', 'state-reason': 'CPU 3 offline or taken away: the partition holds only 2',
    profile: 'none',
}), _), {
    title: 'w — CPUs 2-3',
    details: ['unit:w.service',
        'degraded: CPU 3 offline or taken away: the partition holds only 2', 'profile none'],
    degraded: true,
}, 'row: degraded names the reason');
eq(F.isolationRow(iso('hugepages-w', '', { target: 'reservation:w' }), _).title,
    'hugepages-w — no CPUs', 'row: reservation');

// presets
eq(F.presetItem(['game', '2-3', 'unit:game.service', 'default', true, ''], _),
    { name: 'game', label: 'Start game (CPUs 2-3, unit:game.service)', sensitive: true },
    'preset: startable');
eq(F.presetItem(['win', '', 'libvirt:win10', 'none', false, 'already isolated'], _),
    { name: 'win', label: 'Start win (libvirt:win10) — already isolated', sensitive: false },
    'preset: not now, says why');

// notifications: degraded once per episode
const seen = new Set();
const degraded = iso('w', '2-3', { state: 'degraded', 'state-reason': 'CPU 3 offline' });
eq(F.degradedNotices(seen, [iso('w', '2-3')], _), [], 'no notice while active');
eq(F.degradedNotices(seen, [degraded], _),
    [{ title: 'CPU isolation w degraded', body: 'CPU 3 offline' }], 'notice when it degrades');
eq(F.degradedNotices(seen, [degraded], _), [], 'not twice for the same degradation');
eq(F.degradedNotices(seen, [degraded, iso('x', '4')], _), [], 'other changes do not repeat it');
eq(F.degradedNotices(seen, [iso('w', '2-3')], _), [], 'recovered: nothing');
eq(F.degradedNotices(seen, [degraded], _).length, 1, 'a new degradation is told again');
eq(F.degradedNotices(seen, [{ ...degraded, created: 2 }], _).length, 1,
    'a new isolation under the same name is another one');

// released by the service / failures
eq(F.releasedNotice('w', 'released', _), null, 'asked-for release: no notice');
eq(F.releasedNotice('w', 'target-exited', _),
    { title: 'CPU isolation w released', body: 'kvmisolated released it: its target exited.' },
    'target exit');
eq(F.releasedNotice('w', 'something-new', _).body, 'kvmisolated released it: something-new.',
    'unknown reasons are shown as they are');
eq(F.failureNotice('Release w', 'org.freedesktop.DBus.Error.AccessDenied', 'Not authorized', _),
    {
        title: 'Release w: not authorized',
        body: 'Not authorized (org.freedesktop.DBus.Error.AccessDenied)',
    }, 'denied');
eq(F.failureNotice('Start g', 'org.kvmisolate.Error.CpusBusy', 'CPU 2 is held by x', _).title,
    'Start g failed', 'other failures');

print(`${count - failures} passed, ${failures} failed`);
if (failures)
    System.exit(1);
