"""Every backbone gives the same losses and gradients on CUDA as on the CPU (skipped
without a GPU)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from freqd.data.sampling import TrainSampler
from freqd.models import build_backbone

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("name,cfg", [
    ("mf", {"dim": 16}),
    ("mf", {"dim": 16, "sparse_grad": True}),
    ("lightgcn", {"dim": 16, "n_layers": 3}),
    ("simplex", {"dim": 16, "n_neg": 50, "history_len": 7, "neg_scoring": "gather"}),
    ("simplex", {"dim": 16, "n_neg": 50, "history_len": 7, "neg_scoring": "full"}),
])
def test_cuda_matches_cpu(name, cfg):
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((60, 90)) < 0.1).astype(np.float32))
    torch.manual_seed(0)
    cpu = build_backbone(name, 60, 90, cfg, train).double()
    torch.manual_seed(0)
    gpu = build_backbone(name, 60, 90, cfg, train).double().cuda()
    batch = next(TrainSampler(train, 32, n_neg=cpu.n_neg, seed=0).epoch())
    out_c = cpu.loss(batch, cpu.propagate())
    out_g = gpu.loss({k: v.cuda() for k, v in batch.items()}, gpu.propagate())
    assert torch.allclose(out_c["loss"], out_g["loss"].cpu())
    out_c["loss"].backward()
    out_g["loss"].backward()
    for (n, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
        gc, gg = pc.grad, pg.grad
        if gc.is_sparse:
            gc, gg = gc.to_dense(), gg.to_dense()
        assert torch.allclose(gc, gg.cpu()), n
    with torch.no_grad():
        users = torch.arange(10)
        s_c = cpu.score(users, cpu.propagate())
        s_g = gpu.score(users.cuda(), gpu.propagate())
    assert torch.allclose(s_c, s_g.cpu())
    if name == "simplex":
        gpu.eval()
        assert torch.allclose(gpu.user_tower(users.cuda()), gpu.propagate()[0][users.cuda()])
