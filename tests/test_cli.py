"""Tests for the `skiporacle` command, run in-process through `skiporacle.cli.main.main`.

Every run uses the tiny saved Llama (`tiny_llm_dir`) and the 8-row JSONL file
(`oracle_data`) from conftest.  Bad input of any kind must end with exit code 2 and
exactly one line on stderr, "skiporacle: error: ...", never a traceback.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import pytest

from conftest import NUM_LAYERS, one_thread
from skiporacle.cli.main import main

LIMIT = 4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `skiporacle ARGV`; argparse's SystemExit counts as an exit code."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_bad(capsys, *argv, match: str) -> str:
    """Run ARGV and check the bad-input contract; return the error line."""
    code, out, err = run_cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert len(lines) == 1, err
    assert lines[0].startswith("skiporacle: error: "), lines[0]
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def data_args(oracle_data, tiny_llm_dir):
    return ["--model", tiny_llm_dir, "--data", oracle_data, "--input-field", "text",
            "--reference-field", "summary", "--id-field", "id"]


def oracle_args(data_args, out, *extra):
    return ["oracle", *data_args, "--limit", LIMIT, "--space", "uniform,early-exit,importance",
            "--budgets", "2,4", "--max-new-tokens", 4, "--calibration", 2, "--out", out, *extra]


@pytest.fixture(scope="module")
def cli_run(data_args, tmp_path_factory):
    """(run folder, exit code, stdout) of one `skiporacle oracle` run."""
    out = tmp_path_factory.mktemp("cli") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([str(a) for a in oracle_args(data_args, out)])
    return out, code, stdout.getvalue()


def _snapshot(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("allocations.jsonl", "settings.json", "importance.json")}


# --- generate -------------------------------------------------------------------------------


def test_generate(capsys, data_args):
    code, out, _ = run_cli(capsys, "generate", *data_args, "--limit", 3, "--layers", "uniform:3",
                           "--max-new-tokens", 5)
    assert code == 0
    scores = {}
    for example_id in ("ex0", "ex1", "ex2"):
        lines = [line for line in out.splitlines() if line.startswith(f"[{example_id}] ")]
        assert len(lines) == 1, out
        match = re.fullmatch(rf"\[{example_id}\] rougeL=(\d+\.\d\d) \((\d+) tokens\)", lines[0])
        assert match, lines[0]
        assert 1 <= int(match.group(2)) <= 5
        scores[example_id] = float(match.group(1))
    assert "[ex3]" not in out
    assert f"allocation uniform:3: 3/{NUM_LAYERS} layers (50.0 %) per generated token" in out
    mean = re.search(r"^mean rougeL = (\d+\.\d\d) over 3 sequences", out, re.M)
    assert mean, out
    assert float(mean.group(1)) == pytest.approx(sum(scores.values()) / 3, abs=0.01)
    assert re.search(r"^corpus: ", out, re.M)


def test_generate_full_model_scores_its_own_outputs(capsys, data_args):
    # Rows 0 and 3 of the fixture data have the full model's greedy output (8 tokens) as reference.
    code, out, _ = run_cli(capsys, "generate", *data_args, "--limit", 4, "--layers", "all", "--max-new-tokens", 8)
    assert code == 0
    assert re.search(r"^\[ex0\] rougeL=100\.00 ", out, re.M) and re.search(r"^\[ex3\] rougeL=100\.00 ", out, re.M)


# --- oracle, dump, curves -------------------------------------------------------------------


def test_oracle(cli_run):
    out, code, stdout = cli_run
    assert code == 0
    records = [json.loads(line) for line in (out / "allocations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["id"] for r in records) == [f"ex{i}" for i in range(LIMIT)]
    assert all(r["full"]["tokens"] <= 4 for r in records)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["sequences"] == LIMIT and summary["resumed_sequences"] == 0
    importance = json.loads((out / "importance.json").read_text(encoding="utf-8"))
    assert importance["calibration_ids"] == [f"ex{LIMIT}", f"ex{LIMIT + 1}"]
    assert f"skiporacle: {LIMIT} sequences in {out / 'allocations.jsonl'} (0 resumed)" in stdout
    assert f"full model: mean rougeL {summary['full_mean_score']:.2f}" in stdout
    assert "knapsack: full quality at " in stdout


def test_oracle_resume_finished_run(capsys, cli_run, data_args):
    out, _, _ = cli_run
    before = _snapshot(out)
    code, stdout, _ = run_cli(capsys, *oracle_args(data_args, out, "--resume"))
    assert code == 0
    assert f"({LIMIT} resumed)" in stdout
    assert _snapshot(out) == before
    summary = json.loads((out / "summary.json").read_text())
    wall = summary["wall_seconds"]
    run_cli(capsys, *oracle_args(data_args, out, "--resume"))
    assert json.loads((out / "summary.json").read_text())["wall_seconds"] == wall  # a no-op resume keeps the timing


def _dump_columns():
    return {"id", "full_score", "full_output", "choice_tolerance", "choice_exact", "spec", "cost", "fraction",
            "score", "tokens", "identical", "output"}


def _records_and_rows_per_sequence(out):
    """The run's records, and how many dump rows each sequence gets (its candidates plus the full model)."""
    records = [json.loads(line) for line in (out / "allocations.jsonl").read_text(encoding="utf-8").splitlines()]
    return records, len(records[0]["candidates"]) + 1


def test_dump_csv(capsys, cli_run, tmp_path):
    out, _, _ = cli_run
    records, per_sequence = _records_and_rows_per_sequence(out)
    target = tmp_path / "table.csv"
    code, stdout, _ = run_cli(capsys, "dump", "--run", out, "--format", "csv", "--output", target)
    assert code == 0
    assert f"{LIMIT * per_sequence} rows ({LIMIT} sequences)" in stdout
    with open(target, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == LIMIT * per_sequence
    assert set(rows[0]) == _dump_columns()
    full_rows = [r for r in rows if r["spec"] == "all"]
    assert len(full_rows) == LIMIT
    assert all(r["cost"] == str(NUM_LAYERS) for r in full_rows)
    by_id = {r["id"]: r for r in records}
    for r in rows:  # outputs survive quoting (they may hold newlines and commas)
        rec = by_id[r["id"]]
        if r["spec"] == "all":
            assert r["output"] == rec["full"]["output"]
        else:
            assert r["output"] == next(c["output"] for c in rec["candidates"] if c["spec"] == r["spec"])
    # Default target: inside the run folder.
    code, _, _ = run_cli(capsys, "dump", "--run", out)
    assert code == 0 and (out / "allocations.csv").stat().st_size > 0


def test_dump_parquet(capsys, cli_run, tmp_path):
    import pyarrow.parquet as pq

    out, _, _ = cli_run
    records, per_sequence = _records_and_rows_per_sequence(out)
    target = tmp_path / "table.parquet"
    code, _, _ = run_cli(capsys, "dump", "--run", out, "--format", "parquet", "--output", target)
    assert code == 0
    table = pq.read_table(target)
    assert table.num_rows == LIMIT * per_sequence
    assert set(table.column_names) == _dump_columns()
    rows = table.to_pylist()
    specs = [c["spec"] for c in records[0]["candidates"]] + ["all"]
    for r in records:
        mine = [row for row in rows if row["id"] == r["id"]]
        assert [row["spec"] for row in mine] == specs
        assert [row["score"] for row in mine] == [c["score"] for c in r["candidates"]] + [r["full"]["score"]]
        assert all(row["choice_tolerance"] == r["choice"]["tolerance"] for row in mine)
        assert mine[-1]["identical"] is True and mine[-1]["fraction"] == 1.0


def test_curves(capsys, cli_run):
    out, _, _ = cli_run
    code, stdout, _ = run_cli(capsys, "curves", "--run", out, "--similarity", 2, "--resamples", 10)
    assert code == 0
    for name in ("curves.csv", "curves.png", "similarity.png"):
        assert (out / name).stat().st_size > 0, name
        assert str(out / name) in stdout
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with open(out / "curves.csv", newline="", encoding="utf-8") as f:
        series = {r["series"] for r in csv.DictReader(f)}
    assert {"uniform", "early-exit", "knapsack", "rule", "rule-exact", "full"} <= series


# --- bad input ------------------------------------------------------------------------------


def _write(path: Path, rows_or_bytes) -> Path:
    if isinstance(rows_or_bytes, bytes):
        path.write_bytes(rows_or_bytes)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows_or_bytes), encoding="utf-8")
    return path


def _rows(n=4):
    return [{"id": f"r{i}", "text": f"Sentence number {i} about birds.", "summary": f"birds {i}"} for i in range(n)]


def _gen_args(tiny_llm_dir, data, *extra):
    return ["generate", "--model", tiny_llm_dir, "--data", data, "--input-field", "text", "--reference-field",
            "summary", "--id-field", "id", "--limit", 2, "--max-new-tokens", 2, *extra]


def test_bad_task_and_model(capsys, tmp_path, tiny_llm_dir, data_args):
    assert_bad(capsys, "generate", "--model", tiny_llm_dir, "--task", "nope", "--limit", 1, match="unknown task 'nope'")
    model_free = [a for i, a in enumerate(data_args) if i > 1]
    assert_bad(capsys, "generate", "--model", tmp_path / "missing", *model_free, "--limit", 1,
               match="no such folder")
    (tmp_path / "empty").mkdir()
    assert_bad(capsys, "generate", "--model", tmp_path / "empty", *model_free, "--limit", 1, match="no config.json")
    assert_bad(capsys, "generate", *data_args, "--limit", 1, "--metric", "bogus", match="unknown metric 'bogus'")


@pytest.mark.parametrize("spec, message", [("0-99", "layer 6 out of range"), ("exit:x", "not a non-negative integer"),
                                           ("uniform:0", "budget 0 out of range"), ("3-1", "reversed"),
                                           ("skip:2", "unknown kind")])
def test_bad_layer_spec(capsys, data_args, spec, message):
    assert_bad(capsys, "generate", *data_args, "--limit", 1, "--max-new-tokens", 2, "--layers", spec, match=message)


@pytest.mark.parametrize("budgets, message", [("0,4", "budget 0 out of range"), ("a", "comma-separated integers"),
                                              ("2,7", f"budget 7 out of range: the model has {NUM_LAYERS} layers")])
def test_bad_budgets(capsys, data_args, tmp_path, budgets, message):
    assert_bad(capsys, "oracle", *data_args, "--limit", 1, "--space", "uniform", "--budgets", budgets,
               "--out", tmp_path / "run", match=message)
    assert not (tmp_path / "run" / "allocations.jsonl").exists()


def test_bad_space(capsys, data_args, tmp_path):
    assert_bad(capsys, "oracle", *data_args, "--limit", 1, "--space", "uniform,bogus", "--budgets", "2",
               "--out", tmp_path / "run", match="unknown space 'bogus'")
    missing = tmp_path / "nope.json"
    assert_bad(capsys, "oracle", *data_args, "--limit", 1, "--space", f"file:{missing}", "--budgets", "2",
               "--out", tmp_path / "run", match="does not exist")


def test_space_file_that_is_a_folder(capsys, data_args, tmp_path):
    """`--space file:DIR` is bad input (exit 2), not an IsADirectoryError traceback."""
    assert_bad(capsys, "oracle", *data_args, "--limit", 1, "--space", f"file:{tmp_path}", "--budgets", "2",
               "--out", tmp_path / "run", match=re.escape(str(tmp_path)))


@pytest.mark.parametrize("option, value, message", [("--limit", 0, "--limit must be at least 1"),
                                                    ("--offset", -1, "--offset must be at least 0"),
                                                    ("--max-new-tokens", 0, "--max-new-tokens must be at least 1"),
                                                    ("--offset", 99, "offset 99 is past the end")])
def test_bad_numbers(capsys, tiny_llm_dir, oracle_data, option, value, message):
    assert_bad(capsys, *_gen_args(tiny_llm_dir, oracle_data, option, value), match=message)


def test_bad_oracle_options(capsys, data_args, tmp_path):
    assert_bad(capsys, "oracle", *data_args, "--limit", 1, "--scheduler", "localhost:8786", "--out", tmp_path,
               match="expected tcp://HOST:PORT")
    assert_bad(capsys, "oracle", *data_args, "--limit", 1, "--workers", 0, "--out", tmp_path,
               match="--workers must be at least 1")
    assert_bad(capsys, "generate", "--model", data_args[1], "--data", data_args[3], "--limit", 1,
               match="--data needs --input-field and --reference-field")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "not found"),
        ("malformed.jsonl", b'{"id": "a", "text": "t", "summary": "s"}\n\n{"id": "b", "text": \n', "line 3 is not valid JSON"),
        ("notobject.jsonl", b'[1, 2]\n', "line 1 is not a JSON object"),
        ("nofield.jsonl", [{"id": "a", "text": "t"}], "has no field 'summary'"),
        ("noid.jsonl", [{"text": "t", "summary": "s"}], "has no field 'id'"),
        ("emptyref.jsonl", [{"id": "a", "text": "t", "summary": "  "}], "example 'a': empty reference"),
        ("emptyinput.jsonl", [{"id": "a", "text": "", "summary": "s"}], "example 'a': empty input"),
        ("latin1.jsonl", '{"id": "a", "text": "caf\u00e9", "summary": "s"}\n'.encode("latin-1"), "not valid UTF-8"),
        ("dupes.jsonl", [{"id": "a", "text": "t", "summary": "s"}, {"id": "a", "text": "u", "summary": "s"}],
         "duplicate id 'a'"),
        ("empty.jsonl", b"", "holds no examples"),
        ("data.txt", b"hello\n", "unsupported file type"),
    ],
)
def test_bad_data_file(capsys, tmp_path, tiny_llm_dir, name, content, message):
    path = tmp_path / name
    if content is not None:
        _write(path, content)
    line = assert_bad(capsys, *_gen_args(tiny_llm_dir, path), match=message)
    if name == "malformed.jsonl":
        assert name in line


def test_bad_data_file_oracle(capsys, tmp_path, tiny_llm_dir):
    """The same checks hold for `oracle`, which must not leave a run behind."""
    path = _write(tmp_path / "dupes.jsonl", _rows() + [_rows()[0]])
    out = tmp_path / "run"
    assert_bad(capsys, "oracle", "--model", tiny_llm_dir, "--data", path, "--input-field", "text",
               "--reference-field", "summary", "--id-field", "id", "--limit", 2, "--out", out,
               match="duplicate id 'r0'")
    assert not (out / "allocations.jsonl").exists()


def test_unwritable_output_folder(capsys, tmp_path, data_args):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert_bad(capsys, "oracle", *data_args, "--limit", 1, "--space", "uniform", "--budgets", "2",
               "--out", blocker / "sub", match="not writable")
    assert blocker.read_text() == "x"
    assert_bad(capsys, "oracle", *data_args, "--limit", 1, "--space", "uniform", "--budgets", "2",
               "--out", blocker, match="not writable")
    assert blocker.read_text() == "x"


def test_existing_run_is_refused_without_resume(capsys, cli_run, data_args):
    out, _, _ = cli_run
    before = _snapshot(out)
    assert_bad(capsys, *oracle_args(data_args, out), match="already holds a run; pass --resume")
    assert _snapshot(out) == before


def test_resume_with_other_settings_is_refused(capsys, cli_run, data_args):
    out, _, _ = cli_run
    before = _snapshot(out)
    args = oracle_args(data_args, out, "--resume")
    args[args.index("--max-new-tokens") + 1] = 5
    assert_bad(capsys, *args, match=r"--resume: .* different settings \(max_new_tokens: 4 there, 5 now\)")
    assert _snapshot(out) == before
    args = oracle_args(data_args, out, "--resume", "--seed", 3)
    assert_bad(capsys, *args, match=r"different settings \(seed: 0 there, 3 now\)")
    assert _snapshot(out) == before


def test_dump_and_curves_bad_input(capsys, tmp_path, cli_run):
    out, _, _ = cli_run
    assert_bad(capsys, "dump", "--run", tmp_path / "none", match="not a skiporacle run folder")
    assert_bad(capsys, "curves", "--run", tmp_path / "none", match="not a skiporacle run folder")
    assert_bad(capsys, "curves", "--run", out, "--resamples", 0, "--similarity", 0, match="--resamples must be at least 1")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "settings.json").write_text("{}")
    assert_bad(capsys, "dump", "--run", empty, match="holds no finished sequence")
    assert_bad(capsys, "curves", "--run", empty, match="holds no finished sequence")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_dump_to_unwritable_output(capsys, tmp_path, cli_run, fmt):
    """`dump --output` into a missing folder (or under a file) is bad input, not a pyarrow traceback."""
    out, _, _ = cli_run
    assert_bad(capsys, "dump", "--run", out, "--format", fmt, "--output", tmp_path / "no" / "such" / f"t.{fmt}",
               match="t\\." + fmt)


def test_argparse_errors_are_one_line(capsys, tiny_llm_dir):
    assert_bad(capsys, "generate", "--model", tiny_llm_dir, "--bogus-option", match="unrecognized arguments: --bogus-option")
    assert_bad(capsys, "nope", match="invalid choice")
    assert_bad(capsys, match="required")
    assert_bad(capsys, "generate", "--limit", "many", match="invalid int value")
    assert_bad(capsys, "dump", "--run", "x", "--format", "xlsx", match="invalid choice")


def test_restart_after_crash_before_first_record(capsys, cli_run, data_args, tmp_path):
    """A run killed before its first record leaves settings.json (and importance.json) but no
    allocations.jsonl; `oracle` accepts the folder without --resume.  The new run's settings must
    then be the folder's fingerprint, so that `--resume` of that same run is accepted."""
    out, _, _ = cli_run
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("settings.json", "importance.json"):
        (folder / name).write_bytes((out / name).read_bytes())  # the crashed run (max_new_tokens 4)
    args = oracle_args(data_args, folder)
    args[args.index("--max-new-tokens") + 1] = 3
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    stored = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    assert stored["max_new_tokens"] == 3
    code, _, err = run_cli(capsys, *args, "--resume")
    assert code == 0, err
