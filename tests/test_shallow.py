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


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_matches_torch_optim(fused):
    """Both paths of _AdamW (torch's fused kernel, and the separate ops used where that kernel is
    missing) against torch.optim.AdamW's default (single-tensor) update. A wrong bias correction,
    eps inside the square root or coupled weight decay changes the 25th iterate by far more than
    1e-12 relative (lr = 1e-2 steps on O(1) parameters); reordered float64 rounding stays ~1e-16."""
    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    grads = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(25)]
    mine = p0.clone()
    opt = _AdamW(mine, lr=1e-2, weight_decay=0.05)
    opt._fused = fused and opt._fused
    ref = torch.nn.Parameter(p0.clone())
    topt = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.05)
    for grad in grads:
        opt.step(grad)
        ref.grad = grad.clone()
        topt.step()
    torch.testing.assert_close(mine, ref.detach(), rtol=1e-12, atol=1e-14)


def _reference_trial(cfg, value_index, trial):
    """One trial of the protocol written the straightforward way: the same draws (same SeedSequence
    child), samples-major data, per-task loops, autograd and torch.optim.AdamW, float64.
    Returns {(method, rank, step): test_mse} and {method: retrain_loss}."""
    from sims._shallow import _draw_trial

    value = cfg.values[value_index]
    child = np.random.SeedSequence(cfg.seed).spawn(len(cfg.values) * cfg.trials)[value_index * cfg.trials + trial]
    draw = _draw_trial(cfg, value, np.random.default_rng(child))
    dr = {key: torch.tensor(v, dtype=torch.float64) for key, v in draw.items()}
    X, y = dr["X"], dr["y"]                      # (T, N, d), (T, N)
    T, _, d = X.shape
    k = dr["C0"].shape[1]

    def train(params, loss_fn, steps):
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss = None
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
        return float((loss_fn() if loss is None else loss).detach())

    def net(x, W, c):
        return torch.sigmoid(x @ W.T) @ c

    A, c = dr["A0"].clone().requires_grad_(), dr["c0"].clone().requires_grad_()
    Bt, Ct = torch.zeros(T, d, k, dtype=torch.float64, requires_grad=True), dr["C0"].clone().requires_grad_()
    retrain = {"LoRA-ML": train([A, c, Bt, Ct], lambda: sum(((net(X[t], A + Bt[t] @ Ct[t], c) - y[t]) ** 2).mean()
                                                            for t in range(T)) / T, cfg.retrain_steps)}
    As, cs = dr["A0_sr"].clone().requires_grad_(), dr["c0_sr"].clone().requires_grad_()
    Xp, yp = X.reshape(-1, d), y.reshape(-1)
    retrain["SR"] = train([As, cs], lambda: ((net(Xp, As, cs) - yp) ** 2).mean(), cfg.retrain_steps)
    mse = {}
    for r in cfg.ft_ranks(value):
        for m, (method, base, cb) in enumerate((("LoRA-ML", A, c), ("SR", As, cs))):
            base, cb = base.detach(), cb.detach()
            Bf = torch.zeros(d, r, dtype=torch.float64, requires_grad=True)
            Cf = dr[f"Cft{r}"][m].clone().requires_grad_()
            opt = torch.optim.AdamW([Bf, Cf], lr=cfg.lr, weight_decay=cfg.weight_decay)
            for step in range(cfg.ft_steps + 1):
                if step % cfg.record_every == 0 or step == cfg.ft_steps:
                    with torch.no_grad():
                        pred = net(dr["X_test"], base + Bf @ Cf, cb)
                        mse[method, r, step] = float(((pred - dr["y_clean"]) ** 2).mean())
                if step == cfg.ft_steps:
                    break
                opt.zero_grad()
                ((net(dr["X_test"], base + Bf @ Cf, cb) - dr["y_test"]) ** 2).mean().backward()
                opt.step()
    return mse, retrain


def test_engine_follows_the_autograd_reference_in_float64():
    """Every recorded test MSE and the retraining losses of a batched float64 chunk (both values of
    a T sweep, so both fine-tuning ranks at T = 2; two trials per chunk) against the straightforward
    autograd + torch.optim.AdamW program of `_reference_trial`.

    Tolerance 1e-10 relative: the two programs differ only in float64 summation order (reductions
    of ≤ T·N = 120 terms, ~1e-14 relative at worst), which a few dozen AdamW steps amplify by at
    most a few orders of magnitude (observed ~1e-15). Any modelling or indexing bug — a wrong
    gradient term, SR seeing per-task rather than pooled parameters, a swapped trial, task or base,
    a wrong bias correction — moves the parameters by O(lr) = 1e-3 per step and the metric by far
    more than 1e-10."""
    cfg = sims.shallow_sweep("T", (2, 3), trials=2, **TINY)
    for v in range(2):
        table = sims.simulate_shallow_chunk(cfg, v, (0, 1), device="cpu")
        for trial in (0, 1):
            mse, retrain = _reference_trial(cfg, v, trial)
            rows = table[table.trial == trial]
            assert len(rows) == len(mse)
            got = np.array([rows.loc[(rows.method == m) & (rows["rank"] == r) & (rows.step == s), "test_mse"].item()
                            for (m, r, s) in mse])
            np.testing.assert_allclose(got, np.array(list(mse.values())), rtol=1e-10, atol=0)
            for method, loss in retrain.items():
                np.testing.assert_allclose(rows.loc[rows.method == method, "retrain_loss"], loss, rtol=1e-10, atol=0)


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


def _flushes() -> bool:
    """Whether this thread flushes subnormal float32 results to zero now."""
    tiny = torch.tensor(torch.finfo(torch.float32).tiny, dtype=torch.float32)
    return bool((tiny * 0.5) == 0)


@pytest.mark.parametrize("before", [False, True])
def test_training_flushes_subnormals_and_restores_the_mode(before, monkeypatch):
    """`_flush_denormals` turns on flush-to-zero for the training loops (a subnormal product, 2^-127,
    becomes exactly 0 inside) and restores whatever mode the caller had, on or off, afterwards:
    a context that forgot to flush would leave 2^-127 inside, one that forgot to restore (or
    always reset to off) fails one of the two parametrisations. The engine's loops run inside
    it: the retraining loop sees the flushing mode."""
    from sims import _shallow

    if not torch.set_flush_denormal(before):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        assert _flushes() is before
        with _shallow._flush_denormals("cpu"):
            assert _flushes()
        assert _flushes() is before
        seen = []
        retrain = _shallow._retrain

        def spy(*args, **kwargs):
            seen.append(_flushes())
            return retrain(*args, **kwargs)

        monkeypatch.setattr(_shallow, "_retrain", spy)
        cfg = sims.shallow_sweep("d", (3,), trials=1, **{**TINY, "dtype": "float32"})
        sims.simulate_shallow_chunk(cfg, 0, (0,), device="cpu")
        assert seen == [True] and _flushes() is before
    finally:
        torch.set_flush_denormal(False)


def test_pass_split_into_groups_of_blocks_gives_the_same_numbers(monkeypatch):
    """The training pass runs over groups of blocks that fit in L2 (`_Blocks.groups`). Forced to
    groups of 2 blocks (and a last group of 1: T = 3, 3 trials, L = 9 blocks of 2 stacked
    matrices), a float64 chunk must give the table of the one-group pass to 1e-12 relative: the
    groups are slices of the same buffers and every block's kernels are the same. Slicing the
    per-matrix buffers (r, cᵀ, labels, dL/dc) by block rather than by block × S, or skipping the
    last partial group, gives O(1) errors."""
    from sims import _shallow

    cfg = sims.shallow_sweep("T", (3,), trials=3, **TINY)
    whole = sims.simulate_shallow_chunk(cfg, 0, (0, 1, 2), device="cpu")
    block_bytes = 2 * cfg.d * cfg.N * 8
    monkeypatch.setattr(_shallow, "_GROUP_BYTES", 2 * block_bytes)
    monkeypatch.setattr(_shallow, "_SPLIT_ABOVE", 0)
    spans = []
    group_blocks = _shallow._group_blocks
    monkeypatch.setattr(_shallow, "_group_blocks", lambda *a: spans.append(group_blocks(*a)) or spans[-1])
    split = sims.simulate_shallow_chunk(cfg, 0, (0, 1, 2), device="cpu")
    assert spans[0] == 2                       # the retraining pass really was split
    pd.testing.assert_frame_equal(whole.drop(columns=["test_mse", "retrain_loss"]),
                                  split.drop(columns=["test_mse", "retrain_loss"]))
    np.testing.assert_allclose(split.test_mse, whole.test_mse, rtol=1e-12, atol=0)
    np.testing.assert_allclose(split.retrain_loss, whole.retrain_loss, rtol=1e-12, atol=0)
