"""`skiporacle generate --out FILE.jsonl`: the outputs streamed one line per finished sequence, a killed run
resumed to the same file byte for byte, and bad uses of the stream refused before anything is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import one_thread
from test_cli import assert_bad, run_cli

ARGS = ("--limit", 8, "--max-new-tokens", 5, "--layers", "uniform:3", "--max-batch", 2)


@pytest.fixture
def data_args(oracle_data, tiny_llm_dir):
    return ["--model", tiny_llm_dir, "--data", oracle_data, "--input-field", "text", "--reference-field", "summary",
            "--id-field", "id"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def _stream(capsys, data_args, out, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, "generate", *data_args, *ARGS, "--out", out, *extra)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def whole(capsys, data_args, tmp_path) -> Path:
    out = tmp_path / "whole.jsonl"
    code, stdout, err = _stream(capsys, data_args, out)
    assert code == 0, err
    assert "8 outputs in" in stdout and "(0 resumed, 8 written now)" in stdout
    return out


def test_the_stream_holds_each_sequence_once_with_the_printed_outputs(capsys, data_args, whole):
    lines = _lines(whole)
    assert sorted(r["id"] for r in lines) == [f"ex{i}" for i in range(8)]  # in the order their batches finished
    assert all(set(r) == {"id", "output", "tokens", "allocation", "layers", "score"} for r in lines)
    assert {r["allocation"] for r in lines} == {"uniform:3"} and {r["layers"] for r in lines} == {3}
    code, printed, _ = run_cli(capsys, "generate", *data_args, *ARGS)  # the same run, printed instead
    assert code == 0
    for r in lines:
        assert f"[{r['id']}] rougeL={r['score']:.2f} ({r['tokens']} tokens)\n  {r['output']}\n" in printed
    assert json.loads((whole.parent / "whole.jsonl.settings.json").read_text())["layers"] == "uniform:3"


@pytest.mark.parametrize("kept, torn", [(3, True), (4, False), (0, True)])
def test_a_resumed_stream_equals_the_uninterrupted_one(capsys, data_args, whole, tmp_path, kept, torn):
    """A crash after `kept` lines, mid-write of the next (torn) or between batches: --resume ends byte-identical."""
    raw = whole.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(raw[:kept]) + (raw[kept][: len(raw[kept]) // 2] if torn else b""))
    (tmp_path / "cut.jsonl.settings.json").write_bytes((whole.parent / "whole.jsonl.settings.json").read_bytes())
    code, stdout, err = _stream(capsys, data_args, cut, "--resume")
    assert code == 0, err
    assert f"({kept} resumed, {8 - kept} written now)" in stdout
    assert cut.read_bytes() == whole.read_bytes()
    code, stdout, _ = _stream(capsys, data_args, cut, "--resume")  # nothing left: nothing runs, nothing is added
    assert code == 0 and "(8 resumed, 0 written now)" in stdout and cut.read_bytes() == whole.read_bytes()


def test_a_run_killed_mid_stream_resumes_without_loss_or_duplicates(data_args, whole, tmp_path):
    out = tmp_path / "killed.jsonl"
    command = [sys.executable, "-m", "skiporacle.cli", "generate", *map(str, data_args), *map(str, ARGS), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    start = time.monotonic()
    while proc.poll() is None and time.monotonic() - start < 300:
        if out.exists() and out.read_bytes().count(b"\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    done = out.read_bytes().count(b"\n")
    subprocess.run(command + ["--resume"], check=True, stdout=subprocess.DEVNULL, env=env, timeout=300)
    assert out.read_bytes() == whole.read_bytes(), f"killed after {done} lines"


def test_bad_uses_of_the_stream_are_one_line_and_leave_it_alone(capsys, data_args, whole, tmp_path):
    before = whole.read_bytes()
    assert_bad(capsys, "generate", *data_args, *ARGS, "--out", whole, match="already holds outputs; pass --resume")
    assert_bad(capsys, "generate", *data_args, *ARGS[:4], "--layers", "uniform:4", "--max-batch", 2, "--out", whole,
               "--resume", match=r"different settings \(layers: 'uniform:3' there, 'uniform:4' now\)")
    assert whole.read_bytes() == before
    assert_bad(capsys, "generate", *data_args, *ARGS, "--out", tmp_path, match="is a folder; name a .jsonl file")
    lonely = tmp_path / "lonely.jsonl"
    lonely.write_bytes(before)
    assert_bad(capsys, "generate", *data_args, *ARGS, "--out", lonely, "--resume", match="settings.json' is missing")
    assert lonely.read_bytes() == before
