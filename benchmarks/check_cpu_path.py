"""CPU eager speed of FastISM full saturation for two source trees, interleaved (a regression check, not a
comparison with other methods): ``python benchmarks/check_cpu_path.py TREE`` prints seconds per sequence for
Basset and BPNet at L=1000 (2 sequences, 1 thread, fastest of 2 steady calls) using ``TREE/fastism_torch``.
Run it for an old checkout (``git worktree add /tmp/old COMMIT``) and this one, alternately."""
import sys, time, torch
sys.path.insert(0, sys.argv[1])
import fastism_torch as ft
from fastism_torch import models
torch.set_num_threads(1)
res = {}
for name in sys.argv[2:] or ["basset", "bpnet"]:
    m = models.bpnet(seq_len=1000) if name == "bpnet" else models.basset(seq_len=1000)
    x = models.random_onehot(2, 1000)
    ism = ft.FastISM(m, 1000)
    ism.saturation_mutagenesis(x[:1])
    best = 1e9
    for _ in range(2):
        t = time.perf_counter(); ism.saturation_mutagenesis(x); best = min(best, time.perf_counter() - t)
    print(sys.argv[1], name, f"{best / 2:.3f} s/seq", flush=True)
