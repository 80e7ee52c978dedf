"""An independent oracle: torch.func.hessian of the population LoRA-ML objective against the
analytic dense Hessian of ``theory.loraml_hessian`` (variables: A row-major, then U (T, d, k))."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.func import hessian  # noqa: E402

import theory as th  # noqa: E402


def _population_F(truth):
    targets = torch.as_tensor(truth.task_weights[: truth.T], dtype=torch.float64)
    d, T = truth.d, truth.T

    def F(z, k):
        A = z[: d * d].reshape(d, d)
        U = z[d * d:].reshape(T, d, k)
        E = A + U @ U.transpose(-1, -2) - targets
        return 0.5 * (E * E).sum()

    return F


@pytest.mark.parametrize(("d", "k", "T", "seed"), [(3, 1, 2, 0), (4, 2, 3, 1), (5, 1, 5, 2)])
def test_autograd_hessian_matches_the_analytic_one(d, k, T, seed):
    rng = np.random.default_rng(seed)
    truth = th.sample_ground_truth(d, k, T, rng=rng)
    A = rng.standard_normal((d, d))
    U = rng.standard_normal((T, d, k))
    z = torch.as_tensor(np.concatenate([A.ravel(), U.ravel()]), dtype=torch.float64)
    H_auto = hessian(lambda v: _population_F(truth)(v, k))(z).numpy()
    H = th.loraml_hessian(truth, A, U)
    np.testing.assert_allclose(H, H_auto, rtol=1e-12, atol=1e-11)


def test_autograd_hessian_at_the_sr_saddle():
    truth = th.sample_ground_truth(4, 1, 3, rng=5)
    point = th.sr_saddle(truth)
    z = torch.as_tensor(np.concatenate([point.A.ravel(), point.U.ravel()]), dtype=torch.float64)
    H_auto = hessian(lambda v: _population_F(truth)(v, 1))(z).numpy()
    np.testing.assert_allclose(th.loraml_hessian(truth, point.A, point.U), H_auto, rtol=1e-12, atol=1e-11)
    # P8: its smallest eigenvalue is min(T, 2 min_t λ_min(R̄* − R*_t)).
    lam = min(3.0, 2 * min(np.linalg.eigvalsh(truth.R_bar - truth.R_star[t])[0] for t in range(3)))
    assert abs(np.linalg.eigvalsh(H_auto)[0] - lam) <= 1e-8 * max(1.0, abs(lam))
