"""`python -m bench verifier --part classes` (no data needed) prints its table and writes JSON."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_verifier_classes_part(tmp_path):
    out = tmp_path / "classes.json"
    cmd = [sys.executable, "-m", "bench", "verifier", "--part", "classes", "--no-math-verify", "--repeats", "1",
           "--out", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "| 9_wrong_yeses |" in run.stdout and "short answers:" in run.stdout
    result = json.loads(out.read_text())
    assert len(result["classes"]) == 9 and all(e["cases"] >= 20 for e in result["classes"].values())
    assert result["overall"]["lightrl"]["false_positives"] == 0
    assert result["short_answers"]["pairs"] == 2000 and result["short_answers"]["per_second"] > 0
    assert "math_verify" not in result["overall"]
