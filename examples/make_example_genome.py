"""Writes the bundled example genome (examples/genome.fa, chrom.sizes) and peaks (examples/peaks.narrowPeak).

A random two-chromosome genome with the example model's motifs (GATA ``AGATAA``, E-box ``CACGTG``, AP-1
``TGACTCA``) planted near each peak's summit, so that ISM maps and tracks show them.  Seeded: rerunning
writes the same files.  Used by ``scripts/example.sh`` for the BED + genome workflow.
"""
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"chr1": 12000, "chr2": 8000}
MOTIFS = ("AGATAA", "CACGTG", "TGACTCA")


def main() -> None:
    rng = np.random.default_rng(7)
    genome = {c: list(rng.choice(list("ACGT"), n)) for c, n in SIZES.items()}
    peaks = []
    for c, n in SIZES.items():
        for k, start in enumerate(range(1000, n - 1500, 1700)):
            width = int(rng.integers(300, 600))
            summit = int(rng.integers(100, width - 100))
            for m in rng.choice(MOTIFS, 2, replace=False):
                p = start + summit + int(rng.integers(-60, 60))
                genome[c][p:p + len(m)] = list(m)
            peaks.append((c, start, start + width, f"{c}_peak{k}", summit))
    peaks.append(("chr1", 11900, 11990, "chr1_edge", 45))     # its 300-bp window runs off chr1: skipped
    with open(os.path.join(HERE, "genome.fa"), "w") as fh:
        for c, seq in genome.items():
            s = "".join(seq)
            fh.write(f">{c}\n" + "\n".join(s[i:i + 60] for i in range(0, len(s), 60)) + "\n")
    with open(os.path.join(HERE, "chrom.sizes"), "w") as fh:
        fh.writelines(f"{c}\t{n}\n" for c, n in SIZES.items())
    with open(os.path.join(HERE, "peaks.narrowPeak"), "w") as fh:
        for c, s, e, name, summit in peaks:
            fh.write(f"{c}\t{s}\t{e}\t{name}\t1000\t.\t5.0\t-1\t-1\t{summit}\n")


if __name__ == "__main__":
    main()
