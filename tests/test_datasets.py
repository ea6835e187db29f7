"""streamrnn.datasets.lorenz against independent integrations of the Lorenz-63 equations."""

import numpy as np
import pytest

from streamrnn.datasets import lorenz, one_step_ahead

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0


def lorenz_rhs(s):
    return np.array([SIGMA * (s[1] - s[0]), s[0] * (RHO - s[2]) - s[1], s[0] * s[1] - BETA * s[2]])


def rk4_reference(initial, dt, n_integration_steps):
    """The classical RK4 tableau on vectors, written independently of the generator."""
    s = np.array(initial, float)
    traj = [s]
    for _ in range(n_integration_steps):
        k1 = lorenz_rhs(s)
        k2 = lorenz_rhs(s + dt / 2 * k1)
        k3 = lorenz_rhs(s + dt / 2 * k2)
        k4 = lorenz_rhs(s + dt * k3)
        s = s + dt * (k1 + 2 * k2 + 2 * k3 + k4) / 6
        traj.append(s)
    return np.array(traj)


def test_matches_rk4_written_out():
    """Same method, same steps: equal to rounding, sample i is integration step (washout + i + 1) * subsample."""
    dt, sub, wash, n = 0.01, 5, 20, 100
    ref = rk4_reference((1.0, 1.0, 1.0), dt, (wash + n) * sub)
    got = lorenz(n, dt=dt, subsample=sub, washout=wash, component="all")
    expected = ref[(wash + 1) * sub :: sub][:n]
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_matches_adaptive_solver_over_a_short_horizon():
    """Against scipy's DOP853 at tight tolerance: RK4 at dt=0.001 is accurate to ~1e-9 over 2 time units
    (before chaos amplifies the error), so the two agree closely there; at dt=0.01 loosely."""
    scipy_integrate = pytest.importorskip("scipy.integrate")
    t_end = 2.0
    sol = scipy_integrate.solve_ivp(
        lambda t, s: lorenz_rhs(s),
        (0.0, t_end),
        [1.0, 1.0, 1.0],
        method="DOP853",
        rtol=1e-12,
        atol=1e-12,
        dense_output=True,
    )
    for dt, tol in ((0.001, 1e-6), (0.01, 1e-3)):
        sub = 10
        n = round(t_end / (dt * sub))
        got = lorenz(n, dt=dt, subsample=sub, washout=0, component="all")
        times = dt * sub * np.arange(1, n + 1)
        np.testing.assert_allclose(got, sol.sol(times).T, atol=tol * 30, rtol=tol)


def test_matches_explicit_euler_with_tiny_steps_loosely():
    """A different method entirely (first-order Euler, dt=1e-5) agrees over one time unit."""
    dt, steps = 1e-5, 100_000
    s = np.array([1.0, 1.0, 1.0])
    for _ in range(steps):
        s = s + dt * lorenz_rhs(s)
    got = lorenz(1, dt=0.01, subsample=100, washout=0, component="all")[0]
    np.testing.assert_allclose(got, s, rtol=2e-3, atol=2e-3)


def test_attractor_properties_and_determinism():
    xyz = lorenz(4000, component="all")
    assert xyz.shape == (4000, 3) and np.isfinite(xyz).all()
    x, y, z = xyz.T
    assert np.abs(x).max() < 25 and np.abs(y).max() < 35 and 0 < z.min() and z.max() < 55
    assert 22 < z.mean() < 25  # the attractor's well-known mean height (~23.5)
    assert abs(x.mean()) < 2 and 7 < x.std() < 9  # symmetric wings
    np.testing.assert_array_equal(lorenz(500), lorenz(500))
    np.testing.assert_array_equal(lorenz(500, seed=3), lorenz(500, seed=3))
    assert not np.allclose(lorenz(500, seed=3), lorenz(500, seed=4))
    np.testing.assert_array_equal(lorenz(50, component="z"), lorenz(50, component="all")[:, 2])
    np.testing.assert_array_equal(lorenz(30), lorenz(60)[:30])  # a prefix of a longer run


def test_one_step_prediction_is_learnable_but_not_trivial():
    X, Y = one_step_ahead(lorenz(3000))
    persistence = np.mean((X[:, 0] - Y) ** 2)  # NMSE: one_step_ahead standardises
    assert 0.01 < persistence < 0.2


@pytest.mark.parametrize("kw", [{"component": "w"}, {"subsample": 0}, {"dt": 0.0}, {"n_steps": -1}])
def test_rejects_bad_arguments(kw):
    with pytest.raises(ValueError):
        lorenz(**{"n_steps": 10, **kw})
