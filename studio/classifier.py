"""The project's classifiers, one per dataset: small CNNs used to measure samples and edits (class kept,
confident share, Fréchet and kernel distances in their feature space; see studio.evaluate).

`load_classifier(dataset)` returns the shipped model for a dataset in `CLASSIFIERS` (studio/assets/
<dataset>_classifier.safetensors), which `train_classifier(dataset)` produced with the dataset's recipe in
`RECIPES`; see docs/TRAINING.md for the commands and their accuracy.
"""

from __future__ import annotations

import json
import math
import time
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from studio.config import Settings, load_settings
from studio.contract import Progress, no_progress
from studio.errors import InputError, NotFound, StudioError, clip

ASSETS = Path(__file__).parent / "assets"
CLASSIFIERS = {"mnist": ASSETS / "mnist_classifier.safetensors",
               "fashion": ASSETS / "fashion_classifier.safetensors"}
WEIGHTS = CLASSIFIERS["mnist"]
INPUT_SHAPE = (1, 28, 28)
FEATURES = 128
BATCH = 512
# Training recipe per dataset (train_classifier's defaults); mnist's is the one its shipped file was made with.
RECIPES = {"mnist": {"epochs": 3, "width": 16}, "fashion": {"epochs": 8, "width": 16}}


class Classifier(nn.Module):
    """Two 5x5 conv + max-pool blocks, a 128-unit feature layer, 10 logits. Input: N x 1 x 28 x 28 in [-1, 1]."""

    def __init__(self, width: int = 16, features: int = FEATURES, dataset: str = "mnist") -> None:
        super().__init__()
        self.width, self.feature_dim, self.dataset = width, features, dataset
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # 14 -> 7
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, features), nn.ReLU(),
        )
        self.head = nn.Linear(features, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10); differentiable, not batched."""
        return self.head(self.body(images))

    def _batched(self, images: torch.Tensor, fn, out_dim: int) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.dim() != 4 or tuple(images.shape[1:]) != INPUT_SHAPE:
            raise InputError(f"the {self.dataset} classifier takes images of shape (N, 1, 28, 28), "
                             f"got {tuple(images.shape)}")
        if len(images) == 0:
            return torch.zeros((0, out_dim))
        device = next(self.parameters()).device
        with torch.no_grad():
            return torch.cat([fn(images[i:i + BATCH].to(device, torch.float32).clamp(-1, 1)).cpu()
                              for i in range(0, len(images), BATCH)])

    def _proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(x), dim=1)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, 10) of NCHW images in [-1, 1]."""
        return self._batched(images, self._proba, 10)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted class (N,) as int64."""
        return self.predict_proba(images).argmax(1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations (N, 128): the feature space of the Fréchet and kernel distances."""
        return self._batched(images, self.body, self.feature_dim)


MnistClassifier = Classifier  # the name before there was one classifier per dataset


def check_dataset(dataset: str) -> str:
    """`dataset` if the project has a classifier for it, else a one-line InputError naming those it has."""
    if dataset not in CLASSIFIERS:
        raise InputError(f"no classifier for dataset {clip(str(dataset))!r}: the project has one for "
                         f"{', '.join(sorted(CLASSIFIERS))}")
    return dataset


@lru_cache(maxsize=len(CLASSIFIERS))
def _load(path: str, dataset: str) -> Classifier:
    from studio.safetensors_io import load_tensors, read_metadata

    if not Path(path).is_file():
        raise NotFound(f"classifier weights {path} are missing "
                       f"(run studio.classifier.train_classifier({dataset!r}))")
    metadata = read_metadata(path)
    if metadata.get("dataset", dataset) != dataset:
        raise StudioError(f"classifier weights {path} were trained on {metadata['dataset']!r}, not {dataset!r}")
    config = json.loads(metadata.get("config", "{}"))
    model = Classifier(width=int(config.get("width", 16)), features=int(config.get("features", FEATURES)),
                       dataset=dataset)
    model.load_state_dict(load_tensors(path))
    return model.eval().requires_grad_(False)


def load_classifier(dataset: str = "mnist") -> Classifier:
    """The shipped classifier of `dataset` (cached, eval mode, on the CPU)."""
    return _load(str(CLASSIFIERS[check_dataset(dataset)]), dataset)


def accuracy(model: Classifier, images: torch.Tensor, labels) -> float:
    """Share of `images` whose predicted class equals `labels`."""
    labels = torch.as_tensor(labels)
    return float((model.predict(images) == labels).float().mean())


def train_classifier(dataset: str = "mnist", settings: Settings | None = None, epochs: int | None = None,
                     seed: int = 0, out: str | Path | None = None, batch_size: int = 128, lr: float = 2e-3,
                     limit: int | None = None, threads: int = 1, progress: Progress = no_progress) -> dict:
    """Train the classifier of `dataset` on its train split (deterministic by seed) and write it to `out`
    (default: the shipped file). `epochs` defaults to the dataset's recipe.

    Light augmentation: each batch is shifted by up to 2 pixels (a seeded random roll per batch), so the
    classifier tolerates the small misalignments of generated images. Returns test accuracy and timing.
    """
    from studio.datasets import load_dataset
    from studio.safetensors_io import save_weights

    recipe = RECIPES[check_dataset(dataset)]
    epochs = recipe["epochs"] if epochs is None else epochs
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    out = CLASSIFIERS[dataset] if out is None else out
    settings = settings or load_settings()
    train_set = load_dataset(dataset, "train", limit=limit, settings=settings)
    test_set = load_dataset(dataset, "test", limit=limit, settings=settings)
    started = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # CPU kernels are deterministic for a fixed thread count
    try:
        torch.manual_seed(seed)
        model = Classifier(width=recipe["width"], dataset=dataset)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator("cpu").manual_seed(seed)
        images, labels = train_set.images, torch.from_numpy(train_set.labels)
        batches = math.ceil(len(images) / batch_size)
        total = epochs * batches
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        step, loss_sum = 0, 0.0
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(images), generator=gen)
            loss_sum = 0.0
            for b in range(batches):
                idx = order[b * batch_size:(b + 1) * batch_size]
                shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
                x = torch.roll(images[idx], shifts=shift, dims=(2, 3))
                loss = nn.functional.cross_entropy(model(x), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * len(idx)
                step += 1
                progress(step, total, f"epoch {epoch + 1}/{epochs}")
        model.eval()
        test_accuracy = round(accuracy(model, test_set.images, test_set.labels), 4)
    finally:
        torch.set_num_threads(old_threads)
    metrics = {"test_accuracy": test_accuracy, "train_loss": round(loss_sum / len(images), 4),
               "test_images": len(test_set), "train_images": len(train_set),
               "parameters": sum(p.numel() for p in model.parameters())}
    metadata = {"format": f"studio-{dataset}-classifier/1", "dataset": dataset, "epochs": str(epochs),
                "seed": str(seed),
                "config": json.dumps({"width": model.width, "features": model.feature_dim}, sort_keys=True),
                "metrics": json.dumps(metrics, sort_keys=True)}
    save_weights(out, {k: v.detach().contiguous() for k, v in model.state_dict().items()}, metadata)
    _load.cache_clear()
    return {**metrics, "seconds": round(time.perf_counter() - started, 1), "out": str(out)}
