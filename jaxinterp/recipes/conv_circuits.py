"""Circuits in a small conv net: edge and curve units, their visualisations and weights.

The vision half of the circuits thread (Olah et al., "Zoom In", 2020; "Curve Detectors",
2020) on a net small enough to train in minutes on a CPU:

1. train the :class:`~jaxinterp.models.conv.ConvNet` on rendered lines, edges, curves
   and shapes (:func:`jaxinterp.data.images.shapes_dataset`), or sklearn's digits;
2. measure tuning curves: every block-0 channel against line and edge orientation,
   every block-1 and block-2 channel against curve orientation x curvature; call
   *edge units* the block-0 channels with the highest orientation selectivity and *curve
   units* the block-1 channels with the highest (selectivity x curve index), so the
   labels come from measurements;
3. visualise every block-0 and block-1 channel by optimisation (one vmapped program per
   block), find each unit's top dataset examples, and compare their activations;
4. read the weights from the edge units into the curve units (the circuit).

Writes ``runs/<name>/``: ``config.json``, ``results.json``, ``report.md`` (tables),
``tuning.png``, ``units.png``, ``block0_vis.png``, ``circuit.png``, ``diversity.png``,
and the model (``model/``)::

    jaxinterp experiment conv_circuits            # a few minutes on 2 CPU cores
    jaxinterp experiment conv_circuits --fast     # about a minute
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.features import (
    Transforms,
    channel_weights,
    curvature_tuning,
    curve_index,
    dataset_examples,
    neuron,
    orientation_tuning,
    selectivity,
    strongest_inputs,
    visualize,
)
from jaxinterp.models.conv import ConvConfig, classifier_loss
from jaxinterp.recipes import flag, is_fast
from jaxinterp.recipes.conv_net import image_data, load_conv, save_conv, train_conv


@dataclasses.dataclass(frozen=True)
class ConvCircuitsConfig:
    name: str = flag("conv_circuits", "run folder under runs_dir")
    runs_dir: str = flag("runs", "parent folder of runs")
    seed: int = flag(0, "seed for data, initialisation and visualisation")
    fast: bool = flag(False, "reduced sizes for CI (also JAXINTERP_FAST=1)")
    dataset: str = flag("shapes", "training images: shapes (rendered lines/edges/curves/shapes) or digits (sklearn)")
    n_train: int = flag(0, "training images (0: 12000, fast 4000)")
    steps: int = flag(0, "training steps (0: 600, fast 200)")
    channels: str = flag("16,32,32", "channels of the three conv blocks")
    vis_steps: int = flag(0, "feature-visualisation steps (0: 256, fast 96)")
    n_units: int = flag(4, "edge units and curve units to show")
    checkpoint: str = flag("", "folder of a trained ConvNet (config.json, model.safetensors) instead of training")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def run_conv_circuits(config: ConvCircuitsConfig) -> dict:
    fast = is_fast(config)
    n_train = config.n_train or (4000 if fast else 12000)
    steps = config.steps or (200 if fast else 600)
    vis_steps = config.vis_steps or (96 if fast else 256)
    out = config.run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**dataclasses.asdict(config), "fast": fast}, indent=2))
    t_start = time.perf_counter()
    data = image_data(config.dataset, n_train, 500 if fast else 2000, size=32, seed=config.seed)
    if config.checkpoint:
        model = load_conv(config.checkpoint)
        loss, acc = jax.jit(classifier_loss)(model, jnp.asarray(data["test"]["images"]), jnp.asarray(data["test"]["labels"]))
        train_stats = {"test_accuracy": float(acc["accuracy"]), "test_loss": float(loss)}
    else:
        cfg = ConvConfig(image_size=32, channels=tuple(int(c) for c in config.channels.split(",")),
                         n_classes=len(data["classes"]))
        model, train_stats = train_conv(data, cfg, steps=steps, seed=config.seed, name="train", runs_dir=str(out))
        save_conv(out / "model", model)
    t_train = time.perf_counter() - t_start
    print(f"test accuracy {train_stats.get('test_accuracy', float('nan')):.3f}")

    # 1. tuning curves, measured -------------------------------------------------------
    t0 = time.perf_counter()
    lines = orientation_tuning(model, "blocks.0.hook_post", "line")
    edges = orientation_tuning(model, "blocks.0.hook_post", "edge")
    s_line, s_edge = selectivity(lines), selectivity(edges)
    curv = {l: curvature_tuning(model, f"blocks.{l}.hook_post") for l in (1, 2)}
    c_idx = {l: curve_index(c) for l, c in curv.items()}
    t_tuning = time.perf_counter() - t0
    k = config.n_units
    alive0 = np.maximum(s_line["peak"], s_edge["peak"]) > 0.01 * max(s_line["peak"].max(), s_edge["peak"].max())
    edge_score = np.where(alive0, np.maximum(s_edge["selectivity"], s_line["selectivity"]), -1)
    edge_units = [int(u) for u in np.argsort(-edge_score)[:k]]
    c1 = c_idx[1]
    alive1 = c1["peak"] > 0.01 * c1["peak"].max()
    strong1 = c1["peak"] > 0.25 * c1["peak"].max()  # rank only units with a real response
    curve_score = np.where(strong1, c1["selectivity"] * np.clip(c1["curve_index"], 0, None), -1)
    curve_units = [int(u) for u in np.argsort(-curve_score)[:k]]

    # 2. visualisations: every channel of blocks 0 and 1, one vmapped program per block --
    t0 = time.perf_counter()
    vis = {}
    for l in (0, 1):
        side = model.cfg.map_size(l)
        units = list(range(model.cfg.channels[l]))
        vis[l] = visualize(model, neuron(f"blocks.{l}.hook_pre", units, (side // 2, side // 2), activation="relu"),
                           steps=vis_steps, lr=0.05, transforms=Transforms(1.0, (0.95, 1.05), 5.0),
                           tv_weight=0.05, seed=config.seed)
    t_vis = time.perf_counter() - t0
    diverse = visualize(model, neuron("blocks.1.hook_pre", curve_units[:1], (model.cfg.map_size(1) // 2,) * 2,
                                      activation="relu"),
                        steps=vis_steps, n_images=4, diversity_weight=float(np.median(c1["peak"])), tv_weight=0.05,
                        transforms=Transforms(1.0, (0.95, 1.05), 5.0), seed=config.seed)

    # 3. dataset examples of the chosen units, and the comparison -----------------------
    test = data["test"]["images"]
    examples, rows = {}, []
    for l, units in ((0, edge_units), (1, curve_units)):
        side = model.cfg.map_size(l)
        examples[l] = dataset_examples(model, neuron(f"blocks.{l}.hook_pre", units, (side // 2, side // 2),
                                                     activation="relu"),
                                       test, k=4, batch_size=250)
        for i, u in enumerate(units):
            v = float(vis[l].activation.values[u, 0])
            top = float(examples[l].top[i])
            row = {"unit": f"{l}.{u}", "role": "edge" if l == 0 else "curve", "vis_activation": round(v, 3),
                   "top_example_activation": round(top, 3), "ratio": round(v / top, 2) if top > 0 else None}
            if l == 0:
                row.update(line_selectivity=round(float(s_line["selectivity"][u]), 3),
                           edge_selectivity=round(float(s_edge["selectivity"][u]), 3),
                           edge_osi=round(float(s_edge["osi"][u]), 3),
                           preferred_deg=round(float(np.degrees(s_edge["preferred"][u])), 1))
            else:
                row.update(curve_selectivity=round(float(c1["selectivity"][u]), 3),
                           curve_index=round(float(c1["curve_index"][u]), 3),
                           preferred_curvature=float(c1["curvature"][u]),
                           preferred_deg=round(float(np.degrees(c1["preferred"][u])), 1))
            rows.append(row)

    # 4. the circuit: weights from edge units (block 0) into curve units (block 1) --------
    weights = channel_weights(model, 1, src=edge_units, dst=curve_units)
    strongest = {f"1.{u}": strongest_inputs(model, 1, u, k=3).attrs["channels"] for u in curve_units}

    _plots(out, model, data, test, lines, edges, curv[1], edge_units, curve_units, vis, examples, weights, diverse)
    summary = _summary(config, fast, train_stats, s_line, s_edge, c_idx, alive0, alive1, rows, strongest,
                       diverse, {"train": t_train, "tuning": t_tuning, "visualize_blocks_0_1": t_vis,
                                 "total": time.perf_counter() - t_start})
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    _report(out, summary)
    return {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}


def _summary(config, fast, train_stats, s_line, s_edge, c_idx, alive0, alive1, rows, strongest, diverse, seconds):
    vis_vs_data = [r["ratio"] for r in rows if r["ratio"] is not None]
    sel0 = np.maximum(s_line["selectivity"], s_edge["selectivity"])[alive0]
    c1 = c_idx[1]
    return {
        "dataset": config.dataset, "fast": fast, **train_stats,
        "block0_median_orientation_selectivity": round(float(np.median(sel0)), 3),
        "block0_best_orientation_selectivity": round(float(sel0.max()), 3),
        "block0_units_selectivity_over_0.5": int((sel0 > 0.5).sum()), "block0_alive_units": int(alive0.sum()),
        "block1_units_preferring_curves": int(((c1["curve_index"] > 0) & alive1).sum()),
        "block1_alive_units": int(alive1.sum()),
        "block2_units_preferring_curves": int((c_idx[2]["curve_index"] > 0).sum()),
        "units_where_vis_beats_top_example": int(sum(r > 1 for r in vis_vs_data)),
        "units_compared": len(vis_vs_data), "min_vis_over_top_example": min(vis_vs_data) if vis_vs_data else None,
        "diversity_images_activation": np.asarray(diverse.activation.values)[0].round(3).tolist(),
        "units": rows, "strongest_block0_inputs": strongest,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def _plots(out, model, data, test, lines, edges, curv1, edge_units, curve_units, vis, examples, weights, diverse):
    from jaxinterp.viz.features import image_grid, tuning_plot, weight_grid

    deg = np.degrees(lines.attrs["angles"])
    deg_e = np.degrees(edges.attrs["angles"])
    kappas = curv1.attrs["curvatures"]
    r1 = np.asarray(curv1.values)  # [unit, curvature, angle]
    best_k = {u: 1 + int(r1[u, 1:].max(-1).argmax()) for u in curve_units}
    panels = {"block 0 edge units: edges": {f"0.{u}": np.asarray(edges.values)[u] for u in edge_units},
              "block 0 edge units: lines": {f"0.{u}": np.asarray(lines.values)[u] for u in edge_units}}
    tuning_plot(panels, dict(zip(panels, (deg_e, deg), strict=True)), out / "tuning_edges.png",
                title="measured tuning (edges over 360, lines over 180 degrees)")
    panels = {"block 1 curve units: curve direction": {f"1.{u} (k={kappas[best_k[u]]:g})": r1[u, best_k[u]]
                                                       for u in curve_units},
              "same units: straight segments": {f"1.{u}": r1[u, 0] for u in curve_units}}
    tuning_plot(panels, np.degrees(curv1.attrs["angles"]), out / "tuning_curves.png", sharey=True,
                title="curve units: arcs at their best curvature vs straight segments (one scale)")
    kappa_panel = {"block 1 curve units": {f"1.{u}": r1[u].max(-1) for u in curve_units}}
    tuning_plot(kappa_panel, kappas, out / "tuning_curvature.png", xlabel="curvature (1/pixels)",
                title="response vs curvature (best direction)")
    rows, titles, labels = [], [], []
    for l, units in ((0, edge_units), (1, curve_units)):
        for i, u in enumerate(units):
            ex = examples[l]
            imgs = [vis[l].images[u, 0]] + [test[j] for j in ex.items[i]]
            rows.append(imgs)
            titles.append([f"vis {vis[l].activation.values[u, 0]:.2f}"] + [f"data {v:.2f}" for v in ex.values[i]])
            labels.append(f"unit {l}.{u}")
    image_grid(np.stack(rows), out / "units.png", row_labels=labels, cell_titles=titles,
               title="visualisation (left) and top dataset examples, activation of the centre neuron")
    n0 = vis[0].images.shape[0]
    image_grid(vis[0].images[:, 0].reshape(2, n0 // 2, *vis[0].images.shape[2:]) if n0 % 2 == 0 else vis[0].images[:, 0],
               out / "block0_vis.png", title="every block-0 channel, visualised (centre neuron)",
               cell_titles=np.asarray([f"0.{u}" for u in range(n0)]).reshape(2, -1).tolist() if n0 % 2 == 0 else None)
    n1 = vis[1].images.shape[0]
    image_grid(vis[1].images[:, 0].reshape(4, n1 // 4, *vis[1].images.shape[2:]) if n1 % 4 == 0 else vis[1].images[:, 0],
               out / "block1_vis.png", title="every block-1 channel, visualised (centre neuron)",
               cell_titles=np.asarray([f"1.{u}" for u in range(n1)]).reshape(4, -1).tolist() if n1 % 4 == 0 else None)
    weight_grid(weights, out / "circuit.png", title="weights from edge units (block 0) into curve units (block 1)")
    image_grid(diverse.images, out / "diversity.png", row_labels=[f"unit 1.{curve_units[0]}"],
               cell_titles=[[f"{v:.2f}" for v in np.asarray(diverse.activation.values)[0]]],
               title="four diverse visualisations of one curve unit")


def _report(out: Path, s: dict) -> None:
    lines = [f"# conv_circuits ({s['dataset']}{', fast' if s['fast'] else ''})", "",
             f"Test accuracy {s.get('test_accuracy', float('nan')):.3f}. Block 0: {s['block0_units_selectivity_over_0.5']}"
             f" of {s['block0_alive_units']} live channels have orientation selectivity > 0.5 (median "
             f"{s['block0_median_orientation_selectivity']}, best {s['block0_best_orientation_selectivity']}). "
             f"Block 1: {s['block1_units_preferring_curves']} of {s['block1_alive_units']} live channels respond more to a "
             f"curved arc than to any straight segment (curve index > 0).", "",
             "Curve units are ranked by measured tuning (orientation selectivity over 360 degrees at their best "
             "curvature x curve index); their top dataset examples (units.png) say what else they answer, often edges.",
             "",
             f"Visualisations beat the top dataset example on {s['units_where_vis_beats_top_example']} of "
             f"{s['units_compared']} units (smallest ratio {s['min_vis_over_top_example']}).", "",
             "| unit | role | selectivity | OSI / curve index | preferred | visualisation | top example | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in s["units"]:
        if r["role"] == "edge":
            sel, second, pref = r["edge_selectivity"], r["edge_osi"], f"{r['preferred_deg']} deg"
        else:
            sel, second = r["curve_selectivity"], r["curve_index"]
            pref = f"{r['preferred_deg']} deg, k={r['preferred_curvature']:g}"
        lines.append(f"| {r['unit']} | {r['role']} | {sel} | {second} | {pref} | {r['vis_activation']} | "
                     f"{r['top_example_activation']} | {r['ratio']} |")
    lines += ["", "![tuning](tuning_edges.png)", "![curves](tuning_curves.png)", "![curvature](tuning_curvature.png)",
              "![units](units.png)", "![circuit](circuit.png)", "![block 0](block0_vis.png)",
              "![block 1](block1_vis.png)", "![diversity](diversity.png)", "",
              f"Wall time: {s['seconds']}"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
