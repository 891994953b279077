"""The figures of a trained run, one function each: the numbers first, then the picture.

Every figure is computed as plain numbers (Figure.data, so tests and --json can check them) and
drawn with matplotlib's object-oriented API on the Agg canvas - no pyplot, no global backend
switch, no window. Each builder returns (figures, not_applicable): what it drew, and for what
did not apply to this network, one sentence saying why.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure as MplFigure

from ..engine import data as data_mod
from ..runs.folder import TrainedModel, read_metrics
from .explain import LayerOutput, cam_layer, first_linear, grad_cam, match_kernels, saliency, without_inplace

MAX_CHANNELS = 16      # feature-map channels drawn per layer (all of them are in Figure.data)
MAX_UNITS = 64         # mlp first-layer units drawn as 28x28 images
DPI = 110


@dataclass
class Figure:
    """One picture: its PNG bytes and the numbers it shows."""

    name: str          # file stem: filters, feature_maps, curves, confusion, mistakes, saliency
    title: str
    caption: str       # one or two sentences a reader of the report needs
    png: bytes
    data: dict = field(default_factory=dict)      # JSON-ready numbers the figure shows
    arrays: list = field(default_factory=list, repr=False)  # full tensors behind it (Python API)


def not_applicable(figure: str, reason: str) -> dict:
    return {"figure": figure, "reason": reason}


# --- one function per figure -----------------------------------------------------------------------

def filters(trained: TrainedModel, layers: list[LayerOutput], x: torch.Tensor):
    """The first conv layer's filters beside the closest hand-designed kernels (an mlp: its
    first layer's weights as images)."""
    convs = [layer for layer in layers if layer.kind == "conv"]
    if not convs:
        return _unit_weights(trained, x), [not_applicable("filters", (
            f"{trained.name} has no convolution layer, so it has no small filters to compare with Prewitt, "
            f"Sobel and the other hand-designed kernels; its first-layer weights are drawn as whole images instead"))]
    first = convs[0]
    w = first.module.weight.detach().cpu()
    weights = w.mean(1).numpy() if w.shape[1] > 1 else w[:, 0].numpy()
    matches = match_kernels(weights)
    return [Figure(
        "filters", "First-layer filters and the hand-designed kernels they resemble",
        f"Each of the {len(weights)} filters of {first.name} (left of each pair) beside the hand-designed "
        f"kernel with the highest |cosine similarity| at the same size (right); a leading '-' means the "
        f"kernel with its sign flipped, the same edge detector for the opposite contrast."
        + (" Filters with several input channels are averaged over them." if w.shape[1] > 1 else ""),
        _png(draw_filters(weights, matches, first.name)),
        {"layer": first.name, "filters": weights.tolist(),
         "matches": [{k: m[k] for k in ("filter", "match", "similarity")} for m in matches]})], []


def _unit_weights(trained: TrainedModel, x: torch.Tensor) -> list[Figure]:
    lin = first_linear(trained.model, x)
    c, h, w = trained.config.get("input_size", [1, data_mod.IMAGE_SIZE, data_mod.IMAGE_SIZE])
    if lin is None or lin.in_features != c * h * w:
        return []
    units = lin.weight.detach().cpu().reshape(lin.out_features, c, h, w).mean(1).numpy()[:MAX_UNITS]
    return [Figure(
        "first_layer_weights", "First-layer weights as images",
        f"A fully connected first layer has one weight per pixel per unit, so each unit's weights "
        f"form a {h}x{w} image: the pattern that excites it most (red) or least (blue). "
        f"The first {len(units)} of {lin.out_features} units are drawn.",
        _png(draw_unit_weights(units, lin.out_features)),
        {"layer_units": lin.out_features, "shown": len(units), "shape": [h, w]})]


def feature_maps(trained: TrainedModel, layers: list[LayerOutput], shown: np.ndarray, source: str, index):
    """The input and the output of every convolution and pooling layer."""
    if not layers:
        return [], [not_applicable("feature_maps", (
            f"{trained.name} has no convolution or pooling layers: it flattens the image into "
            f"{data_mod.IMAGE_SIZE * data_mod.IMAGE_SIZE} numbers at once, so no layer keeps a spatial map"))]
    figure = Figure(
        "feature_maps", "Feature maps: what each layer sees",
        f"The input ({source}) and the output of every convolution and pooling layer, in the order the "
        f"network runs them: early layers respond to strokes and edges, later ones to larger, more "
        f"abstract parts at lower resolution. At most {MAX_CHANNELS} channels per layer are drawn.",
        _png(draw_feature_maps(shown, source, layers)),
        {"source": "test" if index is not None else "image", "index": index,
         "layers": [{"layer": l.name, "kind": l.kind, "input_shape": list(l.input_shape),
                     "shape": list(l.output.shape)} for l in layers]})
    figure.arrays = [l.output for l in layers]
    return [figure], []


def curves(trained: TrainedModel):
    """Loss and accuracy per epoch, from the run's metrics.jsonl."""
    rows = read_metrics(trained.run_dir) if trained.run_dir else []
    rows = [r for r in rows if "mean_loss" in r and "test_accuracy" in r]
    if not rows:
        return [], [not_applicable("curves", "the run has no metrics.jsonl with per-epoch loss and accuracy to plot")]
    return [Figure(
        "curves", "Training curves",
        "Mean training loss and test (and, when the run held one out, validation) accuracy after each "
        "epoch, from the run's metrics.jsonl.",
        _png(draw_curves(rows)),
        {"epochs": [r.get("epoch") for r in rows], "mean_loss": [r["mean_loss"] for r in rows],
         "test_accuracy": [r["test_accuracy"] for r in rows],
         "val_accuracy": [r.get("val_accuracy") for r in rows]})], []


def confusion(metrics: dict, classes: list):
    cm = np.array(metrics["confusion_matrix"])
    return [Figure(
        "confusion", "Confusion matrix",
        f"Rows are the true class, columns the predicted class, over {metrics['total']:,} test images; "
        f"the diagonal holds the correct predictions.",
        _png(draw_confusion(cm, classes, metrics["accuracy"])),
        {"confusion_matrix": cm.tolist(), "classes": list(classes), "total": int(cm.sum())})], []


def mistakes(test: data_mod.Split, preds: torch.Tensor, conf: torch.Tensor, classes: list, most: int):
    """The most confidently wrong test images."""
    wrong = torch.nonzero(preds != test.labels).flatten()
    order = wrong[conf[wrong].argsort(descending=True)][:most]
    items = [{"index": int(i), "true": int(test.labels[i]), "predicted": int(preds[i]),
              "confidence": round(float(conf[i]), 4)} for i in order]
    if not items:
        return [], [not_applicable("mistakes", f"no mistakes: all {len(test):,} test images are classified correctly")]
    return [Figure(
        "mistakes", "The most confident mistakes",
        f"The {len(items)} misclassified test images the network was most sure about, with the true label, "
        f"the prediction and its softmax probability. Many are ambiguous even to people.",
        _png(draw_mistakes(test.images[order].numpy(), items, classes, len(wrong), len(test))),
        {"mistakes": items, "misclassified": int(len(wrong))})], []


def explanations(trained: TrainedModel, sources: list, has_conv: bool, x: torch.Tensor):
    """Saliency and Grad-CAM for each (label, image, true class or None) in sources."""
    net = without_inplace(trained.model)
    cam_name = cam_layer(net, x) if has_conv else None
    cam_module = dict(net.named_modules()).get(cam_name) if cam_name else None
    classes, items = trained.classes, []
    for label, img, true in sources:
        xi = trained.preprocess(torch.from_numpy(np.ascontiguousarray(img))[None])
        with torch.no_grad():
            p = net(xi).softmax(1)[0]
        target = int(p.argmax())
        items.append({"source": "your image" if label == "image" else f"test #{label}",
                      "index": None if label == "image" else label, "true": true,
                      "true_name": None if true is None else classes[true],
                      "predicted": target, "predicted_name": classes[target], "confidence": round(float(p[target]), 4),
                      "saliency": saliency(net, xi, target),
                      "gradcam": grad_cam(net, cam_module, xi, target) if cam_module is not None else None})
    figure = Figure(
        "saliency", "Saliency and Grad-CAM" if cam_name else "Saliency",
        "Saliency: how strongly each pixel changes the score of the predicted class (the gradient of the "
        "score with respect to the input). "
        + (f"Grad-CAM: which regions of the last spatial feature map ({cam_name}) support that class: "
           f"its channels weighted by their mean gradient, rectified and scaled to the input." if cam_name else ""),
        _png(draw_explanations([img for _, img, _ in sources], items, cam_name)),
        {"gradcam_layer": cam_name,
         "images": [{k: v for k, v in e.items() if k not in ("saliency", "gradcam")} for e in items]})
    figure.arrays = items
    missing = [] if cam_name else [not_applicable("gradcam", (
        f"Grad-CAM weighs the spatial activations of a convolution layer, and {trained.name} has none; "
        f"the saliency map (input gradient) applies to any model and is drawn"))]
    return [figure], missing


# --- drawing -----------------------------------------------------------------------------------

def _png(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _image_axes(ax, title=None, size=8):
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=size)


def _label(classes, i) -> str:
    name = str(classes[i])
    return name if name == str(i) else f"{i} {name}"


def draw_filters(weights: np.ndarray, matches: list[dict], layer: str) -> MplFigure:
    """One panel per filter: the learned filter beside its most similar hand-designed kernel."""
    n = len(weights)
    cols = min(8, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    fig = MplFigure(figsize=(2.3 * cols + 0.8, 1.45 * rows + 1.0))
    grid = fig.add_gridspec(rows, cols, wspace=0.25, hspace=0.55)
    im = None
    for i, (w, m) in enumerate(zip(weights, matches)):
        cell = grid[i // cols, i % cols].subgridspec(1, 2, wspace=0.06)
        pair = [w, np.array(m["kernel"])] if m["match"] else [w]
        for j, k in enumerate(pair):
            ax = fig.add_subplot(cell[0, j])
            scale = np.abs(k).max() or 1.0
            im = ax.imshow(k / scale, cmap="RdBu_r", vmin=-1, vmax=1)
            _image_axes(ax)
            if i + cols >= n:  # bottom row: say which image is which
                ax.set_xlabel("learned" if j == 0 else "kernel", fontsize=7)
            if j == 0:
                ax.set_title(f"#{i}  {m['match']}  cos {m['similarity']:.2f}" if m["match"] else f"#{i}",
                             fontsize=8, loc="left", pad=3)
    fig.subplots_adjust(left=0.02, right=0.9, top=1 - 0.75 / fig.get_figheight(), bottom=0.06)
    fig.colorbar(im, cax=fig.add_axes([0.92, 0.15, 0.015, 0.65]), label="weight / max |weight| of the filter")
    mean = np.mean([m["similarity"] for m in matches if m["similarity"] is not None] or [0])
    fig.suptitle(f"First-layer filters ({layer}, {n} filters of {weights.shape[-2]}x{weights.shape[-1]}) "
                 f"beside the closest hand-designed kernel; mean |cosine| {mean:.2f}", fontsize=10)
    return fig


def draw_unit_weights(weights: np.ndarray, total: int) -> MplFigure:
    n = len(weights)
    cols = 8
    rows = math.ceil(n / cols)
    fig = MplFigure(figsize=(1.3 * cols + 1, 1.35 * rows + 0.8))
    axes = fig.subplots(rows, cols, squeeze=False)
    vmax = float(np.abs(weights).max()) or 1.0
    im = None
    for i, ax in enumerate(axes.flat):
        _image_axes(ax)
        if i < n:
            im = ax.imshow(weights[i], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(f"unit {i}", fontsize=7)
        else:
            ax.set_axis_off()
    fig.colorbar(im, ax=axes, shrink=0.6, label="weight")
    fig.suptitle(f"First-layer weights of the first {n} of {total} hidden units, each drawn as a "
                 f"{weights.shape[1]}x{weights.shape[2]} image", fontsize=10)
    return fig


def draw_feature_maps(image: np.ndarray, source: str, layers: list[LayerOutput]) -> MplFigure:
    cols = min(MAX_CHANNELS, max(l.output.shape[0] for l in layers))
    rows = len(layers) + 1
    fig = MplFigure(figsize=(1.05 * cols + 2.2, 1.15 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        _image_axes(ax)
        ax.set_axis_off()
    axes[0, 0].set_axis_on()
    im = axes[0, 0].imshow(image, cmap="gray")
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[0, 0].set_title(source, fontsize=7, loc="left")
    fig.colorbar(im, ax=axes[0, :], shrink=0.8, pad=0.01).ax.tick_params(labelsize=6)
    for r, layer in enumerate(layers, start=1):
        maps = layer.output.numpy()
        shown = maps[:cols]
        vmin, vmax = float(shown.min()), float(shown.max())
        for c, m in enumerate(shown):
            ax = axes[r, c]
            ax.set_axis_on()
            im = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax)
        c_, h, w = maps.shape
        more = f"\n(first {len(shown)})" if len(shown) < c_ else ""
        axes[r, 0].set_ylabel(f"{layer.name}\n{layer.kind} {c_}x{h}x{w}{more}", fontsize=7)
        fig.colorbar(im, ax=axes[r, :], shrink=0.8, pad=0.01).ax.tick_params(labelsize=6)
    fig.suptitle("Feature maps after every convolution and pooling layer (rows, in forward order; "
                 "one column per channel)", fontsize=10)
    return fig


def draw_curves(rows: list[dict]) -> MplFigure:
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
    fig = MplFigure(figsize=(9, 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["mean_loss"] for r in rows], "o-", color="tab:red")
    ax1.set(xlabel="epoch", ylabel="mean training loss (cross-entropy)", title="Training loss")
    ax2.plot(epochs, [100 * r["test_accuracy"] for r in rows], "o-", color="tab:blue", label="test")
    val = [r.get("val_accuracy") for r in rows]
    if any(v is not None for v in val):  # runs trained with early stopping on a validation split
        ax2.plot(epochs, [100 * v if v is not None else np.nan for v in val], "s--", color="tab:green",
                 label="validation")
        ax2.legend()
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs if len(epochs) <= 20 else ax.get_xticks())
    fig.tight_layout()
    return fig


def draw_confusion(cm: np.ndarray, classes: list, accuracy: float) -> MplFigure:
    k = len(classes)
    fig = MplFigure(figsize=(7.5, 6.2))
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, label="test images")
    top = cm.max() or 1
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > top / 2 else "black")
    names = [_label(classes, i) for i in range(k)]
    ax.set_xticks(range(k), names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right" if max(map(len, names)) > 2 else "center", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Confusion matrix: {int(cm.sum()):,} test images, accuracy {accuracy:.2%}")
    fig.tight_layout()
    return fig


def draw_mistakes(images: np.ndarray, items: list[dict], classes: list, wrong: int, total: int) -> MplFigure:
    n = len(items)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig = MplFigure(figsize=(1.45 * cols + 0.4, 1.95 * rows + 0.7))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        _image_axes(ax)
        ax.set_axis_off()
    for ax, img, it in zip(axes.flat, images, items):
        ax.set_axis_on()
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"#{it['index']}\ntrue {classes[it['true']]}\npred {classes[it['predicted']]} "
                     f"{it['confidence']:.0%}", fontsize=7)
    fig.suptitle(f"The {n} most confident mistakes ({wrong:,} of {total:,} test images are misclassified)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def draw_explanations(images, items: list[dict], cam_layer: str | None) -> MplFigure:
    cols = 3 if cam_layer else 2
    fig = MplFigure(figsize=(3.0 * cols + 1.2, 2.5 * len(items) + 0.6))
    axes = fig.subplots(len(items), cols, squeeze=False)
    for r, (img, it) in enumerate(zip(images, items)):
        ax = axes[r, 0]
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        _image_axes(ax, f"{it['source']}: true {it['true_name']}, pred {it['predicted_name']} "
                        f"{it['confidence']:.0%}" if it["true"] is not None else
                    f"{it['source']}: pred {it['predicted_name']} {it['confidence']:.0%}", 7)
        ax = axes[r, 1]
        im = ax.imshow(it["saliency"], cmap="hot")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="|d score / d pixel|")
        _image_axes(ax, f"saliency for class {it['predicted_name']}", 7)
        if cam_layer:
            ax = axes[r, 2]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax.imshow(it["gradcam"], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            im = ScalarMappable(Normalize(0, 1), cmap="jet")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="Grad-CAM (0-1)")
            _image_axes(ax, f"Grad-CAM at {cam_layer}", 7)
    fig.suptitle("Where the network looks: input-gradient saliency" + (" and Grad-CAM" if cam_layer else ""),
                 fontsize=10)
    fig.tight_layout()
    return fig
