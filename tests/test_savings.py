"""`skiporacle savings` (issue 23): every static decision scored and timed beside the full model on the same rows
in one process, resumable by block; the non-inferiority rule; tables merged only when they belong together."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
import pytest

from skiporacle.cli.main import main
from skiporacle.data.errors import BadInput
from skiporacle.oracle.savings import BLOCKS, Decision, merge_tables, savings_rows
from skiporacle.search.allocation import full, parse_spec

SPEC = "0,2-3,5"


def _args(tiny_llm_dir, oracle_data, out, *decisions) -> list[str]:
    return ["savings", "--model", str(tiny_llm_dir), "--data", str(oracle_data), "--input-field", "text",
            "--reference-field", "summary", "--id-field", "id", "--limit", "8", "--max-new-tokens", "6",
            "--block-rows", "3", "--rows", "unseen-rows", "--out", str(out), *sum((["--decision", d] for d in decisions), [])]


def _without_seconds(lines: list[dict]) -> list[dict]:
    return [{**line, "decisions": {k: {**v, "seconds": None} for k, v in line["decisions"].items()}} for line in lines]


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_savings_scores_and_times_each_decision_and_resumes_by_block(tiny_llm_dir, oracle_data, tmp_path, single_thread):
    exported = tmp_path / "exported"
    assert main(["export", "--model", str(tiny_llm_dir), "--layers", SPEC, "--out", str(exported)]) == 0
    out = tmp_path / "run"
    assert main(_args(tiny_llm_dir, oracle_data, out, SPEC, str(exported))) == 0
    stored = json.loads((out / "savings.json").read_text())
    rows = {r["decision"]: r for r in stored["table"]}
    assert list(rows) == ["full", SPEC, "exported (4 layers)"]
    assert rows["full"]["quality_diff"]["mean"] == 0 and rows["full"]["speedup"] == 1.0 and rows["full"]["n"] == 8
    # The export is the spec read under its own layers: the same outputs, so the same paired difference.
    assert rows[SPEC]["quality_diff"] == rows["exported (4 layers)"]["quality_diff"]
    assert rows[SPEC]["layers_fraction"] == pytest.approx(4 / 6)
    assert rows["full"]["guard_rejects"] == 0.0 and 0 <= rows[SPEC]["guard_rejects"] <= 1
    blocks = _lines(out / BLOCKS)
    assert [len(b["ids"]) for b in blocks] == [3, 3, 2] and len({i for b in blocks for i in b["ids"]}) == 8
    assert blocks[0]["decisions"][SPEC]["outputs"] == blocks[0]["decisions"]["exported (4 layers)"]["outputs"]

    # Killed in block 3: the torn line goes, blocks 1-2 stay, and the resumed file holds what the whole run did.
    text = (out / BLOCKS).read_text().splitlines(keepends=True)
    (out / BLOCKS).write_text("".join(text[:2]) + text[2][:40])
    assert main(_args(tiny_llm_dir, oracle_data, out, SPEC, str(exported))) == 2  # holds a run: needs --resume
    assert main(_args(tiny_llm_dir, oracle_data, out, SPEC, str(exported)) + ["--resume"]) == 0
    assert _without_seconds(_lines(out / BLOCKS)) == _without_seconds(blocks)
    assert main(_args(tiny_llm_dir, oracle_data, out, "uniform:3") + ["--resume"]) == 2  # other decisions


def _blocks(full_scores, other_scores, seconds=(2.0, 1.0)) -> list[dict]:
    half = len(full_scores) // 2
    return [{"block": b, "ids": [f"r{i}" for i in rows],
             "decisions": {"full": {"seconds": seconds[0], "tokens": [4] * len(rows), "scores": [full_scores[i] for i in rows]},
                           "cut": {"seconds": seconds[1], "tokens": [4] * len(rows), "scores": [other_scores[i] for i in rows]}}}
            for b, rows in enumerate([range(0, half), range(half, len(full_scores))])]


def test_non_inferior_only_when_the_paired_interval_stays_above_minus_one_point():
    rng = np.random.default_rng(0)
    base = 20 + 5 * rng.random(200)
    decisions = [Decision("full", full(6), None, 6), Decision("cut", parse_spec("0-3", 6), None, 4)]
    close = savings_rows(_blocks(base, base - 0.2 + 0.1 * rng.standard_normal(200)), decisions, 6, "t", "unseen-rows")
    worse = savings_rows(_blocks(base, base - 1.5 + 0.1 * rng.standard_normal(200)), decisions, 6, "t", "unseen-rows")
    assert close[1]["non_inferior"] and close[1]["quality_diff"]["low"] > -1
    assert not worse[1]["non_inferior"] and worse[1]["quality_diff"]["high"] < -1
    assert close[1]["speedup"] == pytest.approx(2.0) and close[1]["layers_fraction"] == pytest.approx(4 / 6)


def test_tables_merge_only_within_one_model_and_once_per_task_and_rows(tmp_path):
    def table(name, model, task, rows):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"model": model, "task": task, "rows": rows, "table": [{"decision": "full"}]}))
        return path

    a, b = table("a", "m", "xsum", "unseen-rows"), table("b", "m", "cnndm", "unseen-task")
    assert len(merge_tables([a, b])) == 2
    with pytest.raises(BadInput, match="different models"):
        merge_tables([a, table("c", "other", "cnndm", "unseen-task")])
    with pytest.raises(BadInput, match="a second table"):
        merge_tables([a, table("d", "m", "xsum", "unseen-rows")])


def test_a_healed_variant_trained_on_the_evaluated_rows_or_task_is_refused(tiny_llm_dir, tmp_path, capsys):
    from skiporacle.eval.model import load_model
    from skiporacle.heal.distil import HealSettings, heal

    model, tokenizer = load_model(str(tiny_llm_dir))
    variant = tmp_path / "heal-4"
    heal(HealSettings(model=str(tiny_llm_dir), layers=(0, 2, 3, 5), spec=SPEC, steps=1, batch_size=2, seq_len=16,
                      sources=("xsum",), examples=4, holdout=2), model, tokenizer, variant, progress=False)
    done = subprocess.run([sys.executable, "-m", "skiporacle.cli", "savings", "--model", str(tiny_llm_dir),
                           "--task", "xsum", "--offset", "996", "--limit", "2", "--rows", "unseen-rows",
                           "--decision", str(variant), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "was trained on 2 evaluated sequence(s)" in done.stderr and not (tmp_path / "run").exists()
    # Rows nothing was healed on, but of a task the variant was healed on: not an unseen task.
    assert main(["savings", "--model", str(tiny_llm_dir), "--task", "xsum", "--limit", "2", "--rows", "unseen-task",
                 "--decision", str(variant), "--out", str(tmp_path / "run2")]) == 2
    assert "was healed on xsum, so xsum is not an unseen task" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def test_twins_add_the_variant_s_layers_in_the_base_model_beside_it(tiny_llm_dir, oracle_data, tmp_path, single_thread):
    from skiporacle.eval.model import load_model
    from skiporacle.heal.distil import HealSettings, heal

    model, tokenizer = load_model(str(tiny_llm_dir))
    variant = tmp_path / "heal-4"
    heal(HealSettings(model=str(tiny_llm_dir), layers=(0, 2, 3, 5), spec=SPEC, steps=2, learning_rate=3e-2,
                      batch_size=2, seq_len=16, sources=("samsum",), examples=4, holdout=2), model, tokenizer, variant,
         progress=False)
    out = tmp_path / "run"
    assert main(_args(tiny_llm_dir, oracle_data, out, SPEC, str(variant)) + ["--twins"]) == 0
    rows = {r["decision"]: r for r in json.loads((out / "savings.json").read_text())["table"]}
    assert list(rows) == ["full", SPEC, "heal-4 (4 layers)", "base:heal-4"]
    assert rows["base:heal-4"]["layers"] == rows["heal-4 (4 layers)"]["layers"] == 4
    # The twin is the same layers with the base model's weights: the spec's outputs exactly, not the variant's.
    for block in _lines(out / BLOCKS):
        assert block["decisions"]["base:heal-4"]["outputs"] == block["decisions"][SPEC]["outputs"]
    assert rows["base:heal-4"]["quality_diff"] == rows[SPEC]["quality_diff"]
    healed_outputs = [o for b in _lines(out / BLOCKS) for o in b["decisions"]["heal-4 (4 layers)"]["outputs"]]
    spec_outputs = [o for b in _lines(out / BLOCKS) for o in b["decisions"][SPEC]["outputs"]]
    assert sum(a != b for a, b in zip(healed_outputs, spec_outputs)) >= 4, (healed_outputs, spec_outputs)
    healed, _ = load_model(str(variant))
    assert not all(torch.equal(a, b) for a, b in zip(healed.model.layers.parameters(),
                                                     torch.nn.ModuleList(model.model.layers[i] for i in (0, 2, 3, 5)).parameters()))


def test_the_guard_column_rejects_what_the_full_model_finds_implausible():
    from skiporacle.oracle.savings import guard_rejects

    def block(full_nll, nll, outputs):
        return {"decisions": {"full": {"nll": full_nll, "outputs": ["a", "b", "c", "d"]},
                              "cut": {"nll": nll, "outputs": outputs}}}
    # Row 0 within the margin, row 1 over it, row 2 empty (no NLL) but not identical, row 3 identical with no NLL.
    blocks = [block([1.0, 1.0, 1.0, None], [2.9, 3.1, None, None], ["x", "y", "", "d"])]
    assert guard_rejects(blocks, "cut", "full") == pytest.approx(0.5)
    assert guard_rejects(blocks, "cut", "full", margin=2.2) == pytest.approx(0.25)
    assert guard_rejects(blocks, "full", "full") == 0.0
    assert guard_rejects([{"decisions": {"full": {}, "cut": {}}}], "cut", "full") is None  # measured before NLLs
