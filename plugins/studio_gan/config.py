"""Torch-free configs of the GAN plugin: a generator's shape (read from weights metadata for listing) and the
inversion settings (the defaults of the backend's options)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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


@dataclass(frozen=True)
class InversionSettings:
    """Inversion's optimiser settings (see studio_gan.invert)."""

    steps: int = 60
    restarts: int = 4
    lr: float = 0.08
    feature_weight: float = 0.05
    prior_weight: float = 0.05
    init_jitter: float = 0.3
