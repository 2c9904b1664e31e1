"""Faults on the distributed path (issue 26): kill -9 one worker in the middle of a `--workers 2` run and of a
`--scheduler` run on a Dask LocalCluster.  The run either finishes or stops with one line; `--resume` then
completes it, with every sequence written once and the records of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ORACLE_TEXTS
from skiporacle.oracle.workers import run_calls
from test_scale import _by_id, _command, _lines, _settings, reference_run  # noqa: F401 (a fixture, used by name)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def die_once(n: int, marker: str) -> int:
    """n * 10; call 1 SIGKILLs its own worker process the first time (`marker` records that it did)."""
    if n == 1 and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return n * 10


def test_a_killed_loky_worker_s_batches_run_again_on_new_workers(tmp_path, capfd):
    marker = tmp_path / "killed"
    assert list(run_calls(die_once, [(n, str(marker)) for n in range(6)], 2, None)) == [0, 10, 20, 30, 40, 50]
    assert marker.exists()  # the worker did die
    assert "a worker process died (The exit codes of the workers are {SIGKILL(-9)})" in capfd.readouterr().err


def _children(pid: int) -> list[int]:
    """Every descendant process of `pid` (from /proc)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            frontier += kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _run_killing_one_worker(command: list[str], out: Path, worker_pids,
                            first_record: int) -> tuple[subprocess.CompletedProcess, bool]:
    """Run `command`; SIGKILL one of `worker_pids(proc)` as soon as `first_record` records are on disk, if the run
    is still going then.  (its completed process, whether a worker was killed mid-run)"""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
    killed, start = False, time.monotonic()
    while proc.poll() is None and time.monotonic() - start < 300 and not killed:
        if first_record <= _lines(out) < len(ORACLE_TEXTS):
            pids = worker_pids(proc)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = True
        time.sleep(0.002)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), killed


def _finish_and_compare(command, out, done, reference_run) -> None:
    lines = [line for line in done.stderr.splitlines() if line.startswith("skiporacle:")]
    if done.returncode != 0:  # stopped: one line, then --resume finishes it
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert len(lines) == 1 and lines[0].startswith("skiporacle: stopped: "), done.stderr
    resumed = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert _lines(out) == len(ORACLE_TEXTS)  # every sequence once
    assert _by_id(out) == _by_id(reference_run)


def _loky_workers(proc) -> list[int]:
    return [pid for pid in _children(proc.pid) if "popen_loky_posix" in _cmdline(pid)]


def test_kill_9_of_a_loky_worker_mid_run(tiny_llm_dir, oracle_data, reference_run, tmp_path):
    for attempt in range(3):  # a try where the run ended before the kill landed proves nothing: try again
        out = tmp_path / f"run{attempt}"
        command = _command(_settings(tiny_llm_dir, oracle_data), out) + ["--workers", "2", "--threads", "1"]
        # Killed before the first record, while every batch is still owed: once a record is on disk the other
        # seven one-sequence batches can finish before loky sees the death, and then nothing is rerun.
        done, killed = _run_killing_one_worker(command, out, _loky_workers, first_record=0)
        if killed:
            break
    assert killed, "no kill landed while the run was going"
    assert done.returncode == 0, done.stderr  # its batches ran again on new workers
    assert "skiporacle: a worker process died" in done.stderr
    _finish_and_compare(command, out, done, reference_run)


def test_kill_9_of_a_dask_worker_mid_run(tiny_llm_dir, oracle_data, reference_run, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        def dask_workers(proc) -> list[int]:
            return sorted(client.run(os.getpid).values())

        for attempt in range(3):
            out = tmp_path / f"run{attempt}"
            command = _command(_settings(tiny_llm_dir, oracle_data), out) + [
                "--workers", "2", "--threads", "1", "--scheduler", cluster.scheduler_address]
            done, killed = _run_killing_one_worker(command, out, dask_workers, first_record=1)
            if killed:
                break
        assert killed, "no kill landed while the run was going"
        _finish_and_compare(command, out, done, reference_run)
