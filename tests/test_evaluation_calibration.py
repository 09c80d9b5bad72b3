import json

import numpy as np

from labquake_tf.data import prepare
from labquake_tf.data.pipeline import split_arrays
from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.evaluation.calibration import forward_windows


def test_forward_windows_cut_the_training_split_after_its_middle_event(sim_record, tmp_path):
    data = tmp_path / "data"
    prepare.prepare(sim_record, data, seq_len=8, targets=["shear_stress"],
                    split=(0.5, 0.1, 0.4))
    (x_early, y_early), (x_late, y_late) = forward_windows(data, 8)
    train = split_arrays(data, "train")
    events = train["events"]
    cut = int(events[len(events) // 2 - 1, 1]) + 1
    mask = train["label_mask"]["shear_stress"]  # one mask per target
    assert len(y_early) == int(mask[7:cut].sum()) and len(y_late) == int(mask[cut:].sum())
    assert x_early.shape == (len(y_early), 8, 1) and x_late.shape == (len(y_late), 8, 1)
    # the first late window ends on the cut step and reads the 7 steps before it
    manifest = json.loads((data / "manifest.json").read_text())
    f = MinMaxScaler.from_dict(manifest["scaler"]["features"]).transform(train["features"])
    first_late = np.flatnonzero(mask[cut:])[0] + cut
    np.testing.assert_array_equal(x_late[0, :, 0], f[first_late - 7:first_late + 1, 0])
