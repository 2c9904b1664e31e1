"""`skiporacle heal`: check the options, rank the layers when asked to (importance:N), then distil."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from skiporacle.cli.run_settings import placement_of
from skiporacle.data.errors import BadInput
from skiporacle.data.prompts import fit_prompt, prompt_budget
from skiporacle.eval.model import EMBEDDED_MODELS, load_model, num_layers
from skiporacle.eval.ranking import cached_drop_order
from skiporacle.heal.distil import HealSettings, heal as run_heal, refuse_existing
from skiporacle.heal.family import FAMILY_PLOT, FAMILY_TABLE, family_lines, write_family
from skiporacle.heal.texts import example_id, heal_examples, split_holdout
from skiporacle.search.allocation import parse_spec
from skiporacle.search.spaces import importance_space, parse_budgets


def heal(args: argparse.Namespace) -> int:
    """Distil one allocation into a healed variant folder (resumable)."""
    for name, value, low in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1), ("--seq-len", args.seq_len, 2),
                             ("--examples", args.examples, 1), ("--holdout", args.holdout, 1), ("--lora", args.lora, 0),
                             ("--calibration", args.calibration, 1), ("--checkpoint-every", args.checkpoint_every, 1),
                             ("--eval-every", args.eval_every, 1), ("--patience", args.patience, 0),
                             ("--train-last", args.train_last, 0), ("--answer-tokens", args.answer_tokens, 1)):
        if value < low:
            raise BadInput(f"{name} must be at least {low}, got {value}")
    if not 0 <= args.min_gain < 1:
        raise BadInput(f"--min-gain is a relative gain in [0, 1), got {args.min_gain:g}")
    if args.train_norm and args.lora:
        raise BadInput("--train-norm trains the norm's weights, --lora only adapters: choose one")
    learning_rate = args.lr if args.lr is not None else (3e-3 if args.lora else 3e-4)
    if not learning_rate > 0:
        raise BadInput(f"--lr must be positive, got {learning_rate}")
    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    if not sources:
        raise BadInput("--sources: no task given")
    out = Path(args.out)
    refuse_existing(out)  # before the model loads and the layers are ranked
    model_name = args.model if args.model in EMBEDDED_MODELS else str(Path(args.model).resolve())
    device = placement_of(args).device
    model, tokenizer = load_model(model_name, torch.float32, device)  # weights float32 on any device; --bf16 autocasts
    n = num_layers(model)
    calibration: tuple[str, ...] = ()
    kind, _, budget = args.layers.partition(":")
    if kind == "importance":
        if not budget or "," in budget:
            raise BadInput(f"--layers {args.layers!r}: expected importance:N with one budget N")
        (keep,) = parse_budgets(budget, n)
        # Rank on the first training rows: held-out rows then measure KL on rows that chose nothing.
        _, training = split_holdout(heal_examples(sources, args.examples), args.holdout)
        examples = training[: args.calibration]
        if not examples:
            raise BadInput(f"--layers {args.layers!r}: no training rows to rank the layers on "
                           f"(--examples {args.examples} per task, --holdout {args.holdout})")
        max_new_tokens = 48  # the oracle's default: rank layers on continuations as long as it decodes
        _, budget = prompt_budget(model, tokenizer, max_new_tokens)
        prompts = [fit_prompt(task, e, tokenizer, budget)[0] for task, e in examples]
        calibration = tuple(example_id(task, e) for task, e in examples)
        out.parent.mkdir(parents=True, exist_ok=True)
        order = cached_drop_order(out.parent / "importance.json", model, tokenizer, model_name, list(calibration),
                                  prompts, max_new_tokens, progress=True)
        allocation = importance_space([keep], order)[0]
    else:
        allocation = parse_spec(args.layers, n)
    if allocation.is_full:
        raise BadInput(f"--layers {args.layers!r} keeps every layer: nothing to heal")
    if args.train_last > allocation.cost:
        raise BadInput(f"--train-last {args.train_last}: {allocation.spec} keeps only {allocation.cost} layers")
    settings = HealSettings(
        model=model_name, layers=allocation.layers, spec=allocation.spec, steps=args.steps, learning_rate=learning_rate,
        batch_size=args.batch_size, seq_len=args.seq_len, bf16=args.bf16, lora_rank=args.lora, seed=args.seed,
        sources=sources, examples=args.examples, holdout=args.holdout, checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every, patience=args.patience, min_gain=args.min_gain, train_last=args.train_last,
        train_norm=args.train_norm, answers=args.answers, answer_tokens=args.answer_tokens,
    )
    meta = run_heal(settings, model, tokenizer, out, resume=args.resume, calibration_ids=calibration)
    print(f"skiporacle: healed {allocation.spec} ({allocation.cost}/{n} layers: {','.join(map(str, allocation.layers))}) "
          f"in {len(meta['losses'])} steps ({meta['stopped']}), {meta['train_seconds']:.0f} s of training; held-out KL {meta['kl']['initial']:.4f} -> "
          f"{meta['kl']['final']:.4f} nats/token; saved to {out}")
    return 0


def heal_family(args: argparse.Namespace) -> int:
    """family.json and family.png of the healed variants in --folder, and their table."""
    folder = Path(args.folder)
    rows = write_family(folder)
    print("\n".join(family_lines(rows)))
    print(f"skiporacle: {len(rows)} variant(s); {folder / FAMILY_TABLE}, {folder / FAMILY_PLOT}")
    return 0
