"""Cost of the hot loops on this machine (median of repeated runs after warm-up): one MALA step of
the adversary, one ensemble evaluation, one certificate update, one constrained SAC update, one
dynamics training step. Compare with the matmul ceiling printed first.

    python bench/hot_loops.py [--task upright] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from crabs.config import load_config
from crabs.loop import CRABS
from crabs.system import builtin_system


def timeit(fn, reps: int = 30, warm: int = 5) -> float:
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="upright")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores, "
          f"load {os.getloadavg()}")
    a = torch.randn(2048, 2048)
    ms = timeit(lambda: a @ a, reps=10)
    print(f"matmul 2048^3 float32: {ms:.1f} ms = {2 * 2048**3 / ms / 1e6:.0f} GFLOP/s")
    cfg = load_config(task=args.task)
    c = CRABS(builtin_system(args.task, cfg.sac.hidden), cfg, "/tmp/crabs-hot-loops")
    rng = np.random.default_rng(0)
    d = c.sys.spec.dim
    for _ in range(1000):
        s = rng.uniform(c.sys.state_low, c.sys.state_high) * 0.3
        c.buffer.add(s, rng.uniform(-1, 1, 1), 0.0, s + 0.01 * rng.normal(size=d), 0.0)
    data = c.buffer.all()
    c.model.fit_normalizers(data["s"], data["a"], data["s2"])
    for chains in (256, 400, 1000, 4000):
        c.cfg.mala.chains = chains
        c.adv.cfg.chains = chains
        c.adv.reset(c.h, c.model, c.policy)
        fresh = timeit(lambda: c.adv.step(c.h, c.model, c.policy))

        def stale():
            c.adv.invalidate()
            c.adv.step(c.h, c.model, c.policy)

        print(f"MALA step, {chains} chains: {fresh:.2f} ms (after an update, with re-evaluation: "
              f"{timeit(stale):.2f} ms)")
    x = torch.randn(1000, d)
    act = torch.rand(1000, 1) * 2 - 1
    with torch.no_grad():
        print(f"ensemble means, K={c.model.k}, 1000 states: {timeit(lambda: c.model.means(x, act)):.2f} ms")
    w = x[:256]
    h_prev = c.cert.snapshot()
    print(f"certificate update (Eq. 4-5), 256 adversarial states: "
          f"{timeit(lambda: c.cert.step(c.model, c.policy, w, h_prev, x[:400])):.2f} ms")
    print(f"constrained SAC update, batch {cfg.sac.batch}: "
          f"{timeit(lambda: c.sac.update(c.buffer.sample(cfg.sac.batch, rng), c.h, c.model)):.2f} ms")
    adv_ms = timeit(lambda: c.sac.adversarial_step(w, c.h, c.model))
    print(f"adversarial policy step, 256 states: {adv_ms:.2f} ms")
    print(f"dynamics training step, batch {cfg.dynamics.batch} x K: "
          f"{timeit(lambda: c.dyn.train(c.buffer, 1, rng)):.2f} ms")


if __name__ == "__main__":
    main()
