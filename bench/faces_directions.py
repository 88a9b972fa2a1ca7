"""What the first discovered directions do on the faces GAN: writes docs/faces-directions.png.

GANSpace directions (studio.ops.discover, method `features`) of `gan --model faces`, the same ones
`studio vectors discover --backend gan --model faces --k K --n N` stores. The image has one block per direction
(directions 0 .. rows-1, top to bottom); in each block, one row per seed, columns are strengths from -s to +s
(the centre column is the unedited sample).

Run: STUDIO_HOME=/tmp/x .venv/bin/python bench/faces_directions.py [--rows 6] [--seeds 0,1,2] [--out PATH]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=6, help="directions shown")
    parser.add_argument("--seeds", default="3,7,11")
    parser.add_argument("--strength", type=float, default=4.0)
    parser.add_argument("--columns", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "faces-directions.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    from studio import images as imgs
    from studio.config import load_settings
    from studio.executor import Runtime
    from studio.ops.discover import discover
    from studio.ops.edit import apply_vector

    backend = Runtime(load_settings()).get_backend("gan", "faces")
    started = time.perf_counter()
    found = discover(backend, args.k, "features", n=args.n, seed=0)
    print(f"discovered {args.k} directions from {found.n} samples in {time.perf_counter() - started:.1f} s; "
          f"explained variance {[round(e, 4) for e in found.explained]}")
    seeds = [int(s) for s in args.seeds.split(",")]
    strengths = torch.linspace(-args.strength, args.strength, args.columns).tolist()
    space = found.space
    base = {space: backend.sample_prior(space, seeds)}
    blocks = []
    for i in range(args.rows):
        frames = imgs.to_pil(backend.decode(apply_vector(base, space, found.directions[i], strengths)))
        block = imgs.grid(frames, cols=args.columns)
        labelled = Image.new("RGB", (block.width + 40, block.height), (32, 32, 32))
        labelled.paste(block, (40, 0))
        ImageDraw.Draw(labelled).text((4, block.height // 2 - 6), f"pc{i}", fill=(230, 230, 230))
        blocks.append(labelled)
    sheet = Image.new("RGB", (blocks[0].width, sum(b.height + 6 for b in blocks)), (255, 255, 255))
    y = 0
    for b in blocks:
        sheet.paste(b, (0, y))
        y += b.height + 6
    sheet.save(args.out)
    print(f"wrote {args.out}: directions pc0-pc{args.rows - 1}, seeds {seeds}, strengths "
          f"{[round(s, 2) for s in strengths]}")


if __name__ == "__main__":
    main()
