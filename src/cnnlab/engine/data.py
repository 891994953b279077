"""Datasets: MNIST-style IDX files loaded once into uint8 tensors.

A split is a pair (images uint8 [N, 28, 28], labels int64 [N]) held in memory; conversion to
float and normalisation happen per batch in the training engine, so nothing here runs per sample.
Files already on disk are used as they are (no checksum check: a locally rebuilt file is trusted);
missing files are fetched with torchvision's checksum-verified download.

Users' own images come in as `folder:PATH`, an ImageFolder-style tree (one sub-folder per class),
read once with PIL into the same uint8 split, so everything downstream is the same as for MNIST.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .config import FOLDER
from .images import gray_image, open_image

IMAGE_SIZE = 28
NUM_CLASSES = 10

DIGITS = [str(i) for i in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
KUZUSHIJI = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetInfo:
    name: str            # the name users type
    folder: str          # torchvision's folder under the data dir
    tv_class: str        # torchvision.datasets class used to download
    files: dict          # split -> (images file, labels file) under <folder>/raw
    classes: list
    # Normalize(mean, std) of the lecture: maps [0, 1] to [-1, 1]. Kept per dataset so a recipe
    # may choose the dataset's own statistics instead.
    mean: float = 0.5
    std: float = 0.5


DATASETS = {
    "mnist": DatasetInfo("mnist", "MNIST", "MNIST", MNIST_FILES, DIGITS),
    "fashion-mnist": DatasetInfo("fashion-mnist", "FashionMNIST", "FashionMNIST", MNIST_FILES, FASHION),
    "kmnist": DatasetInfo("kmnist", "KMNIST", "KMNIST", MNIST_FILES, KUZUSHIJI),
    "qmnist": DatasetInfo("qmnist", "QMNIST", "QMNIST", {
        "train": ("qmnist-train-images-idx3-ubyte", "qmnist-train-labels-idx2-int"),
        "test": ("qmnist-test-images-idx3-ubyte", "qmnist-test-labels-idx2-int"),
    }, DIGITS),
}


@dataclass
class Split:
    images: torch.Tensor   # uint8 [N, H, W]
    labels: torch.Tensor   # int64 [N]
    classes: list
    skipped: list = field(default_factory=list)  # "path: reason" of unreadable images left out

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> "Split":
        """The first n examples (all of them when n is None or larger than the split)."""
        if n is None or n >= len(self):
            return self
        return replace(self, images=self.images[:n], labels=self.labels[:n])


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $CNNLAB_DATA_DIR, else ./data."""
    return Path(explicit or os.environ.get("CNNLAB_DATA_DIR") or "data")


def dataset_info(name: str) -> DatasetInfo:
    if name.startswith(FOLDER):
        return folder_info(name)
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}, "
                        f"or {FOLDER}PATH for a folder of images with one sub-folder per class")
    return DATASETS[name]


# --- IDX format -------------------------------------------------------------------------------
# Header: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per
# dimension. We parse it ourselves so a truncated or corrupt file gets an error naming the file
# instead of a reshape traceback deep inside a library.
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file as a writable array in native byte order. The file is read once, into the array
    that is returned: no copy for uint8 images (MNIST's 47 MB of training images in 0.02 s)."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (wrong magic number "
                        f"{raw[:4].tobytes().hex() or 'empty file'}); delete it and download it again")
    ndim = int(raw[3])
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; delete it and download it again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i].tobytes(), "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[int(raw[2])])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path} has {len(raw):,} bytes but its header declares shape {shape} "
                        f"({expected:,} bytes); the file is truncated or corrupt - delete it and "
                        f"download it again")
    values = raw[header:].view(dtype).reshape(shape)
    return values if dtype.isnative else values.astype(dtype.newbyteorder("="))


def _load_split(info: DatasetInfo, raw_dir: Path, split: str) -> Split:
    img_file, lbl_file = (raw_dir / f for f in info.files[split])
    images = read_idx(img_file)
    labels = read_idx(lbl_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{img_file} should hold uint8 images [N, H, W], found {images.dtype} "
                        f"{list(images.shape)}")
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{img_file} holds {images.shape[1]}x{images.shape[2]} images; cnnlab's networks take "
                        f"{IMAGE_SIZE}x{IMAGE_SIZE} MNIST-style images: resize them, or put them in class "
                        f"folders for --dataset folder:PATH, which resizes")
    if labels.dtype.kind not in "iu":  # a float label 3.7 is not class 3
        raise DataError(f"{lbl_file} holds {labels.dtype} labels; labels must be whole class numbers "
                        f"(IDX type 0x08, unsigned byte)")
    if labels.ndim == 2:  # QMNIST keeps extra metadata columns; the class is the first
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{lbl_file} should hold a 1-D list of labels, found shape {list(labels.shape)}")
    if len(labels) != len(images):
        raise DataError(f"{lbl_file} has {len(labels):,} labels but {img_file.name} has "
                        f"{len(images):,} images; the files do not belong together")
    bad = (labels < 0) | (labels >= len(info.classes))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{lbl_file} has label {int(labels[i])} at index {i}, outside 0..{len(info.classes) - 1}")
    return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), list(info.classes))


def _missing_message(info: DatasetInfo, raw_dir: Path, missing: list, reason: str) -> str:
    return (f"{info.name} data not found: {raw_dir} lacks {', '.join(missing)} and {reason}; put the "
            f"four uncompressed IDX files there, point --data-dir or CNNLAB_DATA_DIR at a folder that "
            f"contains {info.folder}/raw/, or connect to the internet so they can be downloaded")


def ensure_files(info: DatasetInfo, root: Path, download: bool = True) -> Path:
    """Return <root>/<folder>/raw with all four files present, downloading only what is missing."""
    raw_dir = root / info.folder / "raw"
    needed = [f for pair in info.files.values() for f in pair]
    missing = [f for f in needed if not (raw_dir / f).is_file()]
    if not missing:
        return raw_dir
    if not download:
        raise DataError(_missing_message(info, raw_dir, missing, "downloading is off"))
    import torchvision.datasets as tvd

    cls = getattr(tvd, info.tv_class)
    new_dirs = [d for d in (root, root / info.folder, raw_dir) if not d.exists()]
    old_files = set(raw_dir.iterdir()) if raw_dir.is_dir() else set()
    try:
        # torchvision downloads from its mirrors, verifies each archive's MD5 and unpacks to raw/.
        for train in (True, False):
            cls(root=str(root), train=train, download=True)
    except Exception as e:  # no network, DNS failure, mirror down, disk full...
        _undo_download(raw_dir, old_files, new_dirs)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(_missing_message(info, raw_dir, missing, f"the download failed ({first[:120]})")) from None
    still = [f for f in needed if not (raw_dir / f).is_file()]
    if still:
        raise DataError(_missing_message(info, raw_dir, still, "the download did not produce them"))
    return raw_dir


def _undo_download(raw_dir: Path, old_files: set, new_dirs: list) -> None:
    """After a failed download: remove the archives it left (perhaps cut off) and the folders it
    made, so the data folder is as it was. Files it fully unpacked stay: they are complete."""
    if raw_dir.is_dir():
        for f in set(raw_dir.iterdir()) - old_files:
            if f.suffix == ".gz" and f.is_file():
                f.unlink(missing_ok=True)
    for d in reversed(new_dirs):
        try:
            d.rmdir()  # only if empty
        except OSError:
            break


_CACHE: dict = {}


def load(name: str = "mnist", split: str = "train", root: str | os.PathLike | None = None,
         download: bool = True, test_split: float = 0.0) -> Split:
    """Load one split of a dataset into memory (cached per process: each split is read once).

    test_split matters only for a folder without train/ and test/: that share of each class is
    its "test" split and the rest its "train" split.
    """
    if name.startswith(FOLDER):
        return load_folder(name, split, test_split)
    info = dataset_info(name)
    root = data_dir(root)
    key = (name, split, str(root.resolve()))
    if key not in _CACHE:
        raw_dir = ensure_files(info, root, download)
        _CACHE[key] = _load_split(info, raw_dir, split)
    return _CACHE[key]


def normalize(images_u8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 [N, H, W] (or [N, 1, H, W]) -> float [N, 1, H, W] with (x/255 - mean) / std."""
    x = images_u8.float() if images_u8.dtype == torch.uint8 else images_u8
    if x.dim() == 3:
        x = x.unsqueeze(1)
    # One fused affine op instead of divide-subtract-divide: x * a + b.
    return x * (1.0 / (255.0 * std)) - (mean / std)


# --- Image folders ------------------------------------------------------------------------------


def _folder_roots(name: str) -> tuple[Path, Path | None]:
    """(train tree, test tree or None) of `folder:PATH`: PATH/train and PATH/test when both exist."""
    text = name[len(FOLDER):]
    if not text.strip():  # Path("") is the current folder: never walk it by accident
        raise DataError(f"--dataset {name}: the path is empty; give a folder, such as {FOLDER}my_images")
    path = Path(text).expanduser()
    if not path.is_dir():
        raise DataError(f"--dataset {name}: {path} is not a folder; give a folder with one "
                        f"sub-folder of images per class (optionally inside train/ and test/)")
    if (path / "train").is_dir() and (path / "test").is_dir():
        return path / "train", path / "test"
    return path, None


def folder_info(name: str) -> DatasetInfo:
    from torchvision.datasets.folder import find_classes

    train_root, _ = _folder_roots(name)
    try:
        classes, _ = find_classes(str(train_root))
    except FileNotFoundError:
        classes = []
    if len(classes) < 2:
        raise DataError(f"--dataset {name}: {train_root} has {len(classes)} class sub-folder(s); a "
                        f"classifier needs at least 2 (e.g. {train_root}/cat/*.png and {train_root}/dog/*.png)")
    return DatasetInfo(name, name[len(FOLDER):], "ImageFolder", {}, classes)


def resize_gray(im) -> np.ndarray:
    """A PIL image of any size and mode -> uint8 [28, 28] grayscale (antialiased resize).

    This is all the preprocessing a folder dataset gets, in training and in prediction alike; the
    grayscale conversion is engine/images.py's, the same as for every image cnnlab reads.
    """
    from PIL import Image

    im = gray_image(im)
    if im.size != (IMAGE_SIZE, IMAGE_SIZE):
        im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _read_image(path: str) -> np.ndarray:
    return resize_gray(open_image(path))


def image_files(root: Path, classes: list) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) of every image under root/<class>/, sorted as torchvision's ImageFolder
    sorts them, and "path: reason" for files left out.

    Symbolic links to folders are followed, but each real folder is read once, and never the tree's
    root or another class's folder: a link back up the tree (a loop) or across to another class is
    not walked. A file reached twice (hard or symbolic links) is read once; FIFOs and devices are
    never opened.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    def key(path) -> tuple:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    seen_dirs = {key(root), *(key(root / c) for c in classes if (root / c).is_dir())}
    seen_files, found, skipped = {}, [], []
    for label, c in enumerate(classes):
        walked = []
        for top, dirnames, filenames in os.walk(root / c, followlinks=True):
            if walked and key(top) in seen_dirs:
                dirnames[:] = []  # walked already, or the root or a class folder: not (again) here
                continue
            seen_dirs.add(key(top))
            dirnames.sort()  # the first path to a folder reached twice is always the same one
            walked.append((top, sorted(f for f in filenames if f.lower().endswith(IMG_EXTENSIONS))))
        found += [(os.path.join(top, f), label) for top, names in sorted(walked) for f in names]
    samples = []
    for path, label in found:
        try:
            st = os.stat(path)
        except OSError as e:  # a dangling link
            skipped.append(f"{path}: {e.strerror or e}")
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in seen_files:
            skipped.append(f"{path}: the same file as {seen_files[ident]}, read once")
        elif stat.S_ISREG(st.st_mode):
            seen_files[ident] = path
            samples.append((path, label))
        else:
            skipped.append(f"{path}: not a regular file")
    return samples, skipped


def _read_tree(root: Path, classes: list) -> Split:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    class_to_idx = {c: i for i, c in enumerate(classes)}
    extra = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in class_to_idx)
    if extra:
        raise DataError(f"{root} has class folder(s) {', '.join(extra)} that the training folder "
                        f"lacks; both must have the same class sub-folders")
    samples, skipped = image_files(root, classes)
    images, labels = [], []
    for path, label in samples:
        try:
            images.append(_read_image(path))
        except Exception as e:  # truncated, not really an image, unsupported mode...: skip, count
            skipped.append(f"{path}: {' '.join(str(e).split())[:100] or type(e).__name__}")
            continue
        labels.append(label)
    if not images:
        raise DataError(f"{root} holds no readable images ({len(skipped)} unreadable); put image "
                        f"files ({', '.join(IMG_EXTENSIONS)}) in one sub-folder per class")
    return Split(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64),
                 list(classes), skipped)


def hold_out(split: Split, fraction: float) -> tuple[Split, Split]:
    """(rest, held out): `fraction` of each class, picked by a fixed permutation.

    The permutation does not depend on the training seed, so `cnnlab evaluate` finds the same
    held-out images later. Every class with 2+ images keeps at least one on each side.
    """
    gen = torch.Generator().manual_seed(20261124)
    held = []
    for c in range(len(split.classes)):
        idx = (split.labels == c).nonzero().flatten()
        k = min(len(idx) - 1, max(1, round(len(idx) * fraction))) if len(idx) >= 2 else 0
        held.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    mask = torch.zeros(len(split), dtype=torch.bool)
    mask[torch.cat(held)] = True
    rest = replace(split, images=split.images[~mask], labels=split.labels[~mask])
    out = replace(split, images=split.images[mask], labels=split.labels[mask], skipped=[])
    return rest, out


def load_folder(name: str, split: str, test_split: float = 0.0) -> Split:
    """One split of `folder:PATH`, read and resized once per process."""
    info = folder_info(name)
    train_root, test_root = _folder_roots(name)
    if test_root is None and not 0 < test_split < 1:
        raise DataError(f"--dataset {name}: {train_root} has no train/ and test/ sub-folders; pass "
                        f"--test-split FRACTION (e.g. 0.2) to hold out that share of each class as "
                        f"test images")
    root = train_root if split == "train" or test_root is None else test_root
    key = ("folder", str(root.resolve()), tuple(info.classes))
    if key not in _CACHE:
        _CACHE[key] = _read_tree(root, info.classes)
    whole = _CACHE[key]
    if test_root is not None:
        return whole
    rest, held = hold_out(whole, test_split)
    return rest if split == "train" else held


def skipped_warning(split: Split) -> str | None:
    """The one warning line for unreadable images, or None when all were read."""
    if not split.skipped:
        return None
    return (f"warning: skipped {len(split.skipped)} unreadable image(s), e.g. {split.skipped[0]}")


def test_is_held_out(name: str) -> bool:
    """True for a folder without train/ and test/: its test split is carved from the same tree."""
    return name.startswith(FOLDER) and _folder_roots(name)[1] is None
