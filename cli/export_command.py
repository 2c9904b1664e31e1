"""`skiporacle export`: one decision (a layer spec or a healed variant) as a standalone Hugging Face folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from skiporacle.data.errors import BadInput
from skiporacle.eval.model import EMBEDDED_MODELS, load_model, num_layers
from skiporacle.heal.export import export_allocation, export_variant, refuse_export_target
from skiporacle.heal.variants import read_heal_metadata
from skiporacle.search.allocation import check_spec, parse_spec


def export(args: argparse.Namespace) -> int:
    """Write --out from --layers (of --model) or --healed; every refusal comes before the model loads."""
    out = Path(args.out)
    refuse_export_target(out)
    model_name = args.model if args.model in EMBEDDED_MODELS else str(Path(args.model).resolve())
    if args.healed:
        read_heal_metadata(args.healed)
    else:
        check_spec(args.layers)
    model, _ = load_model(model_name, torch.float32, "cpu")
    n = num_layers(model)
    if args.healed:
        meta = export_variant(Path(args.healed), model_name, n, out)
    else:
        meta = export_allocation(model, model_name, parse_spec(args.layers, n), out)
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(f"skiporacle: exported {meta['spec']} ({len(meta['layers'])}/{n} layers) to {out} "
          f"({size / 2**20:.1f} MiB of weights); load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def add_export_parser(sub) -> None:
    exp = sub.add_parser("export", help="one decision as a standalone Hugging Face model folder (only the kept layers)",
                         description=(
                             "Write a folder that plain transformers loads (AutoModelForCausalLM.from_pretrained) "
                             "without skiporacle: the config sliced to the kept layers, their weights renumbered "
                             "0..k-1, embeddings, final norm, LM head, tokenizer and chat template.  Its greedy "
                             "outputs are skiporacle's under --prompt-under-allocation (the kept layers read the "
                             "prompt too).  A healed variant is copied with its heal.json.  Weights stay in the "
                             "base model's float32."))
    exp.add_argument("--model", default="smollm2-135m", help="embedded model name or local HF folder (default: smollm2-135m)")
    which = exp.add_mutually_exclusive_group(required=True)
    which.add_argument("--layers", help="layers kept: uniform:N, exit:L, or a list like 0-10,12,15-29")
    which.add_argument("--healed", metavar="FOLDER", help="a healed variant folder (from skiporacle heal) of --model")
    exp.add_argument("--out", required=True, help="the folder to write (must not exist)")
