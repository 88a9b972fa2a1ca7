"""Networks of the GAN plugin: the PyTorch-DCGAN-tutorial generator (any size), its discriminator, and a
small encoder that predicts z from an image to initialise inversion.

The generator keeps the tutorial's layout exactly (`main.0` ConvTranspose, `main.1` BatchNorm, `main.2`
ReLU, ...), so tutorial checkpoints load unchanged. The first layer's kernel is the starting resolution
(4 in the tutorial, 7 for 28x28 MNIST); every further layer doubles it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of a DCGAN-tutorial generator: latent size, base width, channels, output size, first kernel."""

    nz: int = 100
    ngf: int = 64
    nc: int = 3
    size: int = 64
    start: int = 4
    mapping: int = 0  # hidden layers of an optional MLP z -> z' before the tutorial stack (0: none, the tutorial)
    mapping_width: int = 0

    @property
    def n_up(self) -> int:
        """Number of stride-2 upsampling layers after the first layer."""
        n, s = 0, self.start
        while s < self.size:
            s, n = s * 2, n + 1
        return n

    def validate(self) -> None:
        if min(self.nz, self.ngf, self.nc, self.size, self.start) < 1:
            raise ValueError(f"generator config has a non-positive field: {self}")
        if self.nc not in (1, 3):
            raise ValueError(f"generator must make 1 or 3 channels, not {self.nc}")
        if self.start * 2 ** self.n_up != self.size or self.n_up < 1:
            raise ValueError(f"size {self.size} is not start {self.start} times a power of two")
        if self.size > 512 or self.nz > 4096 or self.ngf > 1024 or self.mapping > 16 or self.mapping_width > 8192:
            raise ValueError(f"generator config is implausibly large: {self}")
        if min(self.mapping, self.mapping_width) < 0 or (self.mapping > 0) != (self.mapping_width > 0):
            raise ValueError(f"mapping layers and width must both be 0 or both positive: {self}")

    def widths(self) -> list[int]:
        """Channel counts after each layer, ending with the image channels."""
        return [self.ngf * 2 ** (self.n_up - 1 - i) for i in range(self.n_up)] + [self.nc]

    def metadata(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> GeneratorConfig:
        cfg = cls(**{k: int(meta[k]) for k in ("nz", "ngf", "nc", "size", "start", "mapping", "mapping_width")
                     if k in meta})
        cfg.validate()
        return cfg


class Generator(nn.Module):
    """The DCGAN-tutorial generator: z (N, nz) -> images (N, nc, size, size) in [-1, 1].

    With `config.mapping` > 0, a small MLP (`mapping.*`, as in StyleGAN's mapping network) first maps z to
    the stack's input; it lets the generator cut the Gaussian latent into sharper regions (one per digit).
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        widths = config.widths()
        layers: list[nn.Module] = [nn.ConvTranspose2d(config.nz, widths[0], config.start, 1, 0, bias=False)]
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.BatchNorm2d(c_in), nn.ReLU(True), nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)]
        layers.append(nn.Tanh())
        self.main = nn.Sequential(*layers)
        self.mapping: nn.Sequential | None = None
        if config.mapping:
            mlp: list[nn.Module] = []
            width = config.nz
            for _ in range(config.mapping):
                mlp += [nn.Linear(width, config.mapping_width), nn.LeakyReLU(0.2, True)]
                width = config.mapping_width
            mlp.append(nn.Linear(width, config.nz))
            self.mapping = nn.Sequential(*mlp)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.reshape(z.shape[0], -1)
        if self.mapping is not None:
            z = self.mapping(z)
        return self.main(z.reshape(z.shape[0], -1, 1, 1))


class MinibatchStd(nn.Module):
    """Appends one channel holding the mean standard deviation of the batch's features (ProGAN), which lets
    the discriminator see a batch's lack of variety and so counters mode collapse."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = x.std(dim=0, unbiased=False).mean() if x.shape[0] > 1 else x.new_zeros(())
        return torch.cat([x, std.expand(x.shape[0], 1, *x.shape[2:])], dim=1)


class Discriminator(nn.Module):
    """A DCGAN discriminator mirroring the generator, with a minibatch-std channel.

    Returns one real/fake logit per image and, when `n_classes` > 0, class logits from an auxiliary head
    (AC-GAN style) that shares the discriminator's features.
    """

    def __init__(self, config: GeneratorConfig, ndf: int, n_classes: int = 0, extra_layers: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(config.nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(config.n_up - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                       nn.LeakyReLU(0.2, True)]
            width *= 2
        for _ in range(extra_layers):  # 3x3 layers at the lowest resolution: a less linear judgement of shape
            layers += [nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2, True)]
        self.body = nn.Sequential(*layers, MinibatchStd())
        self.head = nn.Conv2d(width + 1, 1 + n_classes, config.start, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.body(x)).flatten(1)
        return out[:, 0], out[:, 1:]


class Encoder(nn.Module):
    """A small CNN image -> z, trained on generator samples; its output initialises inversion."""

    def __init__(self, config: GeneratorConfig, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c, s = config.nc, width, config.size
        while s > config.start:
            layers += [nn.Conv2d(c_in, c, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            c_in, c, s = c, c * 2, s // 2
        layers += [nn.Flatten(), nn.Linear(c_in * s * s, 256), nn.LeakyReLU(0.2, True), nn.Linear(256, config.nz)]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def init_dcgan_weights(module: nn.Module) -> None:
    """The DCGAN paper's initialisation: conv weights N(0, 0.02), batch-norm weights N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
