"""The modisco workflow the README promises: ``fastism-torch ism`` then ``modisco motifs -s ohe -a attr``
recovers the motifs planted in the sequences (tfmodisco-lite reads attr.npz as hypothetical contributions)."""
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from fastism_torch.cli import main

from _cli_helpers import EXAMPLE_MODEL, write_fasta

MOTIFS = ("AGATAA", "CACGTG")   # the example model's GATA and E-box filters


def _revcomp(s):
    return s[::-1].translate(str.maketrans("ACGT", "TGCA"))


def test_modisco_finds_the_planted_motifs(tmp_path):
    pytest.importorskip("modiscolite")
    modisco = shutil.which("modisco") or os.path.join(os.path.dirname(sys.executable), "modisco")
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(150):
        s = list(rng.choice(list("ACGT"), 300))
        for m in MOTIFS:
            for _ in range(2):
                p = rng.integers(10, 280)
                s[p:p + len(m)] = list(m)
        seqs.append("".join(s))
    fa = write_fasta(tmp_path / "planted.fa", seqs, names=[f"s{i}" for i in range(len(seqs))])
    prefix = str(tmp_path / "run")
    assert main(["ism", "-m", f"{EXAMPLE_MODEL}:make_model", "-s", fa, "-o", prefix]) == 0
    out = str(tmp_path / "modisco.h5")
    subprocess.run([modisco, "motifs", "-s", prefix + ".ohe.npz", "-a", prefix + ".attr.npz", "-n", "2000",
                    "-w", "300", "-o", out], check=True, capture_output=True, timeout=600)
    consensus = []
    with h5py.File(out) as f:
        for group in f.values():
            for pattern in group.values():
                c = pattern["contrib_scores"][...]                   # (width, 4), projected onto the seqlets
                strong = np.abs(c).sum(1) > 0.2 * np.abs(c).sum(1).max()
                consensus.append("".join("ACGT"[i] if k else "N" for i, k in zip(c.argmax(1), strong)))
                # hypothetical CWMs carry every base (projected input would make them equal contrib_scores)
                h = pattern["hypothetical_contribs"][...]
                assert np.abs(h - c).sum() > 0.3 * np.abs(h).sum()
    for m in MOTIFS:
        assert any(m in c or _revcomp(m) in c for c in consensus), (m, consensus)
