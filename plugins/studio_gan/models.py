"""Networks of the GAN plugin: the PyTorch-DCGAN-tutorial generator (any size), its discriminator, and a
small encoder that predicts z from an image to initialise inversion.

The generator keeps the tutorial's layout exactly (`main.0` ConvTranspose, `main.1` BatchNorm, `main.2`
ReLU, ...), so tutorial checkpoints load unchanged. The first layer's kernel is the starting resolution
(4 in the tutorial, 7 for 28x28 MNIST); every further layer doubles it.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import GeneratorConfig

__all__ = ["Discriminator", "Encoder", "Generator", "GeneratorConfig", "init_dcgan_weights"]


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
