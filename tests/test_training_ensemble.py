import json

import numpy as np
import pytest

from labquake_tf.models import decoder_blocks
from labquake_tf.training import TrainConfig, ensemble, load_pretrained
from labquake_tf.training import finetune as ft
from labquake_tf.training.trainer import save_model
# The same tiny source model and windows as the fine-tuning tests (module-scoped fixtures).
from tests.test_training_finetune import SEQ, pretrained, source_run, windows  # noqa: F401


def test_ensemble_mean_is_the_mean_of_its_members_and_round_trips(pretrained, windows, tmp_path):
    single = ft.build_finetune_model(pretrained, SEQ, blocks=2)
    model = ensemble.add_heads(single, 3, seed=4)
    assert ensemble.add_heads(single, 1) is single and ensemble.n_members(single) == 1
    assert ensemble.n_members(model) == 3
    # one trunk: the members share the frozen blocks, each has its own fresh head
    assert len(decoder_blocks(model)) == 2 and not model.get_layer("decoder_block_1").trainable
    kernels = [model.get_layer(f"member{i}_head_dense").kernel.numpy() for i in range(3)]
    assert not np.allclose(kernels[0], kernels[1])
    x = windows[1][0]
    mean, members = ensemble.predict_members(model, x)
    assert members.shape == (3, len(x), 1)
    np.testing.assert_allclose(mean, members.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(x, verbose=0), mean, rtol=1e-6)

    save_model(model, tmp_path / "model.keras")
    (tmp_path / "manifest.json").write_text(json.dumps({"dataset": "p4581"}))
    loaded, _ = load_pretrained(tmp_path)
    np.testing.assert_allclose(ensemble.predict_members(loaded, x)[1], members, rtol=1e-6)
    # a fine-tune can start from an ensemble: it reads only the decoder blocks
    again = ft.build_finetune_model(loaded, SEQ, blocks=2)
    np.testing.assert_array_equal(decoder_blocks(again)[1].conv2.g.numpy(),
                                  decoder_blocks(model)[1].conv2.g.numpy())


def test_fit_members_trains_each_head_with_its_own_seed_on_one_decoder_pass(
        pretrained, windows, tmp_path, monkeypatch):
    from labquake_tf.training import cache

    model = ensemble.add_heads(ft.build_finetune_model(pretrained, SEQ, blocks=3), 2)
    frozen = [w.numpy().copy() for b in decoder_blocks(model) for w in b.weights]
    passes = []
    real = cache.decoder_activations
    monkeypatch.setattr(cache, "decoder_activations",
                        lambda *a, **k: passes.append(1) or real(*a, **k))
    config = TrainConfig(epochs=2, batch_size=16, patience=5, verbose=0, seed=3)
    histories = ensemble.fit_members(model, *windows, config, tmp_path)
    assert len(histories) == 2 and all(len(h["loss"]) == 2 for h in histories)
    assert len(passes) == 2  # train and val, once each for all members
    assert histories[0]["loss"] != histories[1]["loss"]  # different seeds
    assert (tmp_path / "history.csv").is_file()
    assert (tmp_path / "members" / "1" / "history.csv").is_file()
    assert ensemble.member_seed(3, 1) == 3 + ensemble.SEED_STRIDE
    after = [w.numpy() for b in decoder_blocks(model) for w in b.weights]
    for a, b in zip(frozen, after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_member_counts_are_refused(n):
    with pytest.raises(ValueError, match="--ensemble"):
        ensemble.check_members(n)


@pytest.mark.parametrize("flag", [["--ensemble", "0"], ["--coverage", "1.0"],
                                  ["--coverage", "0"], ["--coverage", "90"]])
def test_finetune_cli_refuses_bad_ensemble_or_coverage(flag, tmp_path, capsys):
    from labquake_tf.cli import main

    out = tmp_path / "ft"
    rc = main(["finetune", "--from", str(tmp_path), "--dataset", "p4581", "--out", str(out), *flag])
    assert rc == 2  # a usage error, before anything runs
    assert flag[0] in capsys.readouterr().err
    assert not out.exists() and not out.with_name("ft.partial").exists()


def test_finetune_refuses_bad_options_before_writing(tmp_path):
    for kwargs, match in (({"members": 0}, "--ensemble"), ({"coverage": 1.2}, "coverage"),
                          ({"members": 3, "decoder": "trainable"}, "frozen decoder"),
                          ({"interval_score": "wide"}, "interval_score")):
        with pytest.raises(ValueError, match=match):
            ft.finetune(tmp_path / "nowhere", "p4581", tmp_path / "ft", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_finetune_job_calibrates_an_interval_and_the_export_serves_it(pretrained, dds_dir,
                                                                      tmp_path):
    import tensorflow as tf

    from labquake_tf.cli import main
    from labquake_tf.data.pipeline import split_arrays
    from labquake_tf.data.scaling import MinMaxScaler
    from labquake_tf.evaluation import intervals

    src = source_run(pretrained, tmp_path / "src", dataset="p5198",
                     feature_names=["logvar_ch1"])
    run = tmp_path / "ft"
    assert main(["finetune", "--from", str(src), "--dataset", "p4581", "--blocks", "2",
                 "--seq-len", "12", "--epochs", "2", "--ensemble", "3", "--coverage", "0.8",
                 "--out", str(run)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    iv = manifest["intervals"]
    assert iv["members"] == 3 and iv["coverage"] == 0.8
    assert iv["calibration"]["split"].startswith("train, later half")  # the default: forward
    assert set(iv["score_selection"]) <= set(intervals.SCORES)
    assert iv["targets"]["shear_stress"]["offset"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        scores = metrics[split]["targets"]["shear_stress"]
        assert 0 <= scores["coverage"] <= 1 and scores["width"] > 0
        assert scores["interval_target"] == 0.8
    assert json.loads((run / "config.json").read_text())["finetune"]["ensemble"] == 3
    assert not (run / "forward").exists()

    assert main(["export", str(run), "--name", "ens", "--base-dir", str(tmp_path / "sm")]) == 0
    loaded = tf.saved_model.load(str(tmp_path / "sm" / "ens" / "1"))
    arrays = split_arrays(run / "data", "test")
    raw = np.lib.stride_tricks.sliding_window_view(arrays["features"][:60], 12, axis=0)
    raw = np.ascontiguousarray(raw.transpose(0, 2, 1)).astype("float32")
    out = loaded.signatures["serving_default"](ae_features=tf.constant(raw))
    assert sorted(out) == ["shear_stress", "shear_stress_lower", "shear_stress_upper"]
    mid, lo, hi = (out[k].numpy() for k in sorted(out))
    assert np.all(lo <= mid) and np.all(mid <= hi) and np.all(hi - lo > 0)
    # the same numbers as evaluation's interval from the run's model and manifest
    model, _ = load_pretrained(run)
    f_scaler = MinMaxScaler.from_dict(manifest["scaler"]["features"])
    t_scaler = MinMaxScaler.from_dict(manifest["scaler"]["targets"])
    mean, members = ensemble.predict_members(model, f_scaler.transform(raw))
    lo_ref, hi_ref = intervals.bounds(t_scaler.inverse_transform(mean),
                                      members.std(axis=0) * t_scaler.scale,
                                      [iv["targets"]["shear_stress"]])
    np.testing.assert_allclose(mid, t_scaler.inverse_transform(mean)[:, 0], atol=1e-5)
    np.testing.assert_allclose(lo, lo_ref[:, 0], atol=1e-5)
    np.testing.assert_allclose(hi, hi_ref[:, 0], atol=1e-5)


def test_forward_windows_cut_the_training_split_after_its_middle_event(dds_dir, tmp_path):
    from labquake_tf.data import prepare
    from labquake_tf.data.pipeline import split_arrays

    data = tmp_path / "data"
    prepare.prepare("p4581", data, seq_len=8, targets=["shear_stress"], split=(0.5, 0.1, 0.4))
    (x_early, y_early), (x_late, y_late) = ft.forward_windows(data, 8)
    train = split_arrays(data, "train")
    events = train["events"]
    cut = int(events[len(events) // 2 - 1, 1]) + 1
    mask = train["label_mask"]["shear_stress"]  # one mask per target
    assert len(y_early) == int(mask[7:cut].sum()) and len(y_late) == int(mask[cut:].sum())
    assert x_early.shape == (len(y_early), 8, 1) and x_late.shape == (len(y_late), 8, 1)
    # the first late window ends on the cut step and reads the 7 steps before it
    from labquake_tf.data.scaling import MinMaxScaler
    import json as _json

    manifest = _json.loads((data / "manifest.json").read_text())
    f = MinMaxScaler.from_dict(manifest["scaler"]["features"]).transform(train["features"])
    first_late = np.flatnonzero(mask[cut:])[0] + cut
    np.testing.assert_array_equal(x_late[0, :, 0], f[first_late - 7:first_late + 1, 0])
