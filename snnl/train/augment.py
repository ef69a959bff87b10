"""Random views of a batch, for label-free SNNL: seeded, reproducible, on the batch's device.

An image view is a small random affine warp (rotation within +-15 degrees,
scale within +-10%, shift within 1/9 of the side: +-3 pixels of a 28 x 28
image) resampled bilinearly with zero padding, as garments and digits move
and tilt a little between photographs without changing class; no flips
(Fashion-MNIST's shoes all face one way, and a flipped 2 is no digit).  A
tabular view, for data without an image shape, drops each feature with
probability 0.1 and adds Gaussian noise of 0.05 of each feature's scale.
Both draw every random number from the ``generator`` given, so a seed
fixes the views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ROTATION_DEGREES = 15.0
SCALE = 0.1
SHIFT = 1 / 9  # of the image side
FEATURE_DROPOUT = 0.1
NOISE = 0.05


def _uniform(generator: torch.Generator, *shape) -> torch.Tensor:
    """U(-1, 1), drawn on the CPU: one generator for every device."""
    return torch.rand(*shape, generator=generator) * 2 - 1


def draw(kind: str, n: int, features: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The random numbers of ``n`` views (``kind``: "image" or "tabular"), drawn
    apart from their use so that under torch.distributed every process draws
    those of the whole global batch and applies its own rows' (``select``)."""
    if kind == "image":
        return (
            _uniform(generator, n) * math.radians(ROTATION_DEGREES),
            1 + _uniform(generator, n) * SCALE,
            _uniform(generator, n, 2) * (2 * SHIFT),
        )  # affine_grid's coordinates span [-1, 1]
    return torch.rand(n, features, generator=generator) >= FEATURE_DROPOUT, torch.randn(
        n, features, generator=generator
    )


def select(draws: tuple[torch.Tensor, ...], rows) -> tuple[torch.Tensor, ...]:
    return tuple(d[rows] for d in draws)


def image_views(x: torch.Tensor, image_shape: tuple[int, int], draws) -> torch.Tensor:
    """A random affine view of each row of ``x`` (images of ``image_shape``, values in [0, 1])."""
    angle, scale, shift = (d.to(x.device, x.dtype) for d in draws)
    images = x.reshape(x.shape[0], 1, *image_shape)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return views.reshape(x.shape[0], -1).clamp(0, 1)


def tabular_views(x: torch.Tensor, scale: torch.Tensor, draws) -> torch.Tensor:
    """Each row with features dropped (set to 0) and noise of ``NOISE`` times
    each feature's spread ``scale`` (the training data's standard deviation) added."""
    kept, noise = (d.to(x.device, x.dtype) for d in draws)
    return x * kept + NOISE * scale.to(x.device, x.dtype) * noise


def kind_of(image_shape: tuple[int, int] | None, features: int) -> str:
    """Image views for rows that are images, tabular ones otherwise."""
    return "image" if image_shape is not None and image_shape[0] * image_shape[1] == features else "tabular"
