"""Small model files and FASTA writers shared by the CLI, I/O, score, plot and torchrun tests."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_MODEL = os.path.join(REPO, "examples", "example_model.py")
EXAMPLE_FA = os.path.join(REPO, "examples", "example.fa")

TINY_MODEL = textwrap.dedent('''
    import time
    import torch
    from torch import nn

    TARGET_NAMES = ["t0", "t1"]
    SLEEP = {sleep}

    class Tiny(nn.Module):
        def __init__(self, seq_len):
            super().__init__()
            g = torch.Generator().manual_seed(1)
            self.conv = nn.Conv1d(4, 6, 5, padding=2)
            self.dense = nn.Linear(6 * seq_len, 2)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)

        def forward(self, x):
            if SLEEP:
                time.sleep(SLEEP)
            return self.dense(torch.relu(self.conv(x)).flatten(1))

    def make_model(seq_len):
        return Tiny(seq_len)
''')

PROFILE_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class TinyBPNet(nn.Module):
        """(N, 4, L) -> profile logits (N, 2, L) and log counts (N, 2)."""
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(2)
            self.conv = nn.Conv1d(4, 8, 7, padding=3)
            self.prof = nn.Conv1d(8, 2, 5, padding=2)
            self.count = nn.Linear(8, 2)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return self.prof(h), self.count(h.mean(-1))

    def make_model():
        return TinyBPNet()
''')


def write_model(tmp_path, source=TINY_MODEL, name="tiny_model.py", sleep=0.0):
    p = os.path.join(str(tmp_path), name)
    with open(p, "w") as fh:
        fh.write(source.replace("{sleep}", repr(sleep)))
    return p


def random_seqs(n, length, seed=0, alphabet="ACGT"):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(alphabet), length)) for _ in range(n)]


def write_fasta(path, seqs, names=None, width=60):
    names = names or [f"chr1:{1000 + 100 * i}-{1000 + 100 * i + len(s)}" for i, s in enumerate(seqs)]
    with open(path, "w") as fh:
        for n, s in zip(names, seqs):
            fh.write(f">{n}\n")
            for j in range(0, len(s), width):
                fh.write(s[j:j + width] + "\n")
    return str(path)


def run_cli(*args, env=None, **kw):
    """Run ``python -m fastism_torch`` in a subprocess; returns the CompletedProcess."""
    e = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "fastism_torch", *map(str, args)], capture_output=True,
                          text=True, env=e, cwd=REPO, **kw)
