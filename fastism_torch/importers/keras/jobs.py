"""Running the TensorFlow side (:mod:`.._keras_worker`) in a subprocess: its environment, errors and batches."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_WORKER = "fastism_torch.importers._keras_worker"


def worker_env(legacy: bool) -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["CUDA_VISIBLE_DEVICES"] = "-1"
    env.pop("TF_USE_LEGACY_KERAS", None)
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = "1"
    # make this package importable by the worker even when it is not installed
    pkg_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class WorkerFailed(RuntimeError):
    def __init__(self, code: int, kind: str, message: str):
        super().__init__(message)
        self.code, self.kind, self.message = code, kind, message


def _run_worker(args: list[str], env: dict, timeout: float | None = None) -> str:
    try:
        proc = subprocess.run([sys.executable, "-m", _WORKER, *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise WorkerFailed(-1, "timeout", f"the Keras worker timed out after {timeout} s") from e
    if proc.returncode != 0:
        kind, msg = "error", None
        for line in proc.stderr.splitlines()[::-1]:
            if line.startswith("FASTISM_WORKER_ERROR "):
                d = json.loads(line.split(" ", 1)[1])
                kind, msg = d["kind"], d["message"]
                break
        if msg is None:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            if "No module named" in proc.stderr and ("tensorflow" in proc.stderr or "keras" in proc.stderr
                                                      or "tf2onnx" in proc.stderr):
                msg = ("TensorFlow/Keras/tf2onnx are not installed for this Python; install the `keras` extra: "
                       "pip install 'fastism-torch[keras]'\n" + tail)
            else:
                msg = f"the Keras worker exited with status {proc.returncode}:\n{tail}"
        raise WorkerFailed(proc.returncode, kind, msg)
    return proc.stdout


def run_jobs(jobs: list[list[str]], legacy: bool, timeout: float | None = None) -> list[dict]:
    """Run worker jobs (argument lists) in one subprocess; one result dict per job."""
    if not jobs:
        return []
    with tempfile.TemporaryDirectory(prefix="fastism_torch_jobs_") as d:
        jf, rf = os.path.join(d, "jobs.json"), os.path.join(d, "results.json")
        with open(jf, "w") as f:
            json.dump(jobs, f)
        _run_worker(["batch", "--jobs", jf, "--results", rf], worker_env(legacy), timeout)
        with open(rf) as f:
            return json.load(f)
