"""UMAP without numba's compilation in every new process: its compiled code is cached under STUDIO_HOME.

umap-learn and pynndescent (its nearest neighbours) compile their numba functions in each new process: ~40 s of
CPU here. numba can keep compiled code on disk, but only for functions declared `cache=True`, and most of umap's
are not. `import_umap(settings)` points numba's cache at `Settings.numba_cache_path` (`<STUDIO_HOME>/cache/numba`)
and imports umap with the functions its modules define at import time declared cached, so a later process loads
them instead of compiling them. pynndescent's approximate neighbour search can never be cached (it takes its
distance function as an argument), so `fit_transform` hands umap exact neighbours instead (scikit-learn, ~1 s for
10000 rows). `warm(settings)` runs a small fit that compiles (or loads) everything a real projection needs; a
worker runs it when it starts (studio.queue.warmup), in a low-priority child process.

A cache folder that cannot be written (a read-only home, a file in the way) costs only time: umap is then imported
exactly as it would be without this module and compiles in each process. A `NUMBA_CACHE_DIR` set by the user is
respected. numba reads its cache folder when a function is defined, so all this must happen before the first
`import umap` of the process (after it, `import_umap` just returns the module).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from studio.config import Settings

log = logging.getLogger("studio.umap")
CACHED_PACKAGES = ("umap", "pynndescent")  # the modules whose import-time numba functions get cache=True
WARM_POINTS = 300  # a warm-up fit: small, and the same code path as a projection of any size within the budget
EXACT_KNN_FLOPS = 2e11  # exact neighbours while rows^2 * dims stays under this (10000 rows of up to 2000 dims)
_lock = threading.RLock()
_state: dict[str, object] = {}


def _writable(folder: Path) -> bool:
    """Whether files can be created in `folder` (made if missing): tried for real, permissions alone can lie."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def configure(settings: Settings) -> Path | None:
    """Point numba's disk cache at `settings.numba_cache_path`, unless NUMBA_CACHE_DIR is already set. Returns the
    folder numba caches in, or None when it is not writable (numba then keeps its own default and nothing is
    forced into caching). Call it before numba is imported; after, it sets numba's config directly."""
    with _lock:
        chosen = os.environ.get("NUMBA_CACHE_DIR") or str(settings.numba_cache_path)
        folder = Path(chosen).expanduser()
        if not _writable(folder):
            log.info("numba cache %s is not writable: umap compiles in each process", folder)
            return None
        os.environ["NUMBA_CACHE_DIR"] = str(folder)
        numba_config = sys.modules.get("numba.core.config")
        if numba_config is not None:
            numba_config.CACHE_DIR = str(folder)  # type: ignore[attr-defined]
        return folder


def _from_cached_package() -> bool:
    frame = sys._getframe(2)  # the caller of the patched decorator
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return any(name == p or name.startswith(p + ".") for p in CACHED_PACKAGES)


def _caching(original: Callable, seen: set[int]) -> Callable:
    """`numba.jit`/`numba.njit` that adds cache=True for the functions umap's and pynndescent's modules define.

    A Python function compiled twice with different options (umap wraps one as a serial and a parallel kernel) is
    cached only the first time: numba's cache keys do not tell such twins apart."""

    def patched(*args: object, **kwargs: object) -> object:
        if "cache" in kwargs or not _from_cached_package():
            return original(*args, **kwargs)
        if args and callable(args[0]):  # njit(func, ...)
            if id(args[0]) in seen:
                return original(*args, **kwargs)
            seen.add(id(args[0]))
            return original(*args, cache=True, **kwargs)
        decorator = original(*args, **kwargs)
        cached = original(*args, cache=True, **kwargs)

        def apply(func: Callable) -> object:
            if id(func) in seen:
                return decorator(func)
            seen.add(id(func))
            return cached(func)

        return apply

    return patched


def import_umap(settings: Settings) -> ModuleType:
    """`umap`, imported with its compiled code cached under `settings.numba_cache_path` when that is writable."""
    with _lock:
        module = sys.modules.get("umap")
        if module is not None and "umap" in _state:
            return module
        folder = configure(settings)
        if module is None and folder is not None:
            import numba

            seen: set[int] = set()
            saved = numba.jit, numba.njit
            numba.jit, numba.njit = _caching(numba.jit, seen), _caching(numba.njit, seen)
            try:
                import umap
            finally:
                numba.jit, numba.njit = saved
        else:
            import umap
        _state["umap"] = folder
        return umap


def exact_neighbours(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest rows of each row (itself first), exactly: (indices int32, distances float32), as umap's
    nearest-neighbour search returns them."""
    from sklearn.neighbors import NearestNeighbors

    dists, indices = NearestNeighbors(n_neighbors=k).fit(features).kneighbors(features)
    return indices.astype(np.int32), dists.astype(np.float32)


def fit_transform(features: np.ndarray, seed: int, settings: Settings) -> np.ndarray:
    """UMAP's 2-D embedding of `features` (rows), deterministic for `seed` (single-threaded, as umap makes it).

    The neighbours are found exactly (scikit-learn) while that costs at most EXACT_KNN_FLOPS, and handed to umap:
    pynndescent's approximate search, which umap uses from 4096 rows on, takes its distance function as an
    argument, so numba can never cache it and a new process would compile it again (~35 s of CPU here). Beyond
    the budget, umap searches as usual."""
    umap = import_umap(settings)
    features = np.ascontiguousarray(features, dtype=np.float32)
    n, d = features.shape
    k = min(15, n - 1)
    knn: tuple = (None, None, None)
    if float(n) * n * max(d, 1) <= EXACT_KNN_FLOPS:
        knn = (*exact_neighbours(features, k), None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")  # no transform of new data: none needed
        warnings.filterwarnings("ignore", message=".*Cannot cache compiled function.*")  # pynndescent's, said above
        return umap.UMAP(n_components=2, n_neighbors=k, random_state=seed, n_jobs=1,
                         precomputed_knn=knn).fit_transform(features)


def _marker(folder: Path) -> Path:
    from importlib.metadata import version

    try:
        tag = f"umap-{version('umap-learn')}-numba-{version('numba')}-py{sys.version_info[0]}{sys.version_info[1]}"
    except Exception:  # noqa: BLE001 - metadata missing: never counts as warm
        tag = "unknown"
    return folder / f"warm-{tag}.ok"


def is_warm(folder: Path) -> bool:
    """Whether `warm` has filled this numba cache folder for the installed umap and numba."""
    return _marker(folder).is_file()


def warm(settings: Settings, dim: int = 16) -> float:
    """Compile (first time) or load (later) what a projection needs, by a small fit on random float32 rows (the
    same code path as any size within the exact-neighbours budget); its seconds. Marks the cache folder warm (see
    `is_warm`) when it could be written."""
    started = time.perf_counter()
    fit_transform(np.random.default_rng(0).normal(size=(WARM_POINTS, dim)).astype(np.float32), 0, settings)
    folder = _state.get("umap")
    if isinstance(folder, Path):
        try:
            _marker(folder).write_text(f"{time.perf_counter() - started:.1f} s\n")
        except OSError:
            pass
    return time.perf_counter() - started


__all__ = ["configure", "fit_transform", "import_umap", "is_warm", "warm"]


if __name__ == "__main__":  # python -m studio.ops.umap_cache: fill the cache of $STUDIO_HOME (a worker runs this)
    from studio.config import load_settings

    print(f"UMAP warm in {warm(load_settings()):.1f} s")
