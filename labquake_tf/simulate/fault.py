"""Quasi-dynamic spring-slider with Dieterich–Ruina rate-and-state friction.

A block on a fault of normal stress σ is pulled through a spring of stiffness k
whose far end moves at the load-point velocity V_l. Friction is

    τ = σ(t) [μ0 + a ln(V/V_l) + b ln(V_l θ / D_c)] + η V

with the aging law dθ/dt = 1 − Vθ/D_c (or the slip law −(Vθ/D_c) ln(Vθ/D_c))
and radiation damping η V, which bounds the slip rate during failure instead of
full inertia. The spring sets dτ/dt = k (V_l − V), so the stress peaks exactly
when V rises through V_l and bottoms out when it falls back: those crossings
are the ground-truth onset and end of each stick-slip event.

Linear stability: steady sliding is unstable, and the block stick-slips, when
k < k_c = σ (b − a) / D_c; above k_c perturbations decay to stable sliding, and
near k_c the slip stays slow (slow-slip regime).

The ODE is integrated in log variables x = ln(V/V_l), y = ln(V_l θ / D_c): V
changes by many orders of magnitude between stick and slip, and the logs keep
the stiff solver's steps and tolerances meaningful in both phases.
"""

import dataclasses

import numpy as np
from scipy.integrate import solve_ivp

LAWS = ("aging", "slip")


@dataclasses.dataclass
class FaultParams:
    """Spring-slider parameters in lab units: stress MPa, slip µm, time s.

    normal_stress: σ (MPa). mu0: steady-state friction at the load velocity.
    a, b: direct and evolution effects (dimensionless); b > a for stick-slip.
    dc: critical slip distance D_c (µm). stiffness: k (MPa/µm).
    load_velocity: V_l (µm/s), also the reference velocity of the friction law.
    radiation_damping: η (MPa per µm/s). G/(2 c_s) would be ~5e-6; presets use
    larger values so a failure lasts several 100 Hz samples, as lab slips do
    once the rig's own compliance and inertia are included.
    law: "aging" or "slip". normal_stress_noise: relative std of a smooth random
    fluctuation of σ (makes the cycles aperiodic); noise_time: its correlation
    time (s).
    """

    normal_stress: float = 5.0
    mu0: float = 0.6
    a: float = 0.006
    b: float = 0.009
    dc: float = 10.0
    stiffness: float = 0.0008
    load_velocity: float = 10.0
    radiation_damping: float = 3e-5
    law: str = "aging"
    normal_stress_noise: float = 0.0
    noise_time: float = 5.0

    def __post_init__(self):
        if self.law not in LAWS:
            raise ValueError(f"FaultParams.law must be one of {LAWS}, got {self.law!r}")
        for name in ("normal_stress", "a", "b", "dc", "stiffness", "load_velocity", "noise_time"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FaultParams.{name} must be > 0, got {getattr(self, name)!r}")
        if self.radiation_damping < 0 or self.normal_stress_noise < 0:
            raise ValueError("FaultParams.radiation_damping and normal_stress_noise must be >= 0")

    @property
    def critical_stiffness(self):
        """k_c = σ (b − a) / D_c (MPa/µm); k below it stick-slips."""
        return self.normal_stress * (self.b - self.a) / self.dc

    @property
    def steady_state_stress(self):
        """Shear stress (MPa) of steady sliding at the load velocity."""
        return self.normal_stress * self.mu0 + self.radiation_damping * self.load_velocity


@dataclasses.dataclass
class FaultHistory:
    """The block's state on a uniform grid from t = 0 (after spin-up) to the end.

    events: ``(n, 2)`` [onset, end] times (s) of the stick-slip events that
    start and end inside the record; drops: their stress drops (MPa).
    """

    params: FaultParams
    time: np.ndarray
    slip_rate: np.ndarray      # µm/s
    state: np.ndarray          # θ, s
    shear_stress: np.ndarray   # MPa
    normal_stress: np.ndarray  # MPa
    slip: np.ndarray           # µm, 0 at t = 0
    events: np.ndarray
    drops: np.ndarray

    @property
    def dt(self):
        return float(self.time[1] - self.time[0])


class SmoothNoise:
    """Zero-mean, unit-variance Gaussian process with a Gaussian correlation of
    width ``correlation_time``, as a sum of random Fourier modes: smooth, with
    an exact derivative for the ODE, and reproducible from the generator."""

    def __init__(self, rng, correlation_time, n_modes=32):
        self.omega = rng.normal(0.0, 1.0 / correlation_time, n_modes)
        self.phase = rng.uniform(0.0, 2 * np.pi, n_modes)
        self.scale = np.sqrt(2.0 / n_modes)

    def __call__(self, t):
        """Value and time derivative at a time ``t`` (s)."""
        arg = self.omega * t + self.phase
        return self.scale * np.cos(arg).sum(), -self.scale * (self.omega * np.sin(arg)).sum()

    def values(self, t, block=65536):
        """Values on a time array, in blocks: (n, n_modes) at once could take GBs."""
        return np.concatenate([self.scale * np.cos(np.multiply.outer(t[i:i + block], self.omega)
                                                   + self.phase).sum(-1)
                               for i in range(0, len(t), block)])


def simulate_fault(params, duration, dt=1e-3, seed=0, spinup=0.0, min_drop=None,
                   chunk=20.0, progress=None, rtol=1e-7, atol=1e-9):
    """Integrate the spring-slider for ``spinup + duration`` s and sample it every ``dt``.

    The first ``spinup`` seconds let the block settle onto its limit cycle and
    are dropped. Events with a stress drop below ``min_drop`` (MPa; default
    5 % of σ(b − a), far below any stick-slip) are small oscillations, not
    failures. ``progress(fraction)`` is called after each ``chunk`` seconds.
    """
    p = params
    rng = np.random.default_rng(seed)
    noise = SmoothNoise(rng, p.noise_time) if p.normal_stress_noise > 0 else None
    vl, sig0, eta = p.load_velocity, p.normal_stress, p.radiation_damping
    min_drop = 0.05 * p.normal_stress * (p.b - p.a) if min_drop is None else min_drop

    def sigma(t):
        if noise is None:
            return sig0, 0.0
        n, dn = noise(t)
        return sig0 * (1.0 + p.normal_stress_noise * n), sig0 * p.normal_stress_noise * dn

    def shear_stress(sig, x, y):
        return sig * (p.mu0 + p.a * x + p.b * y) + eta * vl * np.exp(x)

    def rhs(t, s):
        x, y, _ = s
        v = vl * np.exp(x)
        if p.law == "aging":
            dy = vl / p.dc * (np.exp(-y) - np.exp(x))
        else:
            dy = -v / p.dc * (x + y)
        sig, dsig = sigma(t)
        friction = p.mu0 + p.a * x + p.b * y
        # d/dt of τ = σ·friction + ηV, set equal to the spring's k (V_l − V).
        dx = (p.stiffness * (vl - v) - dsig * friction - sig * p.b * dy) / (sig * p.a + eta * v)
        return [dx, dy, v]

    def rising(t, s):
        return s[0]
    rising.direction = 1

    def falling(t, s):
        return s[0]
    falling.direction = -1

    n = int(round(duration / dt))
    time = np.arange(n + 1) * dt  # both ends: the last feature window ends at `duration`
    # Spin-up spans are not sampled; record spans end on grid points, and each
    # span's last sample is the next one's first.
    spans = [(t, min(t + chunk, 0.0), None) for t in np.arange(-float(spinup), -1e-9, chunk)]
    bounds = list(range(0, n, max(1, int(round(chunk / dt))))) + [n]
    spans += [(time[i], time[j], time[i:j + 1]) for i, j in zip(bounds[:-1], bounds[1:])]
    # Start slower than steady state (as after a slip) so cycles grow quickly.
    s0, states, crossings = np.array([np.log(0.1), 0.0, 0.0]), [], []
    for k, (t0, t1, t_eval) in enumerate(spans):
        sol = solve_ivp(rhs, (t0, t1), s0, method="LSODA", t_eval=t_eval, rtol=rtol, atol=atol,
                        events=(rising, falling))
        if sol.status < 0:
            raise RuntimeError(f"spring-slider integration failed at t={sol.t[-1]:.3f} s: "
                               f"{sol.message}")
        if t_eval is not None:
            # The span's first sample is its start state itself, not the
            # solver's interpolant at t0 (which may differ in the last bit), so
            # a record is a bitwise prefix of a longer one with the same seed.
            states.append(np.column_stack([s0, sol.y[:, 1:-1]]))
        for sign, (te, ye) in enumerate(zip(sol.t_events, sol.y_events)):
            crossings += [(t, 1 - 2 * sign, shear_stress(sigma(t)[0], *y[:2]))
                          for t, y in zip(te, ye)]
        s0 = sol.y[:, -1]
        if progress is not None:
            progress((k + 1) / len(spans))
    states.append(s0[:, None])

    x, y, slip = np.concatenate(states, axis=1)
    sig = np.full_like(time, sig0)
    if noise is not None:
        sig *= 1.0 + p.normal_stress_noise * noise.values(time)
    events, drops = _pair_crossings(crossings, min_drop, duration)
    return FaultHistory(
        params=p, time=time, slip_rate=vl * np.exp(x), state=p.dc / vl * np.exp(y),
        shear_stress=shear_stress(sig, x, y), normal_stress=sig, slip=slip - slip[0],
        events=events, drops=drops)


def _pair_crossings(crossings, min_drop, duration):
    """[onset, end] times from V rising through V_l (stress peak) to falling back
    (stress minimum), kept when the drop exceeds ``min_drop`` and both ends lie
    in [0, duration]."""
    events, drops, onset = [], [], None
    for t, direction, tau in sorted(crossings):
        if direction > 0:
            onset = (t, tau)
        elif onset is not None:
            drop = onset[1] - tau
            if drop >= min_drop and onset[0] >= 0 and t <= duration:
                events.append((onset[0], t))
                drops.append(drop)
            onset = None
    return np.asarray(events, np.float64).reshape(-1, 2), np.asarray(drops, np.float64)
