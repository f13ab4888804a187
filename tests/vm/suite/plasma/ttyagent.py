#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The plasma-applet case's polkit authentication agent: polkit's own text agent, pkttyagent,
# registered for one process (--process PID: the applet's) in a pseudo-terminal of its own, as
# a person at a terminal would run it. Everything it prints goes to LOG as it comes; each
# "Password:" prompt is answered with the next of PASSWORD... (pkttyagent turns echo off, so
# none shows in LOG), a "Choose identity" question with root's number. "KTA ..." lines are this
# script's own: PID (its own, for the case's kill), REGISTERED once polkitd has the agent
# (pkttyagent closed --notify-fd), ANSWER N for each password typed, EXIT when pkttyagent ended
# or this script was stopped.
#
# usage: ttyagent.py LOG PID PASSWORD...

import os
import pty
import re
import select
import signal
import sys
import termios
import time

log_path, target_pid, passwords = sys.argv[1], sys.argv[2], sys.argv[3:]
notify_r, notify_w = os.pipe()
child, master = pty.fork()
if child == 0:
    os.close(notify_r)
    os.set_inheritable(notify_w, True)
    os.execvp("pkttyagent", ["pkttyagent", "--process", target_pid, "--notify-fd", str(notify_w)])
os.close(notify_w)

log = open(log_path, "a", buffering=1, errors="replace")


def note(line):
    log.write("\nKTA " + line + "\n")


def type_secret(secret):
    """Types SECRET once pkttyagent has turned the terminal's echo off (it prints the prompt
    first: typed at once, it would be echoed into LOG)."""
    end = time.monotonic() + 5
    while termios.tcgetattr(master)[3] & termios.ECHO and time.monotonic() < end:
        time.sleep(0.02)
    os.write(master, (secret + "\n").encode())


def stop(signum, frame):
    try:
        os.kill(child, signal.SIGTERM)
    except ProcessLookupError:
        pass
    note("EXIT (signal %d)" % signum)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
note("PID %d" % os.getpid())
pending = ""
answered = 0
fds = [master, notify_r]
while True:
    ready, _, _ = select.select(fds, [], [])
    if notify_r in ready:
        if not os.read(notify_r, 64):
            note("REGISTERED for process " + target_pid)
            fds.remove(notify_r)
            os.close(notify_r)
    if master in ready:
        try:
            data = os.read(master, 4096)
        except OSError:
            data = b""
        if not data:
            break
        text = data.decode(errors="replace")
        log.write(text)
        pending += text
        if "Choose identity to authenticate as" in pending:
            m = re.search(r"(\d+)\. [^\n]*\broot\b", pending)
            os.write(master, ((m.group(1) if m else "1") + "\n").encode())
            pending = ""
        elif re.search(r"[Pp]assword: *$", pending):
            if answered < len(passwords):
                type_secret(passwords[answered])
                answered += 1
                note("ANSWER %d" % answered)
            pending = ""
_, status = os.waitpid(child, 0)
note("EXIT status %d" % os.waitstatus_to_exitcode(status))
