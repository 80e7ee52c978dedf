"""The batched shallow-network port (spec §5.2) at tiny sizes on the CPU."""

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import sims  # noqa: E402
from sims._shallow import _AdamW, _grad_W  # noqa: E402

TINY = dict(N=40, n=12, retrain_steps=30, ft_steps=20, record_every=5, dtype="float64")


def test_hand_written_gradients_match_autograd():
    g = torch.Generator().manual_seed(0)
    B, T, N, d = 2, 3, 7, 4
    X = torch.randn(B, T, N, d, generator=g, dtype=torch.float64)
    y = torch.randn(B, T, N, generator=g, dtype=torch.float64)
    W = torch.randn(B, T, d, d, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    loss, gW, gc = _grad_W(X.transpose(-1, -2).contiguous(), y, W.detach(), c.detach())
    ref = ((torch.sigmoid(X @ W.transpose(-1, -2)) @ c[:, None, :, None]).squeeze(-1) - y).pow(2).mean(dim=(1, 2))
    ref.sum().backward()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gW, W.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(gc, c.grad, rtol=1e-10, atol=1e-13)


def test_adamw_matches_torch_optim():
    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    grads = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(25)]
    mine = p0.clone()
    opt = _AdamW(mine, lr=1e-2, weight_decay=0.05)
    ref = torch.nn.Parameter(p0.clone())
    topt = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.05)
    for grad in grads:
        opt.step(grad)
        ref.grad = grad.clone()
        topt.step()
    torch.testing.assert_close(mine, ref.detach(), rtol=1e-12, atol=1e-14)


def test_batched_trials_follow_their_one_at_a_time_trajectories():
    """AdamW is elementwise, so a batch of trials must reproduce each trial run alone (1e-5)."""
    cfg = sims.shallow_sweep("T", (2, 3), trials=3, **TINY)
    batched = sims.run(cfg, progress=False, device="cpu")
    alone = pd.concat([sims.simulate_shallow_chunk(cfg, v, (t,), device="cpu")
                       for v in range(2) for t in range(3)], ignore_index=True)
    alone = alone.sort_values(["method", "value", "trial", "rank", "step"]).reset_index(drop=True)
    batched = batched.sort_values(["method", "value", "trial", "rank", "step"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(batched.drop(columns=["test_mse", "retrain_loss"]),
                                  alone.drop(columns=["test_mse", "retrain_loss"]))
    np.testing.assert_allclose(batched.test_mse, alone.test_mse, rtol=1e-5)
    np.testing.assert_allclose(batched.retrain_loss, alone.retrain_loss, rtol=1e-5)


def test_rerun_is_deterministic_and_T2_has_both_ranks():
    cfg = sims.shallow_sweep("T", (2,), trials=2, **{**TINY, "dtype": "float32"})
    a = sims.run(cfg, progress=False, device="cpu")
    b = sims.run(cfg, progress=False, device="cpu")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert set(a["rank"]) == {1, 3}
    assert set(a["method"]) == {"LoRA-ML", "SR"}


def test_training_decreases_losses():
    cfg = sims.shallow_sweep("d", (5,), trials=2, N=200, n=50, retrain_steps=400, ft_steps=300, record_every=100)
    table = sims.run(cfg, progress=False, device="cpu")
    for (_, _), g in table.groupby(["method", "trial"], observed=True):
        g = g.sort_values("step")
        assert g.test_mse.iloc[-1] < g.test_mse.iloc[0]


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(vary="k"), "'vary'"),
    (dict(vary="T", values=(1,)), "'values'"),
    (dict(vary="d", dtype="float16"), "'dtype'"),
    (dict(vary="d", values=(2,), T=2), "exceeds d"),
    (dict(vary="d", lr=-1.0), "'lr'"),
    (dict(vary="d", steps=3), "steps"),
])
def test_bad_shallow_configs(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sims.shallow_sweep(**kwargs)


def test_run_rejects_unknown_engine_options():
    cfg = sims.shallow_sweep("d", (5,), trials=1, **TINY)
    with pytest.raises(ValueError, match="'gpu'"):
        sims.run(cfg, gpu=True)
    with pytest.raises(ValueError, match="device"):
        sims.run(sims.linear_sweep("T"), device="cpu")


def test_cli_sweep_shallow_and_show(tmp_path):
    import subprocess
    import sys

    args = [sys.executable, "-m", "loraml.cli", "sweep", "shallow", "--vary", "T", "--values", "2", "--runs", "2",
            "--steps", "10", "--retrain-steps", "10", "--set", "N=30", "--set", "n=10", "--device", "cpu",
            "--executor", "serial", "--quiet", "--store", str(tmp_path)]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "rank" in out.stdout and "LoRA-ML" in out.stdout
    (folder,) = list(tmp_path.glob("shallow-*"))
    shown = subprocess.run([sys.executable, "-m", "loraml.cli", "show", str(folder)], capture_output=True, text=True)
    assert shown.returncode == 0 and "vary T" in shown.stdout
