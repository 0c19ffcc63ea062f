"""train.loggers: TensorBoard and MLflow trackers get the numbers of history.csv and metrics.json."""
import csv
import json
import sys
import types

import pytest

from freqd.cli import main
from freqd.train.loggers import MLflowLogger, _numbers, build_loggers


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path, shared_data):
    monkeypatch.setenv("FREQD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FREQD_NO_PROGRESS", "1")


def _history(run):
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _train(run, *extra):
    return main(["train", "tiny", "--dim", "8", "--out", str(run), "--no-progress", *extra])


def test_numbers_names_and_filtering():
    row = {"epoch": 3, "loss": 1.5, "bpr": 1.0, "train_seconds": 0.2, "valid_ndcg@10": 0.1,
           "valid_recall@20": float("nan"), "note": "x", "flag": True}
    assert _numbers(row) == {"train/loss": 1.5, "train/bpr": 1.0, "time/train_seconds": 0.2,
                             "valid/ndcg@10": 0.1}


def test_tensorboard_events_match_history_and_resume_purges(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "r"
    assert _train(run, "--epochs", "3", "train.loggers=tensorboard") == 0
    hist = _history(run)
    assert _train(run, "--epochs", "5", "--resume", "train.loggers=tensorboard") == 0  # continued: epochs 4-5
    hist = _history(run)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "valid/ndcg@10", "time/train_seconds"} <= set(tags)
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5]  # every epoch exactly once across the resume
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in hist], rel=1e-5)  # history.csv: 6 digits
    nd = acc.Scalars("valid/ndcg@10")
    assert [e.value for e in nd] == pytest.approx([float(r["valid_ndcg@10"]) for r in hist], rel=1e-5)
    m = json.loads((run / "metrics.json").read_text())
    test = acc.Scalars("test/recall@20")
    assert test[-1].step == m["best_epoch"] and test[-1].value == pytest.approx(m["test"]["recall@20"], rel=1e-6)
    # the loggers do not change the run's identity: the same folder resumed without them is accepted
    assert _train(run, "--epochs", "5", "--resume") == 0


def test_loggers_change_no_number(tmp_path):
    pytest.importorskip("tensorboard")
    assert _train(tmp_path / "a", "--epochs", "2") == 0
    assert _train(tmp_path / "b", "--epochs", "2", "train.loggers=tensorboard") == 0
    ha, hb = _history(tmp_path / "a"), _history(tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]  # noqa: E731
    assert strip(ha) == strip(hb)
    ma, mb = (json.loads((tmp_path / x / "metrics.json").read_text()) for x in "ab")
    assert ma["test"] == mb["test"]


class _FakeMlflow(types.ModuleType):
    """Records the calls freqd makes (the real package is optional and heavy)."""

    def __init__(self):
        super().__init__("mlflow")
        self.calls = []
        self.runs = 0

    def set_experiment(self, name):
        self.calls.append(("set_experiment", name))

    def start_run(self, run_name=None, run_id=None):
        if run_id is None:
            self.runs += 1
            run_id = f"id{self.runs}"
        self.calls.append(("start_run", run_name, run_id))
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id))

    def log_params(self, params):
        assert len(params) <= 100
        self.calls.append(("log_params", dict(params)))

    def log_metrics(self, metrics, step):
        self.calls.append(("log_metrics", dict(metrics), step))

    def log_artifact(self, path):
        self.calls.append(("log_artifact", path))

    def end_run(self, status="FINISHED"):
        self.calls.append(("end_run", status))


def test_mlflow_calls_and_resume_continues_the_same_run(tmp_path, monkeypatch):
    fake = _FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "kd-study")
    run = tmp_path / "r"
    assert _train(run, "--epochs", "2", "train.loggers=mlflow") == 0
    assert (run / "mlflow_run_id").read_text().strip() == "id1"
    assert fake.calls[0] == ("set_experiment", "kd-study")
    assert fake.calls[1] == ("start_run", "r", "id1")
    params = {}
    for c in fake.calls:
        if c[0] == "log_params":
            params.update(c[1])
    assert params["backbone"] == "mf" and params["model.dim"] == "8" and params["train.ks"] == "[10, 20, 50]"
    epochs = [c for c in fake.calls if c[0] == "log_metrics" and "train/loss" in c[1]]
    hist = _history(run)
    assert [c[2] for c in epochs] == [1, 2]
    assert [c[1]["train/loss"] for c in epochs] == pytest.approx([float(r["loss"]) for r in hist], rel=1e-5)
    assert "valid/ndcg_at_10" in epochs[0][1] and not any("@" in k for c in epochs for k in c[1])
    m = json.loads((run / "metrics.json").read_text())
    test = [c for c in fake.calls if c[0] == "log_metrics" and "test/recall_at_20" in c[1]]
    assert test[0][2] == m["best_epoch"] and test[0][1]["test/recall_at_20"] == pytest.approx(m["test"]["recall@20"])
    assert ("log_artifact", str(run / "metrics.json")) in fake.calls
    assert fake.calls[-1] == ("end_run", "FINISHED")
    fake.calls.clear()
    assert _train(run, "--epochs", "3", "--resume", "train.loggers=mlflow") == 0
    assert fake.calls[0] == ("start_run", None, "id1")  # the same MLflow run, no new parameters
    assert not any(c[0] in ("log_params", "set_experiment") for c in fake.calls)
    assert [c[2] for c in fake.calls if c[0] == "log_metrics" and "train/loss" in c[1]] == [3]


def test_mlflow_run_marked_failed_when_training_raises(tmp_path, monkeypatch):
    from freqd.train import trainer as trainer_mod

    fake = _FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)

    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(trainer_mod.Trainer, "_fit_epochs", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _train(tmp_path / "r", "--epochs", "2", "train.loggers=mlflow")
    assert fake.calls[-1] == ("end_run", "FAILED")


def test_real_mlflow_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow-skinny has no database store
    run = tmp_path / "r"
    assert _train(run, "--epochs", "2", "train.loggers=mlflow") == 0
    rid = (run / "mlflow_run_id").read_text().strip()
    got = mlflow.tracking.MlflowClient().get_run(rid)
    assert got.info.status == "FINISHED" and got.data.params["model.dim"] == "8"
    m = json.loads((run / "metrics.json").read_text())
    assert got.data.metrics["test/ndcg_at_20"] == pytest.approx(m["test"]["ndcg@20"])


def test_missing_tracker_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    run = tmp_path / "r"
    assert _train(run, "--epochs", "2", "train.loggers=mlflow") == 2
    err = capsys.readouterr().err
    assert "train.loggers" in err and "pip install 'freqd[mlflow]'" in err
    assert not run.exists()  # no partial output
    assert _train(run, "--epochs", "2", "train.loggers=wandb") == 2
    assert "train.loggers" in capsys.readouterr().err
    with pytest.raises(Exception, match="unknown logger"):
        build_loggers(["wandb"])


def test_mlflow_logger_needs_no_package_until_built(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", _FakeMlflow())
    (lg,) = build_loggers(["mlflow", "mlflow"])  # duplicates collapse
    assert isinstance(lg, MLflowLogger)
