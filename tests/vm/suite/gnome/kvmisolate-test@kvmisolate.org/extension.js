// Test session only (tests/vm/suite/cases/gnome-shell.sh): unsafe mode lets the suite inspect
// and drive the shell through org.gnome.Shell.Eval and take screenshots. Never installed by
// `make install`.
import {Extension} from 'resource:///org/gnome/shell/extensions/extension.js';

export default class KvmisolateTestDriver extends Extension {
    enable() {
        global.context.unsafe_mode = true;
    }

    disable() {
        global.context.unsafe_mode = false;
    }
}
