"""SD live previews (the predicted clean image every few denoising steps, pixels unchanged) and inpainting (img2img
with a mask: per-step latent blend, then a pixel composite), on the shipped tiny model `mnist-fashion`."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from studio.errors import InputError
from studio.executor import execute

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "mnist-fashion"


@pytest.fixture(scope="module")
def backend(runtime):
    return runtime.get_backend("sd", MODEL)


def b64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def pixels(result, prefix: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(a.data)).convert("RGB"), dtype=np.float64)
            for a in sorted(result.artifacts, key=lambda a: a.name) if a.name.startswith(prefix)]


class Recorder:
    """A progress callback that keeps (step, total, message, preview)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, step: int, total: int, message: str = "", preview: object = None) -> None:
        self.calls.append((step, total, message, preview))

    def previews(self) -> list[tuple]:
        return [c for c in self.calls if c[3] is not None]


# ----- previews -----
def test_throttle_previews_early_then_within_the_budget():
    from studio_sd.previews import PreviewThrottle

    now = [0.0]
    throttle = PreviewThrottle(20, budget=0.1, clock=lambda: now[0])
    now[0] = 1.0  # one step took 1 s
    assert throttle.due(1)  # the first preview comes after the first step
    throttle.spend(1.0)  # ... and cost a step's time
    now[0] = 4.0  # 3 steps of denoising (1 s each) and the preview
    assert not throttle.due(3)  # 1 s of previews already, 0.3 s allowed
    now[0] = 21.0  # 20 steps' time: 2 s allowed, 1 s spent plus 1 s expected
    assert not throttle.due(20)  # never after the last step: the final images come at once
    now[0] = 23.0  # 22 s of denoising over 19 steps: 2.2 s allowed
    assert throttle.due(19)
    now[0] = 0.0
    short = PreviewThrottle(5, budget=0.1, clock=lambda: now[0])
    now[0] = 1.0
    assert not short.due(1)  # 5 steps: 0.5 s allowed, less than a step


def test_sd_sample_job_reports_previews_before_its_end_and_they_change_no_pixel(runtime, backend, monkeypatch):
    from studio.queue.jobs import preview_b64

    spec = {"op": "sample", "backend": "sd", "model": MODEL, "n": 2, "seed": 3,
            "options": {"prompt": "a shirt", "steps": 20}}
    seen = Recorder()
    with_previews = execute(spec, runtime, progress=seen)
    previews = seen.previews()
    assert previews, "no preview in a 20-step sd job"
    step, total, message, preview = previews[0]
    assert step < total and message == "denoising"
    assert tuple(preview.shape) == (1, *backend.image_shape(backend.parse_options({})))  # the first image only
    png = base64.b64decode(preview_b64(preview))  # what the queue stores (jobstore set_progress)
    assert Image.open(io.BytesIO(png)).size == (32, 32)
    last_preview = max(i for i, c in enumerate(seen.calls) if c[3] is not None)
    assert any(c[0] > step for c in seen.calls[last_preview + 1:]), "previews only at the very end"

    import studio_sd.previews

    monkeypatch.setattr(studio_sd.previews, "PREVIEW_BUDGET", 0.0)  # previews off
    seen_off = Recorder()
    without = execute(spec, runtime, progress=seen_off)
    assert not seen_off.previews()
    a, b = pixels(with_previews, "sample_"), pixels(without, "sample_")
    assert len(a) == 2 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_img2img_previews_leave_pixels_alone_for_each_scheduler(backend):
    o = backend.parse_options({"prompt": "a shoe", "steps": 12, "strength": 1.0})  # all 12 steps
    images = backend.decode({"noise": backend.sample_prior("noise", [5], o)}, o.model_copy(update={"steps": 2}))
    codec = backend.encode(images, o)
    for scheduler in ("ddim", "euler", "dpmpp"):
        opts = o.model_copy(update={"scheduler": scheduler})
        point = {**codec, "noise": backend.sample_prior("noise", [7], opts)}
        seen = Recorder()
        watched = backend.decode(point, opts, progress=seen)
        assert seen.previews(), scheduler
        assert torch.equal(watched, backend.decode(point, opts)), scheduler
        keep_all = torch.zeros(1, 1, *backend.size(opts))  # inpainting that keeps everything: the codec's own decode
        seen = Recorder()
        assert torch.equal(backend.decode({**point, "mask": keep_all}, opts, progress=seen), backend.decode(codec, o))
        assert seen.previews(), scheduler


# ----- inpainting -----
def _shirt_and_mask() -> tuple[Image.Image, Image.Image]:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((12, 8, 52, 56), fill=(230, 230, 230))
    mask = Image.new("L", (100, 100), 0)  # another size than the image: resized to it
    ImageDraw.Draw(mask).rectangle((0, 0, 49, 99), fill=255)  # the left half is redrawn
    return image, mask


def test_inpainting_keeps_the_unmasked_half_and_redraws_the_masked_one(runtime, backend, monkeypatch):
    from studio import images as imgs

    monkeypatch.setenv("STUDIO_OOD_CHECK", "off")  # its one-off calibration (about a minute here) is not the point

    image, mask = _shirt_and_mask()
    spec = {"op": "img2img", "backend": "sd", "model": MODEL, "image": {"png_b64": b64_png(image)}, "n": 2,
            "seed": 1, "options": {"prompt": "a bag", "steps": 10, "strength": 0.9}}
    masked = execute({**spec, "mask": {"png_b64": b64_png(mask)}}, runtime)
    plain = execute(spec, runtime)
    original = np.asarray(imgs.to_pil(imgs.to_tensor([image], (3, 32, 32)))[0].convert("RGB"), dtype=np.float64)
    assert masked.metrics["masked_share"] == pytest.approx(0.5, abs=0.05)
    for out, free in zip(pixels(masked, "img2img_"), pixels(plain, "img2img_"), strict=True):
        kept, redrawn = out[:, 18:], out[:, :14]  # away from the seam
        mse = float(((kept - original[:, 18:]) ** 2).mean())
        assert mse == 0 or 10 * np.log10(255.0 ** 2 / mse) > 30.0
        assert float(np.abs(redrawn - original[:, :14]).mean()) > 5.0  # the masked half changed
        assert not np.array_equal(out, free)  # ... and differs from an unmasked redraw
    assert "masked_share" not in plain.metrics


def test_the_mask_blends_every_step_in_latent_space(backend):
    o = backend.parse_options({"prompt": "a bag", "steps": 6, "strength": 0.9})
    codec = backend.encode(backend.decode({"noise": backend.sample_prior("noise", [4], o)},
                                          o.model_copy(update={"steps": 2})), o)
    point = {**codec, "noise": backend.sample_prior("noise", [9], o)}
    h, w = backend.size(o)
    plain = backend.decode(point, o)
    assert torch.equal(backend.decode({**point, "mask": torch.ones(1, 1, h, w)}, o), plain)  # all redrawn: as before
    kept = backend.decode({**point, "mask": torch.zeros(1, 1, h, w)}, o)
    assert torch.equal(kept, backend.decode(codec, o))  # nothing redrawn: the codec latent itself, step after step
    half = torch.zeros(1, 1, h, w)
    half[..., : w // 2] = 1
    mixed = backend.decode({**point, "mask": half}, o)
    assert not torch.equal(mixed, plain) and not torch.equal(mixed, kept)
    for bad, words in [(torch.ones(1, 1, h, w + 8), "expected \\(n, 1,"),
                       (torch.full((1, 1, h, w), 2.0), "in \\[0, 1\\]")]:
        with pytest.raises(InputError, match=words):
            backend.decode({**point, "mask": bad}, o)
    with pytest.raises(InputError, match="needs an img2img point"):
        backend.decode({**codec, "mask": torch.ones(1, 1, h, w)}, o)


def test_the_mask_is_checked_from_its_header_at_submit(settings):
    from studio.queue.client import StudioClient
    from studio.ui.testing import bomb_png_bytes

    image, _ = _shirt_and_mask()
    bomb = base64.b64encode(bomb_png_bytes(13000, 13000)).decode("ascii")
    with pytest.raises(InputError, match=r"^mask\.png_b64: 13000x13000 pixels"):
        StudioClient(settings).submit({"op": "img2img", "backend": "sd", "image": {"png_b64": b64_png(image)},
                                       "mask": {"png_b64": bomb}})
