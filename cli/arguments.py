"""The argument groups that several `skiporacle` commands share, and the parser class whose errors are one line.

Validation that needs no model (numbers, specs, files, the scheduler) happens where each command reads its
arguments (`model_commands.settings_from_args` and the commands themselves), before any model loads.
"""

from __future__ import annotations

import argparse

from skiporacle.data.tasks import max_new_tokens_defaults
from skiporacle.eval.decode_protocol import DECODERS, FIRST_TOKEN_RULES
from skiporacle.oracle.oracle_settings import DEFAULTS


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would print the usage too)
        self.exit(2, f"skiporacle: error: {message} (see --help)\n")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--task", default=DEFAULTS.task,
                   help=f"registered task: xsum, cnndm, samsum, alpaca, self-instruct, gsm8k, wmt22:SRC-TGT (default: {DEFAULTS.task})")
    g.add_argument("--data", metavar="FILE", help="a local JSONL/JSON/CSV/Parquet file or saved `datasets` folder instead of --task")
    g.add_argument("--input-field", help="with --data: the field holding the input text")
    g.add_argument("--reference-field", help="with --data: the field holding the reference text(s)")
    g.add_argument("--id-field", help="with --data: the field holding a unique id (default: row number)")
    g.add_argument("--limit", type=int, default=DEFAULTS.limit, help=f"number of sequences (default: {DEFAULTS.limit})")
    g.add_argument("--offset", type=int, default=DEFAULTS.offset, help=f"skip this many sequences first (default: {DEFAULTS.offset})")
    g.add_argument("--instruction", metavar="TEXT",
                   help=("chat models: the instruction put before each input, instead of the task's "
                         "(with --data: 'Respond to the following input.')"))
    g.add_argument("--template", metavar="TEXT",
                   help=("base models: the whole prompt, with {input} standing for the input text, instead of "
                         "'### Input: {input}\\n\\n### Output:' (or the task's labels); no other text is interpreted"))


def add_device(p) -> None:
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help=("where the model runs (default: auto, a GPU if torch sees one, else the CPU). cuda with "
                         "--workers K puts worker k on GPU k mod the visible count; cuda:N pins GPU N. "
                         "Not part of settings.json: a run resumes on another device"))


def add_model_args(p: argparse.ArgumentParser, title: str = "model and decoding",
                    prompt_under_allocation: bool = True) -> None:
    g = p.add_argument_group(title)
    g.add_argument("--model", default=DEFAULTS.model,
                   help=f"embedded model name (smollm2-135m) or a local Hugging Face model folder (default: {DEFAULTS.model})")
    add_device(g)
    g.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="weights and compute (default: float32 on the CPU, bfloat16 on a GPU); part of settings.json")
    defaults = ", ".join(f"{name} {n}" for name, n in max_new_tokens_defaults().items())
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"greedy tokens per sequence at most (default: the task's: {defaults})")
    g.add_argument("--metric", default=None,
                   help="per-sequence metric: rouge1, rouge2, rougeL, rougeLsum, bleu, chrf, exact_match (default: the task's)")
    g.add_argument("--batch-size", "--max-batch", dest="batch_size", type=int, default=DEFAULTS.batch_size,
                   help="most sequences per batch (default 0: chosen from model and prompt sizes)")
    if prompt_under_allocation:
        g.add_argument("--prompt-under-allocation", action="store_true",
                       help="read the prompt with the allocation's layers too (default: the full model reads the prompt)")


def add_decoding_args(p: argparse.ArgumentParser) -> None:
    """The generation protocol (--first-token) and the decoder that carries it out (--decoder)."""
    p.add_argument("--first-token", choices=FIRST_TOKEN_RULES, default=DEFAULTS.first_token,
                   help=("who predicts the first generated token. allocation (default): the full model reads the prompt "
                         "but its last token, and the allocation reads that token and predicts every generated token. "
                         "full: the full model reads the whole prompt and predicts the first generated token; the "
                         "allocation reads it and predicts the rest"))
    p.add_argument("--decoder", choices=DECODERS, default=DEFAULTS.decoder,
                   help=("together (default): one decode loop advances every candidate of a batch, each layer run once "
                         "on the rows that keep it, attention over the shared prompt cache done once per sequence "
                         "(Llama, Mistral, Qwen2, Qwen3 layouts; others fall back). per-candidate: the reference path, "
                         "one candidate after another; outputs equal up to near-ties (float rounding)"))
