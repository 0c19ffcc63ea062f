"""Backbone registry and config validation."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from freqd.errors import ConfigError
from freqd.models import BACKBONES, backbone_config, build_backbone
from freqd.models.lightgcn import LightGCNConfig
from freqd.models.mf import MF, MFConfig


def train() -> sp.csr_matrix:
    return sp.csr_matrix((np.random.default_rng(0).random((5, 7)) < 0.4).astype(np.float32))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_build_each_backbone(name):
    m = build_backbone(name, 5, 7, {"dim": 3}, train())
    assert m.name == name and m.dim == 3
    u, i = m.propagate()
    assert u.shape == (5, 3) and i.shape == (7, 3)


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="mf, lightgcn, simplex"):
        build_backbone("ngcf", 5, 7, None, train())


def test_strict_config():
    with pytest.raises(ConfigError, match="'model.n_layer'.*did you mean 'model.n_layers'"):
        backbone_config("lightgcn", {"n_layer": 2})
    with pytest.raises(ConfigError, match="'dim'"):
        backbone_config("mf", {"dim": 0})
    with pytest.raises(ConfigError, match="'margin'"):
        backbone_config("simplex", {"margin": 1.5})
    with pytest.raises(ConfigError, match="expects a MFConfig"):
        build_backbone("mf", 5, 7, LightGCNConfig(), train())
    cfg = backbone_config("lightgcn", {"dim": "64", "n_layers": "4"})
    assert cfg == LightGCNConfig(dim=64, n_layers=4)


def test_config_object_and_sparse_grad_flag():
    m = build_backbone("mf", 5, 7, MFConfig(dim=4, sparse_grad=True), train())
    assert isinstance(m, MF) and m.sparse_grad and m.user_emb.sparse
