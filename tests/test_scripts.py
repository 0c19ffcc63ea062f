"""The evidence scripts under scripts/ on hand-made inputs."""
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _csv(path, rows):
    cols = ["label", "seed"] + [f"test_{k}" for k in ("recall@10", "ndcg@10", "recall@20", "ndcg@20")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for lab, seed, v in rows:
            w.writerow([lab, seed] + [v] * 4)


def test_paired_tests_by_hand(tmp_path):
    # a = 1, 2, 3 and b = 0, 2, 1 on seeds 0-2: d = 1, 0, 2, mean 1, sd 1, t = sqrt(3); with
    # 2 degrees of freedom the two-sided p is 1 - t / sqrt(t^2 + 2) = 1 - sqrt(3/5) = 0.2254.
    # A second file overrides b's seed 2 (1 -> 3): d = 1, 0, 0, mean 1/3, sd 1/sqrt(3), t = 1,
    # p = 1 - 1/sqrt(3) = 0.4226.
    # b's seed 3 has no a partner and is left out.
    f1, f2 = tmp_path / "a.csv", tmp_path / "b.csv"
    _csv(f1, [("a", 0, 1), ("a", 1, 2), ("a", 2, 3), ("b", 0, 0), ("b", 1, 2), ("b", 2, 1), ("b", 3, 9)])
    _csv(f2, [("b", 2, 3)])
    def run(*files):
        return subprocess.run([sys.executable, str(ROOT / "scripts/paired_tests.py"), *map(str, files),
                               "--pairs", "a:b"], capture_output=True, text=True, check=True).stdout

    line = next(ln for ln in run(f1).splitlines() if "| ndcg@20 |" in ln)
    assert line == "| a vs b | ndcg@20 | 3 | +1.00000 | 2/3 | 0.225 |"
    line = next(ln for ln in run(f1, f2).splitlines() if "| recall@10 |" in ln)
    assert line == "| a vs b | recall@10 | 3 | +0.33333 | 1/3 | 0.423 |"


def test_paired_tests_unknown_label(tmp_path):
    f = tmp_path / "r.csv"
    _csv(f, [("a", 0, 1)])
    p = subprocess.run([sys.executable, str(ROOT / "scripts/paired_tests.py"), str(f), "--pairs", "a:zz"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "no rows labelled 'zz'" in p.stderr
