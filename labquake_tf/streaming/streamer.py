"""``Streamer``: raw AE (or log-variance steps) in, predictions in physical units out.

    streamer = LabquakeRegressor.from_preset("p4581-shear-stress").streamer(sample_rate=2e6)
    for chunk in chunks:                    # any lengths, (n, n_channels) samples
        out = streamer.update(chunk)        # the predictions this chunk completed
        for row in out.rows(): ...          # {"time": s, "shear_stress": MPa, ...}

Raw samples go through the streaming ``data.features.LogVariance`` (one pass,
any chunk sizes), are scaled by the task's preprocessor, run through an engine
(``engines``), and the outputs are inverted by the same preprocessor. ``update_features`` takes log-variance steps directly (the DDS CSVs hold
precomputed variance, not raw AE).

Bad input never gives a silent wrong prediction:

* the wrong number of channels or a non-numeric chunk: ``ValueError``;
* NaN/Inf samples (or a window of zero variance, whose log is -inf), a gap or a
  step back in feature time stamps: a **reset**. The state is cleared at the
  bad sample/step, the reset is recorded in ``resets`` (time, reason) and passed
  to ``on_reset``; the next prediction comes once a full window of good input
  has arrived again, so no window mixes input from both sides.
"""

import dataclasses

import numpy as np

from labquake_tf.data.features import LogVariance
from labquake_tf.streaming.engines import make_engine


@dataclasses.dataclass
class Predictions:
    """The predictions one update completed: ``time`` (s, window end) and ``values``
    (name -> physical units; ``NAME_lower``/``NAME_upper`` where the model has intervals)."""

    time: np.ndarray
    values: dict
    scaled: np.ndarray = None

    def __len__(self):
        return len(self.time)

    def as_dict(self):
        """``{"time": ..., name: values}``, as ``LabquakeRegressor.predict`` returns."""
        return {"time": self.time, **self.values}

    def rows(self):
        names = list(self.values)
        for i, t in enumerate(self.time.tolist()):
            yield {"time": t, **{n: float(self.values[n][i]) for n in names}}

    @staticmethod
    def concat(parts, names):
        parts = [p for p in parts if len(p)]
        if not parts:
            return Predictions(np.zeros(0), {n: np.zeros(0) for n in names},
                               np.zeros((0, 0), np.float32))
        return Predictions(np.concatenate([p.time for p in parts]),
                           {n: np.concatenate([p.values[n] for p in parts])
                            for n in parts[0].values},
                           np.concatenate([p.scaled for p in parts]))


def _intervals(intervals, names):
    """Per-target ``(lower, upper)`` offsets in physical units, where the task carries
    split-conformal intervals of constant width (``coef`` 0: the fine-tuning job's
    default). An ensemble-spread-scaled interval (``coef > 0``) needs the members'
    spread, which a stream of one model does not have: no interval then."""
    out = {}
    for name in names:
        spec = ((intervals or {}).get("targets") or {}).get(name)
        if isinstance(spec, dict) and "offset" in spec and float(spec.get("coef", 0.0)) == 0.0:
            out[name] = (-float(spec["offset"]), float(spec["offset"]))
    return out


class Streamer:
    """Stateful predictions over an unbounded AE stream.

    Args:
        task: a ``LabquakeRegressor`` (``task.streamer(...)`` builds this).
        engine: ``"incremental"`` (per-layer state, streamable models only),
            ``"windowed"`` (recompute every window, any model) or ``"auto"``.
        sample_rate: raw AE rate in Hz; needed by ``update`` only.
        window, hop: the log-variance window and hop in seconds (hop defaults to
            the manifest's ``dt``: the model's step).
        t0: time of the first raw sample / the first feature step's origin.
        max_gap: feature time stamps further apart than ``max_gap * hop`` reset.
        on_reset: called with ``(time, reason)`` on every reset.
    """

    def __init__(self, task, engine="auto", sample_rate=None, window=0.1, hop=None, t0=0.0,
                 max_gap=1.5, on_reset=None, **engine_kwargs):
        if not hasattr(task, "preprocessor"):
            raise TypeError(f"Streamer takes a LabquakeRegressor (LabquakeRegressor."
                            f"from_preset(path).streamer()), got {type(task).__name__}")
        self.model, self.preprocessor = task.network, task.preprocessor
        self.engine = make_engine(self.model, engine, **engine_kwargs)
        self.engine_name = type(self.engine).__name__
        self.feature_names = list(self.preprocessor.feature_names)
        self.target_names = list(self.preprocessor.target_names)
        self.intervals = _intervals(task.intervals, self.target_names)
        self.output_names = [n for t in self.target_names for n in
                             ([t, f"{t}_lower", f"{t}_upper"] if t in self.intervals else [t])]
        self.hop = float(hop or self.preprocessor.dt or 0.01)
        self.window = float(window)
        self.sample_rate = sample_rate
        self.max_gap = float(max_gap)
        self.on_reset = on_reset
        self.resets = []
        self.input_len = self.engine.input_len
        try:
            self.channels, self.output = _raw_channels(self.feature_names)
        except ValueError as err:  # fine for update_features; update refuses
            self.channels, self.output, self._raw_error = None, None, str(err)
        self._t0 = float(t0)
        self._samples = 0        # raw samples consumed
        self._lv = None
        self._lv_start = 0       # sample index where the current LogVariance began
        self._lv_windows = 0     # windows it has produced
        self._last_time = None   # time of the last feature step in the current window run
        self._clock = None       # time of the last feature step seen (kept across resets)
        if sample_rate is not None:
            if self.channels is None:
                raise ValueError(self._raw_error)
            self._restart_raw(0)

    # -- raw AE -------------------------------------------------------------------
    def update(self, chunk):
        """Feed raw AE samples ``(n, n_channels)`` (or ``(n,)``); return the predictions
        they completed."""
        if self.sample_rate is None:
            raise ValueError("Streamer.update needs sample_rate= (raw AE); for log-variance "
                             "steps use update_features")
        chunk = np.asarray(chunk)
        if chunk.ndim == 1:
            chunk = chunk[:, None]
        if chunk.ndim != 2 or not (np.issubdtype(chunk.dtype, np.integer)
                                   or np.issubdtype(chunk.dtype, np.floating)):
            raise ValueError(f"raw AE chunk of shape {chunk.shape} and dtype {chunk.dtype}; "
                             "expected (n_samples, n_channels) integers or floats")
        if chunk.shape[1] < max(self.channels) + 1:
            raise ValueError(f"raw AE chunk has {chunk.shape[1]} channel(s); the model reads "
                             f"{self.feature_names} (channel(s) "
                             f"{[c + 1 for c in self.channels]})")
        chunk = chunk[:, self.channels]
        parts = []
        if np.issubdtype(chunk.dtype, np.floating):
            bad = ~np.isfinite(chunk).all(axis=1)
            while bad.any():
                i = int(np.argmax(bad))
                parts.append(self._raw(chunk[:i]))  # now self._samples is the bad sample
                self.reset(self._t0 + self._samples / self.sample_rate,
                           "non-finite AE sample", restart_at=self._samples + 1)
                self._samples += 1
                chunk, bad = chunk[i + 1:], bad[i + 1:]
        parts.append(self._raw(chunk))
        return Predictions.concat(parts, self.output_names)

    def _raw(self, chunk):
        if not len(chunk):
            return Predictions.concat([], self.output_names)
        steps = self._lv.update(chunk)
        self._samples += len(chunk)
        k = self._lv_windows + np.arange(len(steps))
        self._lv_windows += len(steps)
        times = self._lv.window_end_time(k, self._t0 + self._lv_start / self.sample_rate)
        return self._features(steps, times)

    def _restart_raw(self, sample):
        self._lv = LogVariance(self.sample_rate, self.window, self.hop, self.output, workers=1)
        self._lv_start, self._lv_windows = sample, 0

    # -- log-variance steps ---------------------------------------------------------
    def update_features(self, steps, time=None):
        """Feed log-variance steps ``(n, n_features)`` (raw values, as in the record),
        with their time stamps (default: one ``hop`` after the previous step)."""
        steps = np.asarray(steps, np.float64)
        if steps.ndim == 1:
            steps = steps[:, None]
        if steps.ndim != 2 or steps.shape[1] != len(self.feature_names):
            raise ValueError(f"feature steps of shape {steps.shape}; the model takes "
                             f"(n, {len(self.feature_names)}) {self.feature_names}")
        if time is None:
            last = self._clock if self._clock is not None else self._t0 - self.hop
            time = last + self.hop * np.arange(1, len(steps) + 1)
        time = np.asarray(time, np.float64)
        if time.shape != (len(steps),):
            raise ValueError(f"{len(time)} time stamps for {len(steps)} feature steps")
        return self._features(steps, time)

    def _features(self, steps, times):
        if len(times):
            self._clock = float(times[-1])
        parts = []
        while len(steps):
            cut, reason = self._first_bad(steps, times)
            if cut is None:
                parts.append(self._run(steps, times))
                break
            parts.append(self._run(steps[:cut], times[:cut]))
            skip = cut + 1 if reason.startswith("non-finite") else cut
            self._reset_model(float(times[cut]), reason)
            if skip > cut:
                self._last_time = float(times[cut])
            steps, times = steps[skip:], times[skip:]
        return Predictions.concat(parts, self.output_names)

    def _first_bad(self, steps, times):
        """Index and reason of the first step that must not join the current window."""
        bad = ~np.isfinite(steps).all(axis=1)
        prev = np.concatenate([[self._last_time if self._last_time is not None else np.nan],
                               times[:-1]])
        dt = times - prev
        with np.errstate(invalid="ignore"):
            jump = (dt > self.max_gap * self.hop) | (dt <= 0)
        i_bad = int(np.argmax(bad)) if bad.any() else len(steps)
        i_jump = int(np.argmax(jump)) if jump.any() else len(steps)
        if i_bad == i_jump == len(steps):
            return None, None
        if i_bad <= i_jump:
            return i_bad, "non-finite AE log-variance (NaN/Inf sample or zero variance)"
        kind = "gap" if dt[i_jump] > 0 else "time went back"
        return i_jump, f"{kind} in time stamps: {prev[i_jump]:.6g} s -> {times[i_jump]:.6g} s"

    def _run(self, steps, times):
        if not len(steps):
            return Predictions.concat([], self.output_names)
        base = self.engine.n_steps
        ends, scaled = self.engine.push(self.preprocessor.scale_features(steps))
        self._last_time = float(times[-1])
        phys = self.preprocessor.unscale_targets(scaled)
        values = {}
        for i, name in enumerate(self.target_names):
            values[name] = phys[:, i]
            if name in self.intervals:
                lo, hi = self.intervals[name]
                values[f"{name}_lower"], values[f"{name}_upper"] = phys[:, i] + lo, phys[:, i] + hi
        return Predictions(times[ends - base], values, scaled)

    # -- state ------------------------------------------------------------------------
    def reset(self, time=None, reason="reset", restart_at=None):
        """Clear all state (log-variance and model); record and report why."""
        if self.sample_rate is not None:
            self._restart_raw(self._samples if restart_at is None else restart_at)
        self._reset_model(time, reason)

    def _reset_model(self, time, reason):
        self.engine.reset()
        self._last_time = None
        if time is not None:
            self.resets.append((float(time), reason))
            if self.on_reset is not None:
                self.on_reset(float(time), reason)

    @property
    def warmup_steps(self):
        """Feature steps before the first prediction (the model's input length)."""
        return self.input_len


def _raw_channels(feature_names):
    """Raw AE columns (0-based) and LogVariance output that make ``feature_names``."""
    channels, kinds = [], set()
    for name in feature_names:
        kind, _, ch = name.rpartition("_ch")
        if kind not in ("logvar", "var", "std") or not ch.isdigit():
            raise ValueError(f"feature {name!r} is not a log-variance channel (logvar_chN): "
                             "raw AE cannot be turned into it")
        channels.append(int(ch) - 1)
        kinds.add(kind)
    if len(kinds) != 1:
        raise ValueError(f"features {feature_names} mix kinds {sorted(kinds)}")
    return channels, kinds.pop()
