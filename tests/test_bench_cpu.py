"""The benchmark's CPU per operation (bench/run.py `CpuWindow`): each party's CPU is read from
/proc over the measured window and divided by the operations done."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.test_bench_resume import bench

BUSY = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def burn_client(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_window_splits_the_cpu_between_the_server_and_the_client() -> None:
    server = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)
    try:
        window = bench.CpuWindow((server.pid,))
        burn_client(0.2)
        per_op = window.per_op(10)
    finally:
        server.communicate(b"")
    assert per_op is not None
    assert set(per_op) == {"client", "server", "postgres", "redis"}
    assert 15 <= per_op["client"] <= 40  # 0.2 s of CPU over 10 operations: 20 ms each
    assert per_op["server"] < 5  # it only waited on its stdin


def test_the_server_is_its_pids_and_the_named_groups_are_found_by_process_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A process named like a group's server counts for that group, wherever it was started.
    monkeypatch.setattr(bench, "PROCESS_GROUPS", {"busy": "stello-busy"})
    busy = subprocess.Popen([sys.executable, "-c",
                             "import ctypes, sys\n"
                             "ctypes.CDLL(None).prctl(15, b'stello-busy', 0, 0, 0)\n"
                             "sys.stdin.readline()\n" + BUSY],
                            stdin=subprocess.PIPE)
    try:
        time.sleep(0.3)  # named by then
        assert bench.named_processes() == {"busy": [busy.pid]}
        window = bench.CpuWindow((busy.pid,))
        busy.communicate(b"go\n")  # burns 0.3 s of CPU and exits
        per_op = window.per_op(3)
    finally:
        if busy.poll() is None:
            busy.kill()
    assert per_op is not None
    # It ended inside the window: its CPU is lost with it (a server does not end mid-phase).
    assert per_op["busy"] == per_op["server"] == 0.0


def test_a_living_server_process_is_counted_and_nothing_done_gives_none() -> None:
    server = subprocess.Popen([sys.executable, "-c",
                               "import sys\nsys.stdin.readline()\n" + BUSY
                               + "sys.stdin.readline()\n"],
                              stdin=subprocess.PIPE)
    try:
        window = bench.CpuWindow((server.pid,))
        assert server.stdin is not None
        server.stdin.write(b"go\n")
        server.stdin.flush()
        time.sleep(1.0)  # its 0.3 s of CPU are spent, and it waits again
        per_op = window.per_op(3)
        assert window.per_op(0) is None
    finally:
        server.communicate(b"\n")
    assert per_op is not None
    assert 80 <= per_op["server"] <= 150  # 0.3 s over 3 operations: 100 ms each
    assert per_op["client"] < 30


def test_a_process_that_is_gone_reads_as_no_cpu() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert bench.process_cpu_seconds(gone.pid) == 0.0
    assert bench.process_cpu_seconds(os.getpid()) > 0.0
