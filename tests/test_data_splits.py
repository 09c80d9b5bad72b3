import numpy as np
import pytest

from labquake_tf.data import readers, splits
from labquake_tf.data.record import Record


def test_event_counts_follow_ratios():
    assert splits.event_counts(31, (0.7, 0.1, 0.2)) == (22, 3, 6)
    assert splits.event_counts(46, "0.5,0.1,0.4") == (23, 5, 18)
    with pytest.raises(ValueError, match="ratios"):
        splits.parse_ratios("0.7,0.3")


def test_splits_are_contiguous_and_on_event_boundaries():
    events = np.array([[10 * k + 5, 10 * k + 8] for k in range(10)])
    parts = splits.split_by_events(events, 100, (0.7, 0.1, 0.2))
    assert parts["train"] == {"steps": [0, 69], "events": [0, 7]}
    assert parts["val"] == {"steps": [69, 79], "events": [7, 8]}
    assert parts["test"] == {"steps": [79, 100], "events": [8, 10]}


def test_too_few_events_is_an_error():
    with pytest.raises(ValueError, match="at least one event per part"):
        splits.split_by_events(np.array([[1, 2], [5, 6]]), 10)


def test_scalers_fit_on_train_only(dds_dir):
    record = readers.read(dds_dir / "p4581.csv")
    parts = splits.split_by_events(record.events, len(record))
    start, stop = parts["train"]["steps"]
    f_scaler, t_scaler = splits.fit_scalers(record, (start, stop), ["shear_stress", "ttsf"])
    train = record.features[start:stop]
    assert f_scaler.data_min[0] == train.min() and f_scaler.data_max[0] == train.max()
    assert f_scaler.data_max[0] < record.features.max() or f_scaler.data_min[0] > record.features.min()
    labelled = record.label_mask["ttsf"][start:stop]
    assert t_scaler.data_max[1] == record.targets["ttsf"][start:stop][labelled].max()


def test_masked_rows_do_not_enter_the_target_scaler():
    n = 20
    ttsf = np.arange(n, dtype=float)
    ttsf[-5:] = 1e6  # a bogus label, masked
    stress = np.arange(n, dtype=float) * 2  # a label everywhere, its last rows included
    mask = np.r_[np.ones(n - 5, bool), np.zeros(5, bool)]
    record = Record("r", np.arange(n) * 0.1, np.zeros((n, 1), np.float32), ["logvar_ch1"],
                    {"ttsf": ttsf, "shear_stress": stress},
                    {"ttsf": mask, "shear_stress": np.ones(n, bool)})
    _, t_scaler = splits.fit_scalers(record, (0, n), ["ttsf", "shear_stress"])
    assert t_scaler.data_max.tolist() == [n - 6, 2 * (n - 1)]
