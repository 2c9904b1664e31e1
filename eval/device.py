"""Where a model runs: `--device auto|cpu|cuda[:N]`, the dtype that goes with it, and a worker's GPU.

The device is never part of a run's settings fingerprint (a run resumes on
another machine); the dtype is.  `--dtype` defaults to float32 on the CPU and
bfloat16 on a GPU.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from skiporacle.data.errors import BadInput


def resolve_device(spec: str | None = "auto") -> torch.device:
    """The torch device named by `spec`; BadInput (one line) for a name that is not usable here."""
    name = (spec or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    kind, colon, index = name.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise BadInput(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise BadInput(f"--device {spec}: torch sees no CUDA GPU on this machine (use --device cpu or auto)")
    count = torch.cuda.device_count()
    if colon and int(index) >= count:
        raise BadInput(f"--device {spec}: only {count} GPU(s) visible (cuda:0 to cuda:{count - 1})")
    return torch.device(name)


@dataclass(frozen=True)
class Placement:
    """Where a model runs and in what precision: a checked device name ("cpu", "cuda", "cuda:1") and a dtype
    name ("float32", "bfloat16"); resolved once per command (`resolve_placement`)."""

    device: str
    dtype: str


def resolve_placement(device: str | None = "auto", dtype: str | None = None) -> Placement:
    """The placement named by --device and --dtype: BadInput for a device not usable here; the dtype
    defaults to the device's (`default_dtype`)."""
    where = resolve_device(device)
    return Placement(str(where), dtype or default_dtype(where))


def default_dtype(device: torch.device | str) -> str:
    """The `--dtype` name used when none is given: bfloat16 on a GPU, float32 elsewhere."""
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"


def placed(device: torch.device | str) -> torch.device:
    """`device` with an index where it is a GPU ("cuda" -> the current GPU), for loading weights onto it."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def describe(device: torch.device | str) -> dict:
    """The device part of summary.json's "machine": its kind, and for a GPU its name and the visible count."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"device": device.type}
    return {"device": device.type, "gpu": torch.cuda.get_device_name(placed(device)), "gpus": torch.cuda.device_count()}


def worker_device(device: str, slot: int, visible: int) -> str:
    """The device of worker `slot`: "cuda" round-robins over the `visible` GPUs; any other name is kept."""
    if device == "cuda" and visible > 0:
        return f"cuda:{slot % visible}"
    return device


_CLAIMED: dict[str, int] = {}


def claim_slot(folder: str | None, workers: int) -> int:
    """This process's worker number 0..workers-1, claimed once per run folder `folder` by creating a file.

    joblib and Dask do not number their worker processes, so each claims the
    lowest free number; a process that finds all taken (a respawned worker)
    takes its process id modulo `workers`.  Without a folder: 0.
    """
    if folder is None:
        return 0
    if folder not in _CLAIMED:
        Path(folder).mkdir(parents=True, exist_ok=True)
        _CLAIMED[folder] = os.getpid() % max(workers, 1)
        for slot in range(workers):
            try:
                os.close(os.open(Path(folder) / f"worker-{slot}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            _CLAIMED[folder] = slot
            break
    return _CLAIMED[folder]


@contextlib.contextmanager
def one_thread():
    """torch on one thread for the duration, the thread count restored after (small products, where
    thread synchronisation costs more than it saves, and tests that need one fixed thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
