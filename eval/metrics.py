"""Text-quality metrics for generated sequences, all on a 0-100 scale.

ROUGE comes from ``rouge-score`` (stemming on, F-measure x 100, max over references),
BLEU and chrF from ``sacrebleu`` with its default settings, and exact match compares the
final number of a GSM8K-style answer (0 or 100). Nothing here downloads anything.
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache
from typing import Sequence

import sacrebleu
from rouge_score import rouge_scorer

from skiporacle.data.errors import BadInput
from skiporacle.data.tasks import METRICS  # noqa: F401 (the one list of metric names)

_ROUGE: tuple[str, ...] = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A sentence ends at . ! or ? followed by whitespace; existing newlines also end one.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# A number-like token: digits with commas between them, optional decimals, optional
# exponent.  A '-' counts as a sign only when not directly after a digit ("5-3" yields
# 5 and 3, not -3).  Whether its commas really separate thousands is checked after.
_NUMBER = re.compile(r"(?<!\d)-?(?:\d+(?:,\d+)*(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][+-]?\d+)?|-?\.\d+(?:[eE][+-]?\d+)?")


@lru_cache(maxsize=None)
def _rouge_scorer(types: tuple[str, ...]) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(types), use_stemmer=True)


@lru_cache(maxsize=None)
def _sacrebleu_metric(name: str, sentence: bool) -> sacrebleu.metrics.base.Metric:
    # Same settings as sacrebleu.sentence_bleu / corpus_bleu etc., built once.
    if name == "bleu":
        return sacrebleu.metrics.BLEU(effective_order=sentence)
    return sacrebleu.metrics.CHRF()


def _check(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    """Validate arguments; return the references as lists (a bare str is one reference)."""
    if metric not in METRICS:
        raise BadInput(f"unknown metric {metric!r}; expected one of: {', '.join(METRICS)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, r in enumerate(refs):
        if not r:
            raise ValueError(f"sequence {i} has no reference")
    return refs


def split_sentences(text: str) -> str:
    """Return ``text`` with one sentence per line, as rougeLsum expects (deterministic regex)."""
    lines = (s.strip() for line in text.split("\n") for s in _SENTENCE_END.split(line))
    return "\n".join(s for s in lines if s)


def _rouge_table(types: tuple[str, ...], predictions: Sequence[str], refs: list[list[str]]) -> dict[str, list[float]]:
    # Newlines between sentences do not change the tokens of rouge1/2/L, so one
    # prepared text serves every ROUGE type.
    scorer = _rouge_scorer(types)
    table: dict[str, list[float]] = {t: [] for t in types}
    for pred, rs in zip(predictions, refs):
        best = scorer.score_multi([split_sentences(r) for r in rs], split_sentences(pred))
        for t in types:
            table[t].append(100.0 * best[t].fmeasure)
    return table


def gsm8k_number(text: str) -> str | None:
    """Final numeric answer of a GSM8K-style text, normalised, or None if it has none.

    The answer is the first number-like token after the last ``####`` if there is one, else
    the last one in the text.  GSM8K writes integers with ',' between groups of thousands,
    so a comma is read as a thousands separator only between a first group of 1-3 digits
    and groups of exactly 3: "1,200" -> "1200".  Any other comma inside the token ("7,00",
    "12,50", "1234,567", "1,2345") makes it not one number: neither a decimal comma nor two
    numbers can be told apart from a typo, so the answer is None (never a match).  The value
    is written plainly, without exponent or trailing zeros: "1e5" -> "100000", "3.50" ->
    "3.5", "7.0" -> "7", "42." -> "42", ".5" -> "0.5", "-0" -> "0", "007" -> "7".
    """
    found = None
    if "####" in text:
        found = _NUMBER.search(text.rsplit("####", 1)[1])
    if found is None:
        matches = _NUMBER.findall(text)
        if not matches:
            return None
        number = matches[-1]
    else:
        number = found.group(0)
    if not _THOUSANDS.fullmatch(number):
        return None
    value = Decimal(number.replace(",", ""))
    if value == 0:
        return "0"
    if abs(value.adjusted()) > 100:  # a huge exponent: keep the answer short, still exact
        return str(value.normalize())
    return format(value.normalize(), "f")


def sequence_scores(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per-sequence scores (0-100), one per prediction; ``references[i]`` holds the
    reference texts of prediction i (any number >= 1; the best one counts for ROUGE and
    exact match, sacrebleu uses all of them). Empty predictions score 0; for exact_match a
    prediction without a number never matches.

    Raises BadInput for an unknown metric and ValueError for mismatched lengths or a
    sequence without references.
    """
    refs = _check(metric, predictions, references)
    if metric in _ROUGE:
        return _rouge_table((metric,), predictions, refs)[metric]
    if metric == "exact_match":
        out = []
        for pred, rs in zip(predictions, refs):
            p = gsm8k_number(pred)
            out.append(100.0 if p is not None and any(gsm8k_number(r) == p for r in rs) else 0.0)
        return out
    scorer = _sacrebleu_metric(metric, sentence=True)
    return [float(scorer.sentence_score(pred, rs).score) for pred, rs in zip(predictions, refs)]


def corpus_score(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """One corpus-level score (0-100): sacrebleu corpus BLEU / chrF, otherwise the mean
    of the per-sequence scores. Same arguments and errors as ``sequence_scores``; an empty
    corpus raises ValueError.
    """
    refs = _check(metric, predictions, references)
    if not predictions:
        raise ValueError("cannot score an empty corpus")
    if metric in ("bleu", "chrf"):
        return _sacrebleu_corpus(metric, predictions, refs)
    scores = sequence_scores(metric, predictions, refs)
    return sum(scores) / len(scores)


def _sacrebleu_corpus(metric: str, predictions: Sequence[str], refs: list[list[str]]) -> float:
    # sacrebleu wants one stream per reference index; sequences with fewer references
    # are padded with None, which sacrebleu skips.
    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    return float(_sacrebleu_metric(metric, sentence=False).corpus_score(list(predictions), streams).score)


def all_corpus_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus scores (0-100) for rouge1, rouge2, rougeL, rougeLsum, bleu and chrf (not
    exact_match), computing ROUGE in a single pass. Errors as ``corpus_score``."""
    refs = _check("bleu", predictions, references)
    if not predictions:
        raise ValueError("cannot score an empty corpus")
    table = _rouge_table(_ROUGE, predictions, refs)
    out = {t: sum(v) / len(v) for t, v in table.items()}
    for metric in ("bleu", "chrf"):
        out[metric] = _sacrebleu_corpus(metric, predictions, refs)
    return out
