"""The Explore tab's interactive scatter: an SVG map of projected latents in a gr.HTML component.

Hovering a point shows its image (fetched through a server function, cached in the page); clicking a point
triggers the component's `click` event with `{"index": i}` so Python can show it large.
"""

from __future__ import annotations

import base64
import html
import io
import threading
from collections import OrderedDict
from collections.abc import Sequence

from studio.config import Settings
from studio.errors import InputError

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
UNLABELLED = "#9ca3af"
WIDTH, HEIGHT, MARGIN = 640, 480, 14

SCATTER_JS = """
const tip = () => element.querySelector('.ls-tip');
const cache = {};
element.addEventListener('mouseover', async (event) => {
  const dot = event.target.closest('circle[data-i]');
  const box = element.querySelector('.ls-scatter');
  if (!dot || !box || !tip()) return;
  const i = dot.dataset.i;
  const t = tip();
  t.dataset.i = i;
  t.querySelector('.ls-tip-text').textContent = '#' + i + ' · ' + dot.dataset.c;
  const area = box.getBoundingClientRect();
  t.style.left = Math.min(event.clientX - area.left + 14, area.width - 110) + 'px';
  t.style.top = Math.max(event.clientY - area.top - 100, 0) + 'px';
  t.style.display = 'block';
  const key = box.dataset.dataset + '|' + box.dataset.split + '|' + i;
  if (!(key in cache)) {
    cache[key] = server.thumbnail(key).catch(() => '');
  }
  const url = await cache[key];
  if (t.dataset.i === i && url) t.querySelector('img').src = url;
});
element.addEventListener('mouseout', (event) => {
  if (event.target.closest('circle[data-i]') && tip()) tip().style.display = 'none';
});
element.addEventListener('click', (event) => {
  const dot = event.target.closest('circle[data-i]');
  if (!dot) return;
  element.querySelectorAll('circle.ls-picked').forEach((c) => c.classList.remove('ls-picked'));
  dot.classList.add('ls-picked');
  trigger('click', {index: Number(dot.dataset.i)});
});
"""

SCATTER_CSS = """
.ls-scatter { position: relative; }
.ls-scatter svg { width: 100%; height: auto; background: var(--block-background-fill);
  border: 1px solid var(--border-color-primary); border-radius: 8px; }
.ls-scatter circle { cursor: pointer; fill-opacity: 0.8; }
.ls-scatter circle:hover { stroke: #111; stroke-width: 2; fill-opacity: 1; }
.ls-scatter circle.ls-picked { stroke: #000; stroke-width: 3; fill-opacity: 1; }
.ls-tip { position: absolute; display: none; pointer-events: none; background: var(--background-fill-primary);
  border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 4px;
  box-shadow: 0 4px 14px rgba(0,0,0,.18); z-index: 10; text-align: center; font-size: 12px; }
.ls-tip img { width: 84px; height: 84px; image-rendering: pixelated; display: block; background: #000; }
.ls-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin-top: 6px; font-size: 13px; }
.ls-legend span::before { content: ''; display: inline-block; width: 10px; height: 10px; border-radius: 50%;
  margin-right: 5px; background: var(--c); }
.ls-empty { padding: 48px 16px; text-align: center; color: var(--body-text-color-subdued);
  border: 1px dashed var(--border-color-primary); border-radius: 8px; }
"""


def empty_scatter(message: str = "Run a projection to see the map of the latent space.") -> str:
    return f'<div class="ls-empty">{html.escape(message)}</div>'


def _class_name(label: int, classes: Sequence[str]) -> str:
    if 0 <= label < len(classes):
        return str(classes[label])
    return "unlabelled" if label < 0 else str(label)


def scatter_html(coords: Sequence[Sequence[float]], labels: Sequence[int], classes: Sequence[str], dataset: str,
                 split: str, title: str = "") -> str:
    """The SVG scatter (points coloured by label) with a legend and a hover tooltip holder."""
    if not coords:
        return empty_scatter("The projection is empty.")
    xs = [float(c[0]) for c in coords]
    ys = [float(c[1]) for c in coords]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (WIDTH - 2 * MARGIN) / ((x1 - x0) or 1.0)
    sy = (HEIGHT - 2 * MARGIN) / ((y1 - y0) or 1.0)
    radius = 4.0 if len(xs) <= 1000 else 3.0 if len(xs) <= 4000 else 2.2
    dots = []
    for i, (x, y, label) in enumerate(zip(xs, ys, labels, strict=True)):
        colour = PALETTE[label % len(PALETTE)] if label >= 0 else UNLABELLED
        name = html.escape(_class_name(int(label), classes), quote=True)
        dots.append(f'<circle data-i="{i}" data-c="{name}" cx="{MARGIN + (x - x0) * sx:.1f}" '
                    f'cy="{HEIGHT - MARGIN - (y - y0) * sy:.1f}" r="{radius}" fill="{colour}"/>')
    present = sorted(set(int(v) for v in labels))
    legend = "".join(f'<span style="--c:{PALETTE[v % len(PALETTE)] if v >= 0 else UNLABELLED}">'
                     f'{html.escape(_class_name(v, classes))}</span>' for v in present[:30])
    caption = f'<div class="ls-caption">{html.escape(title)}</div>' if title else ""
    return (f'<div class="ls-scatter" data-dataset="{html.escape(dataset, quote=True)}" '
            f'data-split="{html.escape(split, quote=True)}">{caption}'
            f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg" role="img" '
            f'aria-label="latent map">{"".join(dots)}</svg>'
            f'<div class="ls-legend">{legend}</div>'
            '<div class="ls-tip"><img alt=""/><div class="ls-tip-text"></div></div></div>')


class DatasetImages:
    """Dataset images for the page (hover thumbnails, anomaly galleries), kept in a small LRU of splits."""

    def __init__(self, settings: Settings, capacity: int = 4) -> None:
        self.settings = settings
        self.capacity = capacity
        self._lock = threading.Lock()
        self._splits: OrderedDict[tuple[str, str], object] = OrderedDict()

    def _dataset(self, dataset: str, split: str) -> tuple:
        """(uint8 pixels, labels, classes) of a split, kept for the next hovers (no torch in the UI process)."""
        from studio.datasets import load_arrays

        key = (dataset, split)
        with self._lock:
            if key in self._splits:
                self._splits.move_to_end(key)
                return self._splits[key]
        ds = load_arrays(dataset, split, settings=self.settings)
        with self._lock:
            self._splits[key] = ds
            while len(self._splits) > self.capacity:
                self._splits.popitem(last=False)
        return ds

    def image(self, dataset: str, split: str, index: int, scale: int = 1):
        """One dataset image as PIL (upscaled with nearest neighbours by `scale`) and its class name."""
        from PIL import Image

        if split not in ("train", "test"):
            raise InputError(f"unknown split {split!r}")
        pixels, labels, classes = self._dataset(dataset, split)
        index = int(index)
        if not 0 <= index < len(pixels):
            raise InputError(f"index {index} is outside dataset {dataset!r} {split} (0..{len(pixels) - 1})")
        im = Image.fromarray(pixels[index])
        if scale > 1:
            im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
        return im, _class_name(int(labels[index]), classes)

    def thumbnail(self, dataset: str, split: str, index: int) -> str:
        """A PNG data URI of one dataset image, for the hover tooltip."""
        im, _ = self.image(dataset, split, index, scale=3)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
