"""
The project's tests: `python test_all.py` (or `pytest test_all.py`), a few minutes on a laptop CPU.

Three kinds, as in micrograd: against an oracle (PyTorch's own attention and LayerNorm, Python integers),
against expected values (the hand-made question sets), and smoke runs (a tiny model must learn).
"""
import functools
import os
import sys
import tempfile
import time

import torch

import data
import train
from model import CheckpointError, Config, Transformer, load_model, save_model

torch.set_num_threads(1)  # tiny models: one thread is fastest and deterministic
HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def tiny_model(task="add", n_digits=2, steps=500):
    """A small model trained once per test run (cached): 2-layer, 3-head, d_model 48."""
    cfg = Config(n_digits=n_digits, n_layers=2, n_heads=3, d_model=48, d_head=16, d_mlp=192)
    tc = train.TrainConfig(task=task, n_digits=n_digits, steps=steps, batch_size=128, lr=3e-3, seed=0)
    model = Transformer(cfg, torch.Generator().manual_seed(0))
    train.train(model, tc, progress=False)
    return model

# ============================================================================= core (model, data, train)

# ============================================================================= analyse (issue 4)

# ============================================================================= algorithm (issue 5)

# ============================================================================= reuse (issue 6)

# ============================================================================= runner


def main():
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f)]
    only = sys.argv[1:]
    passed, failed, t0 = 0, 0, time.time()
    for name, fn in tests:
        if only and not any(o in name for o in only):
            continue
        t = time.time()
        try:
            fn()
            passed += 1
            print(f"ok    {name} ({time.time() - t:.1f}s)", flush=True)
        except Exception as e:  # report every failure, then carry on
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
    print(f"{passed} passed, {failed} failed in {time.time() - t0:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
