"""Optimizers and gradient clipping as compiled kernels (PyTorch semantics).

State is one ``(rows, P)`` array per model, ``state_shape(optimizer, P)``: SGD keeps its
momentum buffer in row 0 (two rows, the second unused); Adam keeps the first and second
moments in rows 0 and 1; ``adam_hd`` (Adam whose learning rate adapts itself, see
:func:`adam_hd_rate`) adds a third row whose entry 0 holds the current learning rate;
``cocob`` (COCOB-Backprop, learning-rate free) keeps five rows; ``mechanic`` (Mechanic around
Adam) four rows plus its 24 scalars. ``step`` counts the updates applied so far (Adam's bias
correction; the first step initialises lazily-set state).

Which one needs no learning rate to be tuned was measured by ``scripts/study_lr.py``: none of the
single-trajectory methods reaches 1.25x of the best fixed Adam rate on every generated stream; a
race of three Adam rates does (:func:`race_select`, at three times the cost of one model). The race is
``Model(optimizer="race")``: the Model runs K = ``len(RACE_FACTORS)`` Adam members (their own parameters,
Adam state and per-key learner state) over each batch and reports per row the member picked by
:func:`race_step` (:func:`race_select` plus the gather of the picked predictions and losses).

Every kernel in streamrnn compiles with ``error_model="numpy"``: IEEE division
(inf/NaN, which the learners check for explicitly) instead of Python's
zero-division check, whose branch keeps loops such as Adam's from vectorising.
"""

import numpy as np
from numba import njit

SGD, ADAM, ADAM_HD, COCOB, MECHANIC = 0, 1, 2, 3, 4
OPTIMIZER_IDS = {"sgd": SGD, "adam": ADAM, "adam_hd": ADAM_HD, "cocob": COCOB, "mechanic": MECHANIC}
STATE_ROWS = (2, 2, 3, 5, 4)  # rows of P-vectors in the optimizer state, by optimizer id

# Layout of the hyper-parameter vector handed to kernels.
LR, BETA1, BETA2, EPS, MOMENTUM, WEIGHT_DECAY, CLIP, HYPERGRAD_LR, LR_MIN, LR_MAX, COCOB_ALPHA = range(11)
N_HYPER = 11

# The default learning rate (``Model(lr=...)``): chosen by ``scripts/study_lr.py --default-lr`` with the
# Model's other defaults, as the rate with the lowest worst ratio to the best fixed rate of {1e-4 ... 3e-2} on
# tuning streams and seeds that the reported table does not contain (worst 1.00 there; 1e-3 gave 1.04).
DEFAULT_LR = 7e-4

# Constants of the self-tuning optimizers (not user settings: "no learning rate to tune").
# adam_hd: step of the log learning rate per update, times the cosine between this gradient and
# the previous Adam step; picked by scripts/study_lr.py on tuning streams and seeds it does not
# report. The rate is kept in [HD_LR_MIN, HD_LR_MAX] (a zero rate stays zero).
HD_HYPERGRAD_LR = 0.0003
HD_LR_MIN, HD_LR_MAX = 1e-5, 0.1
# cocob: alpha of COCOB-Backprop, the paper's default (Orabona & Tommasi 2017).
COCOB_DEFAULT_ALPHA = 100.0
# mechanic: the published defaults (Cutkosky, Defazio & Mehta 2023; Google's reference code).
MECHANIC_BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
N_MECHANIC = 6
MECHANIC_S_INIT, MECHANIC_EPS, MECHANIC_LAMBDA = 1e-8, 1e-10, 0.01
N_MECHANIC_SCALARS = 4 * N_MECHANIC  # s, m, v, r per beta, after the P-vector rows


@njit(cache=True, error_model="numpy")
def state_rows(kind, n_params):
    """Rows of the optimizer-state array: the P-vectors, then (mechanic) rows holding scalars."""
    if kind == MECHANIC:
        return STATE_ROWS[kind] + (N_MECHANIC_SCALARS + n_params - 1) // n_params
    return STATE_ROWS[kind]


def state_shape(optimizer, n_params):
    """Shape of the optimizer-state array a model allocates (zeros) for ``optimizer``."""
    return (int(state_rows(OPTIMIZER_IDS[optimizer], int(n_params))), int(n_params))


@njit(cache=True, error_model="numpy")
def squared_norm(g):
    """Σ g², with eight independent partial sums: a serial float sum cannot be vectorised
    (reassociation would change the result); fixed partial sums can, deterministically.
    The partial sums are scalars, not an array: no allocation per call (it runs every update)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    P = g.shape[0]
    head = P - P % 8
    for p in range(0, head, 8):
        s0 += g[p] * g[p]
        s1 += g[p + 1] * g[p + 1]
        s2 += g[p + 2] * g[p + 2]
        s3 += g[p + 3] * g[p + 3]
        s4 += g[p + 4] * g[p + 4]
        s5 += g[p + 5] * g[p + 5]
        s6 += g[p + 6] * g[p + 6]
        s7 += g[p + 7] * g[p + 7]
    total = 0.0
    for p in range(head, P):
        total += g[p] * g[p]
    return total + s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7


@njit(cache=True, error_model="numpy")
def clip_grad_norm(g, max_norm, sq_norm):
    """``torch.nn.utils.clip_grad_norm_`` on one flat gradient, norm given squared."""
    if max_norm > 0.0:
        coef = max_norm / (np.sqrt(sq_norm) + 1e-6)
        if coef < 1.0:
            for p in range(g.shape[0]):
                g[p] *= coef


@njit(cache=True, error_model="numpy")
def hd_cosine(theta, grad, m, v, wd, sqrt_bias2, eps):
    """Cosine between ``g = grad + wd·theta`` and Adam's last direction ``m / (√v/√bc2 + eps)``
    (the first-moment bias correction is a positive scale, which a cosine ignores).

    Eight fixed partial sums per product, as :func:`squared_norm`: vectorised and deterministic."""
    dot = np.zeros(8)
    gg = np.zeros(8)
    uu = np.zeros(8)
    P = grad.shape[0]
    head = P - P % 8
    for p in range(0, head, 8):
        for k in range(8):
            g = grad[p + k] + wd * theta[p + k]
            u = m[p + k] / (np.sqrt(v[p + k]) / sqrt_bias2 + eps)
            dot[k] += g * u
            gg[k] += g * g
            uu[k] += u * u
    d, a, b = 0.0, 0.0, 0.0
    for p in range(head, P):
        g = grad[p] + wd * theta[p]
        u = m[p] / (np.sqrt(v[p]) / sqrt_bias2 + eps)
        d += g * u
        a += g * g
        b += u * u
    for k in range(8):
        d += dot[k]
        a += gg[k]
        b += uu[k]
    denom = np.sqrt(a) * np.sqrt(b)
    return d / denom if denom > 0.0 else 0.0


@njit(cache=True, error_model="numpy")
def adam_hd_rate(theta, grad, state, step, hyper):
    """The learning rate of ``adam_hd``'s update number ``step``, stored in ``state[2, 0]``.

    Hypergradient descent on the log learning rate (Baydin et al., "Online Learning Rate
    Adaptation with Hypergradient Descent", ICLR 2018, multiplicative form): the derivative of
    this step's loss with respect to the last step's rate is ``-g_t · u_{t-1}``, with
    ``u_{t-1}`` Adam's last direction; normalised to a cosine it is free of the gradient's scale:

        lr_1 = lr;   lr_t = clamp(lr_{t-1} · exp(β · cos(g_t, u_{t-1})), LR_MIN, LR_MAX)

    so the rate grows while successive steps agree (too small a rate) and shrinks while they
    oppose (overshooting). A zero rate stays zero (exactness tests run with ``lr=0``)."""
    s = state[2]
    if step == 1:
        s[0] = hyper[LR]
        return s[0]
    lr = np.float64(s[0])
    if lr > 0.0:
        sqrt_bias2 = np.sqrt(1.0 - hyper[BETA2] ** (step - 1))
        c = hd_cosine(
            theta,
            grad,
            state[0],
            state[1],
            theta.dtype.type(hyper[WEIGHT_DECAY]),
            theta.dtype.type(sqrt_bias2),
            theta.dtype.type(hyper[EPS]),
        )
        s[0] = min(max(lr * np.exp(hyper[HYPERGRAD_LR] * c), hyper[LR_MIN]), hyper[LR_MAX])
    return np.float64(s[0])


@njit(cache=True, error_model="numpy")
def cocob_step(theta, grad, state, step, hyper):
    """COCOB-Backprop (Orabona & Tommasi, "Training Deep Networks without Learning Rates
    Through Coin Betting", NIPS 2017, Algorithm 2), per coordinate, no learning rate:

        L_t = max(L_{t-1}, |g_t|);  G_t = G_{t-1} + |g_t|;  θ_t = θ_{t-1} + g_t
        Reward_t = max(Reward_{t-1} − (w_t − w_1) g_t, 0)
        w_{t+1} = w_1 − θ_t / (L_t · max(G_t + L_t, α L_t) + eps) · (L_t + Reward_t)

    Rows: 0 w_1 (the weights at the first update), 1 L, 2 G, 3 Reward, 4 θ (sum of gradients)."""
    w1, L, G, R, S = state[0], state[1], state[2], state[3], state[4]
    k = np.empty(3, theta.dtype)
    k[0] = hyper[WEIGHT_DECAY]
    k[1] = hyper[COCOB_ALPHA]
    k[2] = hyper[EPS]
    wd, alpha, eps = k[0], k[1], k[2]
    P = theta.shape[0]
    if step == 1:
        for p in range(P):
            w1[p] = theta[p]
    for p in range(P):
        g = grad[p] + wd * theta[p]
        a = abs(g)
        L[p] = max(L[p], a)
        G[p] += a
        R[p] = max(R[p] - (theta[p] - w1[p]) * g, 0.0)
        S[p] += g
        theta[p] = w1[p] - S[p] / (L[p] * max(G[p] + L[p], alpha * L[p]) + eps) * (L[p] + R[p])


@njit(cache=True, error_model="numpy")
def _mech_get(state, j):
    P = state.shape[1]
    return np.float64(state[STATE_ROWS[MECHANIC] + j // P, j % P])


@njit(cache=True, error_model="numpy")
def _mech_set(state, j, value):
    P = state.shape[1]
    state[STATE_ROWS[MECHANIC] + j // P, j % P] = value


@njit(cache=True, error_model="numpy")
def mechanic_step(theta, grad, state, step, hyper):
    """Mechanic (Cutkosky, Defazio & Mehta, "Mechanic: A Learning Rate Tuner", NeurIPS 2023)
    around Adam: Adam's steps (rate ``lr``) accumulate in Δ and the weights are
    ``x_0 − (Σ_i s_i) Δ``; the scale s is learned by coin betting with six discount factors:

        h = <g + λ (Σs) ‖g‖/‖x‖ x, Δ_{t-1}>,     Δ_t = Δ_{t-1} + adam_step(g)
        m_i = max(β_i m_i, |h| + ε);  v_i = β_i² v_i + h²;  r_i = β_i r_i + h s_i
        s_i = (s_init/6 · m_i + max(r_i, 0)) / (√v_i + ε)

    Rows: 0, 1 Adam's moments; 2 x_0 (the weights at the first update); 3 Δ; then the 24
    scalars s, m, v, r (each 6) laid out row-major over the remaining rows."""
    m, v, x0, delta = state[0], state[1], state[2], state[3]
    P = theta.shape[0]
    if step == 1:
        for p in range(P):
            x0[p] = theta[p]
        for i in range(N_MECHANIC):
            _mech_set(state, i, MECHANIC_S_INIT)
    wd = theta.dtype.type(hyper[WEIGHT_DECAY])
    gd = np.zeros(8)
    xd = np.zeros(8)
    gg = np.zeros(8)
    xx = np.zeros(8)
    head = P - P % 8
    for p in range(0, head, 8):
        for k in range(8):
            g = grad[p + k] + wd * theta[p + k]
            gd[k] += g * delta[p + k]
            xd[k] += theta[p + k] * delta[p + k]
            gg[k] += g * g
            xx[k] += theta[p + k] * theta[p + k]
    a, b, c, d = 0.0, 0.0, 0.0, 0.0
    for p in range(head, P):
        g = grad[p] + wd * theta[p]
        a += g * delta[p]
        b += theta[p] * delta[p]
        c += g * g
        d += theta[p] * theta[p]
    for k in range(8):
        a += gd[k]
        b += xd[k]
        c += gg[k]
        d += xx[k]
    s_sum = 0.0
    for i in range(N_MECHANIC):
        s_sum += _mech_get(state, i)
    h = a + MECHANIC_LAMBDA * s_sum * np.sqrt(c) / (np.sqrt(d) + MECHANIC_EPS) * b
    new_sum = 0.0
    for i in range(N_MECHANIC):
        beta = MECHANIC_BETAS[i]
        s_i = _mech_get(state, i)
        m_i = max(beta * _mech_get(state, N_MECHANIC + i), abs(h) + MECHANIC_EPS)
        v_i = beta * beta * _mech_get(state, 2 * N_MECHANIC + i) + h * h
        r_i = beta * _mech_get(state, 3 * N_MECHANIC + i) + h * s_i
        s_i = (MECHANIC_S_INIT / N_MECHANIC * m_i + max(r_i, 0.0)) / (np.sqrt(v_i) + MECHANIC_EPS)
        _mech_set(state, i, s_i)
        _mech_set(state, N_MECHANIC + i, m_i)
        _mech_set(state, 2 * N_MECHANIC + i, v_i)
        _mech_set(state, 3 * N_MECHANIC + i, r_i)
        new_sum += _mech_get(state, i)
    k = np.empty(8, theta.dtype)
    k[0] = hyper[BETA1]
    k[1] = 1.0 - hyper[BETA1]
    k[2] = hyper[BETA2]
    k[3] = 1.0 - hyper[BETA2]
    k[4] = hyper[LR] / (1.0 - hyper[BETA1] ** step)
    k[5] = np.sqrt(1.0 - hyper[BETA2] ** step)
    k[6] = hyper[EPS]
    k[7] = new_sum
    b1, one_b1, b2, one_b2, step_size, sqrt_bias2, eps, scale = k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]
    for p in range(P):
        g = grad[p] + wd * theta[p]
        m[p] = b1 * m[p] + one_b1 * g
        v[p] = b2 * v[p] + one_b2 * g * g
        delta[p] += step_size * m[p] / (np.sqrt(v[p]) / sqrt_bias2 + eps)
        theta[p] = x0[p] - scale * delta[p]


@njit(cache=True, error_model="numpy")
def optimizer_step(kind, theta, grad, state, step, hyper):
    """Apply one update; ``step`` is the 1-based index of this update.

    The arithmetic is in the parameters' dtype, as PyTorch's: float32 parameters take float32
    steps (which also halves the cost of Adam's square root and division per parameter). The
    scalars are cast to that dtype one by one (no scratch array: this runs every update)."""
    dt = theta.dtype.type
    lr = dt(hyper[LR])
    wd = dt(hyper[WEIGHT_DECAY])
    P = theta.shape[0]
    if state.shape[0] < state_rows(kind, P):
        raise ValueError("optimizer state has too few rows for this optimizer (see optim.state_shape)")
    if kind == MECHANIC:
        mechanic_step(theta, grad, state, step, hyper)
        return
    if kind == COCOB:
        cocob_step(theta, grad, state, step, hyper)
        return
    if kind == SGD:
        sgd_update(theta, grad, state[0], lr, wd, dt(hyper[MOMENTUM]), step)
        return
    rate = adam_hd_rate(theta, grad, state, step, hyper) if kind == ADAM_HD else hyper[LR]
    adam_update(
        theta,
        grad,
        state[0],
        state[1],
        wd,
        dt(hyper[BETA1]),
        dt(1.0 - hyper[BETA1]),
        dt(hyper[BETA2]),
        dt(1.0 - hyper[BETA2]),
        dt(rate / (1.0 - hyper[BETA1] ** step)),  # lr / bias correction 1
        dt(np.sqrt(1.0 - hyper[BETA2] ** step)),  # sqrt(bias correction 2)
        dt(hyper[EPS]),
    )


@njit(cache=True, error_model="numpy")
def sgd_update(theta, grad, buf, lr, wd, mom, step):
    """SGD with momentum (PyTorch's: the first step sets the buffer to the gradient)."""
    if mom != 0.0:
        for p in range(theta.shape[0]):
            g = grad[p] + wd * theta[p]
            g = g if step == 1 else mom * buf[p] + g
            buf[p] = g
            theta[p] -= lr * g
    else:
        for p in range(theta.shape[0]):
            theta[p] -= lr * (grad[p] + wd * theta[p])


@njit(cache=True, error_model="numpy")
def adam_update(theta, grad, m, v, wd, b1, one_b1, b2, one_b2, step_size, sqrt_bias2, eps):
    """Adam's moments and step over every parameter, scalars in the parameters' dtype.

    PyTorch's step ``step_size m / (√v / √bc2 + eps)`` is computed as ``(step_size √bc2) m / (√v +
    eps √bc2)``: the same value to rounding, with one division per parameter instead of two (the
    divisions bound this loop: GRU-8 RTRL 141 000 -> 147 000 steps/s, measured 2026-12-03)."""
    scaled_step = step_size * sqrt_bias2
    scaled_eps = eps * sqrt_bias2
    for p in range(theta.shape[0]):
        g = grad[p] + wd * theta[p]
        m[p] = b1 * m[p] + one_b1 * g
        v[p] = b2 * v[p] + one_b2 * g * g
        theta[p] -= scaled_step * m[p] / (np.sqrt(v[p]) + scaled_eps)


# ---------------------------------------------------------------- race of learning rates
# K Adam models, identical but for their rates lr * RACE_FACTORS, advance side by side on the same
# records; each record's prediction is the one of the member whose discounted prequential loss
# (half-life RACE_HALF_LIFE labelled records) is lowest before that record. Both constants were
# picked by scripts/study_lr.py on tuning streams and seeds it does not report.
RACE_FACTORS = (0.3, 1.0, 3.0)
RACE_HALF_LIFE = 500.0


def race_decay(half_life=RACE_HALF_LIFE):
    """Per-labelled-record factor of the race's discounted loss: 0.5 ** (1 / half_life)."""
    return 0.5 ** (1.0 / half_life)


def race_rates(lr):
    """The members' learning rates of a race centred on ``lr``: lr * RACE_FACTORS."""
    return tuple(lr * f for f in RACE_FACTORS)


@njit(cache=True, error_model="numpy")
def race_select(losses, scores, decay, picked):
    """Pick, for each row t, the member with the lowest score before row t, then add row t's losses.

    ``losses`` (K, N): each member's loss of row t's prediction (made before it learned from row t),
    NaN where the row had no target; ``scores`` (K,) float64, the members' discounted past losses
    (``score = decay * score + loss``), updated in place (it is state: checkpoint it); ``picked`` (N,)
    int64 receives the member whose prediction row t reports. Ties go to the lower index. A row where
    no member has a finite loss leaves the scores alone; a member whose loss is not finite while
    another's is (it diverged) gets an infinite score, so it is never picked again."""
    K, N = losses.shape
    for t in range(N):
        best = 0
        for k in range(1, K):
            if scores[k] < scores[best]:
                best = k
        picked[t] = best
        labelled = False
        for k in range(K):
            if np.isfinite(losses[k, t]):
                labelled = True
        if labelled:
            for k in range(K):
                x = np.float64(losses[k, t])
                scores[k] = decay * scores[k] + (x if np.isfinite(x) else np.inf)


@njit(cache=True, error_model="numpy")
def race_step(outs, losses, scores, decay, picked, out, loss_out):
    """:func:`race_select` over the members' predictions ``outs`` (K, N, n_out) and losses (K, N), then
    the reported row t: ``out[t] = outs[picked[t], t]``, ``loss_out[t] = losses[picked[t], t]``.
    One compiled call (the one-sample path pays a dispatch per call)."""
    race_select(losses, scores, decay, picked)
    for t in range(out.shape[0]):
        k = picked[t]
        for j in range(out.shape[1]):
            out[t, j] = outs[k, t, j]
        loss_out[t] = losses[k, t]
