"""A family of healed variants in one folder, side by side: `family.json` (one row per variant) and
`family.png` (each variant's held-out learning curve, and held-out KL against kept layers before and after
healing: the frontier).  Read from each variant's heal.json; nothing is run."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from skiporacle.data.errors import BadInput  # noqa: E402
from skiporacle.heal.variants import HEAL_METADATA, finished_variants, read_heal_metadata  # noqa: E402

FAMILY_TABLE = "family.json"
FAMILY_PLOT = "family.png"


def family_rows(folder: Path) -> list[dict]:
    """One row per finished variant in `folder` (hidden folders are unfinished), fewest layers last.

    Keys: variant, spec, layers (kept), num_layers, trained ("all kept layers", "last K" with "+ norm"), steps,
    stopped ("plateau" or "max-steps"), train_seconds, kl_initial and kl_final (nats per token on the held-out
    windows), curve ([step, kl] pairs), answers ("reference" or "teacher": what the windows end with, so KLs of the
    two kinds are measured on different windows)."""
    variants = finished_variants(folder)
    if not variants:
        raise BadInput(f"no healed variant (a folder with {HEAL_METADATA}) in {str(folder)!r}: run make heal first")
    rows = []
    for path in variants:
        meta = read_heal_metadata(path)
        settings = meta["settings"]
        trained = f"last {settings['train_last']}" if settings.get("train_last") else "all kept layers"
        curve = meta.get("curve") or [[0, meta["kl"]["initial"]], [len(meta["losses"]), meta["kl"]["final"]]]
        rows.append({"variant": path.name, "spec": meta["spec"], "layers": len(meta["layers"]),
                     "num_layers": meta["num_layers"], "trained": trained + (" + norm" if settings.get("train_norm") else ""),
                     "steps": len(meta["losses"]), "stopped": meta.get("stopped", "max-steps"),
                     "train_seconds": round(meta["train_seconds"], 1), "kl_initial": meta["kl"]["initial"],
                     "kl_final": meta["kl"]["final"], "curve": curve,
                     "answers": settings.get("answers", "reference")})
    return sorted(rows, key=lambda r: (-r["layers"], r["variant"]))


def write_family(folder: Path) -> list[dict]:
    """Write FOLDER/family.json and FOLDER/family.png; return the rows."""
    rows = family_rows(folder)
    (Path(folder) / FAMILY_TABLE).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    fig, (curves, frontier) = plt.subplots(1, 2, figsize=(12, 4.6))
    for row in rows:
        steps, kls = zip(*row["curve"])
        curves.plot(steps, kls, marker=".", label=f"{row['variant']} ({row['layers']} layers, {row['trained']})")
    curves.set(xlabel="training step", ylabel="held-out KL (nats/token)", yscale="log",
               title="learning curves (held-out windows)")
    curves.legend(fontsize=7)
    own = [r for r in rows if r["trained"] == "all kept layers" and r["answers"] == "reference"]
    for key, label, style in (("kl_initial", "training-free (same layers, base weights)", "o--"),
                              ("kl_final", "healed", "o-")):
        if own:
            frontier.plot([r["layers"] for r in own], [r[key] for r in own], style, label=label)
    for row in (r for r in rows if r not in own):
        frontier.plot([row["layers"]], [row["kl_final"]], "s",
                      label=f"{row['variant']} ({row['trained']}, {row['answers']} answers)")
    frontier.set(xlabel="kept layers", ylabel="held-out KL (nats/token)", yscale="log",
                 title="KL against layers kept")
    frontier.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(folder) / FAMILY_PLOT, dpi=110)
    plt.close(fig)
    return rows


def family_lines(rows: list[dict]) -> list[str]:
    """A plain-text table of the rows, for the terminal and the docs."""
    out = ["| variant | layers | trained | answers | steps | stopped | seconds | held-out KL before | after |",
           "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['variant']} | {r['layers']}/{r['num_layers']} | {r['trained']} | {r['answers']} | {r['steps']} | {r['stopped']} | "
            f"{r['train_seconds']:.0f} | {r['kl_initial']:.3f} | {r['kl_final']:.3f} |" for r in rows]
    return out
