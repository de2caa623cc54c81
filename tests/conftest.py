"""Shared helpers of the parity, differential, property, error and state tests.

``OddNet`` is a small model whose parameters have awkward shapes (a 3-D tensor, 0-d and
1-element tensors, odd Linear sizes); ``trajectory`` runs the same chain of modules, built from
either library's ``m`` namespace, on it and returns the parameters after every step.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and thread start-up dominates on 2 busy cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class OddNet(nn.Module):
    """An MLP (5 -> 7 -> 3 -> 1) with a 3-D, a 0-d and a 1-element parameter.

    The 3-D parameter is registered first on purpose: torchzero 0.4.4's ``ClipNorm``/``Normalize``
    with ``dim=None`` reuse the first tensor's dim list for every later tensor, which agrees with
    "each tensor's own dims" only while no later tensor has more dims than the first.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cube = nn.Parameter(torch.randn(2, 3, 4) * 0.3)
        self.fc1 = nn.Linear(5, 7)
        self.fc2 = nn.Linear(7, 3)
        self.fc3 = nn.Linear(3, 1)
        self.gain = nn.Parameter(torch.tensor(1.3))
        self.shift = nn.Parameter(torch.tensor([0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1(x))
        h = torch.tanh(self.fc2(h))
        out = self.fc3(h) * self.gain + self.shift
        cube = torch.tanh(x[:, :4] @ self.cube.reshape(6, 4).T).sum(1, keepdim=True)
        return out + 0.1 * cube


def make_problem(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[OddNet, torch.Tensor, torch.Tensor]:
    """A fresh ``OddNet`` and a regression data set, deterministic in ``seed`` (drawn in float32 for every dtype)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = OddNet().to(dtype)
    x = torch.randn(24, 5, generator=g)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(24, 1, generator=g)
    return model, x.to(dtype), y.to(dtype)


def flat(tensors: Any) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def make_closure(opt: torch.optim.Optimizer, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable:
    def closure(backward: bool = True) -> torch.Tensor:
        loss = F.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    return closure


def train(opt: torch.optim.Optimizer, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
          closure: bool, after_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Steps ``opt`` ``steps`` times; returns the flat parameters after each step, stacked."""
    cl = make_closure(opt, model, x, y)
    out = []
    for i in range(steps):
        if closure:
            opt.step(cl)
        else:
            cl()
            opt.step()
        if after_step is not None:
            after_step(i)
        out.append(flat(model.parameters()))
    return torch.stack(out)


def trajectory(lib: Any, make_modules: Callable[[Any], Sequence[Any]], steps: int = 20, closure: bool = True,
               seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Parameters after each of ``steps`` steps of ``lib.Optimizer(params, *make_modules(lib.m))``."""
    model, x, y = make_problem(seed, dtype)
    opt = lib.Optimizer(model.parameters(), *make_modules(lib.m))
    return train(opt, model, x, y, steps, closure)


def assert_traj_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    """Trajectories agree step by step; the message names the first step that does not."""
    assert actual.shape == expected.shape
    assert torch.isfinite(expected).all(), "the reference trajectory is not finite: the test problem is wrong"
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m, i=i: f"step {i + 1}: {m}")
