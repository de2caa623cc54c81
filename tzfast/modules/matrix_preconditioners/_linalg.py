"""Helpers shared by the matrix preconditioners: argument checks, dimension merging, Kronecker
projections, covariance accumulation, matrix powers and re-projection of a child's buffers."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch

from ...core.chain import flatten_modules
from ...core.module import Module

__all__ = ["MatrixPowerMethod", "MATRIX_POWER_METHODS", "check_int", "check_beta", "check_number", "check_choice",
           "merge_plan", "merge", "unmerge", "project", "project_back", "kron_dims", "accumulate_covariances_",
           "matrix_power", "eigh", "child_buffers", "fake_params", "ensure_fake_params"]

MatrixPowerMethod = Literal["eigh", "eigh_abs", "svd"]
MATRIX_POWER_METHODS: tuple[str, ...] = ("eigh", "eigh_abs", "svd")


# ---------------------------------------------------------------------------------------- checks
def check_int(who: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{who}: `{name}` must be an int >= {minimum}, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{who}: `{name}` must be an int >= {minimum}, got {value!r}")
    return value


def check_number(who: str, name: str, value: Any, minimum: float | None = None, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a number or None" if allow_none else "a number"
        raise TypeError(f"{who}: `{name}` must be {kind}, got {type(value).__name__}: {value!r}")
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{who}: `{name}` must be a finite number{bound}, got {value!r}")
    return value


def check_beta(who: str, name: str, value: Any, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return value
    check_number(who, name, value)
    if not 0 <= value <= 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{who}: `{name}` must be in [0, 1]{extra}, got {value!r}")
    return value


def check_choice(who: str, name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f"{who}: `{name}` must be one of {tuple(choices)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------- merging
MergePlan = tuple[tuple[int, ...], tuple[int, ...]] | None
"""``(permutation, flat_sizes)``: dims are sorted ascending, then the leading dims whose product
stays <= ``max_dim`` are flattened into one; None: the tensor is used as it is."""


def merge_plan(shape: Sequence[int], max_dim: int) -> MergePlan:
    """How torchzero's ``merge_small`` reshapes a tensor of ``shape`` (computed once per parameter)."""
    if len(shape) == 0:
        return None
    perm = tuple(sorted(range(len(shape)), key=lambda i: shape[i]))  # stable, as numpy's argsort on short arrays
    if shape[perm[0]] > max_dim:
        return None
    sizes: list[int] = []
    numel = 1
    for i in perm:
        if numel * shape[i] > max_dim:
            break
        numel *= shape[i]
        sizes.append(shape[i])
    return perm, tuple(sizes)


def merge(t: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    if plan is None:
        return t
    perm, sizes = plan
    t = t.permute(perm)
    return t.flatten(end_dim=len(sizes) - 1) if len(sizes) > 1 else t


def unmerge(t: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    if plan is None:
        return t
    perm, sizes = plan
    if len(sizes) > 1:
        t = t.unflatten(0, sizes)
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return t.permute(inv)


def kron_dims(shape: Sequence[int], max_dim: int, precondition_1d: bool) -> list[bool]:
    """Which dims get a Kronecker factor: ``1 < size < max_dim`` (none for 1-D unless ``precondition_1d``)."""
    if len(shape) <= 1 and not precondition_1d:
        return []
    return [1 < s < max_dim for s in shape]


# ---------------------------------------------------------------------------------------- projections
def project(t: torch.Tensor, Qs: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """``t`` multiplied by ``Q_i^T`` along each dim ``i`` (dims without a factor are left as they are)."""
    if len(Qs) == 2 and t.ndim == 2 and Qs[0] is not None and Qs[1] is not None:
        return Qs[0].T @ t @ Qs[1]
    for Q in Qs:
        t = t.movedim(0, -1) if Q is None else torch.tensordot(t, Q, dims=([0], [0]))
    return t


def project_back(t: torch.Tensor, Qs: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Inverse of :func:`project` for orthogonal factors: ``t`` multiplied by ``Q_i`` along each dim."""
    if len(Qs) == 2 and t.ndim == 2 and Qs[0] is not None and Qs[1] is not None:
        return Qs[0] @ t @ Qs[1].T
    for Q in Qs:
        t = t.movedim(0, -1) if Q is None else torch.tensordot(t, Q, dims=([0], [1]))
    return t


def _gram(t: torch.Tensor, i: int) -> torch.Tensor:
    """Contraction of ``t`` with itself over every dim but ``i``."""
    if t.ndim == 1:
        return torch.outer(t, t)
    if t.ndim == 2:
        return t @ t.T if i == 0 else t.T @ t
    m = t.movedim(i, 0).reshape(t.shape[i], -1)
    return m @ m.T


def accumulate_covariances_(t: torch.Tensor, accs: Sequence[torch.Tensor | None], beta: float | None) -> None:
    """``acc_i += G_i`` (``beta`` None) or ``acc_i = lerp(acc_i, G_i, 1 - beta)``, ``G_i`` the dim-``i`` Gram matrix."""
    for i, acc in enumerate(accs):
        if acc is None:
            continue
        if beta is None:
            if t.ndim == 1:
                acc.addr_(t, t)
            else:
                acc.add_(_gram(t, i))
        else:
            acc.lerp_(_gram(t, i), 1 - beta)


# ---------------------------------------------------------------------------------------- matrix functions
def eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh``, retried in float64 when it fails in a lower precision."""
    try:
        return torch.linalg.eigh(A)
    except (torch.linalg.LinAlgError, RuntimeError):
        if A.dtype == torch.float64:
            raise
        L, Q = torch.linalg.eigh(A.to(torch.float64))
        return L.to(A.dtype), Q.to(A.dtype)


def matrix_power(A: torch.Tensor, power: float, method: str) -> torch.Tensor:
    """``A**power`` of symmetric matrices (a batch ``(..., n, n)`` works): eigh, eigh of |L| or SVD."""
    tiny = torch.finfo(A.dtype).tiny * 2
    if method == "svd":
        try:
            U, S, Vh = torch.linalg.svd(A, full_matrices=False)
        except (torch.linalg.LinAlgError, RuntimeError):
            if A.dtype == torch.float64:
                raise
            U, S, Vh = (x.to(A.dtype) for x in torch.linalg.svd(A.to(torch.float64), full_matrices=False))
        if power % 2 != 0:
            S.clamp_(min=tiny)
        return (U * S.pow_(power).unsqueeze(-2)) @ Vh
    L, Q = eigh(A)
    if method == "eigh_abs":
        L.abs_()
    if power % 2 != 0:
        L.clamp_(min=tiny)
    return (Q * L.pow_(power).unsqueeze(-2)) @ Q.mH


# ---------------------------------------------------------------------------------------- children's buffers
def fake_params(module: Module, key: str) -> list[torch.Tensor] | None:
    """The stand-in parameters ``inner_step_tensors(key, ..., params=None)`` keys a child's state by."""
    return module.global_state.get(f"__fake_{key}")


def ensure_fake_params(module: Module, key: str, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Stand-in parameters (no storage: a 0-d tensor expanded to each shape) for child ``key``, kept in
    ``global_state`` where ``inner_step_tensors`` looks for them, and made again only when a shape changes."""
    fakes = module.global_state.get(f"__fake_{key}")
    if fakes is None or len(fakes) != len(tensors) or any(f.shape != t.shape for f, t in zip(fakes, tensors)):
        fakes = [torch.empty((), device=t.device, dtype=t.dtype).expand(t.shape) for t in tensors]
        module.global_state[f"__fake_{key}"] = fakes
    return fakes


def child_buffers(child: Module, kinds: Iterable[str], param: torch.Tensor) -> list[tuple[Module, str]]:
    """``(module, state key)`` of every buffer of ``kinds`` kept for ``param`` by ``child`` or its descendants."""
    kinds = tuple(kinds)
    out: list[tuple[Module, str]] = []
    for m in flatten_modules(child):
        st = m.state.get(param)
        if st is None:
            continue
        for kind in kinds:
            for key in sorted(m._projected_keys.get(kind, ())):
                if isinstance(st.get(key), torch.Tensor):
                    out.append((m, key))
    return out


class FakeChildState:
    """Mixin: carries the state that children keep under stand-in parameters through ``state_dict``.

    ``Optimizer.state_dict`` refers to state by parameter index, so state keyed by a stand-in is
    packed into this module's ``extra`` and put back under new stand-ins on the next step.
    """

    _fake_children: tuple[str, ...] = ()

    def _extra_pack(self) -> dict:
        d = dict(super()._extra_pack())  # type: ignore[misc]
        saved: dict[str, Any] = {}
        for key in self._fake_children:
            fakes = self.global_state.get(f"__fake_{key}")  # type: ignore[attr-defined]
            child = self.children.get(key)  # type: ignore[attr-defined]
            if not fakes or child is None:
                continue
            states = []
            for m in flatten_modules(child):
                states.append({i: dict(m.state[f]) for i, f in enumerate(fakes) if f in m.state and m.state[f]})
            saved[key] = {"shapes": [list(f.shape) for f in fakes],
                          "proto": torch.empty(0, dtype=fakes[0].dtype, device=fakes[0].device), "states": states}
        d["__fake_children"] = saved
        return d

    def _extra_unpack(self, d: dict) -> None:
        super()._extra_unpack(d)  # type: ignore[misc]
        self.__dict__["_pending_fake_children"] = d.get("__fake_children") or None

    def _restore_fake_children(self) -> None:
        pending = self.__dict__.pop("_pending_fake_children", None)
        if not pending:
            return
        for key, rec in pending.items():
            proto = rec["proto"]
            fakes = [torch.empty((), dtype=proto.dtype, device=proto.device).expand(s) for s in rec["shapes"]]
            self.global_state[f"__fake_{key}"] = fakes  # type: ignore[attr-defined]
            for m, states in zip(flatten_modules(self.children[key]), rec["states"]):  # type: ignore[attr-defined]
                for i, st in states.items():
                    m.state[fakes[int(i)]] = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                                              for k, v in st.items()}
                m._invalidate_flat()
