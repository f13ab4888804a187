// SPDX-License-Identifier: GPL-2.0-or-later
//
// The plasma-applet case's driver, run by qmltestrunner as alice against the real system bus,
// polkitd and kvmisolated: the applet's own Backend.qml and FullView.qml, loaded from where
// `make install` put them, with no stand-in. The shell side (cases/plasma-applet.sh) acts with
// the CLI and waits for the "KT ..." lines this prints; this side acts through the applet
// (the popup's Release, Start and Release all buttons) and checks what the applet shows and tells.

import QtQuick
import QtTest

Item {
    id: top
    width: 480
    height: 600

    readonly property string ui: "file:///usr/share/plasma/plasmoids/org.kvmisolate.applet/contents/ui/"
    property var backend: null
    property var view: null
    property var notices: []
    property var calls: []
    property var seenAt: ({})

    function log(line) {
        console.log("KT " + line);
    }

    function iso(name) {
        return backend ? backend.isolations.find(i => i.name === name) : undefined;
    }

    TestCase {
        id: tc
        name: "PlasmaApplet"
        when: windowShown

        function grab(name) {
            let saved = null;
            top.view.grabToImage(result => {
                saved = result.saveToFile("/tmp/kvmi-plasma-" + name + ".png");
            });
            tryVerify(() => saved !== null, 20000, "grab " + name);
            verify(saved, "saving the " + name + " screenshot");
            tc.log("GRAB " + name);
        }

        function log(line) {
            top.log(line);
        }

        function label(objectName) {
            const item = findChild(top.view, objectName);
            return item ? item.text : null;
        }

        function initTestCase() {
            const bc = Qt.createComponent(top.ui + "Backend.qml");
            verify(bc.status === Component.Ready, "Backend.qml: " + bc.errorString());
            top.backend = bc.createObject(top);
            top.backend.notice.connect((title, body) => {
                top.notices.push(title + " | " + body);
                top.log("NOTICE " + title + " | " + body);
            });
            top.backend.callFinished.connect((what, ok, errorName, message) => {
                top.calls.push({ what: what, ok: ok, errorName: errorName });
                top.log("CALL " + what + " ok=" + ok + " " + errorName + " " + message);
            });
            top.backend.isolationsChanged.connect(() => {
                for (const i of top.backend.isolations) {
                    if (top.seenAt[i.name] === undefined)
                        top.seenAt[i.name] = Date.now();
                }
                for (const n of Object.keys(top.seenAt)) {
                    if (!top.iso(n))
                        delete top.seenAt[n];
                }
            });
            let vc = Qt.createComponent(top.ui + "FullView.qml");
            if (vc.status === Component.Error && vc.errorString().includes("org.kde.plasma.plasmoid")) {
                // Plasma 6.3: PlasmaExtras.Representation needs the shell's plasmoid module,
                // which only a Plasma shell registers. The popup's two parts, as installed, in
                // a plain layout instead (plasmoidviewer showed the whole applet above).
                log("PLAIN-VIEW FullView.qml needs a Plasma shell here: " + vc.errorString().split("\n")[0]);
                vc = Qt.createComponent("PlainView.qml");
            }
            verify(vc.status === Component.Ready, "FullView.qml: " + vc.errorString());
            top.view = vc.createObject(top, { backend: top.backend, width: top.width, height: top.height });
            verify(top.view !== null, "FullView created");
            log("STARTED running=" + top.backend.running + " activatable=" + top.backend.activatable);
        }

        function test_applet() {
            tryVerify(() => top.backend.running && top.backend.refreshes > 0, 120000,
                "the service on the bus (running=" + top.backend.running + " refreshes=" + top.backend.refreshes + ")");
            log("READY live=" + top.backend.live + " summary=" + label("summary"));
            verify(top.backend.live, "signals followed (org.kvmisolate.client subscribed)");
            compare(label("summary"), "No CPUs isolated");
            const presets = top.backend.presets.map(p => p.label).join("; ");
            log("PRESETS " + presets);
            top.backend.refreshesChanged.connect(() => top.log("REFRESH " + top.backend.refreshes + " isolations=" + top.backend.isolations.map(i => i.name + ":" + i.state).join(",")));
            // 1. An isolation made with the CLI appears (the shell compares the times).
            tryVerify(() => top.iso("web") !== undefined, 120000, "web appears");
            log("SEEN web " + top.seenAt["web"]);
            tryVerify(() => top.iso("web").state === "active", 10000, "web active");
            tryVerify(() => label("summary") === "CPUs 2-3 · web", 5000, "summary " + label("summary") + " / compact " + JSON.stringify(top.view.compact));
            verify(findChild(top.view, "isolation-web") !== null, "a row for web");
            verify(top.iso("web").target.startsWith("pids:"), "web's target " + top.iso("web").target);
            grab("active");

            // 2. Release from the popup: denied without a polkit rule...
            let button = findChild(top.view, "release-web");
            verify(button !== null, "a Release web button");
            button.clicked();
            tryVerify(() => top.calls.length === 1, 60000, "the Release call answered");
            verify(!top.calls[0].ok, "Release web allowed without a rule");
            log("DENIED " + top.calls[0].errorName + " notices=" + top.notices.filter(n => n.startsWith("Release web: not authorized")).length);
            verify(top.notices.some(n => n.startsWith("Release web: not authorized")), "a refusal notification");
            // kvmisolated answers InteractiveAuthorizationRequired when polkit wants a password
            // and the call did not allow interaction; AccessDenied when it did (polkit found no
            // agent to ask): the call carried ALLOW_INTERACTIVE_AUTHORIZATION.
            compare(top.calls[0].errorName, "org.freedesktop.DBus.Error.AccessDenied");
            verify(top.iso("web") !== undefined, "web still listed");

            // ... with a real polkit agent registered for this process (the shell runs polkit's
            // pkttyagent in a pseudo-terminal, then isolates `ask` as the sign): the agent asks
            // for an administrator's password. Answered wrong: refused, with a notification...
            tryVerify(() => top.iso("ask") !== undefined, 120000, "ask appears (the agent is registered)");
            button = findChild(top.view, "release-web");
            verify(button !== null, "a Release web button");
            button.clicked();
            tryVerify(() => top.calls.length === 2, 90000, "the Release call with the agent answered");
            verify(!top.calls[1].ok, "Release web allowed with a wrong password");
            const refusals = top.notices.filter(n => n.startsWith("Release web: not authorized"));
            log("REFUSED " + top.calls[1].errorName + " notices=" + refusals.length + " " + refusals[refusals.length - 1]);
            compare(refusals.length, 2, "a second refusal notification");
            verify(top.iso("web") !== undefined, "web still listed after the wrong password");
            // ... answered right (the shell checked and released `ask`): released.
            tryVerify(() => top.iso("ask") === undefined, 120000, "ask gone (the shell checked the refusal)");
            button = findChild(top.view, "release-web");
            verify(button !== null, "a Release web button");
            button.clicked();
            tryVerify(() => top.calls.length === 3, 90000, "the second Release call with the agent answered");
            verify(top.calls[2].ok, "Release web with the right password: " + JSON.stringify(top.calls[2]));
            tryVerify(() => top.iso("web") === undefined, 20000, "web gone from the applet");
            tryVerify(() => label("summary") === "No CPUs isolated", 5000, "summary " + label("summary"));
            log("RELEASED web");

            // ... and with the example rule (the shell stops the agent, installs the rule, then
            // isolates `go`): released without anyone asked.
            tryVerify(() => top.iso("go") !== undefined, 120000, "go appears (the rule is in place)");
            button = findChild(top.view, "release-go");
            verify(button !== null, "a Release go button");
            button.clicked();
            tryVerify(() => top.calls.length === 4, 60000, "the Release go call answered");
            verify(top.calls[3].ok, "Release go with the example rule: " + JSON.stringify(top.calls[3]));
            tryVerify(() => top.iso("go") === undefined, 20000, "go gone from the applet");
            log("RELEASED go");

            // ... and the configured preset (the shell set up `game`: CPUs 4-5, alice's unit)
            // started from the popup, then "Release all" with another isolation (`web2`, root's).
            let start = findChild(top.view, "start-game");
            verify(start !== null, "a Start game button");
            compare(start.text, "Start game (CPUs 4-5, unit:kvmi-game.service)");
            verify(start.enabled, "Start game enabled with nothing isolated");
            start.clicked();
            tryVerify(() => top.calls.length === 5, 60000, "the StartPreset call answered");
            verify(top.calls[4].ok, "Start game with the example rule: " + JSON.stringify(top.calls[4]));
            tryVerify(() => top.iso("game") !== undefined && top.iso("game").state === "active", 20000, "game active");
            tryVerify(() => label("summary") === "CPUs 4-5 · game", 5000, "summary " + label("summary"));
            // (the Repeater makes its buttons anew on each refresh: look them up each time)
            tryVerify(() => findChild(top.view, "start-game") !== null && !findChild(top.view, "start-game").enabled,
                5000, "Start game disabled while game runs");
            log("PRESET-ACTIVE game summary=" + label("summary") + " button=" + findChild(top.view, "start-game").text);
            tryVerify(() => top.iso("web2") !== undefined, 120000, "web2 appears");
            button = findChild(top.view, "release-all");
            verify(button !== null && button.visible, "a visible Release all button");
            button.clicked();
            tryVerify(() => top.calls.length === 6, 60000, "the ReleaseAll call answered");
            verify(top.calls[5].ok, "Release all with the example rule: " + JSON.stringify(top.calls[5]));
            tryVerify(() => top.backend.isolations.length === 0, 20000, "nothing left in the applet");
            tryVerify(() => label("summary") === "No CPUs isolated", 5000, "summary " + label("summary"));
            verify(!findChild(top.view, "release-all").visible, "Release all hidden with nothing isolated");
            tryVerify(() => findChild(top.view, "start-game") !== null && findChild(top.view, "start-game").enabled,
                5000, "Start game enabled again");
            log("RELEASED-ALL summary=" + label("summary") + " calls=" + top.calls.map(c => c.what + ":" + c.ok).join(","));

            // 3. Degraded (the shell isolates `deg` on 2-3 and takes CPU 3 offline): one notice.
            tryVerify(() => top.iso("deg") !== undefined && top.iso("deg").state === "degraded", 120000, "deg degraded");
            wait(4000);
            const deg = top.notices.filter(n => n.startsWith("CPU isolation deg degraded"));
            log("DEGRADED count=" + deg.length + " " + deg.join(" / "));
            compare(deg.length, 1, "degraded notifications");
            compare(top.view.compact.status, "needsattention");
            verify(label("summary").endsWith("(degraded)"), "summary " + label("summary"));
            grab("degraded");

            // 4. The service stopped, then activated again.
            tryVerify(() => !top.backend.running, 120000, "the service gone");
            compare(label("summary"), "kvmisolated not running");
            compare(top.backend.isolations.length, 0);
            log("ABSENT");
            tryVerify(() => top.backend.running, 120000, "the service back");
            tryVerify(() => top.view.compact.text === "No CPUs isolated", 20000, "summary after the service came back");
            log("BACK");
        }
    }
}
