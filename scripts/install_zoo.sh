#!/usr/bin/env bash
# Installs the third-party genomic model packages that tests/zoo_models.py builds (bpnet-lite, chrombpnet-pytorch,
# gReLU, enformer-pytorch, borzoi-pytorch, basenji2-pytorch) and the light modules they import, pinned, each
# with --no-deps so torch (and everything else already there) stays as it is. Their declared dependencies pin
# other torch/transformers versions and pull whole pipelines (wandb, scanpy, macs3, ...), none of which the
# model classes need. Idempotent: a requirement whose module is already importable is skipped (found, not imported;
# note chrombpnet-pytorch installs the module `chrombpnet`, the name of the TensorFlow chrombpnet package too).
#
#   bash scripts/install_zoo.sh [PYTHON]      # default: .venv/bin/python
set -euo pipefail
if [ $# -ge 1 ]; then
    PY=$1
    case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
fi
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch" || { echo "install_zoo: $PY cannot import torch" >&2; exit 1; }
# transformers would import TensorFlow (installed for the Keras importer tests) and can crash with it
export USE_TF=0

# "requirement  module-to-import" (in install order: dependencies first)
PKGS=(
    # shared light dependencies
    "einops==0.8.2                    einops"
    "PyYAML==6.0.4                    yaml"
    "requests==2.34.2                 requests"
    "certifi==2026.10.19.post1        certifi"
    "charset-normalizer==3.5.3        charset_normalizer"
    "idna==3.20                       idna"
    "urllib3==2.8.0                   urllib3"
    "six==1.17.0                      six"
    "python-dateutil==4.0.0           dateutil"
    "tzdata==2026.6                   tzdata"
    "pandas==3.1.1                    pandas"
    "scipy==1.17.1                    scipy"
    "llvmlite==0.50.0                 llvmlite"
    "numba==0.68.1                    numba"
    "memelite==0.5.0                  memelite"
    "figwig==0.2.0                    figwig"
    "tangermeme==1.6.0                tangermeme"
    "torchinfo==1.8.0                 torchinfo"
    "lightning-utilities==0.15.3      lightning_utilities"
    "torchmetrics==1.9.0              torchmetrics"
    "pytorch-lightning==2.6.6         pytorch_lightning"
    "lightning==2.6.6                 lightning"
    "pybigwig==0.3.29                 pyBigWig"
    "pooch==1.9.0                     pooch"
    "platformdirs==4.14.8             platformdirs"
    "natsort==8.4.0                   natsort"
    "sortedcontainers==2.4.0          sortedcontainers"
    "intervaltree==3.2.1              intervaltree"
    "polars-runtime-32==2.1.0         _polars_runtime_32"
    "polars==2.1.0                    polars"
    "regex==2026.11.19                regex"
    "safetensors==0.8.0               safetensors"
    "huggingface-hub==0.36.2          huggingface_hub"
    "tokenizers==0.22.2               tokenizers"
    "transformers==4.57.6             transformers"
    # the model packages
    "bpnet-lite==1.1.0                bpnetlite"
    "chrombpnet-pytorch==0.0.3        chrombpnet.chrombpnet"
    "enformer-pytorch==0.8.12         enformer_pytorch"
    "gReLU==1.1.0                     grelu.model.models"
    "borzoi-pytorch==0.5.1            borzoi_pytorch"
    "basenji2-pytorch==0.1.2          basenji2_pytorch"
)

# the requirements whose module is not importable yet (found, not imported: cheap)
mapfile -t todo < <(printf '%s\n' "${PKGS[@]}" | "$PY" -c '
import importlib.util as u, sys
for line in sys.stdin:
    req, mod = line.split()
    if u.find_spec(mod.split(".")[0]) is None:
        print(req)
')
if [ ${#todo[@]} -eq 0 ]; then
    exit 0
fi
echo "install_zoo: installing ${todo[*]}"
"$PY" -m pip install -q --no-deps "${todo[@]}"

# every model module must import (a missing light dependency shows up here, not as a skipped test)
"$PY" - <<'EOF'
import importlib, sys, warnings
warnings.filterwarnings("ignore")
bad = []
for mod in ("bpnetlite", "chrombpnet.chrombpnet", "grelu.model.models", "enformer_pytorch", "borzoi_pytorch",
            "basenji2_pytorch"):
    try:
        importlib.import_module(mod)
    except Exception as e:
        bad.append(f"{mod}: {type(e).__name__}: {e}")
if bad:
    sys.exit("install_zoo: cannot import\n  " + "\n  ".join(bad))
print("install_zoo: all zoo model packages import")
EOF
