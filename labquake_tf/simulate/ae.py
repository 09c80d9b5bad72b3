"""Acoustic emission driven by the fault state: micro-events → waveform or log-variance.

Micro-events arrive as an inhomogeneous Poisson process whose rate grows with
slip rate (so the accelerating pre-slip before failure gives the precursory
rise) and with shear stress. Their magnitudes follow a truncated
Gutenberg–Richter law whose b-value falls as stress rises, as measured in the
lab. Each event is a decaying sinusoidal burst around a central frequency, on
top of Gaussian background noise; sensor ``c`` sees the bursts attenuated by
``channel_attenuation ** c``.

Two outputs share one event catalogue (same seed → same events):
``waveform_chunks`` materialises the signal at ``sample_rate``; ``window_logvar``
gives the log10 variance of that signal per window without materialising it,
by summing each burst's exact (discrete) energy into the windows it falls in
and adding the noise variance.
"""

import dataclasses

import numpy as np

BURST_DECAYS = 8  # a burst is cut after 8 decay times (energy left: e^-16)


@dataclasses.dataclass
class AEParams:
    """AE generator parameters. Amplitudes are in counts (digitiser units).

    rate: micro-events/s at steady sliding (V = V_l, τ = steady-state stress).
    rate_exponent: p in rate ∝ (V/V_l)^p. stress_sensitivity: γ (1/MPa) in
    rate ∝ exp(γ (τ − τ_ss)). max_rate: cap (1/s) during fast slip.
    b_value: Gutenberg–Richter b at τ_ss; b_slope (1/MPa): b = b_value −
    b_slope (τ − τ_ss), clipped to [b_min, b_max]. max_magnitude: largest
    magnitude above the smallest event (truncation). amplitude: peak amplitude
    (counts) of a magnitude-0 event; amplitude ∝ 10^magnitude.
    frequency (Hz), decay (s): the burst's central frequency and e-folding time.
    noise_std: background noise (counts). n_channels, channel_attenuation: sensors.
    sample_rate: waveform rate (Hz); the lab's 2 MHz works but a lower rate
    (with a burst frequency below its Nyquist) keeps waveforms small.
    """

    rate: float = 2000.0
    rate_exponent: float = 1.0
    stress_sensitivity: float = 20.0
    max_rate: float = 1e5
    b_value: float = 1.1
    b_slope: float = 3.0
    b_min: float = 0.4
    b_max: float = 2.0
    max_magnitude: float = 2.5
    amplitude: float = 10.0
    frequency: float = 5e3
    decay: float = 1e-3
    noise_std: float = 5.0
    n_channels: int = 1
    channel_attenuation: float = 0.7
    sample_rate: float = 50e3

    def __post_init__(self):
        for name in ("rate", "max_rate", "max_magnitude", "amplitude", "frequency", "decay",
                     "sample_rate", "n_channels", "channel_attenuation"):
            if not getattr(self, name) > 0:
                raise ValueError(f"AEParams.{name} must be > 0, got {getattr(self, name)!r}")
        if self.noise_std < 0 or not 0 < self.b_min <= self.b_max:
            raise ValueError("AEParams: need noise_std >= 0 and 0 < b_min <= b_max")
        if self.frequency >= self.sample_rate / 2:
            raise ValueError(f"AEParams.frequency={self.frequency:g} Hz must be below the Nyquist "
                             f"frequency of sample_rate={self.sample_rate:g} Hz")

    @property
    def channel_gains(self):
        return self.channel_attenuation ** np.arange(self.n_channels)


@dataclasses.dataclass
class AEEvents:
    """The micro-event catalogue: onset time (s), magnitude, the b-value in force."""

    time: np.ndarray
    magnitude: np.ndarray
    b_value: np.ndarray

    def __len__(self):
        return len(self.time)

    def select(self, mask):
        return AEEvents(self.time[mask], self.magnitude[mask], self.b_value[mask])


def event_rate(slip_rate, shear_stress, params, load_velocity, reference_stress):
    """Micro-event rate (1/s) from the slip rate (µm/s) and shear stress (MPa)."""
    log_rate = (np.log(params.rate) + params.rate_exponent * np.log(slip_rate / load_velocity)
                + params.stress_sensitivity * (shear_stress - reference_stress))
    return np.exp(np.minimum(log_rate, np.log(params.max_rate)))


def b_value(shear_stress, params, reference_stress):
    """Gutenberg–Richter b-value, falling linearly with shear stress (MPa)."""
    b = params.b_value - params.b_slope * (np.asarray(shear_stress) - reference_stress)
    return np.clip(b, params.b_min, params.b_max)


def gutenberg_richter(b, max_magnitude, rng):
    """Magnitudes in [0, max_magnitude] with P(M > m) ∝ 10^(−b m), one per b."""
    b = np.asarray(b, np.float64)
    u = rng.random(b.shape)
    return -np.log10(1.0 - u * (1.0 - 10.0 ** (-b * max_magnitude))) / b


def aki_b_value(magnitudes, max_magnitude=None):
    """Maximum-likelihood b-value of magnitudes ≥ 0 (Aki 1965; Page 1968 when truncated).

    The truncated form solves 1/(b ln10) − M/(10^(bM) − 1) = mean(m) by bisection.
    """
    mean = float(np.mean(magnitudes))
    if max_magnitude is None:
        return np.log10(np.e) / mean
    lo, hi = 1e-3, 20.0
    for _ in range(100):
        b = 0.5 * (lo + hi)
        expected = 1.0 / (b * np.log(10)) - max_magnitude / (10.0 ** (b * max_magnitude) - 1.0)
        lo, hi = (lo, b) if expected < mean else (b, hi)
    return 0.5 * (lo + hi)


def sample_events(history, params, rng):
    """Draw the micro-event catalogue for a ``FaultHistory``.

    The rate is integrated over each step of the history (trapezoid), counts per
    step are Poisson and onsets uniform within the step, so the step (1 ms by
    default) bounds the time resolution, not the hop of the features.
    """
    fault = history.params
    ref = fault.steady_state_stress
    rate = event_rate(history.slip_rate, history.shear_stress, params, fault.load_velocity, ref)
    dt = history.dt
    expected = 0.5 * (rate[:-1] + rate[1:]) * dt
    counts = rng.poisson(expected)
    step = np.repeat(np.arange(len(expected)), counts)
    time = history.time[step] + rng.random(len(step)) * dt
    b = b_value(history.shear_stress[step], params, ref)
    return AEEvents(time=time, magnitude=gutenberg_richter(b, params.max_magnitude, rng), b_value=b)


def burst_kernel(params):
    """One magnitude-0 burst sampled at ``params.sample_rate`` (peak ≈ amplitude)."""
    fs = params.sample_rate
    t = np.arange(int(np.ceil(BURST_DECAYS * params.decay * fs))) / fs
    return params.amplitude * np.exp(-t / params.decay) * np.sin(2 * np.pi * params.frequency * t)


def _onset_samples(events, params):
    return np.ceil(events.time * params.sample_rate).astype(np.int64)


def window_logvar(events, params, duration, hop=0.01, window=0.1):
    """``(n_windows, n_channels)`` float32 log10 variance of the AE that
    ``waveform_chunks`` would produce; window ``k`` ends at ``window + k * hop``.

    Exact in expectation: the variance of a window is the summed energy of the
    bursts inside it over its length, plus the noise variance (bursts and noise
    are independent and zero-mean up to a negligible burst mean).
    """
    fs = params.sample_rate
    hop_n, win_n = _samples(hop, fs, "hop"), _samples(window, fs, "window")
    kernel = burst_kernel(params)
    if win_n % hop_n or len(kernel) > hop_n:
        raise ValueError(f"window ({window} s) must be a multiple of hop ({hop} s), and hop longer "
                         f"than a burst ({len(kernel) / fs:g} s = {BURST_DECAYS} decay times)")
    n_bins = int(round(duration * fs)) // hop_n
    onset = _onset_samples(events, params)
    energy_to = np.concatenate([[0.0], np.cumsum(kernel ** 2)])  # energy of the first n samples
    energy = 10.0 ** (2 * events.magnitude) * energy_to[-1]
    first_bin = onset // hop_n
    # A burst straddling a hop boundary splits its energy by the samples on each side.
    first_part = energy_to[np.minimum((first_bin + 1) * hop_n - onset, len(kernel))] / energy_to[-1]
    bins = np.bincount(first_bin, energy * first_part, minlength=n_bins + 1)
    rest = np.bincount(first_bin + 1, energy * (1.0 - first_part), minlength=n_bins + 2)
    bins += rest[:len(bins)]
    bins = bins[:n_bins]
    per_window = win_n // hop_n
    csum = np.concatenate([[0.0], np.cumsum(bins)])
    burst_var = (csum[per_window:] - csum[:-per_window]) / win_n
    gains = params.channel_gains
    var = burst_var[:, None] * gains ** 2 + params.noise_std ** 2
    with np.errstate(divide="ignore"):
        return np.log10(var).astype(np.float32)


def waveform_chunks(events, params, duration, rng, chunk_samples=2 ** 20):
    """Yield the ``(n, n_channels)`` float32 AE waveform in consecutive chunks.

    Bursts are amplitude impulses at their onset samples convolved with the
    burst kernel; the tail that spills past a chunk is carried into the next.
    """
    from scipy.signal import oaconvolve

    kernel = burst_kernel(params)
    n_total = int(round(duration * params.sample_rate))
    onset = _onset_samples(events, params)
    amp = 10.0 ** events.magnitude
    gains = params.channel_gains
    carry = np.zeros(len(kernel) - 1)
    for start in range(0, n_total, chunk_samples):
        n = min(chunk_samples, n_total - start)
        sel = (onset >= start) & (onset < start + n)
        impulses = np.bincount(onset[sel] - start, amp[sel], minlength=n)
        bursts = oaconvolve(impulses, kernel)
        bursts[:len(carry)] += carry
        carry = bursts[n:]
        noise = rng.normal(0.0, params.noise_std, (n, len(gains)))
        yield (bursts[:n, None] * gains + noise).astype(np.float32)


def _samples(seconds, sample_rate, name):
    n = seconds * sample_rate
    if abs(n - round(n)) > 1e-6 or round(n) < 1:
        raise ValueError(f"{name}={seconds} s is not a whole number of samples at "
                         f"{sample_rate:g} Hz")
    return int(round(n))
