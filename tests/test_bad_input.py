"""The last bad inputs a newcomer found (issue 26): each refused in one line with exit code 2, or done with a
one-line note, before the model loads or a worker starts.

"Before the model loads" is checked by making any model load fail the test.
"""

from __future__ import annotations

import json
import socket

import pytest

from conftest import NUM_LAYERS, one_thread
from test_cli import assert_bad, run_cli
from skiporacle.oracle import inputs as run_inputs
from skiporacle.oracle import workers
from skiporacle.search import allocation
from skiporacle.data.errors import BadInput


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: the refusal must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(run_inputs, "load_model", refuse)


def _data(tiny_llm_dir, oracle_data, *extra):
    return ["--model", tiny_llm_dir, "--data", oracle_data, "--input-field", "text", "--reference-field", "summary",
            "--id-field", "id", *extra]


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_one_line_before_the_model(capsys, tmp_path, tiny_llm_dir, oracle_data, no_model_load):
    out = tmp_path / "run"
    assert_bad(capsys, "oracle", *_data(tiny_llm_dir, oracle_data, "--limit", 2), "--scheduler",
               f"tcp://127.0.0.1:{_closed_port()}", "--out", out, match="no Dask scheduler answers there")
    assert_bad(capsys, "oracle", *_data(tiny_llm_dir, oracle_data, "--limit", 2), "--scheduler", "tcp://127.0.0.1",
               "--out", out, match="expected tcp://HOST:PORT")
    assert not out.exists()


def test_budget_zero_names_the_budget_not_a_million_layers(capsys, tmp_path, tiny_llm_dir, oracle_data, no_model_load):
    line = assert_bad(capsys, "oracle", *_data(tiny_llm_dir, oracle_data, "--limit", 1), "--budgets", "0",
                      "--out", tmp_path / "run", match="budget 0 out of range: a budget is the number of layers kept")
    assert "1000000" not in line


def test_negative_tolerance_is_refused(capsys, tmp_path, tiny_llm_dir, oracle_data, no_model_load):
    assert_bad(capsys, "oracle", *_data(tiny_llm_dir, oracle_data, "--limit", 1), "--tolerance", "-5",
               "--out", tmp_path / "run", match="--tolerance must be at least 0")


def test_negative_controller_tolerance_is_refused(capsys, tmp_path):
    assert_bad(capsys, "controller", "--run", tmp_path, "--tolerance", "-1", match="--tolerance must be at least 0")


@pytest.mark.parametrize("spec, layer", [("0,0,1", 0), ("0-3,2", 2), ("1,0-4", 1)])
def test_a_layer_named_twice_is_refused_before_the_model(capsys, tiny_llm_dir, oracle_data, no_model_load, spec, layer):
    assert_bad(capsys, "generate", *_data(tiny_llm_dir, oracle_data, "--limit", 1), "--layers", spec,
               match=f"layer {layer} is named twice")


def test_spec_syntax_is_checked_without_the_model():
    for spec in ("all", "uniform:3", "exit:2", "0-4,7", " 5 "):
        allocation.check_spec(spec)
    for spec, message in (("uniform:0", "at least 1"), ("skip:2", "unknown kind"), ("3-1", "reversed"),
                          ("0,x", "not a non-negative integer")):
        with pytest.raises(BadInput, match=message):
            allocation.check_spec(spec)
    assert allocation.parse_spec("0-2,4", NUM_LAYERS).layers == (0, 1, 2, 4)


def test_folder_with_only_a_config_is_a_folder_without_weights(capsys, tmp_path, oracle_data, tiny_llm_dir):
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_llm_dir / "config.json").read_text())
    line = assert_bad(capsys, "generate", *_data(folder, oracle_data, "--limit", 1), match="a folder without weights")
    assert "GiB" not in line


def test_limit_past_the_data_says_what_was_run(capsys, tmp_path, tiny_llm_dir, oracle_data):
    one = tmp_path / "one.jsonl"
    one.write_text(oracle_data.read_text().splitlines()[0] + "\n")
    with one_thread():
        code, out, err = run_cli(capsys, "generate", *_data(tiny_llm_dir, one, "--limit", 5), "--max-new-tokens", 2)
    assert code == 0, err
    assert f"skiporacle: --limit 5: {one} has 1 row(s) from --offset 0; running those 1" in out
    assert out.count("[ex0]") == 1 and "over 1 sequences" in out


def test_workers_are_cut_to_the_batches_and_cores(capsys, monkeypatch):
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert workers.usable_workers(1000, 1, None) == 1
    assert "--workers 1000 cut to 1 (1 batch to score, 2 cores)" in capsys.readouterr().out
    assert workers.usable_workers(1000, 40, None) == 2
    assert workers.usable_workers(1000, 3, "tcp://127.0.0.1:8786") == 3  # a cluster has its own cores
    assert workers.usable_workers(2, 40, None) == 2 and "cut" not in capsys.readouterr().out.split("\n")[-1]


def test_workers_1000_runs_with_the_cut_in_one_line(capsys, tmp_path, tiny_llm_dir, oracle_data):
    """The run ends and its records equal a one-process run's: 1000 workers are never started."""
    with one_thread():
        code, out, err = run_cli(capsys, "oracle", *_data(tiny_llm_dir, oracle_data, "--limit", 2), "--space",
                                 "uniform", "--budgets", "2", "--max-new-tokens", 2, "--calibration", 0,
                                 "--workers", 1000, "--threads", 1, "--out", tmp_path / "run")
    assert code == 0, err
    assert "--workers 1000 cut to 1 (1 batch to score" in out
    records = [json.loads(line) for line in (tmp_path / "run" / "allocations.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["ex0", "ex1"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["workers"] == 1
