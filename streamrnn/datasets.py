"""Generators of synthetic streams with known difficulty.

Each generator is deterministic given ``seed`` and returns NumPy arrays in
stream order: ``X`` of shape ``(n_steps, n_inputs)`` and ``Y`` of targets.
"""

import numpy as np


def binary_add_task(n_steps, seed=0, lags=(3, 8)):
    """The "add task" of the RTRL literature: a binary stream whose label needs memory.

    ``x_t ~ Bernoulli(0.5)`` and ``P(y_t = 1) = 0.5 + 0.5 x_{t-a} − 0.25 x_{t-b}`` with
    ``(a, b) = lags``. The best achievable cross-entropy is 0.6616 nats with no memory, 0.5192
    remembering ``x_{t-a}`` and 0.4545 remembering both (:func:`binary_add_task_floors`).

    Parameters
    ----------
    n_steps : int
        Length of the stream.
    seed : int
        Seed of ``numpy.random.default_rng`` (inputs and labels).
    lags : tuple of 2 ints
        ``(a, b)``, the delays of the two dependencies.

    Returns
    -------
    X : numpy.ndarray
        ``(n_steps, 1)`` float inputs in {0, 1}.
    Y : numpy.ndarray
        ``(n_steps,)`` float labels in {0, 1}.

    Examples
    --------
    >>> X, Y = binary_add_task(5, seed=0)
    >>> X.shape, Y.shape
    ((5, 1), (5,))
    """
    rng = np.random.default_rng(seed)
    a, b = lags
    x = rng.integers(0, 2, n_steps).astype(np.float64)
    p = np.full(n_steps, 0.5)
    p[a:] += 0.5 * x[:-a]
    p[b:] -= 0.25 * x[:-b]
    y = (rng.random(n_steps) < p).astype(np.float64)
    return x[:, None], y


def binary_add_task_floors(lags=(3, 8)):
    """Expected cross-entropy (nats) of the optimal predictor of :func:`binary_add_task`.

    Parameters
    ----------
    lags : tuple of 2 ints
        The task's ``(a, b)``.

    Returns
    -------
    dict
        ``{"none": ..., "first": ..., "both": ...}``: knowing nothing, ``x_{t-a}``, or both inputs.

    Examples
    --------
    >>> {k: round(v, 4) for k, v in binary_add_task_floors().items()}
    {'none': 0.6616, 'first': 0.5192, 'both': 0.4545}
    """

    def h(p):
        return 0.0 if p in (0.0, 1.0) else -(p * np.log(p) + (1 - p) * np.log(1 - p))

    both = np.mean([h(0.5 + 0.5 * xa - 0.25 * xb) for xa in (0, 1) for xb in (0, 1)])
    first = np.mean([h(0.5 + 0.5 * xa - 0.125) for xa in (0, 1)])
    none = h(0.5 + 0.25 - 0.125)
    return {"none": float(none), "first": float(first), "both": float(both)}


def mackey_glass(n_steps, tau=17, beta=0.2, gamma=0.1, power=10, x0=1.2, washout=500):
    """Mackey–Glass series by Euler steps of size 1: ``x' = β x(t−τ)/(1 + x(t−τ)^p) − γ x(t)``.

    The history before ``t = 0`` is constant ``x0``. For one-step prediction use
    :func:`one_step_ahead`.

    Parameters
    ----------
    n_steps : int
        Samples returned (after the washout).
    tau : int
        The delay τ (17: the chaotic regime of the literature).
    beta, gamma, power : float
        β, γ and the exponent p.
    x0 : float
        The constant history before ``t = 0``.
    washout : int
        Leading samples dropped.

    Returns
    -------
    numpy.ndarray
        The raw series, ``(n_steps,)``.

    Examples
    --------
    >>> x = mackey_glass(3000)
    >>> x.shape, round(float(x.min()), 2) > 0
    ((3000,), True)
    """
    total = n_steps + washout
    x = np.empty(total + tau)
    x[: tau + 1] = x0
    for t in range(tau, total + tau - 1):
        lagged = x[t - tau]
        x[t + 1] = x[t] + beta * lagged / (1.0 + lagged**power) - gamma * x[t]
    return x[tau + washout : tau + washout + n_steps]


def lorenz(
    n_steps,
    dt=0.01,
    subsample=5,
    component="x",
    sigma=10.0,
    rho=28.0,
    beta=8.0 / 3.0,
    initial=(1.0, 1.0, 1.0),
    seed=None,
    washout=500,
):
    """Lorenz-63 series by classical fourth-order Runge–Kutta steps of size ``dt``.

    Integrates ``x' = σ (y − x)``, ``y' = x (ρ − z) − y``, ``z' = x y − β z``
    (Lorenz 1963; the standard chaotic parameters σ = 10, ρ = 28, β = 8/3 by
    default) from ``initial``, keeps every ``subsample``-th state (one sample
    per ``dt · subsample`` time units, 0.05 by default), drops the first
    ``washout`` samples (the transient onto the attractor) and returns the next
    ``n_steps``. With ``seed`` the initial condition is ``initial`` plus a
    standard-normal perturbation drawn from ``numpy.random.default_rng(seed)``,
    so each seed gives a different trajectory on the same attractor; without it
    the series is a function of ``initial`` alone. For one-step prediction use
    :func:`one_step_ahead`.

    Parameters
    ----------
    n_steps : int
        Samples returned (after the washout).
    dt : float
        RK4 step size (time units).
    subsample : int
        Integration steps per returned sample.
    component : {"x", "y", "z", "all"}
        Which coordinate to return; ``"all"`` returns the three as columns.
    sigma, rho, beta : float
        The system's parameters.
    initial : sequence of 3 floats
        Initial state ``(x, y, z)`` before the washout.
    seed : int or None
        Perturbs the initial state (see above); None leaves it as given.
    washout : int
        Leading samples dropped.

    Returns
    -------
    numpy.ndarray
        ``(n_steps,)`` for one component, ``(n_steps, 3)`` for ``"all"``.

    Examples
    --------
    >>> s = lorenz(2000)
    >>> s.shape, bool(abs(s).max() < 25)
    ((2000,), True)
    >>> xyz = lorenz(3, component="all")
    >>> bool((xyz[:, 0] == lorenz(3)).all())
    True
    """
    columns = {"x": 0, "y": 1, "z": 2, "all": slice(None)}
    if component not in columns:
        raise ValueError(f"component must be one of {sorted(columns)}; got {component!r}")
    n_steps, subsample, washout = int(n_steps), int(subsample), int(washout)
    if n_steps < 0 or subsample < 1 or washout < 0 or not dt > 0:
        raise ValueError("need n_steps >= 0, subsample >= 1, washout >= 0 and dt > 0")
    state = np.array(initial, dtype=np.float64).reshape(3)
    if seed is not None:
        state = state + np.random.default_rng(seed).standard_normal(3)
    x, y, z = (float(v) for v in state)
    s, r, b, h = float(sigma), float(rho), float(beta), float(dt)
    out = np.empty((n_steps, 3))
    for i in range(washout + n_steps):
        for _ in range(subsample):  # one RK4 step, written out on scalars (fast in pure Python)
            a1, b1, c1 = s * (y - x), x * (r - z) - y, x * y - b * z
            xx, yy, zz = x + 0.5 * h * a1, y + 0.5 * h * b1, z + 0.5 * h * c1
            a2, b2, c2 = s * (yy - xx), xx * (r - zz) - yy, xx * yy - b * zz
            xx, yy, zz = x + 0.5 * h * a2, y + 0.5 * h * b2, z + 0.5 * h * c2
            a3, b3, c3 = s * (yy - xx), xx * (r - zz) - yy, xx * yy - b * zz
            xx, yy, zz = x + h * a3, y + h * b3, z + h * c3
            a4, b4, c4 = s * (yy - xx), xx * (r - zz) - yy, xx * yy - b * zz
            x += h / 6.0 * (a1 + 2.0 * a2 + 2.0 * a3 + a4)
            y += h / 6.0 * (b1 + 2.0 * b2 + 2.0 * b3 + b4)
            z += h / 6.0 * (c1 + 2.0 * c2 + 2.0 * c3 + c4)
        if i >= washout:
            out[i - washout] = (x, y, z)
    return out[:, columns[component]].copy()


def one_step_ahead(series, standardize=True):
    """``X[t] = s[t]``, ``Y[t] = s[t+1]``: one-step prediction of a scalar series.

    Parameters
    ----------
    series : array_like
        The scalar series, ``(T,)``.
    standardize : bool
        Scale the series to zero mean and unit variance first (over the whole series: an offline
        convenience; the Model standardises online), so that the mean squared error of a prediction
        is its NMSE.

    Returns
    -------
    X : numpy.ndarray
        ``(T − 1, 1)``.
    Y : numpy.ndarray
        ``(T − 1,)``.

    Examples
    --------
    >>> X, Y = one_step_ahead([1.0, 2.0, 3.0], standardize=False)
    >>> X[:, 0].tolist(), Y.tolist()
    ([1.0, 2.0], [2.0, 3.0])
    """
    s = np.asarray(series, dtype=np.float64)
    if standardize:
        s = (s - s.mean()) / s.std()
    return s[:-1, None].copy(), s[1:].copy()


def narma10(n_steps, seed=0, washout=200):
    """NARMA-10: ``y[t+1] = 0.3 y[t] + 0.05 y[t] Σ_{i<10} y[t−i] + 1.5 u[t−9] u[t] + 0.1``, ``u ~ U[0, 0.5]``.

    The target of step t is the system's next output, which depends on the last 10 inputs.

    Parameters
    ----------
    n_steps : int
        Samples returned (after the washout).
    seed : int
        Seed of the input draws.
    washout : int
        Leading samples dropped.

    Returns
    -------
    X : numpy.ndarray
        ``(n_steps, 1)``, the inputs ``u``.
    Y : numpy.ndarray
        ``(n_steps,)``, ``y[t+1]``.

    Examples
    --------
    >>> X, Y = narma10(100)
    >>> X.shape, Y.shape, bool((X >= 0).all() and (X <= 0.5).all())
    ((100, 1), (100,), True)
    """
    rng = np.random.default_rng(seed)
    total = n_steps + washout
    u = rng.uniform(0.0, 0.5, total)
    y = np.zeros(total + 1)
    for t in range(total):
        window = y[max(t - 9, 0) : t + 1].sum()
        y[t + 1] = 0.3 * y[t] + 0.05 * y[t] * window + 1.5 * (u[t - 9] if t >= 9 else 0.0) * u[t] + 0.1
    return u[washout:, None].copy(), y[washout + 1 :].copy()


def adding_problem(n_sequences, length=50, seed=0):
    """Hochreiter & Schmidhuber's adding problem as a keyed stream of episodes.

    Each episode (its own key) has ``length`` steps of two inputs: a value in U[0, 1] and a marker
    that is 1 at two random steps (one in each half). The target, given only at the last step, is
    the sum of the two marked values; elsewhere it is NaN (no target).

    Parameters
    ----------
    n_sequences : int
        Episodes.
    length : int
        Steps per episode.
    seed : int
        Seed of the draws.

    Returns
    -------
    X : numpy.ndarray
        ``(n_sequences · length, 2)``.
    Y : numpy.ndarray
        ``(n_sequences · length,)``, NaN but at each episode's last step.
    keys : list of int
        The episode of each row.

    Examples
    --------
    >>> X, Y, keys = adding_problem(2, length=4)
    >>> X.shape, int((~np.isnan(Y)).sum()), keys
    ((8, 2), 2, [0, 0, 0, 0, 1, 1, 1, 1])
    """
    rng = np.random.default_rng(seed)
    X = np.zeros((n_sequences * length, 2))
    Y = np.full(n_sequences * length, np.nan)
    keys = np.repeat(np.arange(n_sequences), length)
    for e in range(n_sequences):
        rows = slice(e * length, (e + 1) * length)
        values = rng.random(length)
        marks = [rng.integers(0, length // 2), rng.integers(length // 2, length)]
        X[rows, 0] = values
        X[e * length + np.array(marks), 1] = 1.0
        Y[(e + 1) * length - 1] = values[marks].sum()
    return X, Y, keys.tolist()


def copy_task(n_sequences, n_symbols=4, length=5, delay=10, seed=0):
    """Copy task as a keyed stream of episodes, targets as class indices.

    Inputs are one-hot over ``n_symbols`` symbols plus a blank and a "go" channel (``n_symbols + 2``
    inputs). An episode shows ``length`` random symbols, then ``delay`` blanks with "go" on the last,
    then ``length`` blanks during which the targets are the symbols shown, in order (NaN elsewhere).

    Parameters
    ----------
    n_sequences : int
        Episodes.
    n_symbols : int
        Alphabet size.
    length : int
        Symbols to copy per episode.
    delay : int
        Blank steps between the symbols and the recall.
    seed : int
        Seed of the symbols.

    Returns
    -------
    X : numpy.ndarray
        ``(n_sequences · (2 length + delay), n_symbols + 2)``.
    Y : numpy.ndarray
        Class indices in ``[0, n_symbols)`` during the recall, NaN elsewhere.
    keys : list of int
        The episode of each row.

    Examples
    --------
    >>> X, Y, keys = copy_task(1, n_symbols=3, length=2, delay=1)
    >>> X.shape, int((~np.isnan(Y)).sum())
    ((5, 5), 2)
    """
    rng = np.random.default_rng(seed)
    blank, go = n_symbols, n_symbols + 1
    steps = 2 * length + delay
    X = np.zeros((n_sequences * steps, n_symbols + 2))
    Y = np.full(n_sequences * steps, np.nan)
    for e in range(n_sequences):
        base = e * steps
        symbols = rng.integers(0, n_symbols, length)
        X[base + np.arange(length), symbols] = 1.0
        X[base + length + np.arange(delay + length), blank] = 1.0
        X[base + length + delay - 1, go] = 1.0
        Y[base + length + delay + np.arange(length)] = symbols
    return X, Y, np.repeat(np.arange(n_sequences), steps).tolist()


def write_stream(path, X, Y=None, keys=None, feature_names=None, target_name="y", t0=1_700_000_000.0, dt=0.01):
    """Write samples as a recorded stream file (JSON Lines), the format the replay and file connectors read.

    One line per sample: ``{"ts": t0 + i dt, "key": key, "value": {feature: x, ..., target_name: y}}``;
    the target is left out where ``Y`` is NaN.

    Parameters
    ----------
    path : str
        The file written (replaced).
    X : array_like
        ``(N, n_features)`` inputs.
    Y : array_like or None
        ``(N,)`` or ``(N, width)`` targets, NaN where a row has none; None: no targets.
    keys : sequence or None
        The key of each row (None: every line's key is null).
    feature_names : sequence of str or None
        Defaults to ``x0, x1, ...``.
    target_name : str
        The value field holding the target.
    t0, dt : float
        Timestamp of the first line and the spacing (seconds), for replay.

    Returns
    -------
    list of str
        The feature names.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "s.jsonl")
    >>> write_stream(path, [[1.0], [2.0]], [0.5, np.nan])
    ['x0']
    >>> open(path).read().splitlines()[1]
    '{"ts":1700000000.01,"key":null,"value":{"x0":2.0}}'
    """
    import json

    X = np.asarray(X, dtype=np.float64)
    names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(X.shape[1])]
    if len(names) != X.shape[1]:
        raise ValueError(f"{len(names)} feature names for {X.shape[1]} features")
    Y = None if Y is None else np.asarray(Y, dtype=np.float64).reshape(X.shape[0], -1)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(X.shape[0]):
            value = {name: float(v) for name, v in zip(names, X[i])}
            if Y is not None and not np.isnan(Y[i, 0]):
                value[target_name] = float(Y[i, 0]) if Y.shape[1] == 1 else [float(v) for v in Y[i]]
            key = None if keys is None else keys[i]
            key = int(key) if isinstance(key, np.integer) else key
            fh.write(
                json.dumps({"ts": round(t0 + i * dt, 6), "key": key, "value": value}, separators=(",", ":")) + "\n"
            )
    return names


def read_stream(path, features, target=None, key=None):
    """Read a recorded stream file into ``(X, Y, keys, n_skipped)`` for offline use (e.g. ``compare``).

    Lines that are not valid records, or whose features are missing or not finite numbers, are
    skipped and counted.

    Parameters
    ----------
    path : str
        A JSON Lines stream as :func:`write_stream` writes it.
    features : sequence of str
        The value fields that form ``X``, in order.
    target : str or None
        The target field (missing: NaN); None: no targets (all NaN).
    key : str or None
        The value field holding the entity key; None: the line's ``key``.

    Returns
    -------
    X : numpy.ndarray
        ``(N, len(features))``.
    Y : numpy.ndarray
        ``(N,)``, NaN where a line has no target.
    keys : list
        The key of each row.
    n_skipped : int
        Lines skipped.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "s.jsonl")
    >>> _ = write_stream(path, [[1.0], [2.0]], [0.5, 1.5])
    >>> with open(path, "a") as fh:
    ...     _ = fh.write("not json\\n")
    >>> X, Y, keys, n_skipped = read_stream(path, ["x0"], target="y")
    >>> X[:, 0].tolist(), Y.tolist(), keys, n_skipped
    ([1.0, 2.0], [0.5, 1.5], [None, None], 1)
    """
    import json

    rows, targets, keys, skipped = [], [], [], 0
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                obj = json.loads(raw)
                value = obj["value"]
                x = [float(value[f]) for f in features]
                if not np.isfinite(x).all():
                    raise ValueError("non-finite feature")
                y = value.get(target) if target else None
                y = np.nan if y is None else float(y)
            except (ValueError, KeyError, TypeError):
                skipped += 1
                continue
            rows.append(x)
            targets.append(y)
            keys.append(value.get(key) if key else obj.get("key"))
    return np.array(rows).reshape(-1, len(features)), np.array(targets), keys, skipped
