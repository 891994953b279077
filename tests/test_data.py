"""IDX parsing (crafted valid and corrupt files), dataset loading on the real files, data folders."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from cnnlab.engine import data
from cnnlab.errors import DataError


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(">u1" if type_code == 0x08 else ">i4").tobytes()


def write_mnist(root, images: np.ndarray, labels: np.ndarray, labels_bytes: bytes | None = None):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        img_name, lbl_name = data.MNIST_FILES[split]
        (raw / img_name).write_bytes(idx_bytes(images))
        (raw / lbl_name).write_bytes(labels_bytes if labels_bytes is not None else idx_bytes(labels))
    return raw


def test_read_idx_round_trips_uint8_and_int32(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    (tmp_path / "img").write_bytes(idx_bytes(images))
    assert np.array_equal(data.read_idx(tmp_path / "img"), images)
    table = np.array([[7, 1, 2], [3, 4, 5]], dtype=np.int32)
    (tmp_path / "lbl").write_bytes(idx_bytes(table, 0x0C))
    assert np.array_equal(data.read_idx(tmp_path / "lbl"), table)


@pytest.mark.parametrize("content, expected", [
    (b"", "wrong magic number"),
    (b"\x1f\x8b\x08\x00gzipped", "wrong magic number"),       # a .gz left compressed
    (bytes([0, 0, 0x08, 3]) + b"\x00\x00", "truncated inside its header"),
    (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + bytes(7), "declares shape (10,)"),
    (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 2) + bytes(9), "truncated or corrupt"),
])
def test_corrupt_idx_files_name_the_file(tmp_path, content, expected):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        data.read_idx(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_label_count_must_match_image_count(tmp_path):
    write_mnist(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="has 4 labels but train-images-idx3-ubyte has 5 images"):
        data.load("mnist", "train", tmp_path)


def test_label_out_of_range_is_reported_with_its_index(tmp_path):
    write_mnist(tmp_path, np.zeros((3, 28, 28), np.uint8), np.array([1, 12, 3], np.uint8))
    with pytest.raises(DataError, match="label 12 at index 1, outside 0..9"):
        data.load("mnist", "train", tmp_path)


def test_images_must_be_three_dimensional(tmp_path):
    raw = write_mnist(tmp_path, np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8))
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 784), np.uint8)))
    with pytest.raises(DataError, match=r"should hold uint8 images \[N, H, W\], found uint8 \[3, 784\]"):
        data.load("mnist", "train", tmp_path)


def test_crafted_folder_loads_as_uint8_tensors(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 9], np.uint8)
    write_mnist(tmp_path, images, labels)
    split = data.load("mnist", "test", tmp_path)
    assert split.images.dtype == torch.uint8 and split.images.shape == (6, 28, 28)
    assert split.labels.dtype == torch.int64 and split.labels.tolist() == [0, 1, 2, 3, 4, 9]
    assert torch.equal(split.images, torch.from_numpy(images))


def test_missing_files_without_download_name_folder_and_files(tmp_path):
    with pytest.raises(DataError) as err:
        data.load("mnist", "train", tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        assert name in message
    assert "CNNLAB_DATA_DIR" in message


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(tmp_path))
    assert str(data.data_dir("explicit")) == "explicit"
    assert data.data_dir() == tmp_path
    monkeypatch.delenv("CNNLAB_DATA_DIR")
    assert str(data.data_dir()) == "data"


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar'; choose one of: mnist, fashion-mnist, kmnist, qmnist"):
        data.dataset_info("cifar")


@pytest.mark.parametrize("name, n_train, first_labels", [
    ("mnist", 60000, [5, 0, 4, 1, 9]),
    ("fashion-mnist", 60000, [9, 0, 0, 3, 0]),
])
def test_real_datasets_load_once_into_memory(data_dir, name, n_train, first_labels):
    train = data.load(name, "train", data_dir)
    test = data.load(name, "test", data_dir)
    assert train.images.shape == (n_train, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 28, 28)
    assert train.labels[:5].tolist() == first_labels
    assert torch.bincount(test.labels, minlength=10).sum() == 10000
    assert data.load(name, "train", data_dir) is train  # cached: read once per process


def test_normalize_maps_pixels_to_minus_one_one():
    x = torch.tensor([[[0, 255], [51, 128]]], dtype=torch.uint8)
    out = data.normalize(x, 0.5, 0.5)
    assert out.shape == (1, 1, 2, 2) and out.dtype == torch.float32
    expected = torch.tensor([[-1.0, 1.0], [51 / 127.5 - 1, 128 / 127.5 - 1]])
    assert torch.allclose(out[0, 0], expected, atol=1e-6)


def test_a_failed_download_is_one_clear_error_and_leaves_no_folders(tmp_path, monkeypatch):
    # torchvision's mirrors pointed at a closed local port: the download fails here as it does
    # offline, whatever network the test machine has.
    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        data.load("mnist", "train", root, download=True)
    assert "the download failed" in str(err.value) and str(root / "MNIST" / "raw") in str(err.value)
    assert not root.exists()  # nothing half-written: no empty MNIST/raw left behind
    # In a folder that already exists, it stays and only the new, empty subfolders go.
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        data.load("mnist", "test", root, download=True)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]
