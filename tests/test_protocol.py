"""The measurement protocol: who predicts the first generated token, record order and threads,
GSM8K answers and per-task token budgets, and the prompt of a user's own data."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from transformers import AutoConfig

from conftest import ORACLE_MAX_NEW, ORACLE_TEXTS, one_thread
from rounding import assert_rounding_close, max_difference, model_tolerance
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.data.errors import BadInput
from skiporacle.eval.generate import eos_ids, generate, generate_candidates
from skiporacle.eval.model import num_layers
from skiporacle.eval.teacher_forcing import teacher_forced_passes
from skiporacle.search.allocation import full, parse_spec

MAX_NEW = 10
SKIPPING = ("uniform:3", "1-5", "exit:2", "5")


def _texts(ref, rows):
    return [ref.as_text(r) for r in rows]


# --- item 5: the first generated token ------------------------------------------------------------


@pytest.mark.usefixtures("single_thread")
def test_first_token_full_with_all_layers_is_plain_greedy_generate(layout, tiny_model, tokenizer, prompt_ids, ref):
    model = tiny_model(layout)
    eos = eos_ids(model, tokenizer)
    got = generate(model, tokenizer, _texts(ref, prompt_ids), full(num_layers(model)), DecodeProtocol(MAX_NEW, first_token="full"))
    assert [list(g.tokens) for g in got] == ref.hf_greedy(model, prompt_ids, MAX_NEW, eos)


@pytest.mark.usefixtures("single_thread")
def test_first_token_full_gives_every_allocation_the_full_models_first_token(layout, tiny_model, tokenizer,
                                                                              prompt_ids, ref):
    model = tiny_model(layout)
    n, eos, texts = num_layers(model), eos_ids(model, tokenizer), _texts(ref, prompt_ids)
    allocations = [parse_spec(s, n) for s in SKIPPING] + [full(n)]
    shared = generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(MAX_NEW, first_token="full"))
    default = generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(MAX_NEW))
    firsts = [row[-1].tokens[0] for row in shared]
    assert all(g.tokens[0] == first for row, first in zip(shared, firsts) for g in row)
    # Under the default the allocations' own first tokens differ from the full model's somewhere.
    assert any(g.tokens[0] != first for row, first in zip(default, firsts) for g in row[:-1])
    for a, allocation in enumerate(allocations):
        # Reference semantics (no cache): the full model predicts token 1; the allocation reads it and goes on.
        want = []
        for p, first in zip(prompt_ids, firsts):
            rest = [] if first in eos else ref.reference_greedy(model, p + [first], allocation.layers, MAX_NEW - 1, eos)
            want.append([first] + rest)
        assert [list(row[a].tokens) for row in shared] == want, allocation.spec
        alone = generate(model, tokenizer, texts, allocation, DecodeProtocol(MAX_NEW, first_token="full"))
        assert [row[a] for row in shared] == alone, allocation.spec


@pytest.mark.usefixtures("single_thread")
def test_first_token_full_edge_cases(tiny_model, tokenizer, prompt_ids, ref):
    model = tiny_model("qwen2")
    texts, allocation = _texts(ref, prompt_ids), parse_spec("uniform:3", 6)
    ten = generate(model, tokenizer, texts, allocation, DecodeProtocol(MAX_NEW, first_token="full"))
    one = generate(model, tokenizer, texts, allocation, DecodeProtocol(1, first_token="full"))
    assert [g.tokens for g in one] == [g.tokens[:1] for g in ten]
    assert [g.tokens for g in generate(model, tokenizer, texts, allocation, DecodeProtocol(0, first_token="full"))] == [()] * len(texts)
    firsts = [g.tokens[0] for g in ten]
    stop = firsts[1]  # make one prompt's first token its end: it stops there, the others go on
    with ref.eos_override(model, tokenizer, stop):
        cut = generate(model, tokenizer, texts, allocation, DecodeProtocol(MAX_NEW, first_token="full"))
    assert cut[1].tokens == (stop,)
    for g, h in zip(cut, ten):
        if ref.EOS_ID not in h.tokens:  # rows that ran to the end before: cut at the new end, nothing else changes
            assert list(g.tokens) == ref.cut_at_eos(h.tokens, {stop})
    # With the prompt read by the allocation too, the first token is still the full model's.
    own = generate(model, tokenizer, texts, allocation, DecodeProtocol(MAX_NEW, prompt_under_allocation=True, first_token="full"))
    assert [g.tokens[0] for g in own] == firsts
    with pytest.raises(BadInput, match="first token rule 'last': choose from allocation, full"):
        DecodeProtocol(MAX_NEW, first_token="last")


@pytest.mark.usefixtures("single_thread")
def test_teacher_forced_passes_follow_the_first_token_protocol(tiny_model, tokenizer, prompt_ids, ref):
    """Teacher-forced on an allocation's own greedy output, each position's argmax is that output."""
    model = tiny_model("llama")
    texts, n = _texts(ref, prompt_ids), 6
    allocations = [parse_spec(s, n) for s in SKIPPING] + [full(n)]
    outputs = generate_candidates(model, tokenizer, texts, allocations, DecodeProtocol(MAX_NEW, first_token="full"))
    first_logits = teacher_forced_passes(
        model, tokenizer, texts, [row[-1].tokens for row in outputs], allocations,
        lambda hidden, targets, head: head(hidden).argmax(-1).tolist(), first_token="full")
    for i, row in enumerate(outputs):
        assert first_logits[i][-1] == list(row[-1].tokens)  # the full model reproduces its own output
        assert len({tuple(v[:1]) for v in first_logits[i]}) == 1  # position 0: the full model's for all
    for a, allocation in enumerate(allocations):
        own = teacher_forced_passes(model, tokenizer, texts, [row[a].tokens for row in outputs], [allocation],
                                    lambda hidden, targets, head: head(hidden).argmax(-1).tolist(), first_token="full")
        assert [v[0] for v in own] == [list(row[a].tokens) for row in outputs], allocation.spec
    # One-token continuations: only the full model's prediction is used.
    single = teacher_forced_passes(model, tokenizer, texts, [row[-1].tokens[:1] for row in outputs], allocations,
                                   lambda hidden, targets, head: hidden.shape[0], first_token="full")
    assert single == [[1] * len(allocations)] * len(texts)


# --- item 5 in the run: settings, resume, generate and perplexity -------------------------------------


def _inputs(settings):
    from skiporacle.oracle.inputs import load_inputs
    from skiporacle.oracle.workers import load_model_cached

    return load_inputs(settings, *load_model_cached(settings.model, settings.dtype))


def _settings(model_dir, data, **changes):
    from skiporacle.oracle.oracle_settings import OracleSettings

    settings = OracleSettings(
        model=str(model_dir), task="file", data_file=str(data), input_field="text", reference_field="summary",
        id_field="id", limit=len(ORACLE_TEXTS), offset=0, spaces=("uniform", "early-exit"), budgets=(2, 4),
        metric="rougeL", max_new_tokens=ORACLE_MAX_NEW, dtype="float32", seed=0, tolerance=0.0, calibration=0,
        prompt_under_allocation=False, batch_size=3,
    )
    return replace(settings, **changes)


@pytest.fixture(scope="module")
def default_run(tiny_llm_dir, oracle_data, tmp_path_factory):
    """A single-process run with default settings, on one torch thread, three sequences per batch."""
    from skiporacle.oracle.oracle_run import run_oracle

    out = tmp_path_factory.mktemp("default_run")
    with one_thread():
        run_oracle(_settings(tiny_llm_dir, oracle_data), out, progress=False, threads=1)
    return out


def test_a_run_older_than_the_new_options_still_resumes(tiny_llm_dir, oracle_data, default_run, tmp_path):
    """A settings.json without first_token, instruction and template resumes at their defaults only."""
    import shutil

    from skiporacle.oracle.oracle_run import run_oracle

    run = tmp_path / "run"
    shutil.copytree(default_run, run)
    stored = json.loads((run / "settings.json").read_text())
    assert (stored["first_token"], stored["instruction"], stored["template"]) == ("allocation", None, None)
    for key in ("first_token", "instruction", "template"):
        del stored[key]
    (run / "settings.json").write_text(json.dumps(stored))
    before = (run / "allocations.jsonl").read_bytes()
    run_oracle(_settings(tiny_llm_dir, oracle_data), run, resume=True, progress=False)  # nothing to do
    assert (run / "allocations.jsonl").read_bytes() == before
    with pytest.raises(BadInput, match=r"different settings \(first_token: None there, 'full' now\)"):
        run_oracle(_settings(tiny_llm_dir, oracle_data, first_token="full"), run, resume=True, progress=False)
    assert (run / "allocations.jsonl").read_bytes() == before


def test_first_token_full_oracle_run(tiny_llm_dir, oracle_data, default_run, tmp_path):
    from skiporacle.oracle.records import read_records
    from skiporacle.oracle.oracle_run import run_oracle

    settings = _settings(tiny_llm_dir, oracle_data, first_token="full")
    with one_thread():
        run_oracle(settings, tmp_path, progress=False)
    assert json.loads((tmp_path / "settings.json").read_text())["first_token"] == "full"
    with pytest.raises(BadInput, match=r"different settings \(first_token: 'full' there, 'allocation' now\)"):
        run_oracle(_settings(tiny_llm_dir, oracle_data), tmp_path, resume=True, progress=False)
    full_run, plain = read_records(tmp_path), read_records(default_run)
    assert [r.full for r in full_run] == [r.full for r in plain]  # all layers: the same either way
    firsts = {r.id: r.full.token_ids[0] for r in full_run}
    from skiporacle.oracle.workers import load_model_cached

    _, tokenizer = load_model_cached(str(tiny_llm_dir), "float32")
    changed = 0
    for new, old in zip(full_run, plain):
        for c_new, c_old in zip(new.candidates, old.candidates):
            head = tokenizer.decode([firsts[new.id]], skip_special_tokens=True).strip()
            assert c_new.output.startswith(head), (new.id, c_new.spec)
            changed += c_new.output != c_old.output
    assert changed  # the protocol changes some candidate's output


def test_generate_and_perplexity_commands_take_the_protocol(tiny_llm_dir, oracle_data, tmp_path, capsys):
    from skiporacle.cli.main import main
    from skiporacle.oracle.oracle_run import run_oracle

    common = ["--model", str(tiny_llm_dir), "--data", str(oracle_data), "--input-field", "text",
              "--reference-field", "summary", "--id-field", "id", "--limit", "3", "--max-new-tokens", "4",
              "--layers", "uniform:2"]
    with one_thread():
        assert main(["generate", *common, "--first-token", "full"]) == 0
        full_out = capsys.readouterr().out
        assert main(["generate", *common]) == 0
        plain_out = capsys.readouterr().out
    assert "the first predicted by the full model" in full_out and "the first predicted by the allocation" in plain_out
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *common, "--first-token", "last"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err

    perplexities = {}
    for protocol in ("allocation", "full"):
        out = tmp_path / protocol
        with one_thread():
            run_oracle(_settings(tiny_llm_dir, oracle_data, first_token=protocol, limit=3), out, progress=False)
            assert main(["perplexity", "--run", str(out)]) == 0
        capsys.readouterr()
        table = json.loads((out / "perplexity.json").read_text())["candidates"]
        perplexities[protocol] = {row["spec"]: row["perplexity"] for row in table}
    # A perplexity's relative error is that of its mean NLL, which is at most the logits' rounding tolerance.
    tolerance = model_tolerance(AutoConfig.from_pretrained(tiny_llm_dir))
    assert_rounding_close(math.log(perplexities["full"]["all"]), math.log(perplexities["allocation"]["all"]), tolerance)
    assert max_difference(math.log(perplexities["full"]["uniform:2"]),
                          math.log(perplexities["allocation"]["uniform:2"])) > 10 * tolerance


# --- item 10: record order and threads -------------------------------------------------------------


def test_in_plan_order_yields_each_result_as_soon_as_all_earlier_ones_are_out():
    from skiporacle.oracle.workers import in_plan_order

    arrivals = [(2, "c"), (0, "a"), (3, "d"), (1, "b"), (5, "f"), (4, "e")]
    seen = []

    def source():
        for pair in arrivals:
            seen.append(pair[0])
            yield pair

    out = []
    for value in in_plan_order(source()):
        out.append((value, tuple(seen)))
    assert out == [("a", (2, 0)), ("b", (2, 0, 3, 1)), ("c", (2, 0, 3, 1)), ("d", (2, 0, 3, 1)),
                   ("e", (2, 0, 3, 1, 5, 4)), ("f", (2, 0, 3, 1, 5, 4))]


def test_workers_write_the_same_bytes_as_one_process(tiny_llm_dir, oracle_data, default_run, tmp_path):
    from skiporacle.oracle.oracle_run import run_oracle

    summary = run_oracle(_settings(tiny_llm_dir, oracle_data), tmp_path, workers=2, progress=False, threads=1)
    assert (tmp_path / "allocations.jsonl").read_bytes() == (default_run / "allocations.jsonl").read_bytes()
    assert summary["machine"]["torch_threads"] == 1
    assert json.loads((default_run / "summary.json").read_text())["machine"]["torch_threads"] == 1


def test_out_of_order_batches_are_written_in_plan_order_and_a_crash_loses_nothing_written(
        tiny_llm_dir, oracle_data, default_run, tmp_path, monkeypatch):
    """Batches finishing out of order wait for the earlier ones; after a crash, a resume completes the same file."""
    import skiporacle.oracle.workers as workers
    from skiporacle.oracle.records import read_records
    from skiporacle.oracle.oracle_run import run_oracle

    settings = _settings(tiny_llm_dir, oracle_data)
    expected = (default_run / "allocations.jsonl").read_bytes()
    arrivals = []  # (batch number, records on disk when it arrived)

    def finishing(order, out, crash_after=None):
        def fake(fn, calls, n_workers, scheduler):
            for k, n in enumerate(order(len(calls))):
                if k == crash_after:
                    raise KeyboardInterrupt
                arrivals.append((n, len(read_records(out))))
                yield n, fn(*calls[n])
        return fake

    monkeypatch.setattr(workers, "_unordered", finishing(lambda n: reversed(range(n)), tmp_path))
    with one_thread():
        run_oracle(settings, tmp_path, workers=2, progress=False, threads=1)
    assert (tmp_path / "allocations.jsonl").read_bytes() == expected
    assert [n for n, _ in arrivals] == [2, 1, 0] and {written for _, written in arrivals} == {0}

    crashed = tmp_path / "crashed"
    arrivals.clear()
    monkeypatch.setattr(workers, "_unordered", finishing(lambda n: [1, 0, 2], crashed, crash_after=2))
    with one_thread(), pytest.raises(KeyboardInterrupt):
        run_oracle(settings, crashed, workers=2, progress=False, threads=1)
    first_two = [r.id for r in read_records(default_run)][: len(read_records(crashed))]
    assert arrivals == [(1, 0), (0, 0)] and len(first_two) == 6  # batches 0 and 1 (3 sequences each) written
    assert [r.id for r in read_records(crashed)] == first_two
    arrivals.clear()
    monkeypatch.setattr(workers, "_unordered", finishing(lambda n: range(n), crashed))
    with one_thread():
        run_oracle(settings, crashed, resume=True, workers=2, progress=False, threads=1)
    assert arrivals == []  # one batch left: the workers are cut to one, so it is scored in this process
    assert (crashed / "allocations.jsonl").read_bytes() == expected


def test_threads_must_be_positive(capsys):
    from skiporacle.cli.main import main

    assert main(["oracle", "--threads", "0", "--out", "/nonexistent/x"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


# --- item 11: GSM8K answers and per-task token budgets ---------------------------------------------------


@pytest.mark.parametrize("text, number", [
    ("so 3 + 4 = 7 #### 7,00", None),
    ("#### 12,50", None),
    ("the total is 1234,567", None),
    ("#### 1,2345", None),
    ("#### 1,200,00", None),
    ("#### 1e5", "100000"),
    ("about 1.5E3 apples", "1500"),
    ("#### 2e-2", "0.02"),
    ("#### 12,500,000.50", "12500000.5"),
    ("#### 1,200", "1200"),
    ("#### 007", "7"),
    ("#### -0.0", "0"),
    ("3, 4", "4"),
])
def test_gsm8k_number_reads_only_true_thousands_groups_and_exponents(text, number):
    from skiporacle.eval.metrics import gsm8k_number, sequence_scores

    assert gsm8k_number(text) == number
    if number is None:  # a malformed answer matches nothing, not even a reference holding those digits
        for reading in ("7", "700", "12.5", "1250", "50", "567", "1234567", "12345", "120000"):
            assert sequence_scores("exact_match", [text], [[f"#### {reading}"]]) == [0.0]


def test_tasks_have_their_own_max_new_tokens_default(tmp_path, capsys):
    from skiporacle.data.tasks import load_task, max_new_tokens_defaults
    from skiporacle.cli.parsers import build_parser
    from skiporacle.cli.run_settings import settings_from_args as _settings

    defaults = max_new_tokens_defaults()
    assert defaults["xsum"] == defaults["samsum"] == defaults["--data"] == 48  # the published runs are unchanged
    assert defaults["gsm8k"] >= 256 and defaults["cnndm"] > 48 and defaults["alpaca"] > 48 and defaults["wmt22"] > 48
    assert load_task("gsm8k", limit=1)[0].max_new_tokens == defaults["gsm8k"]
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["oracle"].format_help().split())
    assert "gsm8k 256" in help_text and "xsum 48" in help_text
    parse = build_parser().parse_args
    assert _settings(parse(["oracle", "--task", "gsm8k"])).max_new_tokens == defaults["gsm8k"]
    assert _settings(parse(["oracle", "--task", "xsum"])).max_new_tokens == 48
    assert _settings(parse(["oracle", "--task", "gsm8k", "--max-new-tokens", "5"])).max_new_tokens == 5
    assert _settings(parse(["oracle", "--task", "gsm8k", "--metric", "chrf"])).max_new_tokens == defaults["gsm8k"]
    with pytest.raises(BadInput, match="--max-new-tokens must be at least 1, got 0"):
        _settings(parse(["oracle", "--task", "gsm8k", "--max-new-tokens", "0"]))


# --- item 12: the prompt of one's own data ----------------------------------------------------------------


@pytest.fixture(scope="module")
def base_llm_dir(tiny_llm_dir, tmp_path_factory):
    """The tiny Llama with a tokenizer that has no chat template (a base model)."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("base_llm")
    for item in tiny_llm_dir.iterdir():
        if item.name != "chat_template.jinja":
            shutil.copy(item, folder / item.name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).chat_template is None
    return folder


def test_instruction_replaces_the_generic_one(tiny_llm_dir, oracle_data):

    generic = _inputs(_settings(tiny_llm_dir, oracle_data, limit=2)).prompts
    own = _inputs(_settings(tiny_llm_dir, oracle_data, limit=2, instruction="Give a title.")).prompts
    assert all("Respond to the following input." in p for p in generic)
    assert all("Give a title.\n\n" + t in p and "Respond" not in p for p, t in zip(own, ORACLE_TEXTS))
    with pytest.raises(BadInput, match="--template is for base models"):
        _inputs(_settings(tiny_llm_dir, oracle_data, limit=2, template="Q: {input}\nA:"))


def test_template_for_base_models(base_llm_dir, oracle_data, tmp_path):
    from skiporacle.oracle.records import read_records
    from skiporacle.oracle.oracle_run import run_oracle

    plain = _inputs(_settings(base_llm_dir, oracle_data, limit=2)).prompts
    assert plain == [f"### Input: {t}\n\n### Output:" for t in ORACLE_TEXTS[:2]]
    template = "Text: {input}\nIn {brief}: {input}\nTitle:"  # other braces are left as they are
    own = _inputs(_settings(base_llm_dir, oracle_data, limit=2, template=template)).prompts
    assert own == [f"Text: {t}\nIn {{brief}}: {t}\nTitle:" for t in ORACLE_TEXTS[:2]]
    with pytest.raises(BadInput, match="--instruction is for chat models"):
        _inputs(_settings(base_llm_dir, oracle_data, limit=2, instruction="Give a title."))
    settings = _settings(base_llm_dir, oracle_data, limit=2, template=template, spaces=("uniform",), budgets=(2,))
    with one_thread():
        run_oracle(settings, tmp_path, progress=False)
    assert sorted(r.prompt for r in read_records(tmp_path)) == sorted(own)
    assert json.loads((tmp_path / "settings.json").read_text())["template"] == template
    with pytest.raises(BadInput, match="different settings \\(template"):
        run_oracle(replace(settings, template="{input}"), tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("args, message", [
    (["--template", "Summarize: INPUT"], "has no {input}"),
    (["--instruction", "  "], "--instruction is empty"),
])
def test_bad_prompt_options_are_refused_in_one_line(args, message, oracle_data, capsys):
    from skiporacle.cli.main import main

    for command in ("generate", "oracle", "rank"):
        extra = ["--out", "/tmp/never-written.json"] if command == "rank" else []
        code = main([command, "--data", str(oracle_data), "--input-field", "text", "--reference-field", "summary",
                     *args, *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (command, err)
