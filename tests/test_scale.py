"""Scale-out and fault tolerance: joblib workers, a Dask cluster, SIGKILL at random moments, then resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from conftest import ORACLE_MAX_NEW, ORACLE_TEXTS, one_thread
from skiporacle.oracle.records import ALLOCATIONS, read_records
from skiporacle.oracle.oracle_run import run_oracle
from skiporacle.oracle.oracle_settings import OracleSettings

SPACES = ("uniform", "early-exit", "random")
BUDGETS = (2, 4)


def _settings(model_dir, data) -> OracleSettings:
    return OracleSettings(
        model=str(model_dir), task="file", data_file=str(data), input_field="text", reference_field="summary",
        id_field="id", limit=len(ORACLE_TEXTS), offset=0, spaces=SPACES, budgets=BUDGETS, metric="rougeL",
        max_new_tokens=ORACLE_MAX_NEW, dtype="float32", seed=0, tolerance=0.0, calibration=0,
        prompt_under_allocation=False, batch_size=1,
    )


def _by_id(out) -> dict[str, dict]:
    records = [r.to_json() for r in read_records(out)]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicated records"
    return {r["id"]: r for r in records}


@pytest.fixture(scope="module")
def reference_run(tiny_llm_dir, oracle_data, tmp_path_factory):
    """An uninterrupted single-process run, one sequence per batch (so a run has many moments between records)."""
    out = tmp_path_factory.mktemp("reference")
    with one_thread():
        run_oracle(_settings(tiny_llm_dir, oracle_data), out, progress=False)
    return out


def test_reference_run_has_every_sequence(reference_run):
    assert len(_by_id(reference_run)) == len(ORACLE_TEXTS)


def test_joblib_workers_give_the_same_records(tiny_llm_dir, oracle_data, reference_run, tmp_path):
    run_oracle(_settings(tiny_llm_dir, oracle_data), tmp_path, workers=2, progress=False)
    assert _by_id(tmp_path) == _by_id(reference_run)


def test_dask_cluster_gives_the_same_records(tiny_llm_dir, oracle_data, reference_run, tmp_path):
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        run_oracle(_settings(tiny_llm_dir, oracle_data), tmp_path, workers=2,
                   scheduler=cluster.scheduler_address, progress=False)
    assert _by_id(tmp_path) == _by_id(reference_run)


def _command(settings: OracleSettings, out) -> list[str]:
    return [
        sys.executable, "-m", "skiporacle.cli", "oracle", "--model", settings.model, "--data", settings.data_file,
        "--input-field", "text", "--reference-field", "summary", "--id-field", "id", "--limit", str(settings.limit),
        "--space", ",".join(settings.spaces), "--budgets", ",".join(map(str, settings.budgets)),
        "--max-new-tokens", str(settings.max_new_tokens), "--calibration", "0", "--batch-size", "1",
        "--metric", "rougeL", "--out", str(out), "--resume",
    ]


def _lines(out) -> int:
    path = out / ALLOCATIONS
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_at_random_moments_then_resume(tiny_llm_dir, oracle_data, reference_run, tmp_path):
    """SIGKILL the CLI at random moments (start-up, model load, between and during batches), resume each time.

    The final dump must equal an uninterrupted run's: nothing lost, nothing duplicated.
    """
    settings = _settings(tiny_llm_dir, oracle_data)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(1234)
    kills, partial_states = 0, set()

    def attempt(kill_after_seconds: float | None, kill_after_records: int | None) -> None:
        nonlocal kills
        before = _lines(tmp_path)
        proc = subprocess.Popen(_command(settings, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        start = time.monotonic()
        while proc.poll() is None and time.monotonic() - start < 120:
            if kill_after_seconds is not None and time.monotonic() - start >= kill_after_seconds:
                break
            if kill_after_records is not None and _lines(tmp_path) >= before + kill_after_records:
                break
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()
        done = len(read_records(tmp_path))  # complete records only; a torn tail is repaired on resume
        assert done >= before
        if 0 < done < len(ORACLE_TEXTS):
            partial_states.add(done)

    for _ in range(5):  # random moments: imports, model load, first batches
        attempt(rng.uniform(0.1, 3.0), None)
    while len(read_records(tmp_path)) < len(ORACLE_TEXTS) and kills < 20:  # right after a batch was written
        attempt(None, rng.randint(1, 3))
    assert kills >= 5
    final = subprocess.run(_command(settings, tmp_path), capture_output=True, env=env, timeout=120)
    assert final.returncode == 0, final.stderr.decode()
    assert partial_states, "no kill landed between two records"
    assert _by_id(tmp_path) == _by_id(reference_run)
    stored = json.loads((tmp_path / "settings.json").read_text())
    assert stored["batch_size"] == 1


def test_resume_refuses_other_settings(tiny_llm_dir, oracle_data, reference_run):
    from skiporacle.data.errors import BadInput

    before = (reference_run / ALLOCATIONS).read_bytes()
    with pytest.raises(BadInput, match="batch_size"):
        run_oracle(replace(_settings(tiny_llm_dir, oracle_data), batch_size=2), reference_run, resume=True,
                   progress=False)
    assert (reference_run / ALLOCATIONS).read_bytes() == before
