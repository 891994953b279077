"""Predict on real images: turn a photo or scan into what the model's dataset looks like, then classify it.

How an image file becomes a model's 28x28 input depends on how its training images were made, so
it is chosen by the run's dataset (`preprocessing_for`; --preprocess overrides it):

digit (MNIST, QMNIST, KMNIST: handwriting). MNIST digits are white ink on black, the digit's
bounding box scaled to fit 20x20 pixels (aspect ratio kept, anti-aliased) and placed in a 28x28
frame so that its centre of mass is at the centre. Photos and scans are the opposite - dark ink
on light paper, any size, off centre, with noise, uneven light, JPEG artefacts and colour - so
`to_mnist` redoes what the MNIST authors did:

  grayscale -> subtract the paper's smooth light, inverting dark ink -> subtract what unevenness
  is left -> suppress noise -> threshold the ink -> crop to the digit -> scale to fit 20x20 ->
  centre by centre of mass in 28x28.

fashion (Fashion-MNIST). Its images were made from product photos on white: trimmed, the longer
side scaled to 28, the shorter padded to 28 around the centred picture, negated; grey levels
kept, not thresholded (Xiao et al. 2017). `to_fashion` does the same.

plain (folder datasets). Their training images were only resized to 28x28 grayscale
(engine/data.py's resize_gray), and so are images to predict.

A model is either a run folder (runs/folder.py's load) or an exported ONNX file (cnnlab export); both
get the same uint8 images and the same normalisation (engine/data.py's normalize).
"""

from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from scipy import ndimage

from ..engine import data as data_mod
from ..engine.images import WORK_SIDE, ImageError, gray_image, open_image
from ..errors import CnnlabError, RunError
from ..files import atomic_write, check_outputs, make_dir
from .folder import check_preprocessing, load

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
WORK_SIZE = 512   # images are shrunk to at most this many pixels per side before cleaning up
DIGIT_BOX = 20    # MNIST: the digit fits a 20x20 box ...
FRAME = data_mod.IMAGE_SIZE  # ... inside a 28x28 frame


# --- reading ------------------------------------------------------------------------------------
# Reading files and converting every image mode is engine/images.py's (shared with folder datasets
# and the server); to_mnist starts from its grayscale, box-averaged to at most WORK_SIDE per side.

def _grayscale(img: Image.Image) -> np.ndarray:
    """float32 [H, W] in 0..255 (engine/images.py's gray_image)."""
    return np.asarray(gray_image(img, WORK_SIDE), np.float32)


# --- MNIST-style preprocessing ----------------------------------------------------------------

def _otsu(values: np.ndarray) -> float:
    """The threshold that best separates two intensity classes (Otsu 1979), on a 256-bin histogram."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 256.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Anti-aliased resize of a float image (Pillow's LANCZOS on a 32-bit float image)."""
    return np.asarray(Image.fromarray(a.astype(np.float32), "F").resize((w, h), Image.LANCZOS), np.float32)


# The paper's light as a quadratic surface a + bx + cy + dx^2 + exy + fy^2: exact for a lamp's
# linear fall-off and a lens's radial vignette, too stiff to follow a stroke.
SURFACE_FIT_SIZE = 64   # pixels per side of the copy the surface is fitted on
SURFACE_ROUNDS = 6      # re-fits, each leaving out what stands out from the last fit (ink)
PAPER_SLACK = 4.0       # grey levels within which clean, noise-free paper counts as paper


def _paper_surface(g: np.ndarray) -> np.ndarray:
    """The smooth light of the paper under image g, fitted to the paper pixels only.

    Least squares on a shrunk copy, repeated with the pixels far from the last fit (ink, beyond
    3 robust standard deviations of the paper's own noise) left out. The first fit uses the
    middle 60% of grey levels, so ink, the minority at one end, barely enters it.
    """
    h, w = g.shape
    s = min(1.0, SURFACE_FIT_SIZE / max(h, w))
    small = _resize(g, max(2, round(h * s)), max(2, round(w * s))) if s < 1 else g
    basis = _quadratic_basis(*small.shape)
    values = small.ravel().astype(np.float64)
    lo, hi = np.percentile(values, [20, 80])
    paper = (values >= lo) & (values <= hi)
    for _ in range(SURFACE_ROUNDS):
        coef = np.linalg.lstsq(basis[paper], values[paper], rcond=None)[0]
        residual = values - basis @ coef
        paper = np.abs(residual) <= max(3 * _robust_std(residual[paper]), PAPER_SLACK)
    return (_quadratic_basis(h, w) @ coef).reshape(h, w).astype(np.float32)


def _robust_std(values: np.ndarray) -> float:
    """The standard deviation of the bulk of values, from the median absolute deviation."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values)))) if values.size else 0.0


def _quadratic_basis(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    x, y = x.ravel(), y.ravel()
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _ink_is_dark(residual: np.ndarray) -> bool:
    """True when what stands out from the paper is mostly darker than it (ink on paper)."""
    far = max(3 * _robust_std(residual), 2 * PAPER_SLACK)
    return float(-residual[residual < -far].sum()) > float(residual[residual > far].sum())


def _work_copy(image: Image.Image | np.ndarray) -> np.ndarray:
    """float32 grayscale [H, W] in 0..255, shrunk to at most WORK_SIZE pixels per side."""
    g = (image if isinstance(image, np.ndarray) else _grayscale(image)).astype(np.float32)
    h, w = g.shape
    if max(h, w) > WORK_SIZE:
        s = WORK_SIZE / max(h, w)
        g = _resize(g, max(1, round(h * s)), max(1, round(w * s)))
    return g


def to_mnist(image: Image.Image | np.ndarray, name: str = "image") -> np.ndarray:
    """A photo, scan or drawing of one digit -> uint8 [28, 28], white on black, MNIST-style."""
    g = _ink_above_paper(_work_copy(image))
    g, stroke = _flatten_background(g)
    g = _isolate_digit(g, stroke, name)
    return _center_in_frame(_fit_box(g))


def _ink_above_paper(g: np.ndarray) -> np.ndarray:
    """1. The paper's light: a lamp's fall-off or a lens's vignette lights the sheet as a smooth
    surface. Fit one to the paper; the ink is what stands out from it, darker (ink on paper:
    invert) or lighter (chalk on a board). Subtracting it leaves bright ink on black, and no
    dim side of the sheet that could pass for ink."""
    paper = _paper_surface(g)
    if _ink_is_dark(g - paper):
        g, paper = 255.0 - g, 255.0 - paper
    return np.clip(g - paper, 0, None)


def _flatten_background(g: np.ndarray) -> tuple[np.ndarray, float]:
    """2. Unevenness the surface cannot follow: a grey opening wider than any stroke erases the
    ink and keeps the background; subtract it. The stroke width comes from a first rough ink
    mask, and the opening runs on a copy shrunk until strokes are ~2 pixels wide.
    Returns the image and the stroke width in pixels."""
    h, w = g.shape
    rough = g > _otsu(g)
    stroke = 2.0 * float(np.percentile(ndimage.distance_transform_edt(rough)[rough], 90)) if rough.any() else 1.0
    s = min(1.0, 2.0 / max(stroke, 1e-6))
    if s < 1.0:
        small = _resize(g, max(1, round(h * s)), max(1, round(w * s)))
        background = ndimage.uniform_filter(ndimage.grey_opening(small, size=(7, 7)), size=7)
        background = _resize(background, h, w)
    else:
        background = ndimage.uniform_filter(ndimage.grey_opening(g, size=(7, 7)), size=7)
    return np.clip(g - background, 0, None), stroke


def _isolate_digit(g: np.ndarray, stroke: float, name: str) -> np.ndarray:
    """3. Noise: a 3x3 median removes specks and JPEG ringing (only where strokes are wide enough
    to survive it); Otsu then separates ink from paper, and the digit's connected pieces are kept.
    Returns ink in 0..1 on a black background; ImageError when there is no ink."""
    if stroke >= 4:
        g = np.asarray(Image.fromarray(np.clip(g, 0, 255).astype(np.uint8)).filter(ImageFilter.MedianFilter(3)),
                       np.float32)
    peak = float(np.percentile(g, 99.9))
    if peak < 24:  # under ~10% contrast everywhere: nothing that looks like ink
        raise ImageError(f"{name}: no digit found (the image is blank or has almost no contrast)", "blank")
    t = max(_otsu(g), 0.15 * peak)
    ink = g > t
    # Keep the digit's connected pieces; drop specks (under 8% of the biggest piece's ink).
    labels, n = ndimage.label(ink, structure=np.ones((3, 3)))
    if n == 0:
        raise ImageError(f"{name}: no digit found (the image is blank or has almost no contrast)", "blank")
    mass = ndimage.sum(g, labels, index=np.arange(1, n + 1))
    keep = np.zeros(n + 1, bool)
    keep[1:] = mass >= 0.08 * mass.max()
    digit = ndimage.binary_dilation(keep[labels], iterations=1)  # keep the anti-aliased rim
    g = np.where(digit, g, 0.0)
    return np.clip(g / max(float(np.percentile(g[keep[labels]], 90)), 1e-6), 0, 1)


def _fit_box(g: np.ndarray) -> np.ndarray:
    """4. Crop to the bounding box, scale the longer side to 20 pixels keeping the aspect ratio."""
    rows, cols = np.nonzero(g > 0)
    crop = g[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    ch, cw = crop.shape
    s = DIGIT_BOX / max(ch, cw)
    box = np.clip(_resize(crop, max(1, round(ch * s)), max(1, round(cw * s))), 0, 1)
    return box / box.max() if box.max() > 0 else box


def _center_in_frame(box: np.ndarray) -> np.ndarray:
    """5. Place in 28x28 with the centre of mass at the centre (as MNIST did): uint8 0..255."""
    cy, cx = ndimage.center_of_mass(box)
    out = np.zeros((FRAME, FRAME), np.float32)
    # MNIST's centres of mass sit at pixel (14, 14) (measured: 13.99, 14.00 on its test set).
    top, left = int(round(FRAME / 2 - cy)), int(round(FRAME / 2 - cx))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + box.shape[0], FRAME), min(left + box.shape[1], FRAME)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = box[y0 - top:y1 - top, x0 - left:x1 - left]
    return np.round(out * 255).astype(np.uint8)


# --- Fashion-MNIST-style preprocessing ----------------------------------------------------------

# Fashion-MNIST trimmed "edges close to the colour of the corner pixels", close meaning within 5%
# of the largest intensity; a row or column that is at least 1% otherwise counts as picture
# (so a speck of JPEG noise does not stop the trim of a large photo; at 28 pixels it is 1 pixel).
TRIM_CLOSE = 0.05 * 255
TRIM_SHARE = 0.01


def to_fashion(image: Image.Image | np.ndarray, name: str = "image") -> np.ndarray:
    """A product photo (or a Fashion-MNIST image) -> uint8 [28, 28] the way Fashion-MNIST was made.

    Negate a light background (its photos were on white), trim the edges that are the colour of
    the corners, scale the longer side to 28 pixels, pad the shorter one to 28 with the picture
    centred. The grey levels are kept: no thresholding, no re-centring by mass. A 28x28 image is
    in that format already: only its background is made black.
    """
    g = _work_copy(image)
    background = float(np.median([g[0, 0], g[0, -1], g[-1, 0], g[-1, -1]]))
    if background > 127.5:
        g, background = 255.0 - g, 255.0 - background
    # The background becomes black, as the negated white of Fashion-MNIST's photos did.
    g = np.clip(g - background, 0, None) * (255.0 / max(255.0 - background, 1.0))
    if g.shape == (FRAME, FRAME):
        # Already made at Fashion-MNIST's size (its own images saved as files): trimming its faint
        # anti-aliased rim and scaling it back up would only blur it (1 point of accuracy lost).
        return np.round(g).astype(np.uint8)
    picture = g > TRIM_CLOSE
    rows = np.nonzero(picture.sum(axis=1) >= max(1.0, TRIM_SHARE * g.shape[1]))[0]
    cols = np.nonzero(picture.sum(axis=0) >= max(1.0, TRIM_SHARE * g.shape[0]))[0]
    if not len(rows) or not len(cols):
        raise ImageError(f"{name}: nothing to classify (the image is one flat colour)", "blank")
    crop = g[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    ch, cw = crop.shape
    s = FRAME / max(ch, cw)
    box = np.clip(_resize(crop, max(1, round(ch * s)), max(1, round(cw * s))), 0, 255) if s != 1 else crop
    out = np.zeros((FRAME, FRAME), np.float32)
    top, left = (FRAME - box.shape[0]) // 2, (FRAME - box.shape[1]) // 2
    out[top:top + box.shape[0], left:left + box.shape[1]] = box
    return np.round(out).astype(np.uint8)


# --- which preprocessing: by the dataset a model was trained on ----------------------------------

PREPROCESSING = {
    "digit": "handwriting, the MNIST way: ink separated from the paper, cropped, scaled to fit 20x20, "
             "centred by centre of mass",
    "fashion": "the Fashion-MNIST way: light background negated, trimmed, longer side scaled to 28, "
               "padded, grey levels kept",
    "plain": "only resized to 28x28 grayscale, as a folder dataset's training images were",
}


def preprocessing_for(dataset: str) -> str:
    """The preprocessing that makes an image file look like `dataset`'s training images."""
    if dataset.startswith(data_mod.FOLDER):
        return "plain"
    return "fashion" if dataset == "fashion-mnist" else "digit"  # MNIST, QMNIST, KMNIST: handwriting


def check_preprocess_name(name: str | None) -> str | None:
    if name is not None and name not in PREPROCESSING:
        raise CnnlabError(f"unknown preprocessing '{name}'; choose one of: {', '.join(PREPROCESSING)}")
    return name


def prepare(image: Image.Image, how: str, name: str = "image") -> np.ndarray:
    """An opened image file -> uint8 [28, 28], prepared `how` (a PREPROCESSING name)."""
    if how == "plain":
        return data_mod.resize_gray(image)
    return to_fashion(image, name) if how == "fashion" else to_mnist(image, name)


# --- models: a run folder or an exported ONNX file -----------------------------------------------

@dataclass
class Classifier:
    """What prediction needs: class names, the normalisation, and logits for uint8 [N, 28, 28]."""

    source: str
    classes: list
    mean: float
    std: float
    dataset: str = "mnist"   # what the model was trained on decides how an image file is prepared
    trained: object = None   # runs.folder.TrainedModel for a run folder
    session: object = None   # onnxruntime.InferenceSession for an ONNX file
    metadata: dict | None = None
    preprocess: str | None = None  # a PREPROCESSING name chosen by the user; None: by the dataset

    def __post_init__(self):
        # One model, many server threads: forward passes (and the hooks that read feature maps)
        # take turns. Each pass on one image is about a millisecond.
        self.lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Is there a network to ask (a server over a folder without a finished run has none yet)?"""
        return self.trained is not None or self.session is not None

    def take(self, other: "Classifier") -> None:
        """Answer with `other`'s model from now on. A server's routes hold this one object, so
        it changes in place, between two forward passes."""
        with self.lock:
            for f in fields(self):
                setattr(self, f.name, getattr(other, f.name))

    @property
    def preprocessing(self) -> str:
        """How image files are prepared for this model: the user's choice, else by its dataset."""
        return self.preprocess or preprocessing_for(self.dataset)

    def prepare(self, image: Image.Image, name: str = "image") -> np.ndarray:
        """An opened image file -> the uint8 [28, 28] input this model was trained on."""
        return prepare(image, self.preprocessing, name)

    def logits(self, images_u8: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images_u8, dtype=np.uint8)
        # Images resized by data.resize_gray can be read-only views; torch warns on those.
        x = torch.from_numpy(x if x.flags.writeable else x.copy())
        with self.lock:
            if self.trained is not None:
                return self.trained.logits(x).numpy()
            batch = data_mod.normalize(x, self.mean, self.std).numpy()
            name = self.session.get_inputs()[0].name
            return self.session.run(None, {name: batch})[0]

    def probabilities(self, images_u8: np.ndarray) -> np.ndarray:
        probs = torch.from_numpy(self.logits(images_u8)).float().softmax(dim=1).numpy()
        if not np.isfinite(probs).all():  # never report "nan%" (nor send NaN, which is not JSON)
            raise RunError(f"{self.source} gives NaN or infinite outputs (its weights are broken); train "
                           f"the run again, or export it again")
        return probs


def load_classifier(path: str | os.PathLike, tta: bool = False, preprocess: str | None = None) -> Classifier:
    """A run folder (from cnnlab train) or a .onnx file (from cnnlab export).

    tta=True (run folders only) averages each image's prediction with its 1-pixel shifts.
    preprocess: "digit", "fashion" or "plain" (PREPROCESSING) instead of the dataset's own.
    """
    path = Path(path)
    check_preprocess_name(preprocess)
    if path.is_file() and path.suffix.lower() == ".onnx":
        if tta:
            raise CnnlabError(f"--tta needs a run folder; {path} is an exported ONNX file with a fixed graph")
        clf = _load_onnx(path)
    else:
        trained = load(path, tta=tta)
        clf = Classifier(str(path), list(trained.classes), trained.mean, trained.std,
                         dataset=trained.config.get("dataset", "mnist"), trained=trained)
    clf.preprocess = preprocess
    return clf


def _load_onnx(path: Path) -> Classifier:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for corrupt graphs
        raise CnnlabError(f"{path} is not a readable ONNX model ({' '.join(str(e).split())[:120]}); "
                          f"export it again with 'cnnlab export'") from None
    meta = session.get_modelmeta().custom_metadata_map
    if "cnnlab" not in meta:
        raise CnnlabError(f"{path} has no cnnlab metadata (normalisation, classes); export it with "
                          f"'cnnlab export RUN_DIR --format onnx'")
    try:
        info = json.loads(meta["cnnlab"])
    except (ValueError, RecursionError):
        info = None
    where = f"{path}'s cnnlab metadata"
    if not isinstance(info, dict) or not isinstance(info.get("classes"), list) or "normalization" not in info \
            or not isinstance(info.get("dataset", ""), str):
        raise RunError(f"{where} is not the JSON 'cnnlab export' writes (classes, normalization, dataset); "
                       f"export the run again")
    check_preprocessing(info, where, "export the run again")
    outputs = session.get_outputs()[0].shape
    if not outputs or outputs[-1] != len(info["classes"]):
        raise RunError(f"{where} names {len(info['classes'])} classes but the model has {outputs[-1] if outputs else 'no'} "
                       f"outputs; export the run again")
    clf = Classifier(str(path), list(info["classes"]), float(info["normalization"]["mean"]),
                     float(info["normalization"]["std"]), dataset=info.get("dataset", "mnist"),
                     session=session, metadata=info)
    try:  # one blank image through it: a graph that does not take 28x28 images, or NaN weights, fail here
        clf.probabilities(np.zeros((1, data_mod.IMAGE_SIZE, data_mod.IMAGE_SIZE), np.uint8))
    except CnnlabError:
        raise
    except Exception as e:  # onnxruntime's own exception types
        raise RunError(f"{path} does not classify a 1x28x28 image ({' '.join(str(e).split())[:120]}); "
                       f"export the run again with 'cnnlab export'") from None
    return clf


# --- files -> predictions -------------------------------------------------------------------------

def collect_files(inputs) -> list[Path]:
    """Files named directly (any name) plus image files found by walking folders, in order."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            files.extend(found)
        else:
            files.append(item)  # a missing file gets its own per-file error later
    return files


def predict_images(clf: Classifier, images_u8: np.ndarray, top_k: int = 3) -> list[dict]:
    """Predictions for MNIST-style uint8 images [N, 28, 28]."""
    probs = clf.probabilities(images_u8)
    out = []
    for p in probs:
        order = np.argsort(-p)[:top_k]
        out.append({"prediction": int(order[0]), "label": clf.classes[int(order[0])],
                    "probabilities": [round(float(v), 6) for v in p],
                    "top_k": [{"class": int(i), "label": clf.classes[int(i)], "probability": round(float(p[i]), 6)}
                              for i in order]})
    return out


def predict_files(clf: Classifier, inputs, top_k: int = 3, save_preprocessed: str | os.PathLike | None = None,
                  batch_size: int = 256, force: bool = False) -> list[dict]:
    """Preprocess and classify every file; a bad file gets {"file", "error"} and the rest go on.

    save_preprocessed: a folder for the 28x28 images; an existing PNG there is replaced only with
    force, and an input image never (checked for every file before any is read).
    """
    files = collect_files(inputs)
    if not files:
        raise CnnlabError("no image files found in the given folders; pass image files or folders "
                          f"holding {', '.join(sorted(IMAGE_EXTENSIONS))} files")
    saved = _png_names(files, Path(save_preprocessed), force) if save_preprocessed else None
    results: list[dict] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        if pending:
            preds = predict_images(clf, np.stack([a for _, a in pending]), top_k)
            for (i, _), p in zip(pending, preds):
                results[i].update(p)
            pending.clear()

    for i, f in enumerate(files):
        results.append({"file": str(f), "preprocessing": clf.preprocessing})
        try:
            arr = clf.prepare(open_image(f), name=str(f))
        except ImageError as e:
            results[-1]["error"] = str(e)
            continue
        if saved:
            buf = io.BytesIO()
            Image.fromarray(arr, "L").save(buf, format="PNG")
            atomic_write(saved[i], buf.getvalue(), replace=force)
            results[-1]["preprocessed"] = str(saved[i])
        pending.append((len(results) - 1, arr))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results


def _png_names(files: list[Path], folder: Path, force: bool) -> list[Path]:
    """folder/<stem>.png per input (<stem>-2.png, ... for repeated stems), checked, and the folder made."""
    names, used = [], set()
    for f in files:
        stem, n = f.stem, 1
        name = f"{stem}.png"
        while name in used:  # two inputs called 3.jpg in different folders
            n += 1
            name = f"{stem}-{n}.png"
        used.add(name)
        names.append(folder / name)
    flag = "--save-preprocessed"
    check_outputs(names, force=force, inputs=files, flag=flag, parent_must_exist=False)
    make_dir(folder, flag)
    return names
