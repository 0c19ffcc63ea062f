"""train.precision=bf16: the step's forward under torch.autocast (bfloat16), sparse products in
float32, parameters and optimizer state in float32, the same loss to bfloat16 rounding."""
from __future__ import annotations

import pytest
import torch

from freqd.errors import ConfigError
from freqd.experiments.bench import config_hash
from freqd.runs import same_config
from freqd.train.config import TrainConfig
from freqd.utils.numerics import sparse_mm


def test_option_is_validated():
    with pytest.raises(ConfigError, match="train.precision"):
        TrainConfig(precision="fp16")
    assert TrainConfig(precision="bf16").precision == "bf16"


def test_identity_fp32_default_keeps_old_hashes_bf16_changes_them():
    old = {"train": {"lr": 1e-3, "seed": 0}, "model": {"dim": 20}}
    fp32 = {"train": {**old["train"], "precision": "fp32"}, "model": old["model"]}
    bf16 = {"train": {**old["train"], "precision": "bf16"}, "model": old["model"]}
    assert config_hash(old) == config_hash(fp32) != config_hash(bf16)
    assert same_config(old, fp32) and not same_config(old, bf16) and not same_config(fp32, bf16)


def test_sparse_mm_is_float32_under_autocast():
    torch.manual_seed(0)
    dense = torch.rand(30, 40) * (torch.rand(30, 40) < 0.2)
    a = dense.to_sparse_csr()
    y = torch.randn(40, 7)
    want = dense @ y
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sparse_mm(a, y)
        got_half = sparse_mm(a, y.bfloat16())  # a bf16 operand (e.g. an autocast product) is promoted
    assert got.dtype == torch.float32 and got_half.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_half, dense @ y.bfloat16().float(), rtol=1e-5, atol=1e-6)


def _setup(shared_data, method: str, backbone: str = "mf"):
    from freqd.data.load import load_dataset
    from freqd.distill.registry import build_distiller
    from freqd.models.registry import backbone_config, build_backbone

    ds = load_dataset(shared_data / "tiny", cache=False)
    torch.manual_seed(0)
    teacher = build_backbone(backbone, ds.n_users, ds.n_items, backbone_config(backbone, {"dim": 48}), ds.train)
    for p in teacher.parameters():
        p.data.normal_(0, 0.1)
    student = build_backbone(backbone, ds.n_users, ds.n_items, backbone_config(backbone, {"dim": 8}), ds.train)
    dist = build_distiller(method, teacher, student, ds, {})
    dist.prepare(None)
    dist.on_epoch_start(1)  # the response methods draw their per-epoch lists here
    return ds, student, dist


def _loss_and_grads(shared_data, method, backbone, bf16: bool):
    from freqd.data.sampling import TrainSampler

    ds, student, dist = _setup(shared_data, method, backbone)
    batch = next(iter(TrainSampler(ds.train, 512, 1, torch.Generator().manual_seed(0)).epoch()))
    torch.manual_seed(7)  # the step's dropout masks
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        reps = student.propagate()
        loss = student.loss(batch, reps)["loss"] + 0.5 * dist.loss(batch, reps)["loss"]
    loss = loss.float()
    loss.backward()
    params = list(student.parameters()) + list(dist.parameters())
    return float(loss.detach()), [p.grad.clone() if p.grad is not None else None for p in params], params


@pytest.mark.parametrize("method,backbone", [("fd", "mf"), ("freqd", "mf"), ("freqd", "lightgcn"),
                                             ("fitnet", "mf"), ("kd", "mf")])
def test_bf16_step_matches_fp32_to_rounding(shared_data, monkeypatch, tmp_path, method, backbone):
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    l32, g32, _ = _loss_and_grads(shared_data, method, backbone, bf16=False)
    l16, g16, params = _loss_and_grads(shared_data, method, backbone, bf16=True)
    assert all(p.dtype == torch.float32 for p in params)
    assert l16 == pytest.approx(l32, rel=2e-2)
    if method in ("fd", "freqd", "fitnet"):  # their projectors' dense products ran in bfloat16
        assert l16 != l32
    for a, b in zip(g32, g16):
        if a is None:
            assert b is None
            continue
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        if a.norm() > 0:
            cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
            assert cos > 0.98


def test_trainer_runs_bf16_and_keeps_float32_state(shared_data, tmp_path, monkeypatch):
    from freqd.train.trainer import Trainer

    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    ds, student, dist = _setup(shared_data, "freqd")
    seen, dtypes = [], set()
    inner = dist._filtered_projection

    def spy(*args, **kw):
        out = inner(*args, **kw)
        dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(dist, "_filtered_projection", spy)
    tr = Trainer(student, ds, TrainConfig(epochs=2, batch_size=1000, progress=False, precision="bf16"),
                 out_dir=tmp_path / "run", distiller=dist, kd_weight=0.5,
                 on_epoch_end=lambda epoch, row: seen.append(row["loss"]))
    metrics = tr.fit()
    assert dtypes == {torch.bfloat16}  # the projector's last GEMM ran under autocast
    assert len(seen) == 2 and all(torch.isfinite(torch.tensor(v)) for v in seen)
    assert metrics["test"]["ndcg@10"] >= 0
    assert all(p.dtype == torch.float32 for p in list(student.parameters()) + list(dist.parameters()))
    for state in tr.optimizer.state.values():
        assert all(v.dtype == torch.float32 for k, v in state.items() if torch.is_tensor(v) and k != "step")
    assert not torch.is_autocast_enabled("cpu")  # left on after the step: never
