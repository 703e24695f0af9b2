"""`python -m bench logprobs` at a tiny shape: the table, the limit column and the JSON stay in working order."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_logprobs_tiny(tmp_path):
    out = tmp_path / "logprobs.json"
    cmd = [sys.executable, "-m", "bench", "logprobs", "--n", "64", "--d", "32", "--v", "300", "--repeat", "2",
           "--only", "limit,liger,lightrl", "--device", "cpu", "--out", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "x limit" in run.stdout and "n/a (needs CUDA)" in run.stdout
    result = json.loads(out.read_text())
    assert result["shape"] == {"n": 64, "d": 32, "v": 300} and result["versions"]["torch"]
    rows = {r["name"]: r for r in result["candidates"]}
    for name in ("limit", "lightrl"):
        assert len(rows[name]["times_ms"]) == 2 and rows[name]["median_ms"] > 0
        assert rows[name]["peak_mb"] >= 0
    assert "median_ms" not in rows["liger"]
