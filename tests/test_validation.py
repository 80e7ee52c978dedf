"""Bad input raises ValueError naming the argument, before any work starts."""

import numpy as np
import pytest

import theory as th

TRUTH = th.sample_ground_truth(4, 1, 3, rng=0)
DATA = th.sample_tasks(TRUTH, 10, 5, 0.1, rng=0)
X, Y = DATA.X, DATA.Y
NAN = X.copy()
NAN[0, 0, 0] = np.nan
INF = Y.copy()
INF[1, 2, 3] = np.inf

# (call, keyword arguments, the argument the message must name)
CASES = [
    (th.sample_ground_truth, dict(d=0, k=1, T=3, rng=0), "'d'"),
    (th.sample_ground_truth, dict(d=4, k=0, T=3, rng=0), "'k'"),
    (th.sample_ground_truth, dict(d=4, k=5, T=3, rng=0), "'k'"),
    (th.sample_ground_truth, dict(d=4, k=1, T=0, rng=0), "'T'"),
    (th.sample_ground_truth, dict(d=4.5, k=1, T=3, rng=0), "'d'"),
    (th.sample_ground_truth, dict(d=4, k=1, T=3, rng="seed"), "'rng'"),
    (th.sample_ground_truth, dict(d=4, k=1, T=3, rng=0, symmetric_base="yes"), "'symmetric_base'"),
    (th.sample_tasks, dict(truth=TRUTH, N=0, n=5, sigma=0.1, rng=0), "'N'"),
    (th.sample_tasks, dict(truth=TRUTH, N=5, n=0, sigma=0.1, rng=0), "'n'"),
    (th.sample_tasks, dict(truth=TRUTH, N=5, n=5, sigma=-0.1, rng=0), "'sigma'"),
    (th.sample_tasks, dict(truth=TRUTH, N=5, n=5, sigma=float("nan"), rng=0), "'sigma'"),
    (th.sample_tasks, dict(truth="truth", N=5, n=5, sigma=0.1, rng=0), "'truth'"),
    (th.reduced_rank_regression, dict(X=X[0], Y=Y[0], rank=0), "'rank'"),
    (th.reduced_rank_regression, dict(X=X[0], Y=Y[0], rank=5), "'rank'"),
    (th.reduced_rank_regression, dict(X=X[0], Y=Y[0, :7], rank=1), "'X' and 'Y'"),
    (th.reduced_rank_regression, dict(X=NAN[0], Y=Y[0], rank=1), "'X'"),
    (th.reduced_rank_regression, dict(X=X[0], Y=INF[1], rank=1), "'Y'"),
    (th.reduced_rank_regression, dict(X=X[0, 0], Y=Y[0], rank=1), "'X'"),
    (th.best_rank_approx, dict(M=np.eye(3), r=4), "'r'"),
    (th.best_rank_approx, dict(M=np.eye(3), r=-1), "'r'"),
    (th.tail_energy, dict(M=np.full((2, 2), np.nan), r=1), "'M'"),
    (th.standard_retraining, dict(X=X, Y=Y[:, :, :3]), "'X' and 'Y'"),
    (th.standard_retraining, dict(X=NAN, Y=Y), "'X'"),
    (th.standard_retraining, dict(X=X[0], Y=Y[0]), "'X'"),
    (th.standard_retraining_population, dict(truth=None), "'truth'"),
    (th.fit_loraml, dict(X=X, Y=Y, k=0, rng=0), "'k'"),
    (th.fit_loraml, dict(X=X, Y=Y, k=5, rng=0), "'k'"),
    (th.fit_loraml, dict(X=X, Y=INF, k=1, rng=0), "'Y'"),
    (th.fit_loraml, dict(X=X, Y=Y, k=1, rng=0, method="adam"), "'method'"),
    (th.fit_loraml, dict(X=X, Y=Y, k=1, rng=0, method="paper", lr_A=-1.0), "'lr_A'"),
    (th.fit_loraml, dict(X=X, Y=Y, k=1, rng=0, method="paper", max_iter=3), "'max_iter'"),
    (th.fit_loraml, dict(X=X, Y=Y, k=1, rng=0, n_starts=0), "'n_starts'"),
    (th.fit_loraml, dict(X=X, Y=Y, k=1, rng=0, tol=0.0), "'tol'"),
    (th.fit_loraml_population, dict(truth=TRUTH, k=9, rng=0), "'k'"),
    (th.fit_loraml_population, dict(truth=X, k=1, rng=0), "'truth'"),
    (th.finetune_lora, dict(A_hat=np.eye(4), X=DATA.X_test, Y=DATA.Y_test, rank=0), "'rank'"),
    (th.finetune_lora, dict(A_hat=np.eye(4), X=DATA.X_test[:, :3], Y=DATA.Y_test, rank=1), "'X'"),
    (th.finetune_lora, dict(A_hat=np.eye(4), X=DATA.X_test, Y=DATA.Y_test[:3], rank=1), "'Y'"),
    (th.loraml_objective, dict(A=np.eye(4), U=np.zeros((2, 4, 1)), X=X, Y=Y), "'U'"),
    (th.loraml_objective, dict(A=np.eye(3), U=np.zeros((3, 4, 1)), truth=TRUTH), "'A'"),
    (th.loraml_objective, dict(A=np.eye(4), U=np.zeros((3, 4, 1))), "'X' and 'Y'"),
    (th.loraml_objective, dict(A=np.eye(4), U=np.zeros((3, 4, 1)), X=X, Y=Y, truth=TRUTH), "not both"),
    (th.excess_risk, dict(W=np.ones(3), target=np.eye(3)), "'W'"),
    (th.population_risk, dict(W=np.eye(3), target=np.eye(3), sigma=-1.0), "'sigma'"),
    (th.sample_ground_truth, dict(d=4, k=1, T=3, rng=0, size=0), "'size'"),
    (th.rate_prediction, dict(d=4, k=1, n=5, sigma=0.1), "'n'"),
    (th.rate_prediction, dict(d=4, k=5, n=50, sigma=0.1), "'k'"),
    (th.rate_prediction, dict(d=4, k=1, n=50, sigma=-0.1), "'sigma'"),
    (th.standard_retraining_from_statistics, dict(S=np.ones((3, 4, 3)), C=np.ones((3, 4, 3))), "'S'"),
    (th.standard_retraining_from_statistics, dict(S=np.ones((3, 4, 4)), C=np.ones((3, 3, 4))), "'C'"),
    (th.fit_population_batch, dict(task_weights=np.ones((1, 3, 4, 4)), k=1, rng=0, tol=0.0), "'tol'"),
    (th.fit_loraml_population, dict(truth=TRUTH, k=1, rng=0, n_starts=0), "'n_starts'"),
]


@pytest.mark.parametrize(("func", "kwargs", "names"), CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_raises_value_error_naming_the_argument(func, kwargs, names):
    with pytest.raises(ValueError) as info:
        func(**kwargs)
    assert names in str(info.value)
    assert func.__name__ in str(info.value) or "GroundTruth" in str(info.value) or "not both" in names


def test_messages_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"The 'rank' parameter of reduced_rank_regression must be an int "
                                         r"in \[1, 4\]\. Got 9 instead\."):
        th.reduced_rank_regression(X[0], Y[0], 9)


def test_ground_truth_rejects_bad_arrays():
    with pytest.raises(ValueError, match="U_star"):
        th.GroundTruth(A_star=np.eye(3), U_star=np.zeros((1, 3, 1)))
    with pytest.raises(ValueError, match="A_star"):
        th.GroundTruth(A_star=np.ones((3, 2)), U_star=np.zeros((2, 3, 1)))
