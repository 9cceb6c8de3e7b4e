"""The fit's optimiser: torch's fused Adam, bit for bit, without importing torch._dynamo (a cold call's seconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from recon.graph_steps import ScheduledAdam


def test_scheduled_adam_matches_torch_fused_adam_bit_for_bit() -> None:
    torch.manual_seed(0)
    start = [torch.randn(3, 4, 5), torch.randn(7), torch.randn(2, 2)]
    rates = [torch.linspace(0.05, 0.005, 6), torch.linspace(0.2, 0.02, 6), torch.full((6,), 0.1)]
    ours = [torch.nn.Parameter(p.clone()) for p in start]
    theirs = [torch.nn.Parameter(p.clone()) for p in start]
    optimiser = ScheduledAdam(list(zip(ours, rates, strict=True)), betas=(0.9, 0.99))
    reference = torch.optim.Adam(
        [{"params": [p], "lr": r[0].clone()} for p, r in zip(theirs, rates, strict=True)], betas=(0.9, 0.99), fused=True
    )
    counter = torch.zeros(1, dtype=torch.long)
    for step in range(6):
        # The last parameter gets no gradient: both skip it (its step count too).
        loss = sum(((p - 0.3 * step) ** 2).sum() + p.sin().sum() for p in ours[:2])
        optimiser.step(loss, counter)
        reference.zero_grad(set_to_none=True)
        sum(((p - 0.3 * step) ** 2).sum() + p.sin().sum() for p in theirs[:2]).backward()
        for group, r in zip(reference.param_groups, rates, strict=True):
            group["lr"].copy_(r.index_select(0, counter)[0])
        reference.step()
        counter.add_(1)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(ours[2], start[2])


def test_the_fit_step_leaves_torch_dynamo_unimported() -> None:
    probe = (
        "import sys, torch\n"
        "from recon.graph_steps import ScheduledAdam\n"
        "p = torch.nn.Parameter(torch.ones(3))\n"
        "adam = ScheduledAdam([(p, torch.full((2,), 0.1))], (0.9, 0.99))\n"
        "adam.step((p * p).sum(), torch.zeros(1, dtype=torch.long))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_warm_up_steps_share_one_side_stream_per_device(monkeypatch) -> None:
    """A new stream per fitting stage gave every pooled stream a cuBLAS workspace that the process keeps: a
    long-lived fitting process grew until torch's pool of 32 came round (see ``warmup_stream``)."""
    import recon.graph_steps as graph_steps

    made = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: made.append(device) or object())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    graph_steps._warmup_stream.cache_clear()
    try:
        first = graph_steps.warmup_stream(torch.device("cuda"))
        assert all(graph_steps.warmup_stream(torch.device("cuda", 0)) is first for _ in range(40))
        assert graph_steps.warmup_stream(torch.device("cuda", 1)) is not first
        assert made == [torch.device("cuda", 0), torch.device("cuda", 1)]
    finally:
        graph_steps._warmup_stream.cache_clear()


def test_on_replay_never_runs_without_a_graph() -> None:
    """A one-shot command's imports start in a thread only when the host merely waits for replays: on the CPU the
    steps are Python's own work, which a thread beside them would slow."""
    from recon.graph_steps import run_steps

    counts = {"steps": 0, "after": 0, "replay": 0}

    def step() -> None:
        counts["steps"] += 1

    graph = run_steps(
        step,
        6,
        torch.device("cpu"),
        True,
        lambda: counts.update(after=counts["after"] + 1),
        lambda: counts.update(replay=counts["replay"] + 1),
    )
    assert (graph, counts) == (False, {"steps": 6, "after": 6, "replay": 0})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_on_replay_runs_once_right_after_the_first_replay() -> None:
    from recon.graph_steps import WARMUP_STEPS, run_steps

    device = torch.device("cuda")
    x = torch.zeros(1, device=device)
    events: list[str] = []

    def step() -> None:
        x.add_(1)

    graph = run_steps(step, 8, device, True, lambda: events.append("after"), lambda: events.append("replay"))
    torch.cuda.synchronize()
    assert graph and x.item() == 8
    assert events.count("replay") == 1 and events.index("replay") == WARMUP_STEPS + 1
