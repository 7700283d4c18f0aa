#!/usr/bin/env bash
# The README's main job, end to end on the bundled example (no download):
#   a virtual environment .venv in the repository, the package installed with `pip install -e .`,
#   ISM maps for examples/example.fa with the small model in examples/example_model.py, pictures of one
#   sequence, then the peak workflow: regions of a genome (examples/peaks.narrowPeak + genome.fa) to ISM
#   maps, a chrombpnet-layout scores file and a bigWig track.  Outputs go to example_out/.
# Re-running reuses .venv and finds the outputs already complete.
# Environment: PYTHON (interpreter for the venv, default python3), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/fastism-torch" ] || ! "$VENV/bin/python" -c "import pyBigWig" 2>/dev/null; then
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[bigwig]"
fi
FT="$VENV/bin/fastism-torch"

"$FT" ism -m examples/example_model.py:make_model -s examples/example.fa -o example_out/example -v
"$FT" plot example_out/example.h5 --seq chr1:10000-10300 -o example_out/example.png
"$FT" plot example_out/example.h5 --seq chr1:10000-10300 --start 160 --end 220 -o example_out/example_zoom.png
# double mutants of a 40-bp window (epistasis, dependency map): example_out/example_pairwise.{h5,png}
"$FT" pairwise -m examples/example_model.py:make_model -s examples/example.fa --start 170 --end 210 \
    -o example_out/example_pairwise -v

# peaks of a genome: 300-bp windows centred on the summits; modisco-, chrombpnet- and browser-ready outputs.
# Expected: "warning: ... skipped 1 of 11 region(s) whose 300-bp window runs off the chromosome" (the last
# peak, chr1_edge, sits at the end of chr1 on purpose); outputs are named by the peaks' names (column 4).
"$FT" ism -m examples/example_model.py:make_model -s examples/peaks.narrowPeak --genome examples/genome.fa \
    -o example_out/peaks --format chrombpnet -v
"$FT" bigwig example_out/peaks.h5 --chrom-sizes examples/chrom.sizes -o example_out/peaks.proj.bw

echo "outputs:"
ls -l example_out
