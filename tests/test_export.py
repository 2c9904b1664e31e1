"""`skiporacle export` (issue 23): a standalone folder of the kept layers that plain transformers runs, its greedy
outputs those of `--prompt-under-allocation`, its size what the kept layers imply, bad input one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rounding import assert_rounding_close, model_tolerance
from skiporacle.cli.main import main
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import encode_prompts, generate
from skiporacle.eval.model import decoder_layers, layer_view, load_model
from skiporacle.heal.distil import HealSettings, heal
from skiporacle.heal.export import EXPORT_METADATA
from skiporacle.search.allocation import parse_spec

SPEC = "0,2-3,5"
MAX_NEW = 10
PROMPTS = ("The river rose after three days of rain.", "Anna told Ben the meeting moved to Friday.",
           "A new bridge opened in the city centre this morning, a year late.")

# Runs in a fresh interpreter where importing skiporacle fails: the folder must stand on its own.
PLAIN_GREEDY = r"""
import json, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "skiporacle" or "skiporacle" in name:
            raise ImportError("skiporacle may not be imported here")
sys.meta_path.insert(0, Refuse())
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, rows, max_new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
out = []
for row in rows:
    ids = torch.tensor([row])
    steps = model.generate(ids, max_new_tokens=max_new, do_sample=False, output_scores=True, return_dict_in_generate=True)
    gaps = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in steps.scores]
    out.append({"tokens": steps.sequences[0, len(row):].tolist(), "gaps": gaps})
print(json.dumps({"outputs": out, "chat_template": tokenizer.chat_template,
                  "skiporacle_loaded": any(m.split(".")[0] == "skiporacle" for m in sys.modules)}))
"""


def _plain_greedy(folder: Path, rows: list[list[int]]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PLAIN_GREEDY, str(folder), json.dumps(rows), str(MAX_NEW)],
                          capture_output=True, text=True, env=env, cwd=folder, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _cut(tokens: list[int], eos: frozenset[int]) -> list[int]:
    ends = [i for i, t in enumerate(tokens) if t in eos]
    return tokens[: ends[0] + 1] if ends else tokens


def test_exported_folder_runs_without_skiporacle_and_gives_the_prompt_under_allocation_outputs(tiny_llm_dir, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", "--model", str(tiny_llm_dir), "--layers", SPEC, "--out", str(out)]) == 0
    model, tokenizer = load_model(str(tiny_llm_dir))
    allocation = parse_spec(SPEC, 6)
    protocol = DecodeProtocol(MAX_NEW, prompt_under_allocation=True)
    ours = generate(model, tokenizer, PROMPTS, allocation, protocol, max_batch=1)
    plain = _plain_greedy(out, encode_prompts(tokenizer, PROMPTS))
    assert not plain["skiporacle_loaded"]
    assert plain["chat_template"] == tokenizer.chat_template and tokenizer.chat_template
    eos = frozenset([tokenizer.eos_token_id])
    mismatched = near_ties = 0
    for mine, theirs in zip(ours, plain["outputs"]):
        if list(mine.tokens) != _cut(theirs["tokens"], eos):
            mismatched += 1
            first = next(i for i, (a, b) in enumerate(zip(mine.tokens, theirs["tokens"])) if a != b)
            near_ties += theirs["gaps"][first] < 1e-4  # a flip two summation orders may make
    assert mismatched == near_ties, f"{mismatched - near_ties} output(s) differ without a near-tie"
    assert mismatched < len(PROMPTS)  # the comparison compared something
    meta = json.loads((out / EXPORT_METADATA).read_text())
    assert meta["layers"] == [0, 2, 3, 5] and meta["num_layers"] == 6 and meta["source"] == "allocation"


def test_exported_size_is_what_the_kept_layers_imply(tiny_llm_dir, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", "--model", str(tiny_llm_dir), "--layers", SPEC, "--out", str(out)]) == 0
    base, _ = load_model(str(tiny_llm_dir))
    exported = AutoModelForCausalLM.from_pretrained(out)
    per_layer = sum(p.numel() for p in decoder_layers(base)[0].parameters())
    total = sum(p.numel() for p in base.parameters())
    assert exported.config.num_hidden_layers == 4
    assert sum(p.numel() for p in exported.parameters()) == total - 2 * per_layer
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    assert 4 * (total - 2 * per_layer) <= size <= 4 * (total - 2 * per_layer) + 64 * 1024  # float32 + header


def test_every_layout_s_export_computes_what_the_allocation_computes(layout, tiny_model, tiny_llm_dir, tmp_path):
    from transformers import AutoTokenizer

    base = tiny_model(layout)
    folder = tmp_path / "base"
    base.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llm_dir).save_pretrained(folder)
    out = tmp_path / "exported"
    assert main(["export", "--model", str(folder), "--layers", "0,2,3,5", "--out", str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[5, 17, 3, 44, 9, 120, 7, 8, 200, 11, 42, 43]])
    with torch.no_grad():
        want = layer_view(base, (0, 2, 3, 5))(input_ids=ids, use_cache=False).logits
        got = exported(input_ids=ids, use_cache=False).logits
    assert_rounding_close(got, want, model_tolerance(base.config))
    if getattr(base.config, "layer_types", None):
        assert exported.config.layer_types == [base.config.layer_types[i] for i in (0, 2, 3, 5)]


def test_a_healed_variant_exports_as_itself(tiny_llm_dir, tmp_path, single_thread):
    model, tokenizer = load_model(str(tiny_llm_dir))
    settings = HealSettings(model=str(tiny_llm_dir), layers=(0, 2, 3, 5), spec=SPEC, steps=2, learning_rate=3e-3,
                            batch_size=2, seq_len=24, sources=("xsum",), examples=4, holdout=2, checkpoint_every=2)
    variant = tmp_path / "heal-4"
    heal(settings, model, tokenizer, variant, progress=False)
    out = tmp_path / "exported"
    assert main(["export", "--model", str(tiny_llm_dir), "--healed", str(variant), "--out", str(out)]) == 0
    assert (out / "heal.json").read_bytes() == (variant / "heal.json").read_bytes()
    healed = AutoModelForCausalLM.from_pretrained(variant)
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert all(torch.equal(a, b) for a, b in zip(healed.state_dict().values(), exported.state_dict().values()))
    assert json.loads((out / EXPORT_METADATA).read_text())["spec"] == f"healed:{variant.name}"


@pytest.mark.parametrize("args, says", [
    (["--healed", "{tmp}"], "is not a healed variant"),
    (["--layers", "0-40"], "out of range"),
    (["--layers", "0,0,1"], "layer 0 is named twice"),
    (["--layers", "0-3", "--out", "{tmp}"], "already exists"),
])
def test_bad_export_input_is_one_line_and_writes_nothing(args, says, tiny_llm_dir, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "exported")]
    before = sorted(tmp_path.iterdir())
    done = subprocess.run([sys.executable, "-m", "skiporacle.cli", "export", "--model", str(tiny_llm_dir), *args, *out],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("skiporacle: error: ") and says in lines[0], done.stderr
    assert sorted(tmp_path.iterdir()) == before
