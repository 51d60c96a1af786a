"""benchmarks/gpu_check.py stays runnable without a GPU: its dry run (every section on the
CPU at toy size) gives every section, and loads none of Ray, Optuna or MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_has_every_section_and_no_heavy_import():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--json"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import HEAVY, SECTIONS

    assert out["dry_run"] is True and out["device"] == "cpu"
    for section in SECTIONS:
        assert isinstance(out[section], dict) and out[section]["wall_s"] >= 0, section
    assert out["cache_vs_memory"]["cache_epoch_s"] > 0 and out["cache_vs_memory"]["memory_epoch_s"] > 0
    assert set(out["precision"]["steps_per_s"]) == {"fp32", "bf16"}  # fp16 + scaler is CUDA only
    assert set(out["sharing"]["total_images_per_s"]) == {"1", "2"}
    # Neither directly nor through edray: the script is for a GPU machine with only torch on it.
    assert out["heavy_modules_loaded"] == []
    assert "torch" in out["modules"] and not set(out["modules"]) & set(HEAVY)
