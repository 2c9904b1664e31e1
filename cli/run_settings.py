"""A run's settings from the parsed arguments, checked before any model loads, and the device they name."""

from __future__ import annotations

import argparse
from dataclasses import replace

from skiporacle.data.errors import BadInput
from skiporacle.data.tasks import check_prompt_options
from skiporacle.eval.device import Placement, resolve_placement
from skiporacle.eval.metrics import METRICS
from skiporacle.oracle.inputs import load_examples
from skiporacle.oracle.oracle_settings import DEFAULTS, OracleSettings


def placement_of(args: argparse.Namespace) -> Placement:
    """The placement named by --device (default auto) and --dtype, resolved once per command and kept on
    `args`: BadInput for a device not usable here."""
    if getattr(args, "placement", None) is None:
        args.placement = resolve_placement(getattr(args, "device", None), getattr(args, "dtype", None))
    return args.placement


def settings_from_args(args: argparse.Namespace, spaces: tuple[str, ...] = (),
                       budgets: tuple[int, ...] = ()) -> OracleSettings:
    """The run's settings from the arguments; --dtype defaults to the device's (float32 on the CPU)."""
    for name, value, low in (("--limit", args.limit, 1), ("--offset", args.offset, 0),
                             ("--max-new-tokens", args.max_new_tokens, 1),
                             ("--calibration", getattr(args, "calibration", 0), 0),
                             ("--workers", getattr(args, "workers", 1), 1), ("--batch-size", args.batch_size, 0),
                             ("--threads", getattr(args, "threads", None), 1)):
        if value is not None and value < low:
            raise BadInput(f"{name} must be at least {low}, got {value}")
    if getattr(args, "tolerance", 0.0) < 0:
        raise BadInput(f"--tolerance must be at least 0 (score points below the full model's), got {args.tolerance:g}")
    if args.data and not (args.input_field and args.reference_field):
        raise BadInput("--data needs --input-field and --reference-field")
    check_prompt_options(getattr(args, "instruction", None), getattr(args, "template", None))
    settings = OracleSettings(
        model=args.model, task=args.task if not args.data else "file", data_file=args.data,
        input_field=args.input_field, reference_field=args.reference_field, id_field=args.id_field,
        limit=args.limit, offset=args.offset, spaces=spaces, budgets=budgets, metric=args.metric or "",
        max_new_tokens=args.max_new_tokens or 0, dtype=placement_of(args).dtype, seed=getattr(args, "seed", 0),
        tolerance=getattr(args, "tolerance", 0.0), calibration=getattr(args, "calibration", 0),
        prompt_under_allocation=args.prompt_under_allocation, batch_size=args.batch_size,
        importance_file=getattr(args, "importance", None), first_token=getattr(args, "first_token", DEFAULTS.first_token),
        instruction=getattr(args, "instruction", None), template=getattr(args, "template", None),
        decoder=getattr(args, "decoder", DEFAULTS.decoder),
        **{k: getattr(args, k) for k in ("search_rule", "search_generate", "search_width", "search_evaluations")
           if hasattr(args, k)},
    )
    task, examples = load_examples(settings, settings.limit, settings.offset)  # the data checked before the model loads
    if len(examples) < settings.limit:
        source = settings.data_file or settings.task
        print(f"skiporacle: --limit {settings.limit}: {source} has {len(examples)} row(s) from --offset "
              f"{settings.offset}; running those {len(examples)}")
    if not settings.metric or not settings.max_new_tokens:  # the task's defaults
        settings = replace_settings(settings, metric=settings.metric or task.metric,
                            max_new_tokens=settings.max_new_tokens or task.max_new_tokens)
    if settings.metric not in METRICS:
        raise BadInput(f"unknown metric {settings.metric!r}; choose from {', '.join(METRICS)}")
    return settings


def replace_settings(settings: OracleSettings, **changes) -> OracleSettings:
    return replace(settings, **changes)
