"""A worker drains on the first SIGINT/SIGTERM and stops at once, with one line, on the second."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # a Python process each

# A worker's stop path in miniature: the first signal starts a drain that would never end, so only the
# second signal can end the process.
WORKER = textwrap.dedent("""
    import asyncio, os, signal
    from pipeline.orchestration.signals import on_stop_signals

    async def main():
        stop = asyncio.Event()
        on_stop_signals(stop)
        os.kill(os.getpid(), signal.{sig})
        await stop.wait()
        print("draining", flush=True)
        os.kill(os.getpid(), signal.{sig})
        await asyncio.Event().wait()  # a drain that hangs

    asyncio.run(main())
""")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_second_signal_stops_at_once_with_one_line(sig):
    r = subprocess.run([sys.executable, "-c", WORKER.format(sig=sig)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 130
    assert r.stdout == "draining\n"
    assert r.stderr.splitlines() == [f"specstop: second {sig}: stopping now without draining"]
