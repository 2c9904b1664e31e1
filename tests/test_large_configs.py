"""The loader's layer path, layer views and sliced configs at the real depth and width of four 1-1.5 B models.

Each model is built from its real configuration (tests/large_configs.py) on the meta device: shapes and
module structure are real, no weight memory is allocated and nothing is downloaded.  bench/large_models.py
materialises the same configurations with random weights and runs them.  A configuration that claims a
model larger than the machine's memory is refused with one line before anything is loaded.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from large_configs import LARGE_CONFIGS, PARAMETERS, build_config
from skiporacle.data.errors import BadInput
from skiporacle.eval import memory
from skiporacle.eval.crossdecode import unsupported_reason
from skiporacle.eval.model import decoder_layers, layer_path, layer_view, load_model, num_layers
from skiporacle.cli.main import main
from skiporacle.search.allocation import uniform

PATHS = {"llama-3.2-1b": ("model", "layers"), "qwen2.5-1.5b": ("model", "layers"),
         "gemma-3-1b": ("model", "layers"), "opt-1.3b": ("model", "decoder", "layers")}
TOGETHER = {"llama-3.2-1b": True, "qwen2.5-1.5b": True, "gemma-3-1b": False, "opt-1.3b": False}


@pytest.fixture(scope="module", params=sorted(LARGE_CONFIGS))
def meta_model(request):
    config = build_config(request.param)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return request.param, config, model.eval()


def test_layer_path_depth_and_width(meta_model):
    name, config, model = meta_model
    values = LARGE_CONFIGS[name]
    assert layer_path(model) == PATHS[name]
    assert num_layers(model) == values["num_hidden_layers"]
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing was allocated
    attention = decoder_layers(model)[0].self_attn
    q_proj = getattr(attention, "q_proj")
    head_dim = values.get("head_dim", values["hidden_size"] // values["num_attention_heads"])
    assert tuple(q_proj.weight.shape) == (values["num_attention_heads"] * head_dim, values["hidden_size"])
    count = memory.parameter_count(config)
    assert count == sum(p.numel() for p in model.parameters())
    assert abs(count / PARAMETERS[name] - 1) < 0.02, count  # the published size, within 2 %
    assert memory.weight_bytes(config, torch.bfloat16) == 2 * count


def test_layer_views_and_sliced_configs(meta_model):
    name, config, model = meta_model
    n = num_layers(model)
    for kept in (uniform(n // 2, n).layers, tuple(range(n - 1)), (0, n - 1)):
        view = layer_view(model, kept)
        layers = decoder_layers(view)
        assert [id(m) for m in layers] == [id(decoder_layers(model)[i]) for i in kept]  # weights shared, not copied
        assert len(decoder_layers(model)) == n  # the model itself is untouched
        node = view
        for attr in layer_path(model)[:-1]:
            node = getattr(node, attr)
        sliced = node.config
        assert sliced.num_hidden_layers == len(kept)
        if getattr(config, "layer_types", None) is not None:
            assert sliced.layer_types == [config.layer_types[i] for i in kept]
    assert model.config.num_hidden_layers == n


def test_cross_candidate_decoder_coverage(meta_model):
    name, _, model = meta_model
    reason = unsupported_reason(model, 1024)
    assert (reason is None) == TOGETHER[name], reason


def test_kv_bytes_per_token_at_real_size():
    config = build_config("llama-3.2-1b")
    assert memory.kv_bytes_per_token(config, torch.bfloat16) == 2 * 16 * 8 * 64 * 2  # K and V, 16 layers, 8 heads of 64
    config = build_config("gemma-3-1b")
    assert memory.kv_bytes_per_token(config, torch.float32) == 2 * 26 * 1 * 256 * 4


def _huge_folder(tmp_path):
    """A folder whose config.json claims a Llama of about 70 B parameters, with an empty stand-in for its weights
    (the memory check refuses it before anything reads them)."""
    folder = tmp_path / "huge"
    folder.mkdir()
    values = dict(LARGE_CONFIGS["llama-3.2-1b"], hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                  num_attention_heads=64, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)
    (folder / "config.json").write_text(json.dumps(values), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_model_larger_than_memory_is_refused_before_loading(tmp_path, monkeypatch):
    folder = _huge_folder(tmp_path)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 << 30)
    with pytest.raises(BadInput, match=r"needs about 26\d\.\d GiB for its weights in float32 .* only 64\.0 GiB"):
        load_model(str(folder), torch.float32, "cpu")
    with pytest.raises(BadInput, match=r"needs about 13\d\.\d GiB .* bfloat16"):
        load_model(str(folder), torch.bfloat16, "cpu")


def test_model_larger_than_memory_cli_is_one_line(tmp_path, capsys, oracle_data):
    folder = _huge_folder(tmp_path)  # ~263 GiB in float32: more than this machine's memory, no patching needed
    if memory.available_bytes("cpu") > 300 << 30:
        pytest.skip("this machine has more memory than the huge configuration needs")
    capsys.readouterr()
    code = main(["generate", "--model", str(folder), "--device", "cpu", "--data", str(oracle_data), "--input-field",
                 "text", "--reference-field", "summary", "--limit", "1", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("skiporacle: error: model ") and "GiB" in lines[0], lines[0]


def test_a_model_that_fits_loads(tiny_llm_dir, monkeypatch):
    seen = []
    real = memory.available_bytes
    monkeypatch.setattr(memory, "available_bytes", lambda device: seen.append(str(device)) or real(device))
    model, _ = load_model(str(tiny_llm_dir), torch.float32, "cpu")
    assert seen == ["cpu"] and model.device.type == "cpu"
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1 << 10)  # 1 KiB: nothing fits
    with pytest.raises(BadInput, match="needs about"):
        load_model(str(tiny_llm_dir), torch.float32, "cpu")
