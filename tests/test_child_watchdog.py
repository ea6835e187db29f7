"""A sink child stuck in a client call ends once its SIGKILLed parent has been gone for the grace.

The daemon's producer children ignore SIGTERM and wait on their pipe; one stuck inside a
kafka-python call that never returns (seen after a broker restart) would never read the pipe's
end, and outlive its daemon for good. The child here is started as the daemon starts its sink
children (``spawn_child``), arms the same watchdog, then hangs; its parent is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

_STUCK_CHILD = (
    "import sys, json, signal, time; sys.path[:0] = json.loads(sys.argv[1]); "
    "from streamrnn.connectors.kafka.sink_process import exit_when_orphaned; "
    "args = json.loads(sys.argv[2]); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "exit_when_orphaned(args['parent_pid'], args['grace']); time.sleep(600)"
)

_PARENT = textwrap.dedent(
    """
    import sys, time
    from streamrnn.connectors.kafka.sink_process import spawn_child
    proc, conn = spawn_child(sys.argv[1], {"grace": float(sys.argv[2])})
    print(proc.pid, flush=True)
    time.sleep(600)
    """
)


def _gone(pid):
    """Whether ``pid`` has exited (a zombie no one reaps counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _ignores_sigterm(pid):
    """Whether ``pid`` has set SIGTERM to be ignored (the child's first act after its imports)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            mask = next(int(line.split()[1], 16) for line in fh if line.startswith("SigIgn:"))
    except FileNotFoundError:
        return False
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def _start(grace):
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _STUCK_CHILD, str(grace)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    child = int(parent.stdout.readline())
    return parent, child


def test_a_stuck_child_ends_after_its_parent_is_killed():
    parent, child = _start(grace=1.0)
    t0 = time.monotonic()  # under load the child's imports take a while: wait until it ignores SIGTERM
    while not _ignores_sigterm(child) and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    time.sleep(0.5)  # the child has armed its watchdog and hangs; SIGTERM does not end it
    os.kill(child, signal.SIGTERM)
    time.sleep(0.5)
    assert not _gone(child)
    parent.kill()
    parent.wait(10)
    killed = time.monotonic()
    while not _gone(child) and time.monotonic() - killed < 15:
        time.sleep(0.1)
    waited = time.monotonic() - killed
    assert _gone(child), "the orphaned child still runs 15 s after its parent was killed"
    assert waited >= 1.0  # the grace: time to deliver what it holds


def test_a_child_with_its_parent_alive_keeps_running():
    parent, child = _start(grace=0.2)
    try:
        time.sleep(3.0)
        assert not _gone(child)
    finally:
        os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait(10)
