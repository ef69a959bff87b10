"""The encoders behind one interface (snnl.encoders): the experiment and the estimator hold either."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from snnl import choices
from snnl.autoencoder import encode_in_batches
from snnl.data import load_dataset
from snnl.encoders import ENCODERS, AutoencoderEncoder, PCAEncoder, fit_encoder
from snnl.train.config import preset


def test_every_method_has_an_encoder():
    assert tuple(ENCODERS) == choices.METHODS


@pytest.mark.parametrize("name", ["original", "baseline-ae"])
def test_fit_encoder_gives_what_the_method_computes(name):
    data = load_dataset("digits", "train")
    x = data.x[:300]
    config = preset(name, epochs=2, code_dim=8, hidden=(32,))
    encoder = fit_encoder(x, data.y[:300], config, seed=3, progress=False)
    codes = encoder.encode(x)
    assert codes.shape == (300, 8) and codes.dtype == np.float32
    if name == "original":
        assert isinstance(encoder, PCAEncoder) and encoder.history == []
        np.testing.assert_array_equal(codes, PCA(8, random_state=3).fit(x).transform(x).astype(np.float32))
    else:
        assert isinstance(encoder, AutoencoderEncoder) and len(encoder.history) == 2
        assert torch.equal(torch.from_numpy(codes), encode_in_batches(encoder.model, x))
        wide = encoder.encode(x, dtype=torch.float64)
        np.testing.assert_allclose(wide, codes, rtol=0, atol=1e-5)
