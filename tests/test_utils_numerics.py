"""Subnormal floats flushed to zero during CPU training (train.flush_denormal)."""
from __future__ import annotations

import pytest
import torch

from freqd.cli import _flush_denormal_wanted
from freqd.experiments.bench import config_hash
from freqd.utils.numerics import flush_denormal, flush_denormal_enabled

SUB = 1e-39  # float32 subnormal (smallest normal: 1.18e-38)


@pytest.fixture
def mode_off():
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


def _sub_survives() -> bool:
    x = torch.full((8,), SUB, dtype=torch.float32)
    return bool(((x + 0.0) != 0).all())


def test_context_flushes_inside_and_restores(mode_off):
    assert not flush_denormal_enabled() and _sub_survives()
    with flush_denormal() as on:
        assert on and flush_denormal_enabled()
        assert not _sub_survives()
        # a product with a subnormal result is flushed too (FTZ)
        assert (torch.tensor([1e-20]) * torch.tensor([1e-20])).item() == 0.0
    assert not flush_denormal_enabled() and _sub_survives()


def test_context_disabled_keeps_subnormals_and_restores_an_outer_mode(mode_off):
    with flush_denormal(False) as on:
        assert not on and _sub_survives()
    torch.set_flush_denormal(True)
    with flush_denormal(False) as on:
        assert not on and _sub_survives()  # turned off inside ...
    assert flush_denormal_enabled()  # ... and back on after
    with flush_denormal():
        pass
    assert flush_denormal_enabled()  # on before the block: left on


def test_cli_restores_the_mode_after_a_command(shared_data, tmp_path, monkeypatch, mode_off):
    from freqd.cli import main

    monkeypatch.setenv("FREQD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FREQD_NO_PROGRESS", "1")
    rc = main(["train", "tiny", "--backbone", "mf", "--dim", "4", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert rc == 0 and (tmp_path / "run" / "metrics.json").is_file()
    assert not flush_denormal_enabled()  # e.g. hypothesis refuses to run under flush-to-zero


@pytest.mark.parametrize("flag", [True, False])
def test_trainer_flushes_during_fit_only_when_asked(shared_data, tmp_path, monkeypatch, mode_off, flag):
    from freqd.data.load import load_dataset
    from freqd.models.registry import backbone_config, build_backbone
    from freqd.train.config import TrainConfig
    from freqd.train.trainer import Trainer

    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    ds = load_dataset(shared_data / "tiny", cache=False)
    model = build_backbone("mf", ds.n_users, ds.n_items, backbone_config("mf", {"dim": 4}))
    seen = []
    tr = Trainer(model, ds, TrainConfig(epochs=2, batch_size=2000, progress=False, flush_denormal=flag),
                 on_epoch_end=lambda epoch, row: seen.append(flush_denormal_enabled()))
    tr.fit()
    assert seen == [flag, flag]
    assert not flush_denormal_enabled()  # restored after the run


def test_cli_flag_parsing():
    assert _flush_denormal_wanted(None) and _flush_denormal_wanted(["train.lr=1e-3"])
    assert not _flush_denormal_wanted(["train.flush_denormal=false"])
    assert not _flush_denormal_wanted(["train.flush_denormal=0"])
    assert _flush_denormal_wanted(["train.flush_denormal=true"])


def test_flag_is_not_part_of_a_runs_identity():
    base = {"train": {"lr": 1e-3, "seed": 0}, "model": {"dim": 20}}
    on = {"train": {**base["train"], "flush_denormal": True}, "model": base["model"]}
    off = {"train": {**base["train"], "flush_denormal": False}, "model": base["model"]}
    assert config_hash(on) == config_hash(off) == config_hash(base)
