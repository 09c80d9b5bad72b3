"""The fine-tune's interval: split-conformal on calibration windows (``calibrate``),
and the forward windows it is calibrated on by default (``forward_windows``): errors of
heads on events after those they learnt from, as the run's heads err on test."""

from labquake_tf.data.train_fraction import kept_events, training_windows
from labquake_tf.evaluation import intervals
from labquake_tf.evaluation.metrics import regression_metrics
from labquake_tf.models import heads


def calibrate(model, val_xy, preprocessor, coverage=0.9, score="auto", where="val"):
    """A task's ``intervals``: split-conformal on the calibration windows ``val_xy``
    (scaled; ``where`` says which), in the targets' physical units."""
    x_val, y_val = val_xy
    mean, members = heads.predict_members(model, x_val)
    mean = preprocessor.unscale_targets(mean)
    spread = members.std(axis=0) * preprocessor.target_scale
    y = preprocessor.unscale_targets(y_val)
    chosen, report = intervals.choose(y, mean, spread, coverage)
    if score == "auto":
        # A normalized score calibrated on another ensemble's spread does not transfer:
        # the forward twin, fit on half the events, disagrees more than the final heads
        # (p5198 TTsF: 90 % on calibration, 70 % on test). An error size does.
        score = chosen if where == "val" else "constant"
    params = intervals.fit(y, mean, spread, coverage, score)
    return {"method": "split-conformal", "coverage": coverage, "members": len(members),
            "calibration": {"split": where, "n_windows": int(len(y))},
            "score": score, "score_selection": report,
            "score_rule": "lower cross-fitted interval score" if where == "val" else
                          "constant: calibrated on a twin ensemble, whose spread is not the run's",
            "targets": {name: {**p, "units": preprocessor.units[name]}
                        for name, p in zip(preprocessor.target_names, params)}}


def val_rmse(model, val_xy, preprocessor):
    """``{target: RMSE}`` of ``model``'s mean prediction on the scaled windows ``val_xy``,
    in physical units. Beside the final heads', the forward twin's says how much weaker
    the ensemble behind the interval is: on p5198 TTsF (channel 2) the twin scored
    0.23-0.25 s against the heads' 0.155 s, and its interval covered 97.8 % of test."""
    mean = preprocessor.unscale_targets(heads.predict_members(model, val_xy[0])[0])
    y = preprocessor.unscale_targets(val_xy[1])
    return {name: regression_metrics(y[:, i], mean[:, i])["rmse"]
            for i, name in enumerate(preprocessor.target_names)}


def forward_windows(data_dir, seq_len, train_fraction=1.0):
    """Scaled ``(early_xy, late_xy)`` windows of the training split (of its kept events,
    ``train_fraction``), cut after the end of their middle event: heads fit on the early
    part and scored on the late one err as the run's heads do on test, on events after
    those they learnt from.

    Late windows may read AE from before the cut (input is causal; labels are not
    shared). Raises ValueError when fewer than two training events are kept.
    """
    events = kept_events(data_dir, train_fraction)
    if len(events) < 2:
        raise ValueError(f"{data_dir}: the training split has {len(events)} event(s); forward "
                         "calibration needs two (use --calibration val)")
    cut = int(events[len(events) // 2 - 1, 1]) + 1
    (x, y), steps = training_windows(data_dir, seq_len, train_fraction)

    def part(keep):
        if not keep.any():
            raise ValueError(f"{data_dir}: no {seq_len}-step window on one side of the "
                             "training split's middle event (use --calibration val)")
        return x[keep], y[keep]

    return part(steps < cut), part(steps >= cut)
