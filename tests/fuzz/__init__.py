"""The differential fuzzer's library (the test is ``tests/test_fuzz.py``).

- :mod:`.blocks`: the building blocks, ``nn.Module`` s of ordinary torch code (nothing random);
- :mod:`.body`, :mod:`.heads`: the draws of body blocks and output heads, mixed into
- :mod:`.generator`'s ``Gen``; :func:`.generator.build` turns a seed into a model, deterministically;
- :mod:`.harness`: one seed's outcome (FastISM with the self-check off against NaiveISM), runs of seeds, the
  report and the replay command.

Shared test helpers (well-scaled weights, random one-hot input, the comparison with naive ISM) come from
``tests/helpers.py``.
"""
