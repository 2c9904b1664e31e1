"""`skiporacle controller`: features -> cross-validated (or cross-run) predictions -> controller.json,
controller.png and a deployable controller folder.

Flow: labels (an oracle run) and prompt features (the full model's prefill,
cached in RUN/features.npz) -> out-of-fold predictions -> `evaluate` on the
true scores -> a final controller trained on every training row, saved with
its candidate list, feature version and the content hashes of its training
prompts.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from skiporacle.controller.decide import threshold_choices
from skiporacle.controller.evaluate import (EvalSettings, cross_validated, evaluate, fold_of, percent, reach,
                                            threshold_curve)
from skiporacle.controller.fixed import choose_tau, fair_point, nested_choices
from skiporacle.controller.labels import Labels, load_labels
from skiporacle.controller.classifier import fit, load_arrays, save_arrays
from skiporacle.controller.evaluation_result import ControllerEvaluation
from skiporacle.data.errors import BadInput
from skiporacle.data.files import read_json_object, write_json_atomic
from skiporacle.eval.decode_protocol import protocol_of
from skiporacle.eval.features import FEATURE_VERSION, scalar_columns
from skiporacle.oracle.records import SUMMARY
from skiporacle.eval.features import prompt_features
from skiporacle.controller.plot import plot_controller

FEATURES = "features.npz"
LEARNING_SHARES = (0.25, 0.5, 0.75, 1.0)  # shares of each fold's training rows in the learning curve


def run_features(labels: Labels, load_model) -> np.ndarray:
    """Prompt features [N, F] of the run's rows, computed once and cached in RUN/features.npz."""
    path = Path(labels.run) / FEATURES
    if path.exists():
        stored = np.load(path)
        if int(stored["version"]) == FEATURE_VERSION and list(stored["ids"]) == labels.ids:
            return stored["features"]

    model, tokenizer = load_model(labels.settings["model"], labels.settings["dtype"])
    features = prompt_features(model, tokenizer, labels.prompts, progress=True)
    tmp = path.with_name(f".{FEATURES}.tmp.npz")
    np.savez(tmp, ids=np.array(labels.ids), features=features, version=np.array(FEATURE_VERSION))
    tmp.replace(path)
    return features


def check_compatible(train: Labels, test: Labels) -> None:
    """Refuse (BadInput) a pair of runs a controller cannot be carried between, or that share a prompt."""
    if train.settings["model"] != test.settings["model"]:
        raise BadInput(f"{test.run!r} ran model {test.settings['model']!r}; the controller was trained on "
                       f"{train.settings['model']!r}")
    if train.candidates != test.candidates:
        raise BadInput(f"{test.run!r} has other candidates than {train.run!r}; a controller applies only to runs "
                       "with the same candidate list (use `oracle --importance` with the same ranking)")
    shared = train.content_hashes() & test.content_hashes()
    if shared:
        raise BadInput(f"{test.run!r} shares {len(shared)} prompt(s) with the training run {train.run!r} (by content)")


def _targets(labels: Labels, settings: EvalSettings, guarded: bool) -> tuple[np.ndarray, np.ndarray]:
    return labels.matches(settings.tolerance, guarded), labels.scores - labels.full[:, None]


def _block(train: Labels, test: Labels, x_train, x_test, settings: EvalSettings, guarded: bool, tau: float) -> dict:
    """Figures of one label variant (with or without the plausibility guard) on the test rows; `tau` is the
    threshold chosen on the training run (used when it is not the test run)."""
    scalars = scalar_columns(train.num_layers)
    match, delta = _targets(train, settings, guarded)
    if train is test:
        folds = fold_of(len(test.ids), settings.folds, settings.seed)
        prob, pred = cross_validated(x_train, match, delta, scalars, folds)
        length_prob, _ = cross_validated(x_train[:, :1], match, delta, 1, folds)
    else:
        folds = None
        prob, pred = fit(x_train, match, delta, scalars).predict(x_test)
        length_prob, _ = fit(x_train[:, :1], match, delta, 1).predict(x_test[:, :1])
    block = evaluate(prob, pred, length_prob, test.scores, test.costs, settings)  # judged on true scores
    if train is test:
        choices = nested_choices(x_train, match, delta, scalars, folds, test.costs, test.scores, settings.seed)
    else:
        choices = threshold_choices(prob, test.costs, tau)
    block["fixed_threshold"] = {"tau_chosen_on": "the training rows only" + (" (nested in each fold)" if train is test else ""),
                                **fair_point(choices, test.costs, test.scores, settings)}
    if train is test:
        block["learning_curve"] = learning_curve(x_train, match, delta, test, settings, folds)
    block["labels"] = "guarded" if guarded else "unguarded"
    return block


def learning_curve(x, match, delta, labels: Labels, settings: EvalSettings, folds) -> list[dict]:
    """Held-out layers at full quality when each fold's controller sees only a share of its training rows
    (the same held-out rows every time): does the figure still improve with more labels?"""
    points = []
    for share in LEARNING_SHARES:
        def subsample(xs, ms, ds, scalars):
            keep = np.random.default_rng(settings.seed).permutation(len(xs))[: max(4, int(round(share * len(xs))))]
            return fit(xs[np.sort(keep)], ms[np.sort(keep)], ds[np.sort(keep)], scalars)

        prob, _ = cross_validated(x, match, delta, scalar_columns(labels.num_layers), folds, fit_fn=subsample)
        rows = int(round(share * (len(x) - len(x) / settings.folds)))
        points.append({"train_rows": rows, "layers_at_full_quality_percent":
                       percent(reach(threshold_curve(prob, labels.costs, labels.scores), labels.full), labels.num_layers)})
    return points


def run_controller(run: Path, out: Path, train_run: Path | None, settings: EvalSettings,
                   load_model) -> ControllerEvaluation:
    """Evaluate a controller on `run` (k-fold, or trained on `train_run`), save it, write controller.json."""
    start = time.perf_counter()
    test = load_labels(run, min_sequences=2 * settings.folds if train_run is None else 1)
    train = test if train_run is None else load_labels(train_run, min_sequences=2)
    if train is not test:
        check_compatible(train, test)
    x_train = run_features(train, load_model)
    x_test = x_train if train is test else run_features(test, load_model)
    variants = [False] + ([True] if train.plausible is not None and test.plausible is not None else [])
    taus = {g: _deploy_tau(x_train, train, settings, g) for g in variants}
    blocks = {g: _block(train, test, x_train, x_test, settings, g, taus[g]) for g in variants}
    main = blocks[variants[-1]]
    started = time.perf_counter()
    final = fit(x_train, *_targets(train, settings, variants[-1]), scalar_columns(train.num_layers))
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    prob, _ = final.predict(x_test)
    threshold_choices(prob, test.costs, 0.5)
    decide_us = 1e6 * (time.perf_counter() - started) / len(x_test)
    tau = taus[variants[-1]]
    out.mkdir(parents=True, exist_ok=True)
    save_controller(out / "model", final, train, settings, variants[-1], tau)
    summary = read_json_object(Path(test.run) / SUMMARY) or {}
    if variants[-1]:  # the guarded oracle of the same run, as summary.json computed it
        main = {**main, "oracle_layers_at_full_quality_percent_guarded":
                (summary.get("guarded") or {}).get("knapsack", {}).get("percent_layers_at_full_quality")}
    result = ControllerEvaluation(
        test.run, train.run, "cross-validation" if train is test else "cross-run",
        settings.folds if train is test else None, test.settings["model"], test.settings["task"],
        test.settings["metric"], test.num_layers, [c[0] for c in test.candidates], test.costs, asdict(settings),
        main, blocks[False] if len(variants) > 1 else None, summary.get("split_reference"), decide_us,
        train_seconds, tau, time.perf_counter() - start)
    result.write(out)
    plot_controller(out / "controller.png", result.to_json(), test)
    return result


def _deploy_tau(x_train, train: Labels, settings: EvalSettings, guarded: bool) -> float:
    """The threshold a deployed controller uses, chosen by cross-validation on its training rows only."""
    match, delta = _targets(train, settings, guarded)
    if len(train.ids) < 2 * settings.folds:
        return 1.0
    prob, _ = cross_validated(x_train, match, delta, scalar_columns(train.num_layers),
                              fold_of(len(train.ids), settings.folds, settings.seed))
    return choose_tau(prob, train.costs, train.scores)


def save_controller(folder: Path, fitted, train: Labels, settings: EvalSettings, guarded: bool, tau: float) -> None:
    """A controller folder: settings.json (what it applies to) and weights.npz (no pickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "weights.npz", **save_arrays(fitted))
    write_json_atomic(folder / "settings.json", {
        "model": train.settings["model"], "dtype": train.settings["dtype"], "num_layers": train.num_layers,
        "candidates": train.candidates, "feature_version": FEATURE_VERSION, "tau": tau,
        "tolerance": settings.tolerance, "guarded_labels": guarded, "train_run": train.run,
        "train_ids": train.ids, "train_content_hashes": sorted(train.content_hashes()),
        "max_new_tokens": train.settings["max_new_tokens"], "task": train.settings["task"],
        "first_token": protocol_of(train.settings).first_token,
    })


def load_controller(folder: Path):
    """(settings dict, Fitted) of a saved controller: FOLDER or FOLDER/model (BadInput if neither is one)."""
    if (folder / "model" / "settings.json").exists():
        folder = folder / "model"
    try:
        settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
        fitted = load_arrays(np.load(folder / "weights.npz"))
    except (OSError, ValueError, KeyError) as err:
        raise BadInput(f"{str(folder)!r} is not a controller folder ({err})") from None
    if settings.get("feature_version") != FEATURE_VERSION:
        raise BadInput(f"{str(folder)!r} was trained on feature version {settings.get('feature_version')}, "
                       f"this skiporacle computes version {FEATURE_VERSION}: retrain it")
    return settings, fitted
