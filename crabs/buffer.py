"""Replay buffer D-hat of Algorithm 2: the real transitions collected so far (all safe ones)."""

from __future__ import annotations

import numpy as np
import torch


class ReplayBuffer:
    """Fixed-capacity arrays of (s, a, r, s', done); ``done`` is 1 only for a terminal violation."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int = 1_000_000):
        self.capacity = capacity
        self.s = np.zeros((capacity, obs_dim), np.float32)
        self.a = np.zeros((capacity, act_dim), np.float32)
        self.r = np.zeros(capacity, np.float32)
        self.s2 = np.zeros((capacity, obs_dim), np.float32)
        self.done = np.zeros(capacity, np.float32)
        self.size = 0
        self.ptr = 0

    def __len__(self) -> int:
        return self.size

    def add(self, s, a, r, s2, done) -> None:
        i = self.ptr
        self.s[i], self.a[i], self.r[i], self.s2[i], self.done[i] = s, a, r, s2, done
        self.ptr = (self.ptr + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def add_many(self, s, a, r, s2, done) -> None:
        for row in zip(s, a, r, s2, done):
            self.add(*row)

    def sample(self, batch: int, gen: np.random.Generator) -> dict[str, torch.Tensor]:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = gen.integers(0, self.size, size=batch)
        return self.index(idx)

    def index(self, idx) -> dict[str, torch.Tensor]:
        return {"s": torch.from_numpy(self.s[idx]), "a": torch.from_numpy(self.a[idx]),
                "r": torch.from_numpy(self.r[idx]), "s2": torch.from_numpy(self.s2[idx]),
                "done": torch.from_numpy(self.done[idx])}

    def all(self) -> dict[str, torch.Tensor]:
        return self.index(np.arange(self.size))

    def state_dict(self) -> dict:
        n = self.size
        return {"s": torch.from_numpy(self.s[:n].copy()), "a": torch.from_numpy(self.a[:n].copy()),
                "r": torch.from_numpy(self.r[:n].copy()), "s2": torch.from_numpy(self.s2[:n].copy()),
                "done": torch.from_numpy(self.done[:n].copy())}

    def load_state_dict(self, d: dict) -> None:
        n = len(d["s"])
        if n > self.capacity:
            raise ValueError(f"saved buffer holds {n} transitions, capacity is {self.capacity}")
        for k in ("s", "a", "r", "s2", "done"):
            getattr(self, k)[:n] = d[k].numpy()
        self.size, self.ptr = n, n % self.capacity
