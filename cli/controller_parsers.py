"""The controller's subcommands in the `skiporacle` parser: `controller` and `pertoken` (run by
`controller/commands.py`)."""

from __future__ import annotations

from skiporacle.cli.arguments import add_data_args, add_device, add_model_args
from skiporacle.oracle.bootstrap import RESAMPLES


def add_controller_parsers(sub) -> None:
    """`skiporacle controller` and `skiporacle pertoken`."""
    con = sub.add_parser("controller", help="learn per-sequence allocations from an oracle run, judged on unseen sequences",
                         description=(
                             "Train a controller that picks each sequence's allocation from its prompt alone (features of "
                             "the full model's prefill), and evaluate it honestly: with k-fold cross-validation every "
                             "sequence is decided by a controller that never saw it; with --train it is trained on another "
                             "run with the same candidates. Writes OUT/controller.json (figures with 95 %% bootstrap "
                             "intervals, the in-sample oracle, a shuffled oracle and a prompt-length baseline on the same "
                             "sequences), OUT/controller.png, and a deployable controller in OUT/model/."))
    con.add_argument("--run", required=True, help="the oracle run to evaluate on (its labels and prompts)")
    con.add_argument("--train", metavar="RUN", help="train on this run instead of cross-validating (same candidates, no shared prompt)")
    con.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    con.add_argument("--tolerance", type=float, default=0.0,
                     help="a candidate matches if its score >= full score - tolerance (default: 0)")
    con.add_argument("--seed", type=int, default=0, help="seed of the fold assignment and the bootstrap (default: 0)")
    con.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples over sequences (default: {RESAMPLES})")
    con.add_argument("--out", help="output folder (default: RUN/controller, or RUN/controller-from-TRAIN with --train)")
    add_device(con)
    _add_pertoken(sub)


def _add_pertoken(sub) -> None:
    """`skiporacle pertoken` (skiporacle.pertoken.study): a per-token controller against fixed skip rates."""
    per = sub.add_parser(
        "pertoken", help="per-token study: oracle, a hidden-state probe and its controller vs fixed skip rates",
        description=(
            "Does a learned per-token controller beat fixed skip rates at equal compute? (The seed paper found it "
            "does not.) On the evaluation rows: the full model's greedy outputs; the per-token oracle (teacher-forced, "
            "each token's cheapest member of a nested family whose next token is the full model's) for the importance "
            "family (layers dropped in --importance's order, layers 0..--probe-layer kept) and the early-exit family; "
            "a probe (per-member L2 logistic regressions on the standardised hidden state after layer --probe-layer, "
            "trained on the training rows' labels; the paper used a linear layer with Gumbel-softmax) deciding each "
            "token's member, generated with real skipping at each --taus; and the fixed rates importance:B for "
            "--budgets. Writes OUT/pertoken.json and OUT/pertoken.png, with 95 % bootstrap intervals over sequences, "
            "paired where two figures share them."))
    add_data_args(per)
    add_model_args(per, "model and decoding (the full model reads the prompt but its last token)",
                    prompt_under_allocation=False)
    g = per.add_argument_group("study")
    g.add_argument("--train-offset", type=int, default=100,
                   help="first training row of the same task, for the probe (default: 100)")
    g.add_argument("--train-limit", type=int, default=150, help="training rows (default: 150)")
    g.add_argument("--importance", default="runs/ranking.json", metavar="FILE",
                   help="the layer ranking (an importance.json from `skiporacle rank`; `make ranking` writes the "
                        "default) that orders the importance family and the fixed rates (default: runs/ranking.json)")
    g.add_argument("--probe-layer", type=int, default=1,
                   help=("the probe reads the hidden state after this layer; layers 0..PROBE_LAYER always run (layers 0 and 1 "
                         "are vital on SmolLM2) (default: 1)"))
    g.add_argument("--taus", default="0.5,0.7,0.8,0.9,0.95,0.99",
                   help=("thresholds: a token runs the cheapest member m whose probability of giving the full model's "
                         "token, and every dearer member's, is >= tau; 0 always picks the cheapest member, above 1 "
                         "always the full model (default: 0.5,0.7,0.8,0.9,0.95,0.99)"))
    g.add_argument("--budgets", default="16,20,22,24,26,28,29",
                   help=("layers kept by the fixed-rate baselines importance:B (the full model is added); tau points "
                         "are compared with them interpolated at equal layers per token (default: 16,20,22,24,26,28,29)"))
    g.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default: 0)")
    g.add_argument("--resamples", type=int, default=RESAMPLES,
                   help=f"bootstrap resamples over sequences (default: {RESAMPLES})")
    g.add_argument("--out", help="output folder (default: runs/pertoken-TASK, or runs/pertoken-STEM with --data)")
    per.set_defaults(prompt_under_allocation=False)
