"""The README's Python API example, end to end on the tiny dataset."""
import importlib
import json

import numpy as np
import pytest

import freqd
from freqd.cli import main


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path, shared_data):
    monkeypatch.setenv("FREQD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FREQD_NO_PROGRESS", "1")


def test_readme_api_example(tmp_path):
    ds = freqd.load_dataset("tiny")
    teacher = freqd.train(ds, backbone="mf", dim=32, out=tmp_path / "t", epochs=3)
    # importing the subpackages must not shadow the functions (freqd.train.trainer exists)
    importlib.import_module("freqd.distill.registry")
    importlib.import_module("freqd.train.trainer")

    assert callable(freqd.train) and callable(freqd.distill)
    student = freqd.distill(ds, teacher=teacher, method="freqd", dim=8, out=tmp_path / "s",
                            epochs=2, overrides={"method": {"filter": "quadratic"}})
    m = student.metrics
    assert set(m) >= {"protocol", "best_epoch", "epochs_run", "seconds_per_epoch", "eval_seconds", "valid", "test"}
    assert m["method"] == "freqd" and m["epochs_run"] == 2
    assert 0 <= m["test"]["ndcg@20"] <= 1
    users, items, scores = student.recommend([0, 5, 9], k=10)
    assert items.shape == (3, 10)
    seen = ds.train + ds.valid + ds.test
    for u, row in zip(users.tolist(), items.tolist()):
        assert not set(row) & set(seen[u].indices.tolist()), "a seen item was recommended"
    paths = student.export_embeddings(tmp_path / "emb")
    assert np.load(paths[0]).shape == (ds.n_users, 8)
    paper = student.evaluate("test", protocol="paper")
    assert paper["protocol"] == "paper" and paper["n_users"] == ds.n_users
    again = freqd.train(ds, backbone="mf", dim=16, out=tmp_path / "t2", epochs=1)
    assert again.metrics["epochs_run"] == 1


def test_cli_train_eval_recommend(tmp_path, capsys):
    assert main(["train", "tiny", "--dim", "16", "--out", str(tmp_path / "r"), "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r"), "--json", "--protocol", "paper"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["protocol"] == "paper"
    assert main(["recommend", str(tmp_path / "r"), "--users", "0,3", "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["0", "3"]
    assert all(len(ln.split("\t")[1].split(",")) == 5 for ln in lines)
    # an epoch cap can be raised on a finished run: it continues instead of starting over
    assert main(["train", "tiny", "--dim", "16", "--out", str(tmp_path / "r"), "--epochs", "3",
                 "--resume", "--no-progress"]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["epochs_run"] == 3
    # ... but not once its checkpoint is gone (restored result files): refused, result kept
    (tmp_path / "r" / "checkpoint.pt").unlink()
    before = (tmp_path / "r" / "metrics.json").read_bytes()
    hist = (tmp_path / "r" / "history.csv").read_bytes()
    assert main(["train", "tiny", "--dim", "16", "--out", str(tmp_path / "r"), "--epochs", "5",
                 "--resume", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "finished after 3 epochs" in err and "checkpoint.pt" in err and "another --out" in err
    assert (tmp_path / "r" / "metrics.json").read_bytes() == before
    assert (tmp_path / "r" / "history.csv").read_bytes() == hist


def test_data_info_json(capsys):
    assert main(["data", "info", "tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["users"], info["items"], info["train"], info["valid"], info["test"]) == (241, 979, 3450, 446, 545)
