"""Does the search beat random architectures of the same cost, and does the supernet rank architectures? One command:

    python benchmarks/nas_proxy.py                          # everything: calibration, ranking, search vs random
    python benchmarks/nas_proxy.py --quick                  # a short cut of the same (smoke run, minutes)
    python benchmarks/nas_proxy.py throughput               # supernet vs stand-alone training step, img/s
    python benchmarks/nas_proxy.py throughput --device cuda --space conv_small --image-size 224 --batch-size 128

The proxy (docs/nas.md): `mnv4.synthetic_shapes` (12 classes of shapes with clutter, occlusion and textures, 48 px,
20,000 training and 5,000 validation images, seed 0), the `tiny` space, the roofline cost at `pixel6-cpu`, 48 px.
Every stand-alone model trains with one recipe (`mnv4.train`, RECIPE below) and is scored on the 5,000 validation
images (one image = 0.02 points). What runs, two processes of one torch thread at a time:

1. Random architectures: 12 spread over the cost range of uniformly random architectures (1st to 99th percentile)
   and 8 within +-5% of each of two targets T0 (20th and 80th percentiles of the random costs), drawn from seeded
   pools before any search runs, each trained stand-alone (seed 0). They calibrate the proxy (does architecture
   matter: spread at matched cost, cheapest vs most expensive) and serve both comparisons below.
2. Ranking fidelity: a supernet of the whole space trained like the search's (`mnv4 search --stage joint`, the same
   epochs, warm-ups) but with its controller never learning (uniform sampling: the standard diagnostic, Yu et al.
   2020), scores every random architecture with its inherited weights and BN statistics recalibrated for its path,
   on the 2,000 images the search holds out of train/. Kendall tau against stand-alone top-1 over the cost range and
   within each +-5% band, with bootstrap 90% intervals; also for the search's own per-step signal (one held-out batch
   of 4 x the training batch with that batch's BN statistics).
3. Search vs random: `mnv4 search` at each target (the default two stages, coarse then fine, each supernet trained
   half as long as one stand-alone training, so that the whole search trains as long as one stand-alone model:
   TuNAS's budget; TuNAS's schedule: warm-ups and RL delay of 25%, RL batch 4 x the training batch); the found
   architecture trained stand-alone with seeds 0 and 1; found - random median with a bootstrap 90% interval, and the
   found model's percentile among the random ones.

Stand-alone results are cached in --work keyed by (architecture, recipe, seed, data fingerprint); the ranking
supernet and the searches by their settings and the source of mnv4.nas. Writes --json (every architecture, its cost
and accuracies) and two figures to --figures. Wall time on a shared machine measures the neighbours; the report
gives each job's CPU time too.

throughput: one training step (forward, loss, backward, AdamW) of the supernet running its largest path vs the same
architecture as a stand-alone MobileNetV4, interleaved rounds, median img/s; plus the supernet on random paths (what
a search runs). On CUDA add --precision bf16 to measure under autocast.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
RP = "pixel6-cpu"
SIZE = 48
# The stand-alone recipe of every architecture (random and found): mnv4.train's AdamW + warm-up + cosine.
RECIPE = dict(image_size=SIZE, global_batch=128, lr=4e-3, warmup_epochs=0.5, weight_decay=0.05, label_smoothing=0.1,
              val_crop_pct=1.0, crop_scale_min=0.5, hflip=True, grad_clip=1.0)
# The search: the stand-alone recipe's optimiser and augmentation; TuNAS's schedule (mnv4.nas.config defaults:
# warm-ups and RL delay 25%, RL batch 4x, baseline momentum 0.95, abs reward). beta: the calibration's accuracy gain
# per unit of cost ratio (~0.3 top-1 per 1x cost) must not pay for missing the target, so |beta| > 0.3.
SEARCH = dict(space="tiny", ridge_point=RP, resolution=SIZE, image_size=SIZE, global_batch=128, lr=4e-3,
              weight_decay=0.05, label_smoothing=0.1, crop_scale_min=0.5, crop_pct=1.0, hflip=True, grad_clip=1.0,
              beta=-0.5, rl_lr=0.05, workers=0, threads=1, progress=False, plot=False, log_every=50)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to run: the full proxy or the --quick cut."""

    train_images: int = 20_000
    val_images: int = 5_000
    epochs: float = 6.0
    range_count: int = 12
    band_count: int = 8
    found_seeds: int = 2
    quantiles: tuple[float, float] = (0.2, 0.8)
    tolerance: float = 0.05


QUICK = Plan(train_images=2_400, val_images=1_200, epochs=2.0, range_count=6, band_count=4, found_seeds=2)


# ----------------------------------------------------------------------------------------------- jobs (subprocesses)
def _job_setup(log_path: Path) -> None:
    torch.set_num_threads(1)
    logging.basicConfig(filename=str(log_path), level=logging.INFO, force=True,
                        format="%(asctime)s %(name)s %(message)s")


def train_job(spec_dict: dict, data: str, out: str, epochs: float, seed: int) -> dict:
    """Stand-alone top-1 of one architecture with RECIPE; the training folder is removed afterwards."""
    from mnv4.specs import save_spec, spec_from_dict
    from mnv4.train import TrainConfig, train

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    _job_setup(out_dir / "train.log")
    spec_path = save_spec(spec_from_dict(spec_dict), out_dir / "arch.json")
    t0, c0 = time.time(), time.process_time()
    cfg = TrainConfig(model=str(spec_path), data=data, out=str(out_dir / "run"), epochs=epochs, seed=seed, workers=0,
                      resume="auto",  # a training killed with the benchmark continues exactly where it stopped
                      threads=1, progress=False, tensorboard=False, **RECIPE)
    result = train(cfg)
    history = [{k: row[k] for k in ("epoch", "train_loss", "val_top1", "val_loss")} for row in result.history]
    shutil.rmtree(out_dir / "run", ignore_errors=True)
    return {"top1": float(result.final["val_top1"]), "history": history, "wall_s": time.time() - t0,
            "cpu_s": time.process_time() - c0}


def search_job(cfg_dict: dict) -> dict:
    """One `mnv4 search`; returns the found spec, its cost and the search's history summary."""
    from mnv4.nas import SearchConfig, search
    from mnv4.specs import spec_to_dict

    out = Path(cfg_dict["out"])
    out.mkdir(parents=True, exist_ok=True)
    _job_setup(out / "search.log")
    t0, c0 = time.time(), time.process_time()
    result = search(SearchConfig(**cfg_dict))
    history = result.history
    last = history[-max(1, len(history) // 10):]  # the last 10% of steps
    return {"spec": spec_to_dict(result.spec), "cost": result.cost, "target": result.target,
            "stages": [s.to_dict() for s in result.stages], "wall_s": time.time() - t0,
            "cpu_s": time.process_time() - c0, "steps": len(history),
            "final_quality": statistics.fmean(r["quality"] for r in last),
            "final_entropy": statistics.fmean(r["entropy"] for r in last)}


# ----------------------------------------------------------------------------------------------- caching
def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def nas_source_digest() -> str:
    """The search's code: a cached search or supernet is stale when any of mnv4/nas/*.py changed."""
    files = sorted((REPO / "src" / "mnv4" / "nas").glob("*.py"))
    return _digest(*(f.read_text() for f in files))


class Cache:
    """One JSON file per result under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        path = self.root / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, value: dict) -> None:
        tmp = self.root / f"{key}.json.tmp"
        tmp.write_text(json.dumps(value, indent=1) + "\n")
        tmp.replace(self.root / f"{key}.json")


# ----------------------------------------------------------------------------------------------- architectures
def architecture_sets(space, cost, plan: Plan, pool_size: int = 20_000, seed: int = 0) -> dict:
    """The random architectures, decided before any search: a seeded pool of uniformly random architectures, the
    two targets (quantiles of its costs), ``range_count`` spread evenly in cost from the pool's 1st to 99th
    percentile, and ``band_count`` within +-tolerance of each target (the pool's first ones there)."""
    generator = torch.Generator().manual_seed(seed)
    pool, seen = [], set()
    while len(pool) < pool_size:
        arch = space.random(generator)
        if arch not in seen:
            seen.add(arch)
            pool.append((cost(space.decode(arch), SIZE), arch))
    costs = sorted(c for c, _ in pool)

    def quantile(q: float) -> float:
        return costs[round(q * (len(costs) - 1))]

    targets = [quantile(q) for q in plan.quantiles]
    chosen: set = set()
    low, high = quantile(0.01), quantile(0.99)
    spread = []
    for i in range(plan.range_count):
        goal = low + (high - low) * i / (plan.range_count - 1)
        c, arch = min((p for p in pool if p[1] not in chosen), key=lambda p: abs(p[0] - goal))
        chosen.add(arch)
        spread.append({"arch": arch, "cost": c, "group": "range"})
    bands = []
    for t, target in enumerate(targets):
        band = [p for p in pool if abs(p[0] / target - 1) <= plan.tolerance and p[1] not in chosen][: plan.band_count]
        chosen.update(a for _, a in band)
        bands.append([{"arch": a, "cost": c, "group": f"band{t}"} for c, a in band])
    return {"targets": targets, "range": spread, "bands": bands, "pool_costs": costs}


# ----------------------------------------------------------------------------------------------- the proxy
class Proxy:
    def __init__(self, args, plan: Plan):
        from mnv4.nas import SPACES
        from mnv4.nas.cost import roofline_cost

        self.args, self.plan = args, plan
        self.work = Path(args.work)
        self.space, self.cost = SPACES["tiny"], roofline_cost(RP)
        self.cache = Cache(self.work / "cache")
        # one session per worker: under the kernel's autogroup scheduling each session shares the CPU as one unit,
        # so two workers in this process's session would share one process's slice on a busy machine
        self.pool = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=os.setsid)
        self.jobs: list[dict] = []  # every job's timing, for the report
        self.t0 = time.time()

    def log(self, message: str) -> None:
        print(f"[{(time.time() - self.t0) / 60:6.1f} min] {message}", flush=True)

    # -- data
    def data(self):
        from mnv4.synthetic import synthetic_shapes

        t0, c0 = time.time(), time.process_time()
        shapes = synthetic_shapes(self.work / f"shapes{SIZE}_{self.plan.train_images}", train=self.plan.train_images,
                                  val=self.plan.val_images, size=SIZE, seed=0)
        self.log(f"data: {shapes.root} ({shapes.fingerprint}), {time.time() - t0:.0f} s wall, "
                 f"{time.process_time() - c0:.0f} s CPU")
        return shapes

    # -- stand-alone trainings
    def train(self, arch, seed: int, label: str) -> Future | dict:
        from mnv4.specs import spec_to_dict

        spec = dataclasses.replace(self.space.decode(arch, resolution=SIZE), name=label)
        key = _digest("train", spec_to_dict(dataclasses.replace(spec, name="")), RECIPE, self.plan.epochs, seed,
                      self.shapes.fingerprint)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        future = self.pool.submit(train_job, spec_to_dict(spec), str(self.shapes.root),
                                  str(self.work / "runs" / f"{label}_s{seed}"), self.plan.epochs, seed)
        future.add_done_callback(lambda f: self.cache.put(key, f.result()) if f.exception() is None else None)
        return future

    def search_config(self, name: str, target: float, **changes) -> dict:
        """``mnv4 search``'s settings: the supernet trains for one stand-alone training in all (TuNAS's budget), so
        each of the default search's two stages gets half of it; the one-stage ranking supernet all of it."""
        stages = 2 if changes.get("stage", "both") == "both" else 1  # 'both' = coarse, then fine
        values = dict(SEARCH, data=str(self.shapes.root), out=str(self.work / "runs" / name), name=name,
                      target=target, epochs=self.plan.epochs / stages, seed=0)
        values.update(self.args.search_set)
        values.update(changes)
        return values

    def search(self, cfg: dict) -> Future | dict:
        key = _digest("search", {k: v for k, v in cfg.items() if k not in ("out", "data")}, self.shapes.fingerprint,
                      nas_source_digest())
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        shutil.rmtree(cfg["out"], ignore_errors=True)  # a new search, not a resume of an older one
        future = self.pool.submit(search_job, cfg)
        future.add_done_callback(lambda f: self.cache.put(key, f.result()) if f.exception() is None else None)
        return future

    def run(self) -> dict:
        from mnv4.specs import spec_from_dict

        plan, space = self.plan, self.space
        self.shapes = self.data()
        sets = architecture_sets(space, self.cost, plan)
        targets = sets["targets"]
        self.log("targets T0: " + ", ".join(f"{t / 1e6:.3f} M" for t in targets) + " effective MACs")
        randoms = sets["range"] + [entry for band in sets["bands"] for entry in band]
        for i, entry in enumerate(randoms):
            entry["label"] = f"random{i:02d}_{entry['group']}"

        if self.args.calibration_only:  # the random architectures alone: does architecture matter on this proxy?
            trained = {e["label"]: self.train(e["arch"], 0, e["label"]) for e in randoms}
            for entry in randoms:
                entry.update(_wait(trained[entry["label"]]))
                self.jobs.append({"job": entry["label"], "wall_s": entry["wall_s"], "cpu_s": entry["cpu_s"]})
            self.pool.shutdown()
            return self.report(sets, randoms, {})

        # 1. searches first (the longest jobs), then the ranking supernet, then the random trainings
        searches = {t: self.search(self.search_config(f"search_t{t}", target)) for t, target in enumerate(targets)}
        ranking_cfg = self.search_config("ranking_supernet", targets[0], stage="joint", rl_delay_fraction=1.0)
        ranking = self.search(ranking_cfg)
        trained = {e["label"]: self.train(e["arch"], 0, e["label"]) for e in randoms}

        # 2. as each search ends: train what it found with every seed
        found = {}
        for t, job in searches.items():
            result = _wait(job)
            self.jobs.append({"job": f"search_t{t}", "wall_s": result["wall_s"], "cpu_s": result["cpu_s"]})
            arch = space.encode(spec_from_dict(result["spec"]))
            self.log(f"search t{t}: found {space.describe(arch)}, cost {result['cost'] / targets[t]:.3f} T0 "
                     f"({result['cpu_s']:.0f} s CPU)")
            found[t] = {"search": result, "arch": arch,
                        "runs": [self.train(arch, seed, f"found_t{t}") for seed in range(plan.found_seeds)]}

        for entry in randoms:
            entry.update(_wait(trained[entry["label"]]))
            self.jobs.append({"job": entry["label"], "wall_s": entry["wall_s"], "cpu_s": entry["cpu_s"]})
        self.log("random architectures trained: " + ", ".join(f"{e['top1']:.1f}" for e in randoms))
        for t, f in found.items():
            f["runs"] = [_wait(r) for r in f["runs"]]
            self.jobs.extend({"job": f"found_t{t}_s{s}", "wall_s": r["wall_s"], "cpu_s": r["cpu_s"]}
                             for s, r in enumerate(f["runs"]))
        ranking = _wait(ranking)
        self.jobs.append({"job": "ranking_supernet", "wall_s": ranking["wall_s"], "cpu_s": ranking["cpu_s"]})
        self.pool.shutdown()

        # 3. score every random architecture with the ranking supernet (this process)
        c0 = time.process_time()
        scores = score_paths(ranking_cfg, [e["arch"] for e in randoms] + [f["arch"] for f in found.values()],
                             len(self.shapes.settings()["classes"]))
        self.jobs.append({"job": "ranking_scores", "wall_s": None, "cpu_s": time.process_time() - c0})
        for entry, score in zip(randoms, scores, strict=False):
            entry["supernet"] = score
        for f, score in zip(found.values(), scores[len(randoms):], strict=True):
            f["supernet"] = score
        return self.report(sets, randoms, found)

    # -- the report
    def report(self, sets: dict, randoms: list[dict], found: dict) -> dict:
        from mnv4.nas.ranking import bootstrap_interval, found_minus_median, kendall_tau, percentile_of

        space, plan, targets = self.space, self.plan, sets["targets"]
        cost_cut = [e["cost"] for e in sets["range"]]
        report = {
            "proxy": {"data": self.shapes.settings(), "fingerprint": self.shapes.fingerprint, "space": "tiny",
                      "cost": f"roofline at {RP}, {SIZE} px, effective MACs", "recipe": RECIPE,
                      "epochs": plan.epochs, "plan": dataclasses.asdict(plan), "search": SEARCH,
                      "search_set": self.args.search_set, "targets": targets,
                      "random_cost_percentiles": {q: sets["pool_costs"][round(q / 100 * (len(sets["pool_costs"]) - 1))]
                                                  for q in (1, 20, 50, 80, 99)}},
            "random": [], "targets": [], "ranking": {}, "jobs": self.jobs,
        }
        for e in randoms:
            report["random"].append({"label": e["label"], "group": e["group"], "arch": list(e["arch"]),
                                     "describe": space.describe(e["arch"]), "cost": e["cost"], "top1": e["top1"],
                                     "history": e["history"], "cpu_s": e["cpu_s"], "supernet": e.get("supernet")})

        # calibration: does architecture matter on this proxy?
        by_cost = sorted(report["random"], key=lambda r: r["cost"])
        calibration = {"cheapest_top1": by_cost[0]["top1"], "most_expensive_top1": by_cost[-1]["top1"],
                       "cheapest_to_most_expensive": by_cost[-1]["top1"] - by_cost[0]["top1"],
                       "range_cost_span": [min(cost_cut), max(cost_cut)]}
        calibration["band_spreads"] = []
        for t in range(len(targets)):
            band = [r["top1"] for r in report["random"] if r["group"] == f"band{t}"]
            calibration["band_spreads"].append(max(band) - min(band))
        seed_gaps = [abs(f["runs"][0]["top1"] - f["runs"][1]["top1"]) for f in found.values() if len(f["runs"]) > 1]
        calibration["seed_gap_mean"] = statistics.fmean(seed_gaps) if seed_gaps else None
        report["calibration"] = calibration
        if not found:
            return self.finish(report)

        # ranking fidelity
        def tau_block(rows: list[dict], key: str) -> dict:
            x = [r["supernet"][key] for r in rows]
            y = [r["top1"] for r in rows]
            low, high = bootstrap_interval(kendall_tau, x, y)
            return {"tau": kendall_tau(x, y), "interval90": [low, high], "n": len(rows)}

        for key in ("top1", "search_signal_top1", "loss_neg"):
            block = {"all": tau_block(report["random"], key)}
            for t in range(len(targets)):
                block[f"band{t}"] = tau_block([r for r in report["random"] if r["group"] == f"band{t}"], key)
            report["ranking"][key] = block

        # search vs random
        for t, target in enumerate(targets):
            f = found[t]
            band = [r["top1"] for r in report["random"] if r["group"] == f"band{t}"]
            seeds = [r["top1"] for r in f["runs"]]
            low, high = bootstrap_interval(found_minus_median, seeds, band, paired=False)
            report["targets"].append({
                "target": target, "quantile": plan.quantiles[t],
                "found": {"arch": list(f["arch"]), "describe": space.describe(f["arch"]), "cost": f["search"]["cost"],
                          "cost_over_target": f["search"]["cost"] / target, "top1_seeds": seeds,
                          "top1_mean": statistics.fmean(seeds), "supernet": f["supernet"],
                          "search": {k: v for k, v in f["search"].items() if k != "spec"}},
                "random_top1": band, "random_median": statistics.median(band),
                "found_minus_median": found_minus_median(seeds, band), "interval90": [low, high],
                "percentile": percentile_of(statistics.fmean(seeds), band),
                "random_within_5pct_of_found": sum(abs(r["cost"] / f["search"]["cost"] - 1) <= plan.tolerance
                                                   for r in report["random"] if r["group"] == f"band{t}"),
            })
        return self.finish(report)

    def finish(self, report: dict) -> dict:
        report["wall_s"] = time.time() - self.t0
        report["cpu_s"] = sum(j["cpu_s"] for j in self.jobs if j["cpu_s"] is not None)
        return report


def _wait(job: Future | dict) -> dict:
    return job.result() if isinstance(job, Future) else job


def score_paths(cfg_dict: dict, archs: list, num_classes: int, calibration_batches: int = 8) -> list[dict]:
    """The ranking supernet's held-out accuracy of each architecture: inherited weights, BN recalibrated on
    ``calibration_batches`` training batches (``path_accuracy``), on the whole held-out part; and the search's own
    per-step signal (one quality batch, that batch's BN statistics, as the search scores a sampled path)."""
    from mnv4.nas import SearchConfig, get_space
    from mnv4.nas.batches import SupernetData
    from mnv4.nas.ranking import accuracy, path_accuracy, supernet_from_search
    from mnv4.nas.supernet import frozen_bn_statistics

    torch.set_num_threads(2)
    cfg = SearchConfig(**cfg_dict)
    space = get_space(cfg.space)
    supernet = supernet_from_search(cfg.out, num_classes, space)
    data = SupernetData(cfg.data, cfg, cfg.image_size, 1, 0)
    calibration = [images for images, _, _ in data.train_batches(0, calibration_batches)]
    held_out = list(data.held_out_batches(500))
    quality = next(data.quality_batches(0, 1))
    out = []
    for arch in archs:
        honest = path_accuracy(supernet, arch, calibration, held_out)
        supernet.train()
        with frozen_bn_statistics(supernet), torch.no_grad():
            signal = accuracy(lambda x, a=arch: supernet(x, space.path(a)), [quality])
        out.append({"top1": honest["top1"], "loss": honest["loss"], "loss_neg": -honest["loss"],
                    "search_signal_top1": signal["top1"], "images": honest["images"]})
    return out


# ----------------------------------------------------------------------------------------------- figures and text
def figures(report: dict, folder: Path) -> list[Path]:
    from mnv4.plots import _pyplot

    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    colours = ["tab:blue", "tab:orange", "tab:green"]
    paths = []

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    rows = report["random"]
    rng = [r for r in rows if r["group"] == "range"]
    ax.scatter([r["cost"] / 1e6 for r in rng], [r["top1"] for r in rng], c="0.5", s=22, label="random (cost range)")
    for t, entry in enumerate(report["targets"]):
        band = [r for r in rows if r["group"] == f"band{t}"]
        c = colours[t % len(colours)]
        ax.scatter([r["cost"] / 1e6 for r in band], [r["top1"] for r in band], color=c, s=22, alpha=0.7,
                   label=f"random within 5% of T{t}")
        ax.axvline(entry["target"] / 1e6, color=c, lw=0.8, ls=":")
        found = entry["found"]
        ax.scatter([found["cost"] / 1e6] * len(found["top1_seeds"]), found["top1_seeds"], color=c, marker="*", s=160,
                   edgecolor="k", linewidth=0.6, label=f"found at T{t} ({len(found['top1_seeds'])} seeds)", zorder=3)
    ax.set_xlabel("cost: roofline effective MACs at pixel6-cpu, 48 px (M)")
    ax.set_ylabel(f"stand-alone top-1 on {report['proxy']['data']['val']:,} validation images (%)")
    ax.set_title("Random architectures of the tiny space vs the search's, one recipe")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(folder / "nas_proxy_search_vs_random.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 5), dpi=120)
    tau = report["ranking"]["top1"]
    for group, c, label in [("range", "0.5", "cost range")] + [(f"band{t}", colours[t % len(colours)],
                                                               f"within 5% of T{t}")
                                                              for t in range(len(report["targets"]))]:
        sel = [r for r in rows if r["group"] == group]
        ax.scatter([r["supernet"]["top1"] for r in sel], [r["top1"] for r in sel], color=c, s=24, label=label)
    for t, entry in enumerate(report["targets"]):
        found = entry["found"]
        ax.scatter([found["supernet"]["top1"]], [found["top1_mean"]], color=colours[t % len(colours)], marker="*",
                   s=160, edgecolor="k", linewidth=0.6, label=f"found at T{t}")
    a = tau["all"]
    ax.set_title(f"Kendall tau {a['tau']:.2f} (90% CI {a['interval90'][0]:.2f} to {a['interval90'][1]:.2f}, "
                 f"n={a['n']})", fontsize=10)
    ax.set_xlabel("supernet top-1, inherited weights, BN recalibrated (%)")
    ax.set_ylabel("stand-alone top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(folder / "nas_proxy_ranking.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


def print_report(report: dict) -> None:
    cal = report["calibration"]
    print("\nCalibration (random architectures, stand-alone top-1 %):")
    print(f"  cheapest {cal['cheapest_top1']:.2f} -> most expensive {cal['most_expensive_top1']:.2f}: "
          f"{cal['cheapest_to_most_expensive']:+.2f} points")
    for t, spread in enumerate(cal["band_spreads"]):
        print(f"  spread within 5% of T{t}: {spread:.2f} points")
    if cal["seed_gap_mean"] is not None:
        print(f"  found architectures, |seed 0 - seed 1|: mean {cal['seed_gap_mean']:.2f} points")
    for r in sorted(report["random"], key=lambda r: r["cost"]):
        print(f"    {r['label']:18s} {r['cost'] / 1e6:7.3f} M  {r['top1']:6.2f} %  ({r['cpu_s']:.0f} s CPU)  "
              f"{r['describe']}")
    if not report["targets"]:
        print(f"\nwall {report['wall_s'] / 60:.1f} min, CPU {report['cpu_s'] / 60:.1f} min (sum over jobs)")
        return
    print("\nRanking fidelity (Kendall tau vs stand-alone top-1, bootstrap 90% interval):")
    for key, name in (("top1", "supernet top-1, BN recalibrated, 2k held out"),
                      ("loss_neg", "supernet -loss, BN recalibrated"),
                      ("search_signal_top1", "search's per-step signal (one quality batch)")):
        parts = [f"{g} {v['tau']:+.2f} [{v['interval90'][0]:+.2f}, {v['interval90'][1]:+.2f}] (n={v['n']})"
                 for g, v in report["ranking"][key].items()]
        print(f"  {name}: " + "; ".join(parts))
    print("\nSearch vs random at the same cost:")
    for t, entry in enumerate(report["targets"]):
        found = entry["found"]
        print(f"  T{t} = {entry['target'] / 1e6:.3f} M (q{entry['quantile']:.2f}): found {found['describe']}")
        seeds = ", ".join(f"{v:.2f}" for v in found["top1_seeds"])
        print(f"     cost {found['cost_over_target']:.3f} T0, top-1 {seeds}"
              f"; random {', '.join(f'{v:.2f}' for v in sorted(entry['random_top1']))} (median "
              f"{entry['random_median']:.2f})")
        print(f"     found - median {entry['found_minus_median']:+.2f} [{entry['interval90'][0]:+.2f}, "
              f"{entry['interval90'][1]:+.2f}], percentile {entry['percentile']:.0f}")
    print(f"\nwall {report['wall_s'] / 60:.1f} min, CPU {report['cpu_s'] / 60:.1f} min (sum over jobs)")


# ----------------------------------------------------------------------------------------------- throughput
def run_throughput(args) -> dict:
    from mnv4.model import MobileNetV4
    from mnv4.nas import SPACES, SuperNet

    device = torch.device(args.device)
    space = SPACES[args.space]
    largest = space.largest()
    torch.manual_seed(0)
    supernet = SuperNet(space, num_classes=1000).to(device).train()
    standalone = MobileNetV4(space.decode(largest), num_classes=1000).to(device).train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    generator = torch.Generator().manual_seed(0)

    def stepper(model, forward):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(forward().float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    largest_path = space.path(largest)
    contenders = {
        "stand-alone (largest)": stepper(standalone, lambda: standalone(images)),
        "supernet (largest path)": stepper(supernet, lambda: supernet(images, largest_path)),
        "supernet (random paths)": stepper(supernet, lambda: supernet(images, space.path(space.random(generator)))),
    }

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in contenders.values():
        for _ in range(args.warmup):
            step()
    sync()
    # Wall-clock img/s, and on a CPU also img per CPU-second of this process (all its threads): on a shared machine
    # the wall clock mostly measures the neighbours, the CPU time what each contender costs.
    rates = {k: [] for k in contenders}
    cpu_rates = {k: [] for k in contenders}
    for _ in range(args.rounds):  # interleaved: every contender sees the same machine state
        for name, step in contenders.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            sync()
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - t0))
            cpu_rates[name].append(args.steps * args.batch_size / max(time.process_time() - c0, 1e-9))
    ref = statistics.median(rates["stand-alone (largest)"])
    cpu_ref = statistics.median(cpu_rates["stand-alone (largest)"])
    rows = []
    print(f"\n{args.space} at {args.image_size} px, batch {args.batch_size}, {args.precision}, {device} "
          f"({torch.get_num_threads()} threads); median of {args.rounds} interleaved rounds of {args.steps} steps")
    for name, values in rates.items():
        med, cpu_med = statistics.median(values), statistics.median(cpu_rates[name])
        rows.append({"contender": name, "img_per_s": med, "min": min(values), "max": max(values),
                     "ratio_to_standalone": med / ref, "img_per_cpu_s": cpu_med,
                     "cpu_ratio_to_standalone": cpu_med / cpu_ref})
        line = f"  {name:26s} {med:9.1f} img/s (range {min(values):.1f}-{max(values):.1f}) {med / ref:5.2f}x"
        if device.type == "cpu":
            line += f" | {cpu_med:9.1f} img/CPU-s {cpu_med / cpu_ref:5.2f}x"
        print(line)
    return {"device": str(device), "space": args.space, "image_size": args.image_size, "batch_size": args.batch_size,
            "precision": args.precision, "rows": rows}


# ----------------------------------------------------------------------------------------------- command line
def _search_set(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["throughput"]:
        t = argparse.ArgumentParser(prog="nas_proxy.py throughput", description="supernet vs stand-alone step")
        t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        t.add_argument("--space", default="tiny")
        t.add_argument("--image-size", type=int, default=32)
        t.add_argument("--batch-size", type=int, default=64)
        t.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
        t.add_argument("--threads", type=int, default=None)
        t.add_argument("--warmup", type=int, default=3)
        t.add_argument("--steps", type=int, default=5)
        t.add_argument("--rounds", type=int, default=5)
        t.add_argument("--json", type=Path, default=None)
        args = t.parse_args(argv[1:])
        if args.threads:
            torch.set_num_threads(args.threads)
        report = run_throughput(args)
    else:
        p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--work", default=str(REPO / "runs" / "nas_proxy"),
                       help="working folder: data, caches, runs (default runs/nas_proxy)")
        p.add_argument("--quick", action="store_true", help="a short cut: 2,400 images, 2 epochs, 6 + 2x4 randoms")
        p.add_argument("--epochs", type=float, default=None, help="stand-alone and supernet training length")
        p.add_argument("--calibration-only", action="store_true",
                       help="train the random architectures only and report the proxy's calibration (no search)")
        p.add_argument("--jobs", type=int, default=2, help="processes at a time (one torch thread each)")
        p.add_argument("--set", dest="search_set", type=_search_set, action="append", default=[],
                       metavar="FIELD=VALUE", help="a SearchConfig field for the searches and the ranking supernet")
        p.add_argument("--json", type=Path, default=None, help="the report (default: WORK/nas_proxy.json)")
        p.add_argument("--figures", type=Path, default=None, help="folder for the two PNGs (default: WORK)")
        args = p.parse_args(argv)
        args.search_set = dict(args.search_set)
        plan = QUICK if args.quick else Plan()
        if args.epochs:
            plan = dataclasses.replace(plan, epochs=args.epochs)
        report = Proxy(args, plan).run()
        print_report(report)
        args.json = args.json or Path(args.work) / "nas_proxy.json"
        if report["targets"]:
            for path in figures(report, args.figures or Path(args.work)):
                print(f"wrote {path}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
