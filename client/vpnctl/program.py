"""The vpnctl program: what the installed command and `python -m vpnctl` run.

`vpnctl.cli.main` does the work and returns the exit status. Around it, this
spares a process that lives some tens of milliseconds two costs a longer one
would not notice: the garbage collector going through the modules while they
load, and the interpreter's tear-down at exit.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from typing import NoReturn


def run() -> NoReturn:
    """Run vpnctl with the process's arguments; end the process with its exit status."""
    # The imports make tens of thousands of objects and next to no garbage:
    # the collector would go through them over and over while they load. They
    # are then frozen out of its way, for the commands that keep running.
    gc.disable()
    from vpnctl.cli import main

    gc.freeze()
    gc.enable()
    status = main()
    # Tearing the interpreter down (every module and object freed one by one)
    # takes longer than many a command's answer, and nothing needs it: the
    # process ends at once once its output is out. Where something does wait
    # for the end (a thread, an exit handler) or the output cannot be written,
    # the interpreter ends it the usual way.
    threading = sys.modules.get("threading")
    if atexit._ncallbacks() or (threading is not None and threading.active_count() > 1):
        raise SystemExit(status)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(status) from None
    os._exit(status)
