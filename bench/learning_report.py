"""What ``bench.learning`` records per round, and its figures over seeds: tables, targets, plot.

A run is ``runs[order][seed] -> [Round, ...]`` (rounds in increasing annotations). Figures over
seeds are the mean and the range (min-max) of the per-seed values (``bench.curves.spread``);
thresholds and areas use ``bench.curves`` (linear between rounds, trapezoid rule).

Two runs of the same seeds and rounds, one order each (a run of both orders takes an hour here),
read together as one:

    .venv/bin/python -m bench.learning_report RANDOM.json LABELLOOP.json [--out combined.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.curves import Curve, auc, fmt_spread, mean_curve, reach, spread, value_at

Runs = dict[str, dict[int, list["Round"]]]

REACH_AT = (0.5, 0.8)
TARGET_LABELS_SAVED = 1.3  # random / labelloop annotations to reach mAP50 0.5
TARGET_MAP_AT = (20, 0.5)  # mAP50 after 20 annotations
TARGET_EDITS_AT = (40, 0.6)  # edits per held-out image after 40 annotations, share of boxes per image
TARGET_BURST = 20  # bursts of this many annotations or more publish...
TARGET_VERSIONS_PER_BURST = 1  # ...this many versions
TARGET_SERVED_S = 240.0
TARGET_MAX_DROP = 0.03
TARGET_VS_DEFAULTS = 1.5
TARGET_VS_TUNED = 0.95


@dataclass
class Round:
    """One round of one order in one seed's project: what was saved, the version it led to, and
    the held-out figures of the served version's stored predictions."""

    annotations: int
    seed: int = 0
    order: str = "random"
    burst: int = 0  # annotations saved in this round
    version: str = ""
    version_status: str = ""
    version_dataset: dict[str, int] = field(default_factory=dict)
    published_s: float | None = None
    served_s: float | None = None
    label_studio_sees_s: float | None = None
    train_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    train_args: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    promotion: dict[str, Any] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    versions_this_round: list[str] = field(default_factory=list)
    served_version: str = ""
    served_dataset: dict[str, int] = field(default_factory=dict)
    predictions: dict[str, int] = field(default_factory=dict)
    labelloop: dict[str, Any] = field(default_factory=dict)  # labelloop.training.scoring.score on the held-out tasks
    edits: dict[str, int] = field(default_factory=dict)  # labelloop.training.scoring.edits on the held-out tasks
    held_out: int = 0
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)
    picked_by: str = ""
    # [task id, Label Studio's queue, "pool" | "held-out: skipped", [[model_version, score, cluster], ...]]
    stream: list[list[Any]] = field(default_factory=list)
    skips: int = 0
    project: dict[str, Any] = field(default_factory=dict)  # sampling, model_version at the round's end

    @property
    def map50(self) -> float | None:
        return self.labelloop.get("map50")

    @property
    def edits_per_image(self) -> float | None:
        return self.edits["edits"] / self.held_out if self.edits and self.held_out else None

    @property
    def boxes_per_image(self) -> float | None:
        return self.edits["truths"] / self.held_out if self.edits and self.held_out else None

    @property
    def versions(self) -> int:
        """Versions trained (promoted or rejected) from this round's first save to the next round's."""
        return len(self.versions_this_round)

    @property
    def to_served_s(self) -> float | None:
        """Last save to the round's version served (to the gate's decision when it was rejected)."""
        return self.served_s if self.served_s is not None else self.published_s


def fmt(v: float | None, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return format(v, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b; inf when only b is 0, 1.0 when both are (equal), None when either is missing."""
    if a is None or b is None:
        return None
    if b == 0:
        return math.inf if a > 0 else 1.0
    return a / b


def finite(v: Any) -> Any:
    """For JSON: inf becomes the string "inf"."""
    return "inf" if isinstance(v, float) and math.isinf(v) else v


def curve(rounds: list[Round], key: str) -> list[tuple[float, float]]:
    """``(annotations, Round.<key>)`` of the rounds that have the figure."""
    out = []
    for r in rounds:
        v = getattr(r, key)
        if v is not None:
            out.append((float(r.annotations), float(v)))
    return out


# ---------------------------------------------------------------------------------------------
# Figures over seeds


def per_round(seeds: dict[int, list[Round]]) -> list[dict[str, Any]]:
    """Per round (by annotations): mean and range over seeds of each figure."""
    counts = sorted({r.annotations for rs in seeds.values() for r in rs})
    out = []
    for n in counts:
        rs = [r for rounds in seeds.values() for r in rounds if r.annotations == n]
        out.append(
            {
                "annotations": n,
                "seeds": len(rs),
                "map50": spread([r.map50 for r in rs]),
                "edits_per_image": spread([r.edits_per_image for r in rs]),
                "boxes_per_image": spread([r.boxes_per_image for r in rs]),
                "versions": spread([float(r.versions) for r in rs]),
                "to_served_s": spread([r.to_served_s for r in rs]),
                "skips": spread([float(r.skips) for r in rs]),
                "rejected": sum(r.version_status not in ("", "promoted") for r in rs),
            }
        )
    return out


def order_summary(seeds: dict[int, list[Round]]) -> dict[str, Any]:
    """Annotations to reach each mAP50 threshold and the area under the mAP50 curve: per seed,
    mean and range over seeds, and on the mean curve."""
    per_seed: dict[int, dict[str, Any]] = {
        s: {
            "reach": {str(th): reach(curve(rs, "map50"), th) for th in REACH_AT},
            "auc": auc(curve(rs, "map50")),
            "last": rs[-1].annotations if rs else None,
        }
        for s, rs in seeds.items()
    }
    mean = mean_curve([curve(rs, "map50") for rs in seeds.values()])
    return {
        "per_seed": per_seed,
        "reach": {str(th): spread([p["reach"][str(th)] for p in per_seed.values()]) for th in REACH_AT},
        "auc": spread([p["auc"] for p in per_seed.values()]),
        "mean_curve": mean,
        "mean_curve_reach": {str(th): reach(mean, th) for th in REACH_AT},
        "mean_curve_auc": auc(mean),
    }


def reach_ratio(runs: Runs, threshold: float) -> dict[str, Any]:
    """random / labelloop annotations to reach ``threshold``: on the mean curves, and per seed.

    When one order reaches it and the other does not within the last round ``N``, the ratio is
    a bound (``random N / labelloop n`` is at least... or at most...): ``bound`` says which."""
    out: dict[str, Any] = {"threshold": threshold, "per_seed": {}}
    if "random" not in runs or "labelloop" not in runs:
        return out

    def one(rnd: Curve, ll: Curve) -> tuple[float | None, str]:
        a, b = reach(rnd, threshold), reach(ll, threshold)
        if a is not None and b is not None:
            return a / b, "="
        if a is not None:  # labelloop needs more than its last round
            return (a / ll[-1][0], "<") if ll else (None, "")
        if b is not None:  # random needs more than its last round
            return (rnd[-1][0] / b, ">") if rnd else (None, "")
        return None, ""

    for s in sorted(set(runs["random"]) & set(runs["labelloop"])):
        v, bound = one(curve(runs["random"][s], "map50"), curve(runs["labelloop"][s], "map50"))
        out["per_seed"][s] = {"ratio": v, "bound": bound}
    v, bound = one(
        mean_curve([curve(rs, "map50") for rs in runs["random"].values()]),
        mean_curve([curve(rs, "map50") for rs in runs["labelloop"].values()]),
    )
    out["mean_curves"] = {"ratio": v, "bound": bound}
    out["per_seed_spread"] = spread([p["ratio"] for p in out["per_seed"].values() if p["bound"] == "="])
    return out


def aggregate(runs: Runs) -> dict[str, Any]:
    return {
        "per_round": {o: per_round(seeds) for o, seeds in runs.items()},
        "orders": {o: order_summary(seeds) for o, seeds in runs.items()},
        "random_over_labelloop": [reach_ratio(runs, th) for th in REACH_AT],
    }


# ---------------------------------------------------------------------------------------------
# Targets


def targets(runs: Runs) -> list[dict[str, Any]]:
    """The issue's targets, each ``{"target", "figures", "met"}`` (met None: not measured)."""
    out: list[dict[str, Any]] = []
    means = {o: mean_curve([curve(rs, "map50") for rs in seeds.values()]) for o, seeds in runs.items()}
    main = "labelloop" if "labelloop" in runs else next(iter(runs), "")

    # labelloop's order vs random, every round, on the mean over seeds
    if "random" in means and "labelloop" in means:
        rnd = dict(means["random"])
        pairs = [(x, y, rnd[x]) for x, y in means["labelloop"] if x in rnd]
        met: bool | None = all(y >= r for _, y, r in pairs) if pairs else None
        figs = ", ".join(f"{x:.0f}: {y:.3f} vs {r:.3f}" for x, y, r in pairs)
    else:
        met, figs = None, "needs --order both"
    out.append(
        {"target": "labelloop's order mAP50 >= random's every round (mean over seeds)", "figures": figs, "met": met}
    )

    # labels saved at 0.5
    rr = reach_ratio(runs, 0.5)
    mc = rr.get("mean_curves")
    if mc is None:
        met, figs = None, "needs --order both"
    elif mc["ratio"] is None:
        met, figs = None, "neither order reached 0.5"
    else:
        r, bound = mc["ratio"], mc["bound"]
        # "<": labelloop's order did not reach 0.5, the ratio is at most r; ">": random did not, at least r
        met = {"=": r >= TARGET_LABELS_SAVED, "<": False if r < TARGET_LABELS_SAVED else None}.get(
            bound, True if r >= TARGET_LABELS_SAVED else None
        )
        reached = {o: reach(means[o], 0.5) for o in ("random", "labelloop")}
        figs = (
            f"random / labelloop {'' if bound == '=' else bound + ' '}{r:.2f}x on the mean curves (random "
            f"{fmt(reached['random'], '.1f')}, labelloop {fmt(reached['labelloop'], '.1f')} annotations); per seed: "
            + ", ".join(
                f"{'' if p['bound'] == '=' else p['bound']}{fmt(p['ratio'], '.2f')}x" for p in rr["per_seed"].values()
            )
        )
    out.append(
        {
            "target": f"labels saved at mAP50 0.5: random / labelloop >= {TARGET_LABELS_SAVED}x",
            "figures": figs,
            "met": met,
        }
    )

    # mAP50 after 20 annotations
    at, goal = TARGET_MAP_AT
    v = value_at(means.get(main, []), at)
    per = [value_at(curve(rs, "map50"), at) for rs in runs.get(main, {}).values()]
    out.append(
        {
            "target": f"mAP50 after {at} annotations >= {goal} ({main} order, mean over seeds)",
            "figures": f"{fmt_spread(spread(per))}" if v is not None else f"no round brackets {at}",
            "met": None if v is None else v >= goal,
        }
    )

    # edits per held-out image after 40 annotations
    at, share = TARGET_EDITS_AT
    seeds = runs.get(main, {})
    edits = [value_at(curve(rs, "edits_per_image"), at) for rs in seeds.values()]
    boxes = [value_at(curve(rs, "boxes_per_image"), at) for rs in seeds.values()]
    se, sb = spread(edits), spread(boxes)
    if se["mean"] is None or sb["mean"] is None:
        met, figs = None, f"no round brackets {at}"
    else:
        met = se["mean"] <= share * sb["mean"]
        figs = (
            f"{fmt_spread(se, '.2f')} edits per image against {sb['mean']:.2f} boxes per image "
            f"({se['mean'] / sb['mean']:.0%})"
        )
    out.append(
        {
            "target": f"edits per held-out image after {at} annotations <= {share:.0%} of boxes per image "
            f"({main} order)",
            "figures": figs,
            "met": met,
        }
    )

    # versions per burst
    bursts = [r for seeds in runs.values() for rs in seeds.values() for r in rs if r.burst >= TARGET_BURST]
    by_burst: dict[tuple[str, int], list[Round]] = {}
    for r in bursts:
        by_burst.setdefault((r.order, r.annotations), []).append(r)
    out.append(
        {
            "target": f"versions per burst of {TARGET_BURST} or more annotations: {TARGET_VERSIONS_PER_BURST} (every "
            "seed and order)",
            "figures": "; ".join(
                f"{o} {n} (+{rs[0].burst}): {fmt_spread(spread([float(r.versions) for r in rs]), '.1f')}"
                for (o, n), rs in sorted(by_burst.items())
            )
            or f"no burst of {TARGET_BURST} or more",
            "met": all(r.versions == TARGET_VERSIONS_PER_BURST for r in bursts) if bursts else None,
        }
    )

    # annotation -> served version
    rows = [(o, row) for o, seeds in runs.items() for row in per_round(seeds)]
    out.append(
        {
            "target": f"annotation -> served version <= {TARGET_SERVED_S:.0f} s every round (mean over seeds)",
            "figures": "; ".join(
                f"{o} {row['annotations']}: {fmt_spread(row['to_served_s'], '.0f')} s" for o, row in rows
            ),
            "met": all(
                row["to_served_s"]["mean"] is not None
                and row["to_served_s"]["mean"] <= TARGET_SERVED_S
                and not row["to_served_s"]["missing"]
                for _, row in rows
            )
            if rows
            else None,
        }
    )
    return out


def peer_map(r: Round, name: str) -> float | None:
    p = r.peers.get(name) or {}
    return p.get("score", {}).get("map50") if "score" in p else None


def peer_targets(rounds: list[Round]) -> list[dict[str, Any]]:
    """The learning curve's own targets (one seed, the order the peers ran in): no round more than
    ``TARGET_MAX_DROP`` below the one before, and labelloop against each peer."""
    maps = [(r.annotations, r.map50) for r in rounds]
    out = []
    drops = [
        (n1, round(a - b, 3))
        for (_, a), (n1, b) in zip(maps, maps[1:], strict=False)
        if a is not None and b is not None
    ]
    out.append(
        {
            "target": f"no round more than {TARGET_MAX_DROP} below the round before "
            f"(seed {rounds[0].seed if rounds else '-'})",
            "figures": ", ".join(f"-{d:.3f} at {n}" for n, d in drops if d > 0)
            or ("no drop" if drops else "one round"),
            "met": None if not drops else all(d <= TARGET_MAX_DROP for _, d in drops),
        }
    )
    if not any(r.peers for r in rounds):
        return out
    for name, goal, only in (("a", TARGET_VS_DEFAULTS, (10, 20)), ("b", TARGET_VS_TUNED, None)):
        chosen = [r for r in rounds if only is None or r.annotations in only]
        figs = [(r.annotations, ratio(r.map50, peer_map(r, name))) for r in chosen]
        both_zero = {r.annotations for r in chosen if r.map50 == 0 and peer_map(r, name) == 0}
        measured = [(n, v) for n, v in figs if v is not None]
        where = "at 10 and 20 annotations" if only else "every round"
        complete = bool(measured) and (only is None or {n for n, _ in measured} >= set(only))
        met = all(v >= goal for _, v in measured) if measured else None
        out.append(
            {
                "target": f"labelloop / peer ({name}) >= {goal}x {where}",
                "figures": ", ".join(
                    f"{fmt(v, '.2f')}{'x' if v is not None else ''} at {n}" + (" (both 0)" if n in both_zero else "")
                    for n, v in figs
                )
                or "-",
                "met": met if complete or met is False else None,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Printing


def print_learning_curve(rounds: list[Round], config: dict[str, Any]) -> None:
    """One seed's rounds of one order, with the peers when they ran."""
    peers = any(r.peers for r in rounds)
    head = (
        f"{'annots':>6} {'ann->served s':>13} {'ll train s':>10} {'ll version':>14} {'ll mAP50':>8} {'ll P':>6} "
        f"{'ll R':>6}" + (f" {'(a) mAP50':>9} {'(b) mAP50':>9} {'ll/(a)':>7} {'ll/(b)':>7}" if peers else "")
    )
    first = rounds[0] if rounds else Round(0)
    print(
        f"\nlearning curve, seed {first.seed}, {first.order} order: {config['data'].get('images')} generated images, "
        f"held-out {config['held_out']} tasks, base model {config.get('base_model')}"
    )
    print(head)
    print("-" * len(head))
    for r in rounds:
        served = fmt(r.served_s, ".0f") if r.served_s is not None else f"rej {fmt(r.published_s, '.0f')}"
        version = r.served_version + (f" ({r.version} rej)" if r.version_status not in ("promoted", "") else "")
        line = (
            f"{r.annotations:>6} {served:>13} {fmt(r.train_s, '.0f'):>10} {version:>14} {fmt(r.map50):>8} "
            f"{fmt(r.labelloop.get('precision'), '.2f'):>6} {fmt(r.labelloop.get('recall'), '.2f'):>6}"
        )
        if peers:
            a, b = peer_map(r, "a"), peer_map(r, "b")
            line += f" {fmt(a):>9} {fmt(b):>9} {fmt(ratio(r.map50, a), '.2f'):>7} {fmt(ratio(r.map50, b), '.2f'):>7}"
        print(line)
    for r in rounds:
        for name, p in r.peers.items():
            if "error" in p:
                print(f"  round {r.annotations}: peer ({name}) failed: {p['error'].splitlines()[0][:200]}")
            else:
                print(
                    f"  round {r.annotations}: peer ({name}) {p['epochs']} epochs, imgsz {p['imgsz']}, "
                    f"batch {p['batch']}, nbs {p['nbs']}, trained {p['train_seconds']:.0f} s "
                    f"(budget {r.train_s:.0f} s); P {p['score']['precision']:.2f} R {p['score']['recall']:.2f}"
                )
        ap = r.labelloop.get("ap") or {}
        print(
            f"  round {r.annotations}: labelloop {r.version} trained on {r.version_dataset}, "
            f"epochs {r.train_args.get('epochs')} (run {r.recipe.get('epochs_run', '-')}), "
            f"imgsz {r.train_args.get('imgsz')}, batch {r.train_args.get('batch')}; "
            f"val mAP50 {fmt(r.val_metrics.get('map50'))}; gate: {r.promotion.get('reason')}; AP per class: "
            + ", ".join(f"{k} {v:.2f}" for k, v in ap.items())
        )


def print_orders(runs: Runs) -> None:
    """Per order and round: the figures' mean [min-max] over seeds; then thresholds and areas."""
    n_seeds = max((len(s) for s in runs.values()), default=0)
    print(f"\nper order and round, mean [min-max] over {n_seeds} seed(s):")
    head = (
        f"{'order':>9} {'annots':>6} {'mAP50':>21} {'edits/img':>18} {'boxes/img':>9} {'versions':>15} "
        f"{'ann->served s':>15} {'skips':>11}"
    )
    print(head)
    print("-" * len(head))
    for o, seeds in runs.items():
        for row in per_round(seeds):
            print(
                f"{o:>9} {row['annotations']:>6} {fmt_spread(row['map50']):>21} "
                f"{fmt_spread(row['edits_per_image'], '.2f'):>18} {fmt(row['boxes_per_image']['mean'], '.2f'):>9} "
                f"{fmt_spread(row['versions'], '.1f'):>15} {fmt_spread(row['to_served_s'], '.0f'):>15} "
                f"{fmt_spread(row['skips'], '.0f'):>11}"
                + (f"  ({row['rejected']} rejected)" if row["rejected"] else "")
            )
    print("\nannotations to reach held-out mAP50 (linear between rounds), and area under the mAP50 curve:")
    for o, seeds in runs.items():
        s = order_summary(seeds)
        last = max((p["last"] or 0) for p in s["per_seed"].values()) if s["per_seed"] else 0
        for th in REACH_AT:
            per = ", ".join(f"seed {seed}: {within(p['reach'][str(th)], last)}" for seed, p in s["per_seed"].items())
            mc = s["mean_curve_reach"][str(th)]
            sp = s["reach"][str(th)]
            seeds_text = fmt_spread(sp, ".1f", "not reached") if sp["n"] else "none reached"
            print(f"  {o:>9} to {th}: mean curve {within(mc, last)}; seeds {seeds_text}; {per}")
        per = ", ".join(f"seed {seed}: {fmt(p['auc'])}" for seed, p in s["per_seed"].items())
        print(f"  {o:>9} area (mAP50 x annotations / range): {fmt_spread(s['auc'])}; {per}")
    for rr in (reach_ratio(runs, th) for th in REACH_AT):
        mc = rr.get("mean_curves")
        if mc is None:
            continue
        per = ", ".join(
            f"seed {seed}: "
            + (f"{'' if p['bound'] == '=' else p['bound']}{fmt(p['ratio'], '.2f')}x" if p["ratio"] else "-")
            for seed, p in rr["per_seed"].items()
        )
        b = "" if mc["bound"] == "=" else mc["bound"]
        text = f"{b}{fmt(mc['ratio'], '.2f')}x" if mc["ratio"] is not None else "neither order reached it"
        print(f"  random / labelloop to {rr['threshold']}: mean curves {text}; {per}")


def within(v: float | None, last: int) -> str:
    """An interpolated annotation count, or "not within <last round>"."""
    return fmt(v, ".1f") if v is not None else f"not within {last}"


def print_targets(result: list[dict[str, Any]]) -> None:
    print("\ntargets:")
    for t in result:
        status = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        print(f"  [{status:>12}] {t['target']}: {t['figures']}")


def plot(runs: Runs, path: Path, peers_rounds: list[Round] | None = None) -> None:
    """Mean mAP50 curve per order with its min-max band over seeds (and the peers of one seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs_all: set[float] = set()
    for o, seeds in runs.items():
        rows = [row for row in per_round(seeds) if row["map50"]["mean"] is not None]
        if not rows:
            continue
        xs = [row["annotations"] for row in rows]
        xs_all.update(xs)
        ax.plot(
            xs, [row["map50"]["mean"] for row in rows], marker="o", label=f"labelloop, {o} order ({len(seeds)} seeds)"
        )
        if len(seeds) > 1:
            ax.fill_between(xs, [row["map50"]["min"] for row in rows], [row["map50"]["max"] for row in rows], alpha=0.2)
    for name, label in (("a", "(a) ultralytics defaults"), ("b", "(b) ultralytics small-data settings")):
        pts = [(r.annotations, peer_map(r, name)) for r in peers_rounds or []]
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker=".",
                linestyle="--",
                label=f"{label}, seed {(peers_rounds or [Round(0)])[0].seed}",
            )
    for th in REACH_AT:
        ax.axhline(th, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("annotations")
    ax.set_ylabel("held-out mAP50 (stored predictions)")
    ax.set_ylim(0, 1)
    if xs_all:
        ax.set_xticks(sorted(xs_all))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("bench.learning: mean over seeds, band min-max")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Reading runs back


def body(config: dict[str, Any], runs: Runs) -> dict[str, Any]:
    """What a run's JSON holds: its config, its rounds per seed and order, their figures (``load``
    reads it back)."""
    return {
        "config": config,
        "seeds": {str(s): {o: [asdict(r) for r in runs[o].get(s, [])] for o in runs} for s in config["seeds"]},
        "aggregate": aggregate(runs),
        "targets": targets(runs),
    }


def load(path: Path) -> tuple[dict[str, Any], Runs]:
    """A ``bench.learning`` JSON (``--out``'s learning.json) as its config and its runs."""
    written = json.loads(Path(path).read_text())
    runs: Runs = {}
    for seed, orders in written["seeds"].items():
        for order, rounds in orders.items():
            if rounds:
                runs.setdefault(order, {})[int(seed)] = [Round(**r) for r in rounds]
    return written["config"], runs


def combine(paths: list[Path]) -> tuple[dict[str, Any], Runs]:
    """Several runs as one: each order from one run only; all of the same seeds, rounds, pool and
    held-out tasks (the same generated projects), else ``ValueError`` naming what differs."""
    config: dict[str, Any] = {}
    runs: Runs = {}
    for path in paths:
        cfg, more = load(path)
        if config:
            for key in ("seeds", "rounds", "pool", "held_out"):
                if cfg[key] != config[key]:
                    raise ValueError(f"{path}: {key} {cfg[key]} differs from {paths[0]}'s {config[key]}")
        else:
            config = dict(cfg)
        for order, seeds in more.items():
            if order in runs:
                raise ValueError(f"{path}: the {order} order is already in an earlier run")
            runs[order] = seeds
    config["orders"] = list(runs)
    config["combined_from"] = [str(p) for p in paths]
    return config, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bench.learning runs of the same seeds read together")
    parser.add_argument("runs", nargs="+", type=Path, help="learning.json files, one order each")
    parser.add_argument("--out", type=Path, default=None, help="write the combined figures as JSON here")
    args = parser.parse_args(argv)
    try:
        config, runs = combine(args.runs)
    except (ValueError, KeyError) as exc:
        print(f"cannot combine: {exc}", file=sys.stderr)
        return 2
    print_orders(runs)
    print_targets(targets(runs))
    if args.out:
        args.out.write_text(json.dumps(body(config, runs), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
