"""Shared fixtures: tiny random-weight decoder-only models of every supported layout,
a whitespace-integer tokenizer, and no-cache references for layer skipping.

Nothing here touches the network: every model is built from a config with a fixed
seed, in float32 and eval mode.  Models are built once per session and must not
be modified by tests (use `eos_override` to change the end-of-sequence token).
"""

from __future__ import annotations

import contextlib
import copy
from types import SimpleNamespace
from typing import Sequence

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Qwen2Config,
    Qwen3Config,
)

from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.model import decoder_layers

VOCAB = 300
PAD_ID = 0
EOS_ID = 1  # the default end-of-sequence id of every tiny model and of the tokenizer
BOS_ID = 2
NUM_LAYERS = 6
SLIDING_WINDOW = 4

LAYOUTS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "gpt2", "opt")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than 20 s")


def _config(layout: str):
    # Large initializer ranges keep random models from repeating one token forever.
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        tie_word_embeddings=False,
        initializer_range=0.3,
    )
    if layout == "llama":
        return LlamaConfig(**common)
    if layout == "mistral":  # every layer slides
        return MistralConfig(**common, sliding_window=SLIDING_WINDOW)
    if layout == "qwen2":  # layers 0-1 full, 2-5 sliding
        return Qwen2Config(**common, use_sliding_window=True, sliding_window=SLIDING_WINDOW, max_window_layers=2)
    if layout == "qwen3":
        return Qwen3Config(**common, head_dim=16)
    if layout == "gemma3":  # mixed, irregular pattern so that slicing layer_types matters
        types = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
        return Gemma3TextConfig(
            **common, head_dim=16, query_pre_attn_scalar=16, sliding_window=SLIDING_WINDOW, layer_types=types
        )
    if layout == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=NUM_LAYERS, n_head=4, n_positions=128,
            pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID, initializer_range=0.3,
        )
    if layout == "opt":
        return OPTConfig(
            vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=NUM_LAYERS, num_attention_heads=4,
            word_embed_proj_dim=64, max_position_embeddings=128,
            pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID, initializer_range=0.5,
        )
    raise KeyError(layout)


def build_tiny_model(layout: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(layout), dtype=torch.float32)
    model.eval()
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    return model


_MODELS: dict[str, nn.Module] = {}


@pytest.fixture
def single_thread():
    """Run torch on one thread: tiny models are dominated by thread synchronisation otherwise,
    which is slow (milliseconds per op) when other processes compete for the cores."""
    with one_thread():
        yield


@pytest.fixture(params=LAYOUTS)
def layout(request) -> str:
    """Parametrizes a test over every supported layout."""
    return request.param


@pytest.fixture(scope="session")
def tiny_model():
    """Factory: tiny_model(layout) -> the session's (shared, read-only) random model of that layout."""

    def get(layout: str):
        if layout not in _MODELS:
            _MODELS[layout] = build_tiny_model(layout)
        return _MODELS[layout]

    return get


class IntTokenizer:
    """Whitespace-separated integers <-> token ids, e.g. "5 17 3" -> [5, 17, 3]."""

    chat_template = None

    def __init__(self, pad_token_id: int = PAD_ID, eos_token_id: int | None = EOS_ID, bos_token_id: int | None = None):
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id  # prepended when add_special_tokens, if set

    def __call__(self, text: str, add_special_tokens: bool = True):
        ids = [int(t) for t in text.split()]
        if add_special_tokens and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return SimpleNamespace(input_ids=ids)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        special = {self.pad_token_id, self.eos_token_id, self.bos_token_id} if skip_special_tokens else set()
        return " ".join(str(int(i)) for i in ids if int(i) not in special)


@pytest.fixture
def tokenizer():
    return IntTokenizer()


def as_text(ids: Sequence[int]) -> str:
    return " ".join(str(i) for i in ids)


# Mixed lengths, longer than the sliding window; token ids avoid pad/eos/bos.
PROMPT_IDS = (
    (5, 17, 3, 44, 9, 120, 7, 8, 200, 11),
    (9, 8, 7),
    (250, 31, 64, 12, 99, 100, 101, 6, 45, 77, 13, 210, 18),
    (42, 43, 44, 45, 46, 47),
    (77,),
)


@pytest.fixture
def prompt_ids():
    return [list(p) for p in PROMPT_IDS]


@contextlib.contextmanager
def eos_override(model, tokenizer, eos_id: int):
    """Temporarily make `eos_id` the only end-of-sequence id of model and tokenizer."""
    saved = (model.generation_config.eos_token_id, tokenizer.eos_token_id)
    model.generation_config.eos_token_id = eos_id
    tokenizer.eos_token_id = eos_id
    try:
        yield
    finally:
        model.generation_config.eos_token_id, tokenizer.eos_token_id = saved


# ---------------------------------------------------------------------------
# Simulated skipping (no KV cache): the reference semantics of an allocation.


class IdentityLayer(nn.Module):
    """Stands in for a skipped decoder layer: returns its input hidden states unchanged.

    transformers 5.x decoder layers (Llama family, GPT-2 blocks, OPT layers) all
    take the hidden states first and return a bare tensor.
    """

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class PositionSkipLayer(nn.Module):
    """Runs `layer` on the full sequence but keeps the input at positions where `skip` is True.

    `skip` is a bool tensor [B, T] held in a shared namespace so it can change between steps.
    """

    def __init__(self, layer: nn.Module, state: SimpleNamespace):
        super().__init__()
        self.layer = layer
        self.state = state

    def forward(self, hidden_states, *args, **kwargs):
        out = self.layer(hidden_states, *args, **kwargs)
        return torch.where(self.state.skip[..., None], hidden_states, out)


def simulated_skip(model, kept: Sequence[int]):
    """A deep copy of `model` whose layers outside `kept` are identities (not removed)."""
    sim = copy.deepcopy(model)
    layers = decoder_layers(sim)
    for i in range(len(layers)):
        if i not in kept:
            layers[i] = IdentityLayer()
    return sim


@torch.inference_mode()
def reference_greedy(
    model, prompt: Sequence[int], kept: Sequence[int], max_new_tokens: int, eos: Sequence[int], prompt_full: bool = True
) -> list[int]:
    """Greedy tokens for one prompt under the skipping protocol, recomputing the whole sequence each step (no cache).

    With `prompt_full`, positions before the last prompt token run every layer and
    the last prompt token and generated tokens run only `kept` (the paper's
    protocol); without it every position runs only `kept`.
    """
    sim = copy.deepcopy(model)
    layers = decoder_layers(sim)
    state = SimpleNamespace(skip=None)
    for i in range(len(layers)):
        if i not in kept:
            layers[i] = PositionSkipLayer(layers[i], state)
    seq, out, P = list(prompt), [], len(prompt)
    for _ in range(max_new_tokens):
        ids = torch.tensor([seq])
        pos = torch.arange(len(seq))[None]
        state.skip = pos >= P - 1 if prompt_full else torch.ones_like(pos, dtype=torch.bool)
        logits = sim(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0, -1]
        token = int(logits.argmax())
        out.append(token)
        seq.append(token)
        if token in eos:
            break
    return out


def cut_at_eos(tokens: Sequence[int], eos: Sequence[int]) -> list[int]:
    """Tokens up to and including the first EOS."""
    out = []
    for t in tokens:
        out.append(int(t))
        if int(t) in eos:
            break
    return out


@torch.inference_mode()
def hf_greedy(model, rows: Sequence[Sequence[int]], max_new_tokens: int, eos: Sequence[int]) -> list[list[int]]:
    """transformers' own greedy `generate` on a left-padded batch, each row cut after its first EOS."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD_ID] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=PAD_ID,
        eos_token_id=list(eos),
    )
    return [cut_at_eos(row[width:].tolist(), eos) for row in out]


@pytest.fixture(scope="session")
def ref():
    """The reference helpers, as one namespace."""
    return SimpleNamespace(
        simulated_skip=simulated_skip,
        reference_greedy=reference_greedy,
        hf_greedy=hf_greedy,
        cut_at_eos=cut_at_eos,
        eos_override=eos_override,
        as_text=as_text,
        IdentityLayer=IdentityLayer,
        IntTokenizer=IntTokenizer,
        build_tiny_model=build_tiny_model,
        LAYOUTS=LAYOUTS,
        NUM_LAYERS=NUM_LAYERS,
        SLIDING_WINDOW=SLIDING_WINDOW,
        EOS_ID=EOS_ID,
        PAD_ID=PAD_ID,
        BOS_ID=BOS_ID,
    )


# ---------------------------------------------------------------------------
# A tiny random Llama saved like a real checkpoint, with the real SmolLM2 tokenizer
# (for end-to-end oracle and CLI tests), and a small JSONL data file for it.

TINY_LLM_SEED = 2  # with this seed the importance ranking differs from early exit at budget 4

ORACLE_TEXTS = (
    "Tom planted three apple trees in his garden last spring.",
    "The city council voted to build a new bridge over the river.",
    "A small dog found its way home after two days in the forest.",
    "Scientists measured the temperature of the lake every morning.",
    "The bakery on Main Street sells fresh bread before sunrise.",
    "Heavy rain closed the mountain road for most of the week.",
    "Students built a robot that sorts plastic bottles by colour.",
    "The museum opened a new room with old maps of the coast.",
)
ORACLE_MAX_NEW = 8


from skiporacle.eval.device import one_thread  # noqa: E402  (tests import it from here)


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    """Folder of a saved tiny random LlamaForCausalLM (6 layers, hidden 64) plus the SmolLM2 tokenizer.

    Its vocabulary is the tokenizer's and its EOS is the tokenizer's, so it loads and
    generates through `skiporacle.eval.model.load_model` like a real checkpoint.
    """
    from transformers import AutoTokenizer

    from skiporacle.eval.model import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"), local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, initializer_range=0.3,
    )
    torch.manual_seed(TINY_LLM_SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    folder = tmp_path_factory.mktemp("tiny_llm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def oracle_data(tiny_llm_dir, tmp_path_factory):
    """A JSONL file of len(ORACLE_TEXTS) rows {id, text, summary} for `tiny_llm_dir`.

    So that scores are not all zero, some references are the tiny model's own greedy
    outputs (rows 0, 3, 6: the full model's; rows 1, 7: uniform:4's; row 4: uniform:4's plus
    the full output's words, so that uniform:4 matches the full model's score at lower cost;
    row 5 lists a fixed sentence and the full output); row 2 has an unrelated sentence.
    """
    import json

    from skiporacle.eval.generate import generate
    from skiporacle.oracle.oracle_settings import OracleSettings
    from skiporacle.oracle.inputs import load_inputs
    from skiporacle.oracle.workers import load_model_cached
    from skiporacle.search.allocation import full, uniform

    folder = tmp_path_factory.mktemp("oracle_data")
    path = folder / "data.jsonl"
    rows = [{"id": f"ex{i}", "text": t, "summary": "placeholder"} for i, t in enumerate(ORACLE_TEXTS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = OracleSettings(
        model=str(tiny_llm_dir), task="file", data_file=str(path), input_field="text", reference_field="summary",
        id_field="id", limit=len(rows), offset=0, spaces=(), budgets=(), metric="rougeL",
        max_new_tokens=ORACLE_MAX_NEW, dtype="float32", seed=0, tolerance=0.0, calibration=0,
        prompt_under_allocation=False,
    )
    with one_thread():
        inputs = load_inputs(settings, *load_model_cached(settings.model, settings.dtype))
        model, tokenizer = load_model_cached(str(tiny_llm_dir), "float32")
        whole = generate(model, tokenizer, inputs.prompts, full(NUM_LAYERS), DecodeProtocol(ORACLE_MAX_NEW))
        four = generate(model, tokenizer, inputs.prompts, uniform(4, NUM_LAYERS), DecodeProtocol(ORACLE_MAX_NEW))
    fixed = "The weather was calm and everyone went home early."
    for i, row in enumerate(rows):
        if i == 2:
            row["summary"] = fixed
        elif i == 4:
            row["summary"] = f"{four[i].text} {whole[i].text}".strip() or fixed
        elif i == 5:
            row["summary"] = [fixed, whole[i].text or "empty"]
        else:
            text = (whole if i % 3 == 0 else four)[i].text
            row["summary"] = text if text.strip() else fixed
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
