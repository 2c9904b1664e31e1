"""The `skiporacle` parser: generate, heal, oracle, rank, plausibility, perplexity, dump, curves, report, compare
(controller and pertoken: `controller_parsers.py`; export and savings: their command modules).  Which function
runs each command: `main.COMMANDS`."""

from __future__ import annotations

import argparse

from skiporacle.controller.deploy import WINDOW_MB
from skiporacle.eval.mixed_decode import MIXED_PATHS
from skiporacle.cli.arguments import Parser, add_data_args, add_decoding_args, add_device, add_model_args
from skiporacle.cli.controller_parsers import add_controller_parsers
from skiporacle.cli.draft_command import RANKING
from skiporacle.cli.drafts_command import add_drafts_parser
from skiporacle.cli.export_command import add_export_parser
from skiporacle.cli.savings_command import add_savings_parsers
from skiporacle.oracle.guard import PLAUSIBILITY_MARGIN
from skiporacle.heal.heal_settings import ANSWER_KINDS, DEFAULTS as HEAL
from skiporacle.oracle.candidate_list import spaces_help
from skiporacle.oracle.oracle_settings import DEFAULTS
from skiporacle.oracle.bootstrap import RESAMPLES

DEFAULT_BUDGETS = ",".join(map(str, DEFAULTS.budgets))
DEFAULT_SPACES = ",".join(DEFAULTS.spaces)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="skiporacle", description=(
        "For each input sequence, find the cheapest set of decoder layers that keeps the full model's quality."))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    gen = sub.add_parser("generate", help="greedy outputs and scores under one layer allocation",
                         description="Generate greedily under one allocation and score each output against its reference.")
    add_data_args(gen)
    add_model_args(gen)
    add_decoding_args(gen)
    gen.add_argument("--controller", metavar="DIR",
                     help=("decide each sequence's allocation at prefill with this controller (from `skiporacle controller`), "
                           "generate with real skipping, and time it against the full model on the same sequences"))
    gen.add_argument("--mixed-path", choices=MIXED_PATHS, default="auto",
                     help=("with --controller: how a batch whose sequences chose different allocations decodes. groups: "
                           "each allocation's sequences together, one group after another; lanes: one loop, each layer "
                           "run once on the rows that keep it; auto (default): the cheaper by a per-layer cost measured "
                           "once on this machine (kept in the cache folder). Outputs are equal up to near-ties"))
    gen.add_argument("--plan-window-mb", type=int, default=WINDOW_MB, metavar="MB",
                     help=("with --controller: plan-level grouping. Hold up to MB of the full model's prompt caches, so "
                           "that sequences of several prefill batches that chose the same allocation (or healed "
                           "variant) decode together in full batches; the rest decode in mixed batches (--mixed-path). "
                           f"0 decodes each prefill batch by itself (default: {WINDOW_MB}). Outputs are equal up to near-ties"))
    gen.add_argument("--tau", type=float, default=None,
                     help="with --controller: the threshold on the predicted probability (default: the controller's own)")
    gen.add_argument("--draft", metavar="SPEC|VARIANT",
                     help=("self-speculative decoding: this allocation of the model's own layers (or a healed variant "
                           "folder of this model) drafts --draft-tokens "
                           "tokens, the full model checks them in one pass and keeps the longest prefix it agrees "
                           "with plus its own next token, so the outputs are the full model's; prints the acceptance "
                           "and the time against the full model's plain decoding"))
    gen.add_argument("--draft-tokens", type=int, default=4, metavar="K",
                     help="with --draft: tokens drafted per check (default: 4)")
    gen.add_argument("--importance", default=None, metavar="FILE",
                     help=f"with --draft importance:N: the layer ranking whose order keeps N layers (default: "
                          f"{RANKING}, which `make ranking` writes)")
    gen.add_argument("--layers", default="all",
                     help="allocation: all, uniform:N (N layers kept), exit:L (layers 0..L-1), or a list like 0-10,12,15-29")
    gen.add_argument("--out", metavar="FILE.jsonl",
                     help=("stream the outputs to this JSON-lines file instead of printing them: one line per finished "
                           "sequence (id, output, tokens, allocation, layers, score), written and fsynced per batch"))
    gen.add_argument("--resume", action="store_true",
                     help="with --out: continue a killed run; ids already written are skipped, none is written twice")

    hea = sub.add_parser("heal", help="distil one layer allocation back toward the full model (a healed variant)",
                         description=(
                             "Train a copy of the allocation's layers to match the full model's next-token distribution "
                             "(KL at every position) on texts from the last rows of --sources, then save it as a local "
                             "model folder with heal.json.  Ctrl-C or a kill loses at most --checkpoint-every steps: "
                             "--resume continues to the same result as an uninterrupted run."))
    hea.add_argument("--model", default=DEFAULTS.model, help=f"embedded model name or local HF folder (default: {DEFAULTS.model})")
    hea.add_argument("--layers", required=True,
                     help="allocation to heal: importance:N (N layers kept by the importance order), uniform:N, "
                          "exit:L, or a list like 0-10,12,15-29")
    hea.add_argument("--steps", type=int, required=True,
                     help="the most optimiser steps (the compute budget); the run stops earlier on a plateau of the "
                          "held-out KL (see --patience)")
    hea.add_argument("--out", required=True, help="folder of the healed variant, e.g. models/heal-24 (must not exist)")
    hea.add_argument("--lr", type=float, default=None,
                     help="AdamW learning rate, constant (default: 3e-4, or 3e-3 with --lora; the best of 3 tried)")
    hea.add_argument("--batch-size", type=int, default=HEAL.batch_size, help=f"windows per step (default: {HEAL.batch_size})")
    hea.add_argument("--seq-len", type=int, default=HEAL.seq_len, help=f"tokens per window (default: {HEAL.seq_len})")
    hea.add_argument("--bf16", action="store_true", help="bfloat16 autocast (~1.6x faster on CPU; weights stay float32)")
    add_device(hea)
    hea.add_argument("--lora", type=int, default=HEAL.lora_rank, metavar="RANK", help="train LoRA adapters of this rank instead of all weights (needs peft)")
    hea.add_argument("--seed", type=int, default=HEAL.seed, help=f"seed of the data order and LoRA init (default: {HEAL.seed})")
    hea.add_argument("--sources", default=",".join(HEAL.sources),
                     help=f"tasks whose last rows give the training texts (default: {','.join(HEAL.sources)})")
    hea.add_argument("--examples", type=int, default=HEAL.examples, help=f"last rows taken from each source task (default: {HEAL.examples})")
    hea.add_argument("--holdout", type=int, default=HEAL.holdout, help=f"windows kept out of training to measure KL (default: {HEAL.holdout})")
    hea.add_argument("--calibration", type=int, default=8, help="with importance:N, examples that rank the layers (default: 8)")
    hea.add_argument("--checkpoint-every", type=int, default=HEAL.checkpoint_every,
                     help=f"steps between checkpoints (default: {HEAL.checkpoint_every})")
    hea.add_argument("--resume", action="store_true", help="continue the interrupted run of --out from its last checkpoint")
    hea.add_argument("--eval-every", type=int, default=HEAL.eval_every,
                     help=f"steps between held-out KL measurements, the learning curve in heal.json (default: {HEAL.eval_every})")
    hea.add_argument("--patience", type=int, default=HEAL.patience,
                     help=(f"stop when the best of the last PATIENCE measurements is not --min-gain below the best "
                           f"before them; 0 runs every step (default: {HEAL.patience})"))
    hea.add_argument("--min-gain", type=float, default=HEAL.min_gain,
                     help=f"relative held-out KL gain that counts as progress (default: {HEAL.min_gain})")
    hea.add_argument("--train-last", type=int, default=HEAL.train_last, metavar="K",
                     help="train only the last K kept layers, the ones next to the cut (default: 0, every kept layer)")
    hea.add_argument("--train-norm", action="store_true",
                     help=("train the final norm too (with --layers exit:L --train-last K: the 'reassessing layer "
                           "pruning' baseline); such a variant runs as --model FOLDER or exported, not in --space healed"))
    hea.add_argument("--answers", choices=ANSWER_KINDS, default=HEAL.answers,
                     help=("what each window's answer is: the task's first reference, or the full model's own greedy "
                           "answer (generated once, resumable; sequence-level distillation) (default: %(default)s)"))
    hea.add_argument("--answer-tokens", type=int, default=HEAL.answer_tokens,
                     help=f"with --answers teacher, the most tokens of each answer (default: {HEAL.answer_tokens})")

    fam = sub.add_parser("heal-family", help="the healed variants of a folder side by side (family.json, family.png)",
                         description=("Read every healed variant's heal.json in --folder and write FOLDER/family.json "
                                      "(one row per variant: layers, which weights trained, steps, why it stopped, "
                                      "seconds, held-out KL before and after, the learning curve) and "
                                      "FOLDER/family.png (the learning curves; held-out KL against kept layers)."))
    fam.add_argument("--folder", default="models", help="folder of healed variants (default: models)")

    orc = sub.add_parser("oracle", help="score every candidate allocation on every sequence and pick the oracle's choice",
                         description="Score candidate allocations per sequence; write runs/NAME/allocations.jsonl and summary.json.")
    add_data_args(orc)
    add_model_args(orc)
    add_decoding_args(orc)
    g = orc.add_argument_group("search")
    g.add_argument("--space", default=DEFAULT_SPACES,
                   help=f"comma-separated spaces. {spaces_help()} (default: {DEFAULT_SPACES})")
    g.add_argument("--budgets", default=DEFAULT_BUDGETS, help=f"layers kept per generated token (default: {DEFAULT_BUDGETS})")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"seed of the random space (default: {DEFAULTS.seed})")
    g.add_argument("--calibration", type=int, default=DEFAULTS.calibration,
                   help=f"sequences after the evaluated ones used to rank layer importance (default: {DEFAULTS.calibration})")
    g.add_argument("--importance", metavar="FILE",
                   help=("take the importance order from FILE (an importance.json written by `skiporacle rank` or by "
                         "another run) instead of ranking layers on the calibration rows, so that importance:B names "
                         "the same layers in every run"))
    g.add_argument("--tolerance", type=float, default=DEFAULTS.tolerance,
                   help=f"rule oracle: a candidate matches if its score >= full score - tolerance (default: {DEFAULTS.tolerance:g})")
    g = orc.add_argument_group("per-sequence search (--space greedy or random-search)",
                               "Each sequence walks down from the full model one layer at a time; its record gets one "
                               "column STRATEGY:B per budget B from min(--budgets) to all layers but one.")
    g.add_argument("--search-rule", choices=("score", "exact"), default=DEFAULTS.search_rule,
                   help=("a proposal qualifies if its score >= full score - tolerance (score: generated unless "
                         "teacher-forced verification shows it reproduces the full output) or if it reproduces the "
                         f"full output (exact: verification only, no generation) (default: {DEFAULTS.search_rule})"))
    g.add_argument("--search-generate", type=int, default=DEFAULTS.search_generate, metavar="G",
                   help=("score rule: of each step's (greedy) or round's (random-search) proposals that verification "
                         "does not show to reproduce the full output, generate only the G closest to the full model "
                         f"by teacher-forced KL; the others are pruned (default: {DEFAULTS.search_generate})"))
    g.add_argument("--search-width", type=int, default=DEFAULTS.search_width, metavar="W",
                   help=f"random-search: proposals per round (default: {DEFAULTS.search_width})")
    g.add_argument("--search-evaluations", type=int, default=DEFAULTS.search_evaluations, metavar="E",
                   help=f"random-search: proposals judged per sequence at most (default: {DEFAULTS.search_evaluations})")
    g = orc.add_argument_group("run")
    g.add_argument("--out", default="runs/default", help="run folder (default: runs/default)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out; ids already done are skipped")
    g.add_argument("--workers", type=int, default=1, help="worker processes (joblib), each loading the model once (default: 1)")
    g.add_argument("--scheduler", metavar="TCP://HOST:PORT", help="run the workers on this Dask cluster (needs .[dask])")
    g.add_argument("--threads", type=int, default=None,
                   help=("torch threads of each scoring process (default: all of this process's, or cores / K with "
                         "--workers K); allocations.jsonl is byte-identical only between runs with the same count"))

    add_controller_parsers(sub)  # controller, pertoken

    rnk = sub.add_parser("rank", help="rank layers by importance on fixed rows, for --importance",
                         description=("Measure the importance order (the damage of removing each layer alone: perplexity "
                                      "of the full model's greedy continuations) on rows OFFSET..OFFSET+LIMIT-1 of a task, "
                                      "and write it to --out for `skiporacle oracle --importance`."))
    add_data_args(rnk)
    add_model_args(rnk)
    rnk.add_argument("--out", required=True, help="the importance.json to write")

    pla = sub.add_parser("plausibility", help="the full model's NLL of every output of a run, for the plausibility guard",
                         description=("Teacher-forced mean NLL (nats/token) of every candidate's output under the full model, "
                                      "prompt given; writes RUN/plausibility.json and adds the guarded oracle to summary.json. "
                                      "A candidate whose NLL exceeds the full output's by more than --margin cannot match."))
    pla.add_argument("--run", required=True, help="run folder")
    pla.add_argument("--margin", type=float, default=PLAUSIBILITY_MARGIN,
                     help=f"plausibility margin in nats/token (default: {PLAUSIBILITY_MARGIN})")
    add_device(pla)

    ppl = sub.add_parser("perplexity", help="perplexity of the references under each candidate of a run",
                         description=("Teacher-forced perplexity of each sequence's first reference under every candidate "
                                      "of a run (prompt read by the full model); writes RUN/perplexity.json."))
    ppl.add_argument("--run", required=True, help="run folder")
    add_device(ppl)

    dmp = sub.add_parser("dump", help="export a run as one row per sequence x candidate",
                         description="Export runs/NAME/allocations.jsonl as a table, one row per sequence and candidate.")
    dmp.add_argument("--run", required=True, help="run folder")
    dmp.add_argument("--format", choices=("csv", "parquet"), default="csv", help="table format (default: csv)")
    dmp.add_argument("--output", help="output file (default: RUN/allocations.csv or .parquet)")

    cur = sub.add_parser("curves", help="compute-vs-quality curves of a run (curves.csv, curves.png; similarity.png with --similarity)",
                         description="Plot mean score against mean %% of layers per generated token, with 95 %% bootstrap bands.")
    cur.add_argument("--run", required=True, help="run folder")
    cur.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples (default: {RESAMPLES})")
    cur.add_argument("--similarity", type=int, default=0, metavar="N",
                     help=("also run the model on N sequences for similarity.png, the hidden-state similarity study "
                           "(default: 0, the model is not run; `make curves` passes 16)"))
    add_device(cur)

    rep = sub.add_parser("report", help="one self-contained HTML page of a run (RUN/report.html)",
                         description=("Write a single HTML file that opens from disk: settings, headline figures with "
                                      "their intervals, the run's plots, the controller's figures when "
                                      "RUN/controller/controller.json exists, and every sequence's outputs side by "
                                      "side with word-level differences from the full output. The model is not run."))
    rep.add_argument("--run", required=True, help="run folder")
    rep.add_argument("--output", help="output file (default: RUN/report.html)")

    cmp_ = sub.add_parser("compare", help="two runs of the same sequences, with paired 95 %% intervals",
                          description=("Paired differences RUN - AGAINST on the same sequences (matched by id, prompts "
                                       "checked by content): rule and exact-rule mean %% of layers, knapsack %% of "
                                       "layers at full quality, full-model mean score; e.g. a per-sequence search "
                                       "against the fixed-space run of the same rows. Writes RUN/compare-NAME.json."))
    cmp_.add_argument("--run", required=True, help="run folder (e.g. a --space greedy run)")
    cmp_.add_argument("--against", required=True, help="run folder of the same sequences (e.g. make oracle's)")
    add_export_parser(sub)
    add_savings_parsers(sub)
    add_drafts_parser(sub)
    return parser
