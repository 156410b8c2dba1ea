"""Safety specification of a task: the user-specified safe set, s0, horizon and B_safe.

The safe set is a box on named state coordinates, ``|s[i]| <= z_max[i]`` (Sec. 5). B_safe is the
hand-crafted function of Sec. 3 and Appendix C.1::

    B_safe(s) = max_i w(s[i] / z_max[i]),   w(z) = max(0, 100 (|z| - 1 + margin))

The paper prints ``w(z) = max(0, 100(|z| - 1))`` (``margin = 0``) and says in the same breath that
B_safe "equals 1 at the boundary of the safety set". Only the latter makes R.2 hold by
construction (h < 1 - B_safe < 0 for every unsafe state; with margin 0 the states with
1 < |z| < 1.01 could be certified), so the default ``margin = 0.01`` puts B_safe = 1 exactly on
the boundary, 0 for |z| <= 0.99 and > 1 outside. ``margin=0`` gives the printed formula.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["SafetySpec"]


@dataclass(frozen=True)
class SafetySpec:
    """Box safe set ``{s : |s[i]| <= limits[name_i]}`` plus the task's s0 and horizon.

    Args:
        state_names: name of every state coordinate, in observation order.
        limits: maximum absolute value of each constrained coordinate, by name.
        s0: the deterministic initial state (R.1 is built around it).
        horizon: episode length in environment steps.
        margin: B_safe offset, see the module docstring (paper-literal value: 0).
    """

    state_names: tuple[str, ...]
    limits: dict[str, float]
    s0: tuple[float, ...]
    horizon: int
    margin: float = 0.01
    _index: np.ndarray = field(init=False, repr=False, compare=False)
    _zmax: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(self.state_names)
        unknown = sorted(set(self.limits) - set(names))
        if unknown:
            raise ValueError(f"limits name unknown state coordinates {unknown}; state is {names}")
        if not self.limits:
            raise ValueError("a safety spec needs at least one constrained coordinate")
        if any(not (v > 0 and np.isfinite(v)) for v in self.limits.values()):
            raise ValueError(f"limits must be positive and finite, got {self.limits}")
        if len(self.s0) != len(names):
            raise ValueError(f"s0 has {len(self.s0)} entries but the state has {len(names)}")
        if self.horizon <= 0:
            raise ValueError(f"horizon must be positive, got {self.horizon}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin must lie in [0, 1), got {self.margin}")
        object.__setattr__(self, "state_names", names)
        idx = np.array([names.index(n) for n in self.limits], dtype=np.int64)
        object.__setattr__(self, "_index", idx)
        object.__setattr__(self, "_zmax", np.array(list(self.limits.values()), dtype=np.float64))
        if not self.is_safe(np.asarray(self.s0)):
            raise ValueError(f"s0 = {self.s0} lies outside the safe set {self.limits}")

    @property
    def dim(self) -> int:
        return len(self.state_names)

    @property
    def constrained_index(self) -> np.ndarray:
        """Indices of the constrained coordinates, in ``limits`` order."""
        return self._index.copy()

    @property
    def constrained_max(self) -> np.ndarray:
        return self._zmax.copy()

    def _check(self, s) -> None:
        if s.shape[-1] != self.dim:
            raise ValueError(f"state has last dimension {s.shape[-1]}, spec expects {self.dim}")

    def is_safe(self, s: np.ndarray) -> np.ndarray | bool:
        """True where every constrained coordinate satisfies ``|z| <= z_max`` (NaN is unsafe)."""
        s = np.asarray(s, dtype=np.float64)
        self._check(s)
        ok = np.all(np.abs(s[..., self._index]) <= self._zmax, axis=-1)
        return bool(ok) if ok.ndim == 0 else ok

    def B_safe(self, s: np.ndarray) -> np.ndarray | float:
        """B_safe(s) of Appendix C.1 on NumPy states of shape (..., dim)."""
        s = np.asarray(s, dtype=np.float64)
        self._check(s)
        z = np.abs(s[..., self._index]) / self._zmax
        w = np.maximum(0.0, 100.0 * (z - 1.0 + self.margin))
        out = w.max(axis=-1)
        return float(out) if out.ndim == 0 else out

    def B_safe_torch(self, s: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """B_safe(s) on a batch of torch states (..., dim); differentiable almost everywhere. ``pad``
        (one per constrained coordinate, in units of its limit) moves each limit inwards by that
        much (the certificate's edge pad, ``barrier.edge_factor``)."""
        self._check(s)
        idx = torch.as_tensor(self._index, device=s.device)
        zmax = torch.as_tensor(self._zmax, dtype=s.dtype, device=s.device)
        z = s.index_select(-1, idx).abs() / zmax
        w = z - 1.0 + self.margin
        if pad is not None:
            w = w + pad.to(s.dtype)
        return torch.relu(100.0 * w).amax(dim=-1)

    def is_safe_torch(self, s: torch.Tensor) -> torch.Tensor:
        self._check(s)
        idx = torch.as_tensor(self._index, device=s.device)
        zmax = torch.as_tensor(self._zmax, dtype=s.dtype, device=s.device)
        return (s.index_select(-1, idx).abs() <= zmax).all(dim=-1)

    def s0_array(self) -> np.ndarray:
        return np.asarray(self.s0, dtype=np.float64)

    def safe_box(self, unconstrained: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Lower/upper corners of the safe box; unconstrained coordinates get ``unconstrained[name]``
        (a symmetric bound the caller chooses, e.g. a maximum speed)."""
        unconstrained = unconstrained or {}
        hi = np.empty(self.dim)
        for i, name in enumerate(self.state_names):
            if name in self.limits:
                hi[i] = self.limits[name]
            elif name in unconstrained:
                hi[i] = unconstrained[name]
            else:
                raise ValueError(f"no bound given for unconstrained coordinate {name!r}")
        return -hi, hi


def as_states(s):
    """``s`` unchanged if it is a torch tensor (so r(s) stays differentiable), else a NumPy array:
    the built-in rewards serve the monitor (NumPy) and the model-based actor term (torch)."""
    return s if isinstance(s, torch.Tensor) else np.asarray(s)
