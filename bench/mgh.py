"""The Moré-Garbow-Hillstrom unconstrained test set, as least-squares residuals in torch.

Every problem of the set is a sum of squares ``f(x) = sum_i f_i(x)^2`` of ``m`` residuals in
``n`` variables. The residuals, the data tables, the standard starting points and the
published minimum values follow section 3 of the paper (numbering as there); the code is
written here with torch ops only, so ``f`` is differentiable by autograd and follows the dtype
and device of ``x``.

Two corrections to the printed paper, as in the authors' Algorithm 566: in the Gulf research
function the residual is ``exp(-|y_i - x_2|^x_3 / x_1) - t_i`` (the printed "y_i m i x_2" is a
typesetting slip for a minus), and the helical valley's ``theta`` at ``x_1 = 0`` is
``sign(x_2) / 4`` (the limit of the formula; the paper leaves it undefined).

``fmin`` is the minimum value the paper gives (six significant digits where it is not exact,
``None`` where the paper gives none for the chosen size). ``xmin`` is a minimiser: exact
where the paper gives one, otherwise computed here (Gauss-Newton polished to machine
precision from the standard start) and stored to 17 digits; ``xmin_exact`` says which.
``flocal`` lists other (local) minimum values the paper reports.

Examples:
    >>> import torch
    >>> from bench.mgh import PROBLEMS, closure_for
    >>> p = PROBLEMS["rosenbrock"]
    >>> round(float(p.f(p.x0())), 10)
    24.2
    >>> x = p.x0().requires_grad_()
    >>> closure = closure_for(p, x)
    >>> loss = closure()          # f(x) with x.grad filled
    >>> x.grad.shape
    torch.Size([2])

References:
    J. J. Moré, B. S. Garbow and K. E. Hillstrom, "Testing unconstrained optimization
    software", ACM Transactions on Mathematical Software 7(1):17-41, 1981.
    doi:10.1145/355934.355936
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "PROBLEMS",
    "Problem",
    "bard",
    "beale",
    "biggs_exp6",
    "box_3d",
    "brown_almost_linear",
    "brown_badly_scaled",
    "brown_dennis",
    "broyden_banded",
    "broyden_tridiagonal",
    "chebyquad",
    "closure_for",
    "discrete_boundary_value",
    "discrete_integral_equation",
    "extended_powell_singular",
    "extended_rosenbrock",
    "freudenstein_roth",
    "gaussian",
    "gulf_research",
    "helical_valley",
    "jennrich_sampson",
    "kowalik_osborne",
    "linear_full_rank",
    "linear_rank_1",
    "linear_rank_1_zero",
    "meyer",
    "osborne_1",
    "osborne_2",
    "penalty_1",
    "penalty_2",
    "powell_badly_scaled",
    "powell_singular",
    "rosenbrock",
    "trigonometric",
    "variably_dimensioned",
    "watson",
    "wood",
]

Residuals = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Problem:
    """One MGH problem: ``f(x) = sum(residuals(x) ** 2)``.

    Attributes:
        name: key in ``PROBLEMS`` (snake case).
        number: the problem's number in the paper (1-35).
        title: the paper's name for it.
        n: number of variables.
        m: number of residuals.
        fn: the residual function, ``(n,) tensor -> (m,) tensor``.
        x0_values: the standard starting point.
        fmin: the published minimum value for this ``n``/``m`` (``None`` where none is published).
        xmin: a minimiser (``None`` where none is known or the minimum is at infinity).
        xmin_exact: whether ``xmin`` is exact (given by the paper) or computed here to machine
            precision.
        flocal: other (local) minimum values the paper reports.
    """

    name: str
    number: int
    title: str
    n: int
    m: int
    fn: Residuals = field(repr=False, compare=False)
    x0_values: tuple[float, ...] = field(repr=False)
    fmin: float | None
    xmin: tuple[float, ...] | None = field(default=None, repr=False)
    xmin_exact: bool = True
    flocal: tuple[float, ...] = ()

    def residuals(self, x: Tensor) -> Tensor:
        """The ``m`` residuals ``f_i(x)`` at a 1-D tensor ``x`` of ``n`` elements."""
        if x.ndim != 1 or x.shape[0] != self.n:
            raise ValueError(f"{self.name}: x must be a 1-D tensor of {self.n} elements, got shape {tuple(x.shape)}")
        return self.fn(x)

    def f(self, x: Tensor) -> Tensor:
        """The objective ``sum_i f_i(x)^2`` (a 0-d tensor)."""
        r = self.residuals(x)
        return torch.dot(r, r)

    def x0(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
        """A fresh tensor holding the standard starting point."""
        return torch.tensor(self.x0_values, dtype=dtype, device=device)

    def xmin_tensor(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
        """A fresh tensor holding ``xmin`` (raises ``ValueError`` where none is known)."""
        if self.xmin is None:
            raise ValueError(f"{self.name}: no minimiser is known")
        return torch.tensor(self.xmin, dtype=dtype, device=device)


def closure_for(problem: Problem, x: Tensor) -> Callable[..., Tensor]:
    """The standard optimizer closure for ``problem`` at the parameter tensor ``x``.

    ``closure(backward=True)`` evaluates ``f(x)``; with ``backward`` it first clears ``x.grad``
    and then back-propagates, so ``x.grad`` holds the gradient.

    Args:
        problem: the problem.
        x: a 1-D leaf tensor of ``problem.n`` elements with ``requires_grad=True``.
    """
    if not isinstance(x, Tensor) or x.ndim != 1 or x.shape[0] != problem.n:
        raise ValueError(f"x must be a 1-D tensor of {problem.n} elements for {problem.name}, "
                         f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")

    def closure(backward: bool = True) -> Tensor:
        loss = problem.f(x)
        if backward:
            x.grad = None
            loss.backward()
        return loss

    return closure


# --------------------------------------------------------------------------- helpers

_CONST: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}


def _const(key: str, values: Sequence[float], like: Tensor) -> Tensor:
    """A data table as a tensor on ``like``'s dtype and device (made once per dtype/device)."""
    k = (key, like.dtype, like.device)
    t = _CONST.get(k)
    if t is None:
        with torch.inference_mode(False):
            t = torch.tensor(values, dtype=like.dtype, device=like.device)
        _CONST[k] = t
    return t


def _idx(start: int, stop: int, like: Tensor) -> Tensor:
    """``start, start+1, ..., stop`` (inclusive) as floats on ``like``'s dtype and device."""
    return torch.arange(start, stop + 1, dtype=like.dtype, device=like.device)


def _problem(name: str, number: int, title: str, n: int, m: int, fn: Residuals, x0: Sequence[float],
             fmin: float | None, xmin: Sequence[float] | None = None, xmin_exact: bool = True,
             flocal: Sequence[float] = ()) -> Problem:
    return Problem(name=name, number=number, title=title, n=n, m=m, fn=fn,
                   x0_values=tuple(float(v) for v in x0), fmin=fmin,
                   xmin=None if xmin is None else tuple(float(v) for v in xmin), xmin_exact=xmin_exact,
                   flocal=tuple(flocal))


def _check_int(name: str, value: int, minimum: int, multiple: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum or value % multiple:
        extra = f" and a multiple of {multiple}" if multiple > 1 else ""
        raise ValueError(f"{name} must be >= {minimum}{extra}, got {value}")


# --------------------------------------------------------------------------- 1-19: fixed n


def rosenbrock() -> Problem:
    """MGH 1, Rosenbrock: n = m = 2."""

    def fn(x: Tensor) -> Tensor:
        return torch.stack((10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]))

    return _problem("rosenbrock", 1, "Rosenbrock", 2, 2, fn, (-1.2, 1.0), 0.0, (1.0, 1.0))


def freudenstein_roth() -> Problem:
    """MGH 2, Freudenstein and Roth: n = m = 2; a local minimum 48.9842 near (11.41, -0.8968)."""

    def fn(x: Tensor) -> Tensor:
        a, b = x[0], x[1]
        return torch.stack((-13.0 + a + ((5.0 - b) * b - 2.0) * b, -29.0 + a + ((b + 1.0) * b - 14.0) * b))

    return _problem("freudenstein_roth", 2, "Freudenstein and Roth", 2, 2, fn, (0.5, -2.0), 0.0, (5.0, 4.0),
                    flocal=(48.9842,))


def powell_badly_scaled() -> Problem:
    """MGH 3, Powell badly scaled: n = m = 2."""

    def fn(x: Tensor) -> Tensor:
        return torch.stack((1e4 * x[0] * x[1] - 1.0, torch.exp(-x[0]) + torch.exp(-x[1]) - 1.0001))

    return _problem("powell_badly_scaled", 3, "Powell badly scaled", 2, 2, fn, (0.0, 1.0), 0.0,
                    _XMIN["powell_badly_scaled"], xmin_exact=False)


def brown_badly_scaled() -> Problem:
    """MGH 4, Brown badly scaled: n = 2, m = 3."""

    def fn(x: Tensor) -> Tensor:
        return torch.stack((x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0))

    return _problem("brown_badly_scaled", 4, "Brown badly scaled", 2, 3, fn, (1.0, 1.0), 0.0, (1e6, 2e-6))


def beale() -> Problem:
    """MGH 5, Beale: n = 2, m = 3."""

    def fn(x: Tensor) -> Tensor:
        y = _const("beale_y", (1.5, 2.25, 2.625), x)
        i = _idx(1, 3, x)
        return y - x[0] * (1.0 - x[1] ** i)

    return _problem("beale", 5, "Beale", 2, 3, fn, (1.0, 1.0), 0.0, (3.0, 0.5))


def jennrich_sampson(m: int = 10) -> Problem:
    """MGH 6, Jennrich and Sampson: n = 2, m >= 2 (fmin 124.362 published for m = 10)."""
    _check_int("m", m, 2)

    def fn(x: Tensor) -> Tensor:
        i = _idx(1, m, x)
        return 2.0 + 2.0 * i - (torch.exp(i * x[0]) + torch.exp(i * x[1]))

    m10 = m == 10
    return _problem("jennrich_sampson", 6, "Jennrich and Sampson", 2, m, fn, (0.3, 0.4), 124.362 if m10 else None,
                    _XMIN["jennrich_sampson"] if m10 else None, xmin_exact=False)


def helical_valley() -> Problem:
    """MGH 7, helical valley: n = m = 3."""

    def fn(x: Tensor) -> Tensor:
        theta = torch.atan(x[1] / x[0]) / (2.0 * math.pi) + torch.where(x[0] < 0, 0.5, 0.0).to(x.dtype)
        return torch.stack((10.0 * (x[2] - 10.0 * theta), 10.0 * (torch.sqrt(x[0] ** 2 + x[1] ** 2) - 1.0), x[2]))

    return _problem("helical_valley", 7, "Helical valley", 3, 3, fn, (-1.0, 0.0, 0.0), 0.0, (1.0, 0.0, 0.0))


_BARD_Y = (0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39)


def bard() -> Problem:
    """MGH 8, Bard: n = 3, m = 15; a local minimum 17.4286 at (0.8406, -inf, -inf)."""

    def fn(x: Tensor) -> Tensor:
        u = _idx(1, 15, x)
        v = 16.0 - u
        w = torch.minimum(u, v)
        return _const("bard_y", _BARD_Y, x) - (x[0] + u / (v * x[1] + w * x[2]))

    return _problem("bard", 8, "Bard", 3, 15, fn, (1.0, 1.0, 1.0), 8.21487e-3, _XMIN["bard"], xmin_exact=False,
                    flocal=(17.4286,))


_GAUSSIAN_Y = (0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989,
               0.3521, 0.2420, 0.1295, 0.0540, 0.0175, 0.0044, 0.0009)


def gaussian() -> Problem:
    """MGH 9, Gaussian: n = 3, m = 15."""

    def fn(x: Tensor) -> Tensor:
        t = (8.0 - _idx(1, 15, x)) / 2.0
        return x[0] * torch.exp(-x[1] * (t - x[2]) ** 2 / 2.0) - _const("gaussian_y", _GAUSSIAN_Y, x)

    return _problem("gaussian", 9, "Gaussian", 3, 15, fn, (0.4, 1.0, 0.0), 1.12793e-8, _XMIN["gaussian"],
                    xmin_exact=False)


_MEYER_Y = (34780.0, 28610.0, 23650.0, 19630.0, 16370.0, 13720.0, 11540.0, 9744.0,
            8261.0, 7030.0, 6005.0, 5147.0, 4427.0, 3820.0, 3307.0, 2872.0)


def meyer() -> Problem:
    """MGH 10, Meyer: n = 3, m = 16."""

    def fn(x: Tensor) -> Tensor:
        t = 45.0 + 5.0 * _idx(1, 16, x)
        return x[0] * torch.exp(x[1] / (t + x[2])) - _const("meyer_y", _MEYER_Y, x)

    return _problem("meyer", 10, "Meyer", 3, 16, fn, (0.02, 4000.0, 250.0), 87.9458, _XMIN["meyer"],
                    xmin_exact=False)


def gulf_research(m: int = 99) -> Problem:
    """MGH 11, Gulf research and development: n = 3, 3 <= m <= 100."""
    _check_int("m", m, 3)
    if m > 100:
        raise ValueError(f"m must be <= 100, got {m}")

    def fn(x: Tensor) -> Tensor:
        t = _idx(1, m, x) / 100.0
        y = 25.0 + (-50.0 * torch.log(t)) ** (2.0 / 3.0)
        return torch.exp(-torch.abs(y - x[1]) ** x[2] / x[0]) - t

    return _problem("gulf_research", 11, "Gulf research and development", 3, m, fn, (5.0, 2.5, 0.15), 0.0,
                    (50.0, 25.0, 1.5))


def box_3d(m: int = 10) -> Problem:
    """MGH 12, Box three-dimensional: n = 3, m >= 3; zero also at (10, 1, -1) and on x1 = x2, x3 = 0."""
    _check_int("m", m, 3)

    def fn(x: Tensor) -> Tensor:
        t = 0.1 * _idx(1, m, x)
        return torch.exp(-t * x[0]) - torch.exp(-t * x[1]) - x[2] * (torch.exp(-t) - torch.exp(-10.0 * t))

    return _problem("box_3d", 12, "Box three-dimensional", 3, m, fn, (0.0, 10.0, 20.0), 0.0, (1.0, 10.0, 1.0))


def powell_singular() -> Problem:
    """MGH 13, Powell singular: n = m = 4 (singular Hessian at the minimum)."""

    def fn(x: Tensor) -> Tensor:
        return torch.stack((x[0] + 10.0 * x[1], math.sqrt(5.0) * (x[2] - x[3]), (x[1] - 2.0 * x[2]) ** 2,
                            math.sqrt(10.0) * (x[0] - x[3]) ** 2))

    return _problem("powell_singular", 13, "Powell singular", 4, 4, fn, (3.0, -1.0, 0.0, 1.0), 0.0, (0.0,) * 4)


def wood() -> Problem:
    """MGH 14, Wood: n = 4, m = 6."""

    def fn(x: Tensor) -> Tensor:
        return torch.stack((10.0 * (x[1] - x[0] ** 2), 1.0 - x[0], math.sqrt(90.0) * (x[3] - x[2] ** 2), 1.0 - x[2],
                            math.sqrt(10.0) * (x[1] + x[3] - 2.0), (x[1] - x[3]) / math.sqrt(10.0)))

    return _problem("wood", 14, "Wood", 4, 6, fn, (-3.0, -1.0, -3.0, -1.0), 0.0, (1.0,) * 4)


_KO_Y = (0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246)
_KO_U = (4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625)


def kowalik_osborne() -> Problem:
    """MGH 15, Kowalik and Osborne: n = 4, m = 11; a local minimum 1.02734e-3 at (inf, -14.07, -inf, -inf)."""

    def fn(x: Tensor) -> Tensor:
        u = _const("ko_u", _KO_U, x)
        return _const("ko_y", _KO_Y, x) - x[0] * (u * u + u * x[1]) / (u * u + u * x[2] + x[3])

    return _problem("kowalik_osborne", 15, "Kowalik and Osborne", 4, 11, fn, (0.25, 0.39, 0.415, 0.39), 3.07505e-4,
                    _XMIN["kowalik_osborne"], xmin_exact=False, flocal=(1.02734e-3,))


def brown_dennis(m: int = 20) -> Problem:
    """MGH 16, Brown and Dennis: n = 4, m >= 4 (fmin 85822.2 published for m = 20)."""
    _check_int("m", m, 4)

    def fn(x: Tensor) -> Tensor:
        t = _idx(1, m, x) / 5.0
        return (x[0] + t * x[1] - torch.exp(t)) ** 2 + (x[2] + x[3] * torch.sin(t) - torch.cos(t)) ** 2

    m20 = m == 20
    return _problem("brown_dennis", 16, "Brown and Dennis", 4, m, fn, (25.0, 5.0, -5.0, -1.0),
                    85822.2 if m20 else None, _XMIN["brown_dennis"] if m20 else None, xmin_exact=False)


_OSBORNE1_Y = (0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751, 0.718, 0.685, 0.658,
               0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490, 0.478, 0.467, 0.457, 0.448, 0.438, 0.431,
               0.424, 0.420, 0.414, 0.411, 0.406)


def osborne_1() -> Problem:
    """MGH 17, Osborne 1: n = 5, m = 33."""

    def fn(x: Tensor) -> Tensor:
        t = 10.0 * _idx(0, 32, x)
        model = x[0] + x[1] * torch.exp(-t * x[3]) + x[2] * torch.exp(-t * x[4])
        return _const("osborne1_y", _OSBORNE1_Y, x) - model

    return _problem("osborne_1", 17, "Osborne 1", 5, 33, fn, (0.5, 1.5, -1.0, 0.01, 0.02), 5.46489e-5,
                    _XMIN["osborne_1"], xmin_exact=False)


def biggs_exp6(m: int = 13) -> Problem:
    """MGH 18, Biggs EXP6: n = 6, m >= 6; the paper also reports a local minimum 5.65565e-3 for m = 13."""
    _check_int("m", m, 6)

    def fn(x: Tensor) -> Tensor:
        t = 0.1 * _idx(1, m, x)
        y = torch.exp(-t) - 5.0 * torch.exp(-10.0 * t) + 3.0 * torch.exp(-4.0 * t)
        return x[2] * torch.exp(-t * x[0]) - x[3] * torch.exp(-t * x[1]) + x[5] * torch.exp(-t * x[4]) - y

    return _problem("biggs_exp6", 18, "Biggs EXP6", 6, m, fn, (1.0, 2.0, 1.0, 1.0, 1.0, 1.0), 0.0,
                    (1.0, 10.0, 1.0, 5.0, 4.0, 3.0), flocal=(5.65565e-3,) if m == 13 else ())


_OSBORNE2_Y = (1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725, 0.746, 0.679, 0.608, 0.655,
               0.616, 0.606, 0.602, 0.626, 0.651, 0.724, 0.649, 0.649, 0.694, 0.644, 0.624, 0.661, 0.612, 0.558,
               0.533, 0.495, 0.500, 0.423, 0.395, 0.375, 0.372, 0.391, 0.396, 0.405, 0.428, 0.429, 0.523, 0.562,
               0.607, 0.653, 0.672, 0.708, 0.633, 0.668, 0.645, 0.632, 0.591, 0.559, 0.597, 0.625, 0.739, 0.710,
               0.729, 0.720, 0.636, 0.581, 0.428, 0.292, 0.162, 0.098, 0.054)


def osborne_2() -> Problem:
    """MGH 19, Osborne 2: n = 11, m = 65."""

    def fn(x: Tensor) -> Tensor:
        t = _idx(0, 64, x) / 10.0
        model = (x[0] * torch.exp(-t * x[4]) + x[1] * torch.exp(-(t - x[8]) ** 2 * x[5])
                 + x[2] * torch.exp(-(t - x[9]) ** 2 * x[6]) + x[3] * torch.exp(-(t - x[10]) ** 2 * x[7]))
        return _const("osborne2_y", _OSBORNE2_Y, x) - model

    return _problem("osborne_2", 19, "Osborne 2", 11, 65, fn, (1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5),
                    4.01377e-2, _XMIN["osborne_2"], xmin_exact=False)


# --------------------------------------------------------------------------- 20-35: variable n

_WATSON_FMIN = {6: 2.28767e-3, 9: 1.39976e-6, 12: 4.72238e-10}


def watson(n: int = 6) -> Problem:
    """MGH 20, Watson: 2 <= n <= 31, m = 31 (fmin published for n = 6, 9, 12)."""
    _check_int("n", n, 2)
    if n > 31:
        raise ValueError(f"n must be <= 31, got {n}")

    def fn(x: Tensor) -> Tensor:
        t = _idx(1, 29, x) / 29.0
        powers = t[:, None] ** _idx(0, n - 1, x)[None, :]  # (29, n): t_i^(j-1)
        b = powers @ x
        a = powers[:, : n - 1] @ (_idx(1, n - 1, x) * x[1:])
        return torch.cat((a - b * b - 1.0, x[:1], (x[1] - x[0] ** 2 - 1.0).reshape(1)))

    key = f"watson{n}"
    return _problem("watson", 20, "Watson", n, 31, fn, (0.0,) * n, _WATSON_FMIN.get(n), _XMIN.get(key),
                    xmin_exact=False)



def extended_rosenbrock(n: int = 1000) -> Problem:
    """MGH 21, extended Rosenbrock: any even n, m = n."""
    _check_int("n", n, 2, multiple=2)

    def fn(x: Tensor) -> Tensor:
        odd, even = x[0::2], x[1::2]
        return torch.stack((10.0 * (even - odd * odd), 1.0 - odd), dim=1).reshape(-1)

    return _problem("extended_rosenbrock", 21, "Extended Rosenbrock", n, n, fn, (-1.2, 1.0) * (n // 2), 0.0,
                    (1.0,) * n)


def extended_powell_singular(n: int = 20) -> Problem:
    """MGH 22, extended Powell singular: n a multiple of 4, m = n."""
    _check_int("n", n, 4, multiple=4)
    s5, s10 = math.sqrt(5.0), math.sqrt(10.0)

    def fn(x: Tensor) -> Tensor:
        a, b, c, d = x[0::4], x[1::4], x[2::4], x[3::4]
        return torch.stack((a + 10.0 * b, s5 * (c - d), (b - 2.0 * c) ** 2, s10 * (a - d) ** 2), dim=1).reshape(-1)

    return _problem("extended_powell_singular", 22, "Extended Powell singular", n, n, fn,
                    (3.0, -1.0, 0.0, 1.0) * (n // 4), 0.0, (0.0,) * n)


def penalty_1(n: int = 10) -> Problem:
    """MGH 23, penalty function I: m = n + 1 (fmin published for n = 4, 10)."""
    _check_int("n", n, 1)
    sa = math.sqrt(1e-5)

    def fn(x: Tensor) -> Tensor:
        return torch.cat((sa * (x - 1.0), (torch.dot(x, x) - 0.25).reshape(1)))

    fmin = {4: 2.24997e-5, 10: 7.08765e-5}.get(n)
    return _problem("penalty_1", 23, "Penalty I", n, n + 1, fn, range(1, n + 1), fmin, _XMIN.get(f"penalty_1_{n}"),
                    xmin_exact=False)


def penalty_2(n: int = 10) -> Problem:
    """MGH 24, penalty function II: m = 2n (fmin published for n = 4, 10)."""
    _check_int("n", n, 1)
    sa = math.sqrt(1e-5)

    def fn(x: Tensor) -> Tensor:
        i = _idx(2, n, x)
        y = torch.exp(i / 10.0) + torch.exp((i - 1.0) / 10.0)
        e = torch.exp(x / 10.0)
        weights = _idx(1, n, x).flip(0)  # n - j + 1
        return torch.cat(((x[0] - 0.2).reshape(1), sa * (e[1:] + e[:-1] - y), sa * (e[1:] - math.exp(-0.1)),
                          (torch.dot(weights, x * x) - 1.0).reshape(1)))

    fmin = {4: 9.37629e-6, 10: 2.93660e-4}.get(n)
    return _problem("penalty_2", 24, "Penalty II", n, 2 * n, fn, (0.5,) * n, fmin, _XMIN.get(f"penalty_2_{n}"),
                    xmin_exact=False)


def variably_dimensioned(n: int = 10) -> Problem:
    """MGH 25, variably dimensioned: m = n + 2."""
    _check_int("n", n, 1)

    def fn(x: Tensor) -> Tensor:
        s = torch.dot(_idx(1, n, x), x - 1.0).reshape(1)
        return torch.cat((x - 1.0, s, s * s))

    return _problem("variably_dimensioned", 25, "Variably dimensioned", n, n + 2, fn,
                    [1.0 - j / n for j in range(1, n + 1)], 0.0, (1.0,) * n)


def trigonometric(n: int = 10) -> Problem:
    """MGH 26, trigonometric: m = n (the paper gives f = 0; local minima exist, e.g. ~2.795e-5 for n = 10)."""
    _check_int("n", n, 1)

    def fn(x: Tensor) -> Tensor:
        c = torch.cos(x)
        return n - c.sum() + _idx(1, n, x) * (1.0 - c) - torch.sin(x)

    return _problem("trigonometric", 26, "Trigonometric", n, n, fn, (1.0 / n,) * n, 0.0, None)


def brown_almost_linear(n: int = 10) -> Problem:
    """MGH 27, Brown almost-linear: m = n; also f = 1 at (0, ..., 0, n + 1)."""
    _check_int("n", n, 1)

    def fn(x: Tensor) -> Tensor:
        return torch.cat((x[:-1] + x.sum() - (n + 1.0), (torch.prod(x) - 1.0).reshape(1)))

    return _problem("brown_almost_linear", 27, "Brown almost-linear", n, n, fn, (0.5,) * n, 0.0, (1.0,) * n,
                    flocal=(1.0,))


def discrete_boundary_value(n: int = 10) -> Problem:
    """MGH 28, discrete boundary value: m = n."""
    _check_int("n", n, 1)
    h = 1.0 / (n + 1)

    def fn(x: Tensor) -> Tensor:
        t = _idx(1, n, x) * h
        z = x.new_zeros(1)
        padded = torch.cat((z, x, z))
        return 2.0 * x - padded[:-2] - padded[2:] + h * h * (x + t + 1.0) ** 3 / 2.0

    ts = [(j + 1) * h for j in range(n)]
    return _problem("discrete_boundary_value", 28, "Discrete boundary value", n, n, fn, [t * (t - 1.0) for t in ts],
                    0.0, _XMIN.get(f"discrete_boundary_value_{n}"), xmin_exact=False)


def discrete_integral_equation(n: int = 10) -> Problem:
    """MGH 29, discrete integral equation: m = n."""
    _check_int("n", n, 1)
    h = 1.0 / (n + 1)

    def fn(x: Tensor) -> Tensor:
        t = _idx(1, n, x) * h
        q = (x + t + 1.0) ** 3
        lower = torch.cumsum(t * q, 0)  # sum_{j <= i} t_j q_j
        tail = (1.0 - t) * q
        upper = tail.sum() - torch.cumsum(tail, 0)  # sum_{j > i} (1 - t_j) q_j
        return x + h * ((1.0 - t) * lower + t * upper) / 2.0

    ts = [(j + 1) * h for j in range(n)]
    return _problem("discrete_integral_equation", 29, "Discrete integral equation", n, n, fn,
                    [t * (t - 1.0) for t in ts], 0.0, _XMIN.get(f"discrete_integral_equation_{n}"), xmin_exact=False)


def broyden_tridiagonal(n: int = 10) -> Problem:
    """MGH 30, Broyden tridiagonal: m = n."""
    _check_int("n", n, 1)

    def fn(x: Tensor) -> Tensor:
        z = x.new_zeros(1)
        padded = torch.cat((z, x, z))
        return (3.0 - 2.0 * x) * x - padded[:-2] - 2.0 * padded[2:] + 1.0

    return _problem("broyden_tridiagonal", 30, "Broyden tridiagonal", n, n, fn, (-1.0,) * n, 0.0,
                    _XMIN.get(f"broyden_tridiagonal_{n}"), xmin_exact=False)


def broyden_banded(n: int = 10) -> Problem:
    """MGH 31, Broyden banded (lower bandwidth 5, upper 1): m = n."""
    _check_int("n", n, 1)

    def fn(x: Tensor) -> Tensor:
        g = x * (1.0 + x)
        padded = torch.cat((x.new_zeros(5), g, x.new_zeros(1)))
        band = sum(padded[5 + k: 5 + k + n] for k in (-5, -4, -3, -2, -1, 1))
        return x * (2.0 + 5.0 * x * x) + 1.0 - band

    return _problem("broyden_banded", 31, "Broyden banded", n, n, fn, (-1.0,) * n, 0.0,
                    _XMIN.get(f"broyden_banded_{n}"), xmin_exact=False)


def linear_full_rank(n: int = 10, m: int = 20) -> Problem:
    """MGH 32, linear function - full rank: m >= n; minimum m - n at x = (-1, ..., -1)."""
    _check_int("n", n, 1)
    _check_int("m", m, n)

    def fn(x: Tensor) -> Tensor:
        c = 2.0 * x.sum() / m + 1.0
        return torch.cat((x - c, (-c).expand(m - n)))

    return _problem("linear_full_rank", 32, "Linear function - full rank", n, m, fn, (1.0,) * n, float(m - n),
                    (-1.0,) * n)


def linear_rank_1(n: int = 10, m: int = 20) -> Problem:
    """MGH 33, linear function - rank 1: m >= n; minimum m(m-1)/(2(2m+1)) where sum_j j x_j = 3/(2m+1)."""
    _check_int("n", n, 1)
    _check_int("m", m, n)
    scale = 3.0 / (2 * m + 1) / (n * (n + 1) * (2 * n + 1) / 6)  # x_j = scale * j gives sum_j j x_j = 3/(2m+1)

    def fn(x: Tensor) -> Tensor:
        return _idx(1, m, x) * torch.dot(_idx(1, n, x), x) - 1.0

    return _problem("linear_rank_1", 33, "Linear function - rank 1", n, m, fn, (1.0,) * n,
                    m * (m - 1) / (2.0 * (2 * m + 1)), [scale * j for j in range(1, n + 1)])


def linear_rank_1_zero(n: int = 10, m: int = 20) -> Problem:
    """MGH 34, linear function - rank 1 with zero columns and rows: m >= n >= 3; minimum
    (m^2 + 3m - 6)/(2(2m - 3)) where sum_{j=2}^{n-1} j x_j = 3/(2m - 3)."""
    _check_int("n", n, 3)
    _check_int("m", m, n)
    inner = sum(j * j for j in range(2, n))
    scale = 3.0 / (2 * m - 3) / inner

    def fn(x: Tensor) -> Tensor:
        s = torch.dot(_idx(2, n - 1, x), x[1:-1])
        mid = _idx(1, m - 2, x) * s - 1.0  # (i - 1) s - 1 for i = 2..m-1
        one = x.new_full((1,), -1.0)
        return torch.cat((one, mid, one))

    return _problem("linear_rank_1_zero", 34, "Linear function - rank 1 with zero columns and rows", n, m, fn,
                    (1.0,) * n, (m * m + 3 * m - 6) / (2.0 * (2 * m - 3)),
                    [0.0] + [scale * j for j in range(2, n)] + [0.0])


_CHEBYQUAD_FMIN = {8: 3.51687e-3, 10: 6.50395e-3}


def chebyquad(n: int = 8, m: int | None = None) -> Problem:
    """MGH 35, Chebyquad: m >= n (fmin published for m = n: 0 for n <= 7 and n = 9, 3.51687e-3 for n = 8,
    6.50395e-3 for n = 10)."""
    _check_int("n", n, 1)
    mm = n if m is None else m
    _check_int("m", mm, n)

    def fn(x: Tensor) -> Tensor:
        u = 2.0 * x - 1.0
        prev, cur = torch.ones_like(x), u
        means = [cur.mean()]
        for _ in range(2, mm + 1):
            prev, cur = cur, 2.0 * u * cur - prev
            means.append(cur.mean())
        i = _idx(1, mm, x)
        integral = torch.where(torch.remainder(i, 2) == 0, -1.0 / (i * i - 1.0), torch.zeros_like(i))
        return torch.stack(means) - integral

    fmin = None
    if mm == n:
        fmin = 0.0 if (n <= 7 or n == 9) else _CHEBYQUAD_FMIN.get(n)
    return _problem("chebyquad", 35, "Chebyquad", n, mm, fn, [j / (n + 1) for j in range(1, n + 1)], fmin,
                    _XMIN.get(f"chebyquad_{n}") if mm == n else None, xmin_exact=False)


# --------------------------------------------------------------------------- minimisers computed here

# Minimisers the paper does not give exactly, computed here: from the standard starting point,
# scipy's least_squares (trust-region reflective, autograd Jacobian) then Gauss-Newton/Newton
# steps until the gradient stops decreasing; f at each agrees with the paper's fmin to its six
# digits (tests/test_mgh.py). Values in float64, 17 significant digits.
_XMIN: dict[str, tuple[float, ...]] = {
    "powell_badly_scaled": (1.0981593296997979e-05, 9.106146739866686),
    "jennrich_sampson": (0.2578252136703641, 0.2578252136703641),
    "bard": (0.08241055974978895, 1.1330360920297216, 2.343695178642537),
    "gaussian": (0.3989561378395951, 1.0000190844962111, -2.5604890059780833e-20),
    "meyer": (0.005609636476949461, 6181.346345409164, 345.2236345945391),
    "kowalik_osborne": (0.19280693457903783, 0.19128232873436735, 0.12305650692632064, 0.13606233068379503),
    "brown_dennis": (-11.594439904762163, 13.203630051207202, -0.4034394881768596, 0.2367787744557362),
    "osborne_1": (
        0.37541005210455136, 1.9358469124043485, -1.4646871363038585, 0.012867534639445833, 0.022122699662947595,
    ),
    "osborne_2": (
        1.3099771546273007, 0.431553794602989, 0.6336616989607241, 0.5994305347859161, 0.7541832263280115,
        0.9042885798596336, 1.3658118352370279, 4.823698817227157, 2.3986848661317546, 4.568874597667672,
        5.6753414705806415,
    ),
    "watson6": (
        -0.0157250844042728, 1.0124348695649084, -0.23299162752685812, 1.260430102692486, -1.5137289451998974,
        0.9929964459863255,
    ),
    "watson9": (
        -1.53070368769396e-05, 0.9997897039362521, 0.01476396349396771, 0.14634233027108373, 1.0008210945503369,
        -2.6177311217993937, 4.104403142082622, -3.143612264797935, 1.0526264046050215,
    ),
    "watson12": (
        -6.638060468243104e-09, 1.0000016441178614, -0.000563932210191789, 0.3478205405006466, -0.15673150406364234,
        1.0528151770376621, -3.247271152927082, 7.288434896883518, -10.271848239995693, 9.07411364604757,
        -4.541375466244598, 1.0120118884688076,
    ),
    "penalty_1_4": (0.2500074995875378, 0.2500074995875379, 0.2500074995875379, 0.2500074995875379),
    "penalty_1_10": (
        0.15812230111311634, 0.15812230111311634, 0.15812230111311637, 0.15812230111311637, 0.15812230111311637,
        0.15812230111311637, 0.15812230111311637, 0.15812230111311637, 0.15812230111311637, 0.15812230111311637,
    ),
    "penalty_2_4": (0.1999993333503804, 0.1913167009927725, 0.48010148533262326, 0.5188454043902003),
    "penalty_2_10": (
        0.19998360519782363, 0.010350648471292303, 0.019604934480438405, 0.03208906722068565, 0.04993267739964131,
        0.0765139951539936, 0.11862407286950419, 0.19214487233557664, 0.3473205869418436, 0.3691643741593508,
    ),
    "discrete_boundary_value_10": (
        -0.04316498251876487, -0.08157715653538687, -0.11448571438052928, -0.14097357686259668, -0.1599086961819831,
        -0.16987720231277492, -0.16908998378120835, -0.15524953522183182, -0.125355891678935, -0.07541653368589209,
    ),
    "discrete_integral_equation_10": (
        -0.04316498251876487, -0.08157715653538689, -0.11448571438052926, -0.14097357686259668, -0.1599086961819831,
        -0.1698772023127749, -0.16908998378120832, -0.15524953522183182, -0.12535589167893493, -0.07541653368589205,
    ),
    "broyden_tridiagonal_10": (
        -0.5707221320112248, -0.6818069499842752, -0.7022100760176601, -0.7055106298950804, -0.7049061557287437,
        -0.7014966070298512, -0.6918893223547983, -0.6657965144058536, -0.5960351090263657, -0.4164122575286934,
    ),
    "broyden_banded_10": (
        -0.4283028635872503, -0.47659642435629024, -0.5196524636468617, -0.5580993248321809, -0.5925061568294574,
        -0.624503682199468, -0.6232394714405911, -0.6213938417965735, -0.6204535966590873, -0.5864692707204351,
    ),
    "chebyquad_8": (
        0.04315276015101658, 0.19309084038418609, 0.26632870689027294, 0.5, 0.5, 0.733671293109727, 0.8069091596158139,
        0.9568472398489833,
    ),
    "chebyquad_10": (
        0.05961990053581274, 0.1667082818358614, 0.2391706589426085, 0.3988842923060445, 0.3988842923060445,
        0.6011157076939555, 0.6011157076939555, 0.7608293410573915, 0.8332917181641386, 0.9403800994641873,
    ),
}


# --------------------------------------------------------------------------- registry


def _registry() -> dict[str, Problem]:
    problems = [
        rosenbrock(), freudenstein_roth(), powell_badly_scaled(), brown_badly_scaled(), beale(), jennrich_sampson(),
        helical_valley(), bard(), gaussian(), meyer(), gulf_research(), box_3d(), powell_singular(), wood(),
        kowalik_osborne(), brown_dennis(), osborne_1(), biggs_exp6(), osborne_2(), watson(), extended_rosenbrock(),
        extended_powell_singular(), penalty_1(), penalty_2(), variably_dimensioned(), trigonometric(),
        brown_almost_linear(), discrete_boundary_value(), discrete_integral_equation(), broyden_tridiagonal(),
        broyden_banded(), linear_full_rank(), linear_rank_1(), linear_rank_1_zero(), chebyquad(),
    ]
    return {p.name: p for p in problems}


PROBLEMS: dict[str, Problem] = _registry()
"""Every problem at its default size, keyed by name, in the paper's order."""
