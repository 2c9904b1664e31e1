"""Devices: --device auto|cpu|cuda[:N] on every model command, the dtype that goes with it, batch planning
from GPU memory, a batch that runs out of GPU memory split and retried, and one GPU per worker.

Everything here runs on a CPU-only machine: the device code is exercised with `cpu` and `auto`, and GPU
behaviour where it is pure arithmetic or bookkeeping (with torch.cuda's answers patched).  The tests marked
`needs_gpu` run only where torch sees a GPU and are skipped, with that reason, elsewhere.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
from types import SimpleNamespace

import pytest
import torch

from conftest import NUM_LAYERS, as_text, one_thread
from rounding import assert_rounding_close, rounding_bound
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.data.errors import BadInput
from skiporacle.eval import batching, device as dev, memory
from skiporacle.cli.main import main
from skiporacle.search.allocation import full, uniform

from test_cli import assert_bad, run_cli  # noqa: E402 (the CLI contract helpers; tests dir is on sys.path)

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
GPU = torch.cuda.is_available()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def assert_one_line(capsys, *argv, match: str) -> None:
    assert_bad(capsys, *argv, match=match)


# --- naming a device ---------------------------------------------------------------------------------


def test_resolve_device_names():
    assert dev.resolve_device("cpu") == torch.device("cpu")
    assert dev.resolve_device(" CPU ") == torch.device("cpu")
    assert dev.resolve_device("auto").type == ("cuda" if GPU else "cpu")
    assert dev.resolve_device(None) == dev.resolve_device("auto")
    for bad in ("tpu", "gpu", "cuda:x", "cuda:", "cuda:-1", "cpu:0", "mps"):
        with pytest.raises(BadInput, match="expected auto, cpu, cuda or cuda:N"):
            dev.resolve_device(bad)


@pytest.mark.skipif(GPU, reason="checks the refusal on a machine without a GPU")
def test_cuda_is_refused_without_a_gpu():
    for name in ("cuda", "cuda:0"):
        with pytest.raises(BadInput, match="torch sees no CUDA GPU"):
            dev.resolve_device(name)


def test_gpu_index_beyond_the_visible_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dev.resolve_device("auto") == torch.device("cuda")
    assert dev.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(BadInput, match=r"only 2 GPU\(s\) visible \(cuda:0 to cuda:1\)"):
        dev.resolve_device("cuda:7")


def test_placement_is_resolved_once_with_the_devices_dtype():
    assert dev.resolve_placement("cpu") == dev.Placement("cpu", "float32")
    assert dev.resolve_placement(" CPU ", "bfloat16") == dev.Placement("cpu", "bfloat16")
    with pytest.raises(BadInput, match="expected auto, cpu, cuda or cuda:N"):
        dev.resolve_placement("tpu")
    from skiporacle.cli.parsers import build_parser
    from skiporacle.cli.run_settings import placement_of

    args = build_parser().parse_args(["oracle", "--device", "cpu", "--dtype", "bfloat16"])
    first = placement_of(args)
    args.device = "tpu"  # resolved once: a later call reads the same placement, it does not resolve again
    assert placement_of(args) is first and first == dev.Placement("cpu", "bfloat16")


def test_default_dtype_follows_the_device():
    assert dev.default_dtype("cpu") == "float32"
    assert dev.default_dtype(torch.device("cuda")) == "bfloat16"
    assert dev.default_dtype("cuda:3") == "bfloat16"
    assert dev.describe("cpu") == {"device": "cpu"}


# --- every command: one line and exit 2 for a device not usable here --------------------------------

COMMANDS = {
    "generate": ["generate", "--limit", "1"],
    "oracle": ["oracle", "--limit", "1", "--out", "{tmp}/run"],
    "rank": ["rank", "--limit", "1", "--out", "{tmp}/ranking.json"],
    "heal": ["heal", "--layers", "uniform:2", "--steps", "1", "--out", "{tmp}/heal"],
    "controller": ["controller", "--run", "{tmp}"],
    "plausibility": ["plausibility", "--run", "{tmp}"],
    "perplexity": ["perplexity", "--run", "{tmp}"],
    "curves": ["curves", "--run", "{tmp}", "--similarity", "2"],
}
BAD = [("tpu", "expected auto, cpu, cuda or cuda:N"), ("cuda:x", "expected auto, cpu, cuda or cuda:N")]
BAD += [] if GPU else [("cuda", "torch sees no CUDA GPU"), ("cuda:0", "torch sees no CUDA GPU")]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("device, message", BAD)
def test_bad_device_is_one_line_on_every_command(capsys, tmp_path, command, device, message):
    argv = [a.format(tmp=tmp_path) for a in COMMANDS[command]]
    assert_one_line(capsys, *argv, "--device", device, match=message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "heal").exists()  # refused before any work


def test_gpu_index_beyond_count_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert_one_line(capsys, "oracle", "--limit", 1, "--out", tmp_path / "run", "--device", "cuda:7",
                    match=r"--device cuda:7: only 1 GPU\(s\) visible")


# --- the device plumbing, run on this machine --------------------------------------------------------


@pytest.fixture(scope="module")
def data_args(oracle_data, tiny_llm_dir):
    return ["--model", tiny_llm_dir, "--data", oracle_data, "--input-field", "text", "--reference-field", "summary",
            "--id-field", "id"]


def _oracle(capsys, data_args, out, *extra):
    code, stdout, err = run_cli(capsys, "oracle", *data_args, "--limit", 3, "--space", "uniform", "--budgets", "2,4",
                                "--max-new-tokens", 4, "--calibration", 0, "--out", out, *extra)
    assert code == 0, err
    return json.loads((out / "summary.json").read_text())


def test_oracle_on_cpu_and_auto(capsys, tmp_path, data_args):
    default = _oracle(capsys, data_args, tmp_path / "default")
    cpu = _oracle(capsys, data_args, tmp_path / "cpu", "--device", "cpu")
    assert cpu["machine"]["device"] == "cpu"
    settings = json.loads((tmp_path / "cpu" / "settings.json").read_text())
    assert settings["dtype"] == "float32" and "device" not in settings  # the device never enters the fingerprint
    assert default["machine"]["device"] == ("cuda" if GPU else "cpu")
    if not GPU:  # auto is the CPU here: the same settings, byte for byte, and the same records
        for name in ("settings.json", "allocations.jsonl"):
            assert (tmp_path / "default" / name).read_bytes() == (tmp_path / "cpu" / name).read_bytes()
    # a run resumes on another device: the settings do not name it
    code, _, err = run_cli(capsys, "oracle", *data_args, "--limit", 3, "--space", "uniform", "--budgets", "2,4",
                           "--max-new-tokens", 4, "--calibration", 0, "--out", tmp_path / "cpu", "--resume",
                           "--device", "auto", "--dtype", "float32")
    assert code == 0, err


def test_bfloat16_on_cpu_is_its_own_setting(capsys, tmp_path, data_args):
    _oracle(capsys, data_args, tmp_path / "half", "--device", "cpu", "--dtype", "bfloat16")
    assert json.loads((tmp_path / "half" / "settings.json").read_text())["dtype"] == "bfloat16"
    code, _, err = run_cli(capsys, "oracle", *data_args, "--limit", 3, "--space", "uniform", "--budgets", "2,4",
                           "--max-new-tokens", 4, "--calibration", 0, "--out", tmp_path / "half", "--resume",
                           "--device", "cpu")
    assert code == 2 and "dtype" in err, err  # float32 by default on the CPU: other settings, refused


def test_generate_on_cpu_and_auto(capsys, data_args):
    outputs = []
    for name in ("cpu", "auto"):
        code, out, err = run_cli(capsys, "generate", *data_args, "--limit", 2, "--max-new-tokens", 3,
                                 "--layers", "uniform:4", "--device", name)
        assert code == 0, err
        outputs.append([line for line in out.splitlines() if "tokens/s" not in line])
    if not GPU:
        assert outputs[0] == outputs[1]


def test_engine_tensors_follow_the_model(tiny_model, tokenizer, prompt_ids, monkeypatch):
    """Padded batches are made on the model's device; a CPU model's run never asks about GPU memory."""
    from skiporacle.eval.generate import generate_candidates

    ids, mask = batching.left_pad([[5, 6], [7]], 0, "meta")
    assert ids.device.type == "meta" and mask.device.type == "meta"
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: pytest.fail("a CPU model asked for GPU memory"))
    model = tiny_model("llama")
    out = generate_candidates(model, tokenizer, [as_text(p) for p in prompt_ids], [full(NUM_LAYERS)], DecodeProtocol(3))
    assert len(out) == len(prompt_ids)


# --- batch planning ----------------------------------------------------------------------------------


def test_cpu_plan_is_the_module_constants(tiny_model):
    model = tiny_model("llama")
    assert batching.batch_limits(model) is None
    lengths = [30, 5, 17, 17, 2, 40, 9]
    assert batching.plan_for(model, lengths, 3) == batching.plan_batches(lengths, 4, 3)


def test_gpu_limits_from_free_memory(tiny_model):
    config = tiny_model("llama").config  # 6 layers, 2 KV heads of 16, MLP 128, hidden 64
    kv = memory.kv_bytes_per_token(config, torch.bfloat16)
    act = memory.activation_bytes_per_token(config, torch.bfloat16)
    assert kv == 2 * 6 * 2 * 16 * 2 and act == (2 * 128 + 4 * 64) * 2
    free = 10 << 30
    limits = batching.gpu_limits(config, torch.bfloat16, free)
    exact = int(batching.GPU_MEMORY_SHARE * free) // (batching.KV_COPIES * kv + act)
    assert limits.tokens & (limits.tokens - 1) == 0 and limits.tokens <= exact < 2 * limits.tokens  # a power of two
    half = int(batching.GPU_MEMORY_SHARE * free) // 2
    assert limits.score_bytes & (limits.score_bytes - 1) == 0 and limits.score_bytes <= half < 2 * limits.score_bytes
    assert batching.gpu_limits(config, torch.bfloat16, free + (1 << 20)) == limits  # small changes: the same plan
    assert batching.gpu_limits(config, torch.bfloat16, 4 * free).tokens == 4 * limits.tokens
    small = batching.gpu_limits(config, torch.float32, 100 * (batching.KV_COPIES * 2 * kv + 2 * act))
    assert small.tokens == 64  # 80 tokens' worth rounds down to 64
    batches = batching.plan_batches([10, 10, 10, 10, 10, 10, 10, 30], 4, limits=small)
    assert all(len(b) * max([10, 10, 10, 10, 10, 10, 10, 30][i] for i in b) <= 64 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(8))


def test_gpu_plan_keeps_room_for_a_workers_weights(tiny_model, monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda", 0)))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 << 30, 80 << 30))
    assert batching.batch_limits(model) == batching.gpu_limits(model.config, model.dtype, 8 << 30)
    assert batching.batch_limits(model, spare=4 << 30) == batching.gpu_limits(model.config, model.dtype, 4 << 30)


# --- a batch out of GPU memory is split, never lost ------------------------------------------------------


def test_split_on_oom_keeps_order_and_loses_nothing():
    calls = []

    def run(items):
        calls.append(list(items))
        if len(items) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return [10 * i for i in items]

    assert batching.split_on_oom(run, range(7)) == [0, 10, 20, 30, 40, 50, 60]
    assert calls == [[0, 1, 2, 3, 4, 5, 6], [0, 1, 2], [0], [1, 2], [3, 4, 5, 6], [3, 4], [5, 6]]  # halves, in order
    with pytest.raises(torch.cuda.OutOfMemoryError):
        batching.split_on_oom(lambda items: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("one")), [1])
    with pytest.raises(ValueError):  # only out-of-memory errors are retried
        batching.split_on_oom(lambda items: (_ for _ in ()).throw(ValueError("bug")), [1, 2])



def _out_of_memory_above(limit: int, real, sizes: list[int]):
    """`real` (a generate_batch) that records each batch's size and runs out of GPU memory above `limit` rows."""

    def tight(model, rows, *args, **kwargs):
        sizes.append(len(rows))
        if len(rows) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, rows, *args, **kwargs)

    return tight


def test_generation_batch_out_of_memory_runs_in_halves(tiny_model, tokenizer, prompt_ids, monkeypatch):
    import skiporacle.eval.generate as gen

    model = tiny_model("llama")
    prompts = [as_text(p) for p in prompt_ids]
    allocations = [full(NUM_LAYERS), uniform(3, NUM_LAYERS)]
    one_by_one = [gen.generate_candidates(model, tokenizer, [p], allocations, DecodeProtocol(5))[0] for p in prompts]
    sizes: list[int] = []
    monkeypatch.setattr(gen, "generate_batch", _out_of_memory_above(1, gen.generate_batch, sizes))
    assert gen.generate_candidates(model, tokenizer, prompts, allocations, DecodeProtocol(5)) == one_by_one
    assert sizes[0] == len(prompts) and sizes.count(1) == len(prompts)


def test_oracle_batch_out_of_memory_runs_in_halves(tiny_model, tokenizer, prompt_ids, monkeypatch):
    import skiporacle.eval.candidates as candidates
    from skiporacle.oracle.workers import score_rows

    model = tiny_model("llama")
    settings = SimpleNamespace(metric="rougeL", protocol=DecodeProtocol(4))
    allocations = [uniform(3, NUM_LAYERS), full(NUM_LAYERS)]
    references = [["5 6 7"], ["8"], ["9 10"], ["11 12"], ["13"]]
    # Five rows, at most two fit: halves [0, 1] and [2, 3, 4], the second split again into [2] and [3, 4].
    expected = []
    for start, end in ((0, 2), (2, 3), (3, 5)):
        expected += score_rows(model, tokenizer, settings, prompt_ids[start:end], references[start:end], allocations,
                               1, False)
    sizes: list[int] = []
    monkeypatch.setattr(candidates, "generate_batch", _out_of_memory_above(2, candidates.generate_batch, sizes))
    table = score_rows(model, tokenizer, settings, prompt_ids, references, allocations, 1, False)
    assert sizes == [5, 2, 3, 1, 2]
    assert table == expected  # every row, in plan order, scored against its own references


# --- one GPU per worker ------------------------------------------------------------------------------


def test_worker_device_round_robin():
    assert [dev.worker_device("cuda", k, 3) for k in range(5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert dev.worker_device("cuda:2", 4, 3) == "cuda:2"  # a pinned GPU stays pinned
    assert dev.worker_device("cpu", 4, 0) == "cpu"


def _claim(folder, workers, queue):
    queue.put(dev.claim_slot(folder, workers))


def test_each_worker_process_claims_its_own_number(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = [context.Process(target=_claim, args=(str(tmp_path / "claims"), 3, queue)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert sorted(queue.get(timeout=10) for _ in processes) == [0, 1, 2]
    assert dev.claim_slot(None, 3) == 0
    folder = str(tmp_path / "mine")
    assert dev.claim_slot(folder, 2) == 0 and dev.claim_slot(folder, 2) == 0  # claimed once per folder


def test_score_in_worker_takes_its_gpu(monkeypatch, tmp_path):
    from skiporacle.oracle import workers

    seen = []
    monkeypatch.setattr(workers, "load_model_cached", lambda name, dtype, device: seen.append(device) or ("m", "t"))
    monkeypatch.setattr(workers, "score_rows", lambda model, tokenizer, settings, *call: "scored")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    (tmp_path / "worker-0").touch()  # worker 0 is taken: this process becomes worker 1
    settings = SimpleNamespace(model="m", dtype="bfloat16")
    assert workers.score_in_worker("cuda", str(tmp_path), 3, settings) == "scored"
    assert workers.score_in_worker("cuda:0", str(tmp_path), 3, settings) == "scored"
    assert workers.score_in_worker("cpu", None, 3, settings) == "scored"
    assert seen == ["cuda:1", "cuda:0", "cpu"]


# --- on a GPU (skipped without one) -------------------------------------------------------------------


@needs_gpu
def test_cuda_attention_kernel_matches_step_by_step():
    from skiporacle.eval import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 4, 64, device="cuda"), torch.randn(3, 2, 37, 64, device="cuda"),
               torch.randn(3, 2, 37, 64, device="cuda"))
    bias = torch.zeros(3, 1, 1, 37, device="cuda")
    bias[0, ..., :5] = float("-inf")
    bias[2] = float("-inf")  # a sequence with nothing to attend to
    out, lse = attention.attention_with_lse(q, k, v, bias, 0.125)
    assert attention._CUDA_FUSED, "the fused kernel refused the input"
    scores = (q @ k.transpose(-1, -2)) * 0.125 + bias
    ref_lse = torch.logsumexp(scores, -1)
    ref = torch.nan_to_num(torch.softmax(scores, -1)) @ v
    # Three stages (scores over 64 dimensions, softmax over 37 keys, the weighted sum of 37 values).
    assert_rounding_close(out, ref, rounding_bound(64, 3, float(ref.abs().max())))
    assert torch.isneginf(lse[2]).all()
    assert_rounding_close(lse[:2], ref_lse[:2], rounding_bound(64, 2, float(scores[:2].nan_to_num(neginf=0).abs().max())))


@needs_gpu
@pytest.mark.parametrize("decoder", ["together", "per-candidate"])
def test_generation_on_gpu_matches_cpu(tiny_model, tokenizer, prompt_ids, decoder):
    from skiporacle.eval.generate import generate_candidates

    model = tiny_model("llama")
    prompts = [as_text(p) for p in prompt_ids]
    allocations = [full(NUM_LAYERS), uniform(3, NUM_LAYERS), uniform(4, NUM_LAYERS)]
    cpu = generate_candidates(model, tokenizer, prompts, allocations, DecodeProtocol(6, decoder=decoder))
    gpu = generate_candidates(copy.deepcopy(model).to("cuda"), tokenizer, prompts, allocations, DecodeProtocol(6, decoder=decoder))
    assert gpu == cpu  # float32, random tiny model: no near-ties at this size


@needs_gpu
def test_oracle_on_gpu(capsys, tmp_path, data_args):
    summary = _oracle(capsys, data_args, tmp_path / "gpu", "--device", "cuda")
    assert summary["machine"]["device"] == "cuda" and summary["machine"]["gpus"] >= 1
    assert json.loads((tmp_path / "gpu" / "settings.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, gpu-check runs for real (make gpu-check)")
def test_gpu_check_without_a_gpu_is_one_line_and_exit_0(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "check.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        "skiporacle gpu-check: no GPU visible to torch here (torch.cuda.is_available() is False); nothing to check"]
    assert not (tmp_path / "check.json").exists()
