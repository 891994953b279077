"""See what a trained network learned: filters, feature maps, curves, mistakes, saliency, Grad-CAM.

Every figure is computed first as plain numbers (returned in Figure.data, so tests and --json can
check them) and then drawn with matplotlib's object-oriented API on the Agg canvas - no pyplot, no
global backend switch, no window. Layers are found generically: forward hooks on every Conv2d and
pooling module record what they output, in the order the forward pass runs them, so any model in
the registry works, however its layers are nested.

    >>> v = cnnlab.visualize.render("runs/my-run")      # doctest: +SKIP
    >>> cnnlab.visualize.write(v, "figures/")           # doctest: +SKIP
"""

from __future__ import annotations

import copy
import io
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure as MplFigure
from torch import nn

from . import data as data_mod
from . import kernels, runs
from .ensemble import ENSEMBLE
from .errors import CnnlabError
from .evaluate import metrics_from_predictions, predict_logits

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d, nn.LPPool2d,
         nn.FractionalMaxPool2d)
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


@dataclass
class Visuals:
    run_dir: Path | None
    model: str
    dataset: str
    figures: list[Figure]
    not_applicable: list[dict]   # {"figure": name, "reason": one sentence}
    summary: dict                # key numbers for --json and the report

    def to_json(self, files: dict | None = None) -> dict:
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "model": self.model,
            "dataset": self.dataset,
            "figures": [{"name": f.name, "title": f.title, **({"file": str(files[f.name])} if files else {})}
                        for f in self.figures],
            "not_applicable": self.not_applicable,
            **self.summary,
        }


# --- finding layers ----------------------------------------------------------------------------

def layer_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, POOLS):
        return "pool"
    return None


@dataclass
class LayerOutput:
    name: str                  # the module's path in the model, e.g. "features.3"
    kind: str                  # "conv" or "pool"
    module: nn.Module
    input_shape: tuple         # [C, H, W] the layer received
    output: torch.Tensor       # [C, H, W] what it produced, for one image


@torch.no_grad()
def trace(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[LayerOutput]]:
    """Run one image batch [1, C, H, W] through the model, recording every conv and pool output."""
    seen: list[LayerOutput] = []
    handles = []
    for name, module in model.named_modules():
        kind = layer_kind(module)
        if kind:
            def hook(mod, inputs, output, name=name, kind=kind):
                # clone: an in-place ReLU that follows would otherwise overwrite what we keep.
                seen.append(LayerOutput(name or type(mod).__name__, kind, mod,
                                        tuple(inputs[0].shape[1:]), output[0].detach().clone().cpu()))
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return logits, seen


def first_linear(model: nn.Module, x: torch.Tensor) -> nn.Linear | None:
    """The first nn.Linear the forward pass runs (an mlp's first layer)."""
    found = []
    handles = [m.register_forward_hook(lambda mod, i, o: found.append(mod))
               for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


# --- hand-designed kernels and cosine similarity -----------------------------------------------

def hand_kernels(size: int) -> dict[str, np.ndarray]:
    """cnnlab.kernels' named kernels at size x size, to compare with learned filters of that size.

    Kernels with a size option (Gaussian, box blur) are built at that size; the fixed 3x3 ones are
    the same operator centred in a zero border. A kernel that cannot be made at the size (a
    Gaussian needs an odd side) is left out.
    """
    out = {}
    for name, fixed in kernels.NAMED.items():
        if fixed is None:
            try:
                out[name] = kernels.get(name, size=size)
            except CnnlabError:
                continue
            continue
        k = kernels.get(name)
        if k.shape[0] > size or k.shape[1] > size:
            continue
        big = np.zeros((size, size))
        top, left = (size - k.shape[0]) // 2, (size - k.shape[1]) // 2
        big[top:top + k.shape[0], left:left + k.shape[1]] = k
        out[name] = big
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def match_kernels(filters: np.ndarray) -> list[dict]:
    """For each filter [k, k], the most similar hand-designed kernel of the same size.

    A learned filter may be a kernel with its sign flipped (a dark-to-light edge detector instead
    of light-to-dark); it is the same detector, so negated kernels count and are named "-sobel-x".
    """
    size = filters.shape[-1]
    if size < 3 or filters.shape[-2] != size:
        return [{"filter": i, "match": None, "similarity": None} for i in range(len(filters))]
    bank = hand_kernels(size)
    out = []
    for i, f in enumerate(filters):
        scores = {name: cosine(f, k) for name, k in bank.items()}
        name = max(scores, key=lambda n: abs(scores[n]))
        s = scores[name]
        out.append({"filter": i, "match": name if s >= 0 else f"-{name}", "similarity": round(abs(s), 4),
                    "kernel": (bank[name] * (1 if s >= 0 else -1)).tolist()})
    return out


# --- explanations: input gradient and Grad-CAM -------------------------------------------------

def saliency(model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """|d logit[target] / d pixel|, the largest over input channels: [H, W]."""
    model.eval()
    x = x.clone().requires_grad_(True)
    score = model(x)[0, target]
    (grad,) = torch.autograd.grad(score, x)
    return grad[0].abs().amax(0).cpu().numpy()


def cam_layer(model: nn.Module, x: torch.Tensor) -> str | None:
    """Where Grad-CAM looks: the last module whose output is still a spatial map (more than 1x1).

    That is the rectified (and usually pooled) map the classifier reads - the choice of the Grad-CAM
    paper and of common implementations (VGG's features[-1]). A raw conv output before its ReLU is
    mostly negative and would give an empty map. None when no layer keeps a spatial map (an mlp).
    """
    last = {}
    handles = []
    for name, m in model.named_modules():
        if name and not any(m.children()):
            def hook(mod, inputs, out, name=name):
                if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                    last["name"] = name
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()
            model(x)
    finally:
        for h in handles:
            h.remove()
    return last.get("name")


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) at `layer`: ReLU(sum_k mean(dY/dA_k) A_k), upsampled to
    the input size and scaled to [0, 1]. `model` must not use in-place activations (_without_inplace)."""
    model.eval()
    kept = {}

    def keep(m, i, o):
        kept["a"] = o  # the last call wins when a module (a shared ReLU) runs several times
    handle = layer.register_forward_hook(keep)
    try:
        score = model(x)[0, target]
    finally:
        handle.remove()
    act = kept["a"]
    (grad,) = torch.autograd.grad(score, act)
    weights = grad[0].mean(dim=(1, 2))                       # one weight per channel
    cam = F.relu((weights[:, None, None] * act[0]).sum(0)).detach()
    cam = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    top = float(cam.max())
    return (cam / top if top > 0 else cam).cpu().numpy()


def _without_inplace(model: nn.Module) -> nn.Module:
    """A copy whose activations are not in-place, so gradients of intermediate outputs exist."""
    clone = copy.deepcopy(model)
    for m in clone.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    return clone.eval()


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


# --- putting it together -----------------------------------------------------------------------

def _progress(enabled: bool):
    """A rich progress bar on stderr; a no-op when disabled (tests, --json, pipes)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=not (enabled and console.is_terminal))


def _user_image(path) -> np.ndarray:
    """A user's photo, scan or drawing -> uint8 [28, 28] made the way MNIST was (cnnlab.predict)."""
    from .predict import ImageError, open_image, to_mnist

    try:
        return to_mnist(open_image(path), str(path))
    except ImageError as e:
        raise CnnlabError(f"--image: {e}") from None


def render(run, *, index: int = 0, image=None, explain: list[int] | None = None, limit: int | None = None,
           mistakes: int = 16, data_dir=None, progress: bool = False) -> Visuals:
    """Compute and draw every figure that applies to a run (a folder or a loaded TrainedModel).

    index: the test image whose feature maps are drawn; image: a user's image file drawn instead.
    explain: test indices for saliency/Grad-CAM (default: `index` and the 3 most confident mistakes).
    limit: use the first N test images for the confusion matrix and the mistakes.
    """
    trained = run if isinstance(run, runs.TrainedModel) else runs.load(run)
    if trained.name == ENSEMBLE:  # filters and feature maps belong to one network
        raise CnnlabError(f"{trained.run_dir} is an ensemble; draw one of its networks by passing a member "
                          f"folder such as {trained.run_dir / trained.config['members'][0]}")
    model, classes = trained.model, trained.classes
    dataset = trained.config.get("dataset", "mnist")
    test_full = data_mod.load(dataset, "test", data_dir)
    n_full = len(test_full)
    for i in [index, *(explain or [])]:
        if not 0 <= i < n_full:
            raise CnnlabError(f"test image index {i} is out of range; {dataset} has {n_full:,} test images "
                              f"(0..{n_full - 1})")
    user = _user_image(image) if image is not None else None
    test = test_full.subset(limit)

    figures: list[Figure] = []
    not_applicable: list[dict] = []
    summary: dict = {}
    steps = 6
    with (_progress(progress) if progress else nullcontext()) as bar:
        task = bar.add_task("drawing figures", total=steps) if bar else None

        def step():
            if bar:
                bar.advance(task)

        # Predictions on the test set: the long step, in chunks so the bar moves.
        logits_parts = []
        chunk = 1000
        pred_task = bar.add_task(f"predicting {len(test):,} test images", total=len(test)) if bar else None
        for i in range(0, len(test), chunk):
            logits_parts.append(predict_logits(model, test.images[i:i + chunk], trained.mean, trained.std,
                                               trained.device))
            if bar:
                bar.update(pred_task, advance=len(test.images[i:i + chunk]))
        if bar:
            bar.remove_task(pred_task)
        logits = torch.cat(logits_parts) if logits_parts else torch.empty(0, len(classes))
        probs = logits.softmax(1)
        conf, preds = probs.max(1)
        metrics = metrics_from_predictions(test.labels, preds, classes)
        summary.update(test_images=metrics["total"], accuracy=metrics["accuracy"],
                       misclassified=metrics["total"] - metrics["correct"],
                       per_class_accuracy=metrics["per_class_accuracy"])

        # 1. first-layer filters (conv) or first-layer weights (mlp)
        shown = torch.from_numpy(user) if user is not None else test_full.images[index]
        x = trained.preprocess(shown[None])
        _, layers = trace(model, x)
        convs = [l for l in layers if l.kind == "conv"]
        if convs:
            first = convs[0]
            w = first.module.weight.detach().cpu()
            filters = w.mean(1).numpy() if w.shape[1] > 1 else w[:, 0].numpy()
            matches = match_kernels(filters)
            figures.append(Figure(
                "filters", "First-layer filters and the hand-designed kernels they resemble",
                f"Each of the {len(filters)} filters of {first.name} (left of each pair) beside the hand-designed "
                f"kernel with the highest |cosine similarity| at the same size (right); a leading '-' means the "
                f"kernel with its sign flipped, the same edge detector for the opposite contrast."
                + (" Filters with several input channels are averaged over them." if w.shape[1] > 1 else ""),
                _png(draw_filters(filters, matches, first.name)),
                {"layer": first.name, "filters": filters.tolist(),
                 "matches": [{k: m[k] for k in ("filter", "match", "similarity")} for m in matches]}))
            summary["filters"] = figures[-1].data["matches"]
            scores = [m["similarity"] for m in matches if m["similarity"] is not None]
            if scores:
                summary["mean_filter_similarity"] = round(float(np.mean(scores)), 4)
        else:
            lin = first_linear(model, x)
            c, h, wd = trained.config.get("input_size", [1, data_mod.IMAGE_SIZE, data_mod.IMAGE_SIZE])
            if lin is not None and lin.in_features == c * h * wd:
                w = lin.weight.detach().cpu().reshape(lin.out_features, c, h, wd).mean(1).numpy()
                units = w[:MAX_UNITS]
                figures.append(Figure(
                    "first_layer_weights", "First-layer weights as images",
                    f"A fully connected first layer has one weight per pixel per unit, so each unit's weights "
                    f"form a {h}x{wd} image: the pattern that excites it most (red) or least (blue). "
                    f"The first {len(units)} of {lin.out_features} units are drawn.",
                    _png(draw_unit_weights(units, lin.out_features)),
                    {"layer_units": lin.out_features, "shown": len(units), "shape": [h, wd]}))
            not_applicable.append({"figure": "filters", "reason": (
                f"{trained.name} has no convolution layer, so it has no small filters to compare with Prewitt, "
                f"Sobel and the other hand-designed kernels; its first-layer weights are drawn as whole images instead")})
        step()

        # 2. feature maps after every conv and pool layer
        if layers:
            src = (f"your image {Path(image).name}" if user is not None else
                   f"test #{index} (true {classes[int(test_full.labels[index])]})")
            figures.append(Figure(
                "feature_maps", "Feature maps: what each layer sees",
                f"The input ({src}) and the output of every convolution and pooling layer, in the order the "
                f"network runs them: early layers respond to strokes and edges, later ones to larger, more "
                f"abstract parts at lower resolution. At most {MAX_CHANNELS} channels per layer are drawn.",
                _png(draw_feature_maps(shown.numpy(), src, layers)),
                {"source": "image" if user is not None else "test", "index": None if user is not None else index,
                 "layers": [{"layer": l.name, "kind": l.kind, "input_shape": list(l.input_shape),
                             "shape": list(l.output.shape)} for l in layers]}))
            figures[-1].arrays = [l.output for l in layers]
            summary["feature_maps"] = figures[-1].data["layers"]
        else:
            not_applicable.append({"figure": "feature_maps", "reason": (
                f"{trained.name} has no convolution or pooling layers: it flattens the image into "
                f"{data_mod.IMAGE_SIZE * data_mod.IMAGE_SIZE} numbers at once, so no layer keeps a spatial map")})
        step()

        # 3. training curves
        rows = runs.read_metrics(trained.run_dir) if trained.run_dir else []
        rows = [r for r in rows if "mean_loss" in r and "test_accuracy" in r]
        if rows:
            figures.append(Figure(
                "curves", "Training curves",
                "Mean training loss and test (and, when the run held one out, validation) accuracy after each "
                "epoch, from the run's metrics.jsonl.",
                _png(draw_curves(rows)),
                {"epochs": [r.get("epoch") for r in rows], "mean_loss": [r["mean_loss"] for r in rows],
                 "test_accuracy": [r["test_accuracy"] for r in rows],
                 "val_accuracy": [r.get("val_accuracy") for r in rows]}))
        else:
            not_applicable.append({"figure": "curves", "reason": "the run has no metrics.jsonl with per-epoch "
                                                                 "loss and accuracy to plot"})
        step()

        # 4. confusion matrix
        cm = np.array(metrics["confusion_matrix"])
        figures.append(Figure(
            "confusion", "Confusion matrix",
            f"Rows are the true class, columns the predicted class, over {metrics['total']:,} test images; "
            f"the diagonal holds the correct predictions.",
            _png(draw_confusion(cm, classes, metrics["accuracy"])),
            {"confusion_matrix": cm.tolist(), "classes": list(classes), "total": int(cm.sum())}))
        step()

        # 5. the most confidently wrong test images
        wrong = torch.nonzero(preds != test.labels).flatten()
        order = wrong[conf[wrong].argsort(descending=True)][:mistakes]
        items = [{"index": int(i), "true": int(test.labels[i]), "predicted": int(preds[i]),
                  "confidence": round(float(conf[i]), 4)} for i in order]
        if items:
            figures.append(Figure(
                "mistakes", "The most confident mistakes",
                f"The {len(items)} misclassified test images the network was most sure about, with the true label, "
                f"the prediction and its softmax probability. Many are ambiguous even to people.",
                _png(draw_mistakes(test.images[order].numpy(), items, classes, len(wrong), len(test))),
                {"mistakes": items, "misclassified": int(len(wrong))}))
        else:
            not_applicable.append({"figure": "mistakes", "reason": f"no mistakes: all {len(test):,} test images "
                                                                   f"are classified correctly"})
        summary["mistakes"] = items
        step()

        # 6. saliency and Grad-CAM
        chosen = explain if explain else [index] + [it["index"] for it in items[:3] if it["index"] != index]
        sources = ([("image", user)] if user is not None else []) + \
                  [(i, test_full.images[i].numpy()) for i in chosen]
        net = _without_inplace(model)
        cam_name = cam_layer(net, x) if convs else None
        cam_module = dict(net.named_modules()).get(cam_name) if cam_name else None
        expl = []
        for src, img in sources:
            xi = trained.preprocess(torch.from_numpy(np.ascontiguousarray(img))[None])
            with torch.no_grad():
                p = net(xi).softmax(1)[0]
            target = int(p.argmax())
            true = None if src == "image" else int(test_full.labels[src])
            expl.append({"source": "your image" if src == "image" else f"test #{src}",
                         "index": None if src == "image" else src, "true": true,
                         "true_name": None if true is None else classes[true],
                         "predicted": target, "predicted_name": classes[target],
                         "confidence": round(float(p[target]), 4),
                         "saliency": saliency(net, xi, target),
                         "gradcam": grad_cam(net, cam_module, xi, target) if cam_module is not None else None})
        figures.append(Figure(
            "saliency", "Saliency and Grad-CAM" if cam_name else "Saliency",
            "Saliency: how strongly each pixel changes the score of the predicted class (the gradient of the "
            "score with respect to the input). "
            + (f"Grad-CAM: which regions of the last spatial feature map ({cam_name}) support that class: "
               f"its channels weighted by their mean gradient, rectified and scaled to the input." if cam_name else ""),
            _png(draw_explanations([img for _, img in sources], expl, cam_name)),
            {"gradcam_layer": cam_name,
             "images": [{k: v for k, v in e.items() if k not in ("saliency", "gradcam")} for e in expl]}))
        figures[-1].arrays = expl
        if not cam_name:
            not_applicable.append({"figure": "gradcam", "reason": (
                f"Grad-CAM weighs the spatial activations of a convolution layer, and {trained.name} has none; "
                f"the saliency map (input gradient) applies to any model and is drawn")})
        step()

    return Visuals(trained.run_dir, trained.name, dataset, figures, not_applicable, summary)


def write(visuals: Visuals, out_dir) -> dict[str, Path]:
    """Write each figure as OUT_DIR/<name>.png (atomically); returns name -> path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"--out {out} is a file; pass a folder for the figures")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for f in visuals.figures:
        paths[f.name] = out / f"{f.name}.png"
        runs.atomic_write(paths[f.name], f.png)
    return paths
