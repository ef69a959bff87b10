"""The fully connected autoencoder of DEC / Agarap & Azcarraga / N2D.

d - 500 - 500 - 2000 - c - 2000 - 500 - 500 - d, ReLU hidden layers.  The
code and output layers are logistic for the SNNL autoencoder (reconstruction
scored with binary cross-entropy on [0, 1] pixels) and linear for N2D (MSE).
A ``"unit"`` code is linear and then scaled to unit length: the label-free
SNNL presets compare codes by their cosine, so their geometry is the
sphere's, and k-means on unit codes clusters by that same similarity.

Initialisation (``init``), biases always at zero:
- ``"he"``: He (Kaiming normal) on the ReLU layers, Xavier uniform on the
  others; the SNNL autoencoder's default.
- ``"glorot"``: Xavier (Glorot) uniform on every layer, the default of
  Keras' ``Dense`` and so of N2D's own code (rymc/n2d).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from . import validate
from .choices import CODE_ACTIVATIONS, INITS, OUTPUT_ACTIVATIONS

UNIT_EPS = 1e-12  # a code of length zero stays zero instead of becoming NaN


class Autoencoder(nn.Module):
    def __init__(
        self,
        input_dim: int,
        code_dim: int = 70,
        hidden: tuple[int, ...] = (500, 500, 2000),
        code_activation: str = "sigmoid",
        output_activation: str = "sigmoid",
        init: str = "he",
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        validate.choice("code_activation", code_activation, CODE_ACTIVATIONS)
        validate.choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        self.input_dim = validate.integer("input_dim", input_dim)
        self.code_dim = validate.integer("code_dim", code_dim)
        self.hidden = tuple(validate.integer("hidden width", h) for h in hidden)
        self.code_activation, self.output_activation, self.init = code_activation, output_activation, init
        widths = [self.input_dim, *self.hidden, self.code_dim, *reversed(self.hidden), self.input_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.code_index = len(self.hidden)  # the layer whose output is the code
        for index, layer in enumerate(self.layers):
            assert isinstance(layer, nn.Linear)
            if init == "he" and self._activation(index) == "relu":
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _activation(self, index: int) -> str:
        if index == self.code_index:
            return self.code_activation
        if index == len(self.layers) - 1:
            return self.output_activation
        return "relu"

    def _activate(self, index: int, x: torch.Tensor) -> torch.Tensor:
        kind = self._activation(index)
        if kind == "relu":
            return torch.relu(x)
        if kind == "sigmoid":
            return torch.sigmoid(x)
        if kind == "unit":
            return torch.nn.functional.normalize(x, dim=-1, eps=UNIT_EPS)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the output layer's pre-activation (logits for a logistic output,
        the reconstruction for a linear one) and every hidden layer's activations
        (the code among them, at ``code_index``)."""
        hidden: list[torch.Tensor] = []
        for index, layer in enumerate(self.layers):
            pre = layer(x)
            if index == len(self.layers) - 1:
                return pre, hidden
            x = self._activate(index, pre)
            hidden.append(x)
        raise AssertionError("unreachable")

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self(x)
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(self.code_index + 1):
            x = self._activate(index, self.layers[index](x))
        return x

    def config(self) -> dict:
        return {
            "input_dim": self.input_dim,
            "code_dim": self.code_dim,
            "hidden": list(self.hidden),
            "code_activation": self.code_activation,
            "output_activation": self.output_activation,
            "init": self.init,
        }


@torch.no_grad()
def encode_in_batches(
    model: Autoencoder, x, *, batch_size: int = 4096, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Codes of ``x`` (numpy or tensor, any device) computed batch by batch; returned on the CPU in float32.

    ``dtype``: what the layers compute in.  float64 makes each row's code
    independent of the other rows in its batch: a float32 matrix product's
    last bit depends on where a row falls among the threads' and the kernel's
    row blocks, which a float64 product rounded to float32 all but never shows
    (scikit-learn's estimator checks compare ``transform`` of permuted rows
    exactly, to rtol 1e-7).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    encoder = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    x = torch.as_tensor(x)
    out = [
        encoder.encode(x[i : i + batch_size].to(device, dtype)).to(torch.float32).cpu()
        for i in range(0, len(x), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, int(model.code_dim))
