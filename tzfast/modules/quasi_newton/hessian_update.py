"""``HessianUpdateStrategy``: the base of the full-matrix and diagonal quasi-Newton modules.

A quasi-Newton module keeps a matrix ``P`` for all parameters together (``concat_params=True``,
one flat vector) or for each parameter: the inverse Hessian approximation ``H``
(``inverse=True``) or the Hessian approximation ``B`` (``inverse=False``). Every update step it
forms ``s = x - x_prev`` and ``y = g - g_prev`` from the parameters and the module's input and
changes ``P`` in place by a rank-1/rank-2 correction (one BLAS ``addr_``/``addmm_`` on the
preallocated matrix); the output is ``H u`` or the solution of ``B d = u``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch

from ...core.module import Chainable
from ...core.objective import Objective
from ...core.transform import TensorTransform
from ...linalg.linear_operator import Dense, DenseInverse, Diagonal, LinearOperator

__all__ = ["HessianUpdateStrategy", "fill_doc", "qn_args", "rank2_", "safe_clip", "initial_step_size"]

InitScale = float | Literal["auto"]


# ------------------------------------------------------------------ small numerics
def safe_clip(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its magnitude raised to at least twice the dtype's smallest normal (sign kept)."""
    tiny = torch.finfo(x.dtype).tiny * 2
    return torch.where(x.abs() < tiny, torch.full_like(x, tiny).copysign(x), x)


def initial_step_size(t: torch.Tensor) -> float:
    """``1 / sum|t|`` clipped to ``[eps / max|t|, 1]`` (1 when ``max|t| <= eps``): the first-step scale."""
    a = t.abs()
    lo = torch.finfo(t.dtype).eps / a.max()
    if lo >= 1:
        return 1.0
    return float((1 / a.sum()).clip(min=float(lo), max=1))


def _flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One new flat vector holding ``tensors`` in order."""
    return torch.cat([t.reshape(-1) for t in tensors])


# ------------------------------------------------------------------ argument checks
def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_bool(who: str, name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise TypeError(f"{who}: `{name}` must be a bool, got {type(v).__name__} {v!r}")


def _check_nonneg(who: str, name: str, v: Any, allow_none: bool) -> None:
    if v is None and allow_none:
        return
    if not _is_real(v) or v < 0:
        none = "None or " if allow_none else ""
        raise ValueError(f"{who}: `{name}` must be {none}a finite number >= 0, got {v!r}")


def check_qn_args(who: str, init_scale: Any, tol: Any, ptol: Any, ptol_restart: Any, gtol: Any,
                  restart_interval: Any, beta: Any, update_freq: Any, scale_first: Any, scale_second: Any,
                  concat_params: Any, inverse: Any) -> None:
    """Raises ``ValueError``/``TypeError`` naming the first invalid shared quasi-Newton argument."""
    if not (init_scale == "auto" if isinstance(init_scale, str) else _is_real(init_scale) and init_scale > 0):
        raise ValueError(f"{who}: `init_scale` must be 'auto' or a finite number > 0, got {init_scale!r}")
    _check_nonneg(who, "tol", tol, allow_none=False)
    _check_nonneg(who, "ptol", ptol, allow_none=True)
    _check_nonneg(who, "gtol", gtol, allow_none=True)
    ok_interval = (restart_interval is None or restart_interval == "auto"
                   or (isinstance(restart_interval, int) and not isinstance(restart_interval, bool)
                       and restart_interval >= 1))
    if not ok_interval:
        raise ValueError(f"{who}: `restart_interval` must be None, 'auto' or an int >= 1, got {restart_interval!r}")
    if beta is not None and not (_is_real(beta) and 0 <= beta <= 1):
        raise ValueError(f"{who}: `beta` must be None or a number in [0, 1], got {beta!r}")
    if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1:
        raise ValueError(f"{who}: `update_freq` must be an int >= 1, got {update_freq!r}")
    for name, v in (("ptol_restart", ptol_restart), ("scale_first", scale_first), ("scale_second", scale_second),
                    ("concat_params", concat_params), ("inverse", inverse)):
        _check_bool(who, name, v)


def qn_args(init_scale: str = "'auto'", restart_interval: str = "None", inverse: str | None = "True") -> str:
    """The ``Args:`` lines shared by the quasi-Newton modules, with this module's defaults."""
    inv = "" if inverse is None else (
        f"        inverse: keep the inverse Hessian approximation H (True) or the Hessian approximation B\n"
        f"            and solve with it (False; what trust regions need). Defaults to {inverse}.\n")
    return (
        f"        init_scale: the initial matrix is the identity times this (H is divided by it); 'auto'\n"
        f"            scales it by y'y/s'y at the first update (Nocedal & Wright, p.142-143).\n"
        f"            Defaults to {init_scale}.\n"
        f"        tol: tolerance of the method's curvature/denominator test. Defaults to 1e-32.\n"
        f"        ptol: skip the update when max|s| <= ptol (None: never). Defaults to 1e-32.\n"
        f"        ptol_restart: reset the matrix when the ptol test skips an update. Defaults to False.\n"
        f"        gtol: skip the update when max|y| <= gtol (None: never). Defaults to 1e-32.\n"
        f"        restart_interval: reset the matrix every this many updates; 'auto' = number of\n"
        f"            variables + 1; None: never. Defaults to {restart_interval}.\n"
        f"        beta: momentum on the matrix, P <- beta*P + (1-beta)*P_updated (None: none). Defaults to None.\n"
        f"        update_freq: update the matrix every this many steps. Defaults to 1.\n"
        f"        scale_first: scale the first step by ``initial_step_size`` (as torch's L-BFGS does).\n"
        f"            Defaults to False.\n"
        f"        scale_second: scale the second step the same way. Defaults to False.\n"
        f"        concat_params: one matrix for all parameters as one vector (True) or one per\n"
        f"            parameter. Defaults to True.\n"
        f"{inv}"
        f"        inner: modules applied to the input after the matrix update and before the\n"
        f"            preconditioning. Defaults to None.\n"
        f"\n")


def fill_doc(init_scale: str = "'auto'", restart_interval: str = "None", inverse: str | None = "True") -> Any:
    """Class decorator: replaces ``{qn_args}`` in the docstring by :func:`qn_args` with these defaults."""
    def deco(cls: type) -> type:
        if cls.__doc__:
            cls.__doc__ = cls.__doc__.replace("{qn_args}\n", qn_args(init_scale, restart_interval, inverse))
        return cls
    return deco


# ------------------------------------------------------------------ the base class
@fill_doc()
class HessianUpdateStrategy(TensorTransform):
    """Base class of quasi-Newton modules that keep H (inverse Hessian) or B (Hessian) approximations.

    Subclasses implement the in-place updates ``update_H_(H, s, y, g, w, state, setting)`` and/or
    ``update_B_(B, s, y, g, w, state, setting)``: add ``w`` times the method's correction to the
    matrix (``w = 1 - beta`` with momentum, else 1). Subclasses written for torchzero's API
    (``update_H``/``update_B`` returning the new matrix) also work. ``diagonal = True`` keeps a
    vector instead of a matrix. ``initialize_P``, ``reset_P``, ``modify_H`` and ``modify_B`` can be
    overridden as in torchzero.

    Args:
        defaults: extra settings of the subclass.
        uses_loss: the update rule needs the loss (evaluated with the gradient if needed).
            Defaults to False.
{qn_args}
    References:
        Nocedal & Wright, "Numerical Optimization", 2nd ed., chapter 6.

    Examples:
        A custom method (here BFGS in torchzero's style, returning the new H):

        >>> from tzfast.modules.quasi_newton import HessianUpdateStrategy
        >>> class MyBFGS(HessianUpdateStrategy):
        ...     def update_H(self, H, s, y, p, g, p_prev, g_prev, state, setting):
        ...         rho = 1 / s.dot(y); Hy = H @ y
        ...         return H + rho * (1 + rho * y.dot(Hy)) * s.outer(s) - rho * (Hy.outer(s) + s.outer(Hy))
        >>> opt = tz.Optimizer(model.parameters(), MyBFGS(), tz.m.LR(1e-2))
    """

    diagonal: bool = False

    def __init__(self, defaults: dict[str, Any] | None = None, init_scale: InitScale = "auto", tol: float = 1e-32,
                 ptol: float | None = 1e-32, ptol_restart: bool = False, gtol: float | None = 1e-32,
                 restart_interval: int | Literal["auto"] | None = None, beta: float | None = None,
                 update_freq: int = 1, scale_first: bool = False, scale_second: bool = False,
                 concat_params: bool = True, inverse: bool = True, uses_loss: bool = False,
                 inner: Chainable | None = None):
        who = type(self).__name__
        check_qn_args(who, init_scale, tol, ptol, ptol_restart, gtol, restart_interval, beta, update_freq,
                      scale_first, scale_second, concat_params, inverse)
        if inverse and not self._supports(True):
            raise ValueError(f"{who}: `inverse` must be False: {who} keeps only the Hessian approximation B, "
                             f"got inverse=True")
        if not inverse and not self._supports(False):
            raise ValueError(f"{who}: `inverse` must be True: {who} keeps only the inverse Hessian approximation "
                             f"H, got inverse=False")
        defaults = {} if defaults is None else dict(defaults)
        shared = dict(init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
                      inverse=inverse, beta=beta, restart_interval=restart_interval, scale_first=scale_first,
                      scale_second=scale_second)
        clash = set(defaults) & set(shared)
        if clash:
            raise ValueError(f"{who}: `defaults` repeats shared quasi-Newton settings {sorted(clash)}")
        defaults.update(shared)
        super().__init__(defaults, update_freq=update_freq, concat_params=concat_params, uses_loss=uses_loss,
                         inner=inner)

    @classmethod
    def _supports(cls, inverse: bool) -> bool:
        """Whether the class implements the H (inverse) or B update, in either API."""
        names = ("update_H_", "update_H") if inverse else ("update_B_", "update_B")
        return any(getattr(cls, n) is not getattr(HessianUpdateStrategy, n) for n in names)

    # ------------------------------------------------------------ methods to override
    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: dict[str, Any], setting: Mapping[str, Any]) -> None:
        """Adds ``w`` times the correction to the inverse Hessian approximation ``H`` in place."""
        raise NotImplementedError

    def update_B_(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: dict[str, Any], setting: Mapping[str, Any]) -> None:
        """Adds ``w`` times the correction to the Hessian approximation ``B`` in place."""
        raise NotImplementedError

    def update_H(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, p: torch.Tensor, g: torch.Tensor,
                 p_prev: torch.Tensor, g_prev: torch.Tensor, state: dict[str, Any],
                 setting: Mapping[str, Any]) -> torch.Tensor:
        """torchzero-style update of H: returns the new matrix (may modify ``H``)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no inverse Hessian approximation")

    def update_B(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, p: torch.Tensor, g: torch.Tensor,
                 p_prev: torch.Tensor, g_prev: torch.Tensor, state: dict[str, Any],
                 setting: Mapping[str, Any]) -> torch.Tensor:
        """torchzero-style update of B: returns the new matrix (may modify ``B``)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no Hessian approximation")

    def initialize_P(self, size: int, device: torch.device, dtype: torch.dtype, is_inverse: bool) -> torch.Tensor:
        """The initial H or B: the identity (a vector of ones for diagonal methods)."""
        if self.diagonal:
            return torch.ones(size, device=device, dtype=dtype)
        return torch.eye(size, device=device, dtype=dtype)

    def modify_H(self, H: torch.Tensor, state: dict[str, Any], setting: Mapping[str, Any]) -> torch.Tensor:
        """H as used for the output (out of place; the stored H is unchanged)."""
        return H

    def modify_B(self, B: torch.Tensor, state: dict[str, Any], setting: Mapping[str, Any]) -> torch.Tensor:
        """B as used for the output (out of place; the stored B is unchanged)."""
        return B

    def auto_initial_scale(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """``y'y / s'y`` when both are positive, else None; B is multiplied and H divided by it."""
        ys = y.dot(s)
        yy = y.dot(y)
        tiny = torch.finfo(ys.dtype).tiny * 2
        if ys > tiny and yy > tiny:
            return yy / ys
        return None

    def reset_P(self, P: torch.Tensor, s: torch.Tensor, y: torch.Tensor, inverse: bool, init_scale: Any,
                state: dict[str, Any]) -> None:
        """Resets ``P`` (H or B) in place to its initial value, scaled as at the start."""
        if type(self).initialize_P is not HessianUpdateStrategy.initialize_P:
            P.copy_(self.initialize_P(s.numel(), P.device, P.dtype, inverse))
        elif P.ndim == 1:
            P.fill_(1)
        else:  # the identity, without an n x n temporary
            P.zero_()
            P.diagonal().fill_(1)
        if init_scale == "auto":
            init_scale = self.auto_initial_scale(s, y)
            state["scaled"] = init_scale is not None
        if init_scale is not None and (isinstance(init_scale, torch.Tensor) or init_scale != 1):
            if inverse:
                P.div_(init_scale)
            else:
                P.mul_(init_scale)

    # ------------------------------------------------------------ update
    def step(self, objective: Objective) -> Objective:
        """``update`` then ``apply``; without ``inner`` the flat input of the update is reused."""
        flat = self._update(objective)
        return self._apply(objective, None if "__inner" in self.children else flat)

    def update(self, objective: Objective) -> None:
        self._update(objective)

    @torch.no_grad()
    def _update(self, objective: Objective) -> torch.Tensor | None:
        """Updates the matrices; returns the concatenated input when one was made."""
        params = objective.params
        step = self.increment_counter("__step", 0)
        if step % self.settings[params[0]]["__update_freq"] != 0:
            return None
        updates = objective.get_updates()
        loss = objective.get_loss(backward=True) if self._uses_loss else None
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
        if self._concat_params:
            g = _flatten(updates)
            self._update_one(g, _flatten(params), loss, self.state[params[0]], self.settings[params[0]])
            return g
        for u, p in zip(updates, params, strict=True):
            self._update_one(u.reshape(-1), p.reshape(-1), loss, self.state[p], self.settings[p])
        return None

    def _update_one(self, g: torch.Tensor, p: torch.Tensor, loss: Any, state: dict[str, Any],
                    setting: Mapping[str, Any]) -> None:
        inverse = setting["inverse"]
        key = "H" if inverse else "B"
        M = state.get(key)
        step = state.get("step", 0) + 1
        state["step"] = step
        init_scale = setting["init_scale"]
        restart_interval = setting["restart_interval"]
        if restart_interval == "auto":
            restart_interval = g.numel() + 1

        if M is None or "f_prev" not in state:
            if M is None:  # a reset_for_online keeps the matrix
                M = self.initialize_P(p.numel(), p.device, p.dtype, inverse)
                if not isinstance(init_scale, str) and init_scale != 1:
                    if inverse:
                        M.div_(init_scale)
                    else:
                        M.mul_(init_scale)
            state[key] = M
            state["f_prev"] = loss
            state["p_prev"] = p.clone()
            state["g_prev"] = g.clone()
            state["scaled"] = False
            return

        state["f"] = loss
        p_prev, g_prev = state["p_prev"], state["g_prev"]
        s = p - p_prev
        y = g - g_prev
        p_prev.copy_(p)
        g_prev.copy_(g)

        if restart_interval is not None and step % restart_interval == 0:
            self.reset_P(M, s, y, inverse, init_scale, state)
            return
        ptol = setting["ptol"]
        if ptol is not None and s.abs().max() <= ptol:
            if setting["ptol_restart"]:
                self.reset_P(M, s, y, inverse, init_scale, state)
            return
        gtol = setting["gtol"]
        if gtol is not None and y.abs().max() <= gtol:
            return

        if init_scale == "auto" and not state["scaled"]:
            scale = self.auto_initial_scale(s, y)
            if scale is not None:
                state["scaled"] = True
                if inverse:
                    M.div_(scale)
                else:
                    M.mul_(scale)

        beta = setting["beta"]
        w = 1.0 if beta is None or beta == 0 else 1.0 - beta
        inplace = type(self).update_H_ if inverse else type(self).update_B_
        if inplace is not (HessianUpdateStrategy.update_H_ if inverse else HessianUpdateStrategy.update_B_):
            inplace(self, M, s, y, g, w, state, setting)
        else:  # torchzero-style subclass: the update returns the new matrix
            fn = self.update_H if inverse else self.update_B
            new = fn(M.clone() if w != 1.0 else M, s, y, p, g, p_prev, g_prev, state, setting)
            current = state[key]
            if w == 1.0 or current.shape != new.shape:
                state[key] = new
            else:
                current.lerp_(new, w)
        state["f_prev"] = loss

    # ------------------------------------------------------------ apply
    def apply(self, objective: Objective) -> Objective:
        return self._apply(objective, None)

    @torch.no_grad()
    def _apply(self, objective: Objective, flat: torch.Tensor | None) -> Objective:
        """Preconditions the update; ``flat``: the concatenated update, when already made (read only)."""
        if "__inner" in self.children:
            objective = self.children["__inner"].step(objective)
        params = objective.params
        failed = False
        if self._concat_params:
            g = flat if flat is not None else _flatten(objective.get_updates())
            out, failed = self._apply_one(g, self.state[params[0]], self.settings[params[0]], owned=flat is None)
            objective.updates = [out[o:o + p.numel()].view_as(p) for p, o in zip(params, _offsets(params), strict=True)]
        else:
            outs = []
            for u, p in zip(objective.get_updates(), params, strict=True):
                out, f = self._apply_one(u.reshape(-1), self.state[p], self.settings[p], owned=True)
                failed |= f
                outs.append(out.view_as(u))
            objective.updates = outs
        if failed:  # B was singular: start over, as torchzero does
            self.state.clear()
            self.global_state.clear()
        return objective

    def _apply_one(self, g: torch.Tensor, state: dict[str, Any], setting: Mapping[str, Any],
                   owned: bool) -> tuple[torch.Tensor, bool]:
        """The preconditioned vector and whether solving with B failed; ``owned``: ``g`` may be modified."""
        step = state["step"]
        if (setting["scale_first"] and step == 1) or (setting["scale_second"] and step == 2):
            scale = initial_step_size(g)
            g = g.mul_(scale) if owned else g * scale
            owned = True
        if setting["inverse"]:
            H = self.modify_H(state["H"], state, setting)
            if H.ndim == 1:
                return (g.mul_(H) if owned else g * H), False
            return torch.mv(H, g), False
        B = self.modify_B(state["B"], state, setting)
        if B.ndim == 1:
            return (g.div_(B) if owned else g / B), False
        x, info = torch.linalg.solve_ex(B, g)
        if int(info) == 0:
            return x, False
        return g * initial_step_size(g), True

    # ------------------------------------------------------------ misc
    def get_H(self, objective: Objective) -> LinearOperator | None:
        """The Hessian approximation as a linear operator (of the first parameter's matrix), or None."""
        p = objective.params[0]
        state, setting = self.state[p], self.settings[p]
        if "B" in state:
            B = self.modify_B(state["B"], state, setting)
            return Dense(B) if B.ndim == 2 else Diagonal(B)
        if "H" in state:
            H = self.modify_H(state["H"], state, setting)
            return DenseInverse(H) if H.ndim == 2 else Diagonal(1 / H)
        return None

    def reset_for_online(self) -> None:
        super().reset_for_online()
        self.clear_state_keys("f_prev", "p_prev", "g_prev")


def _offsets(params: list[torch.Tensor]) -> list[int]:
    out, o = [], 0
    for p in params:
        out.append(o)
        o += p.numel()
    return out



def rank2_(M: torch.Tensor, u1: torch.Tensor, v1: torch.Tensor, u2: torch.Tensor, v2: torch.Tensor,
           w: float) -> None:
    """``M += w * (u1 v1' + u2 v2')`` in one pass over ``M`` (one ``addmm_``)."""
    M.addmm_(torch.stack((u1, u2), 1), torch.stack((v1, v2), 0), alpha=w)
