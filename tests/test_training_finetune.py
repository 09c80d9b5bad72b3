import json

import numpy as np
import pytest

from labquake_tf.models import build_tcn, decoder_blocks
from labquake_tf.training import TrainConfig
from labquake_tf.training import cache, finetune as ft

SEQ = 12


@pytest.fixture(scope="module")
def pretrained():
    # dropout > 0 so the test sees frozen blocks skip it
    return build_tcn(16, filters=8, kernel_size=3, blocks=3, dropout=0.2)


@pytest.fixture(scope="module")
def windows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, SEQ, 1)).astype("float32")
    y = (x[:, -4:, 0].mean(axis=1, keepdims=True) * 0.3 + 0.5).astype("float32")
    return (x[:64], y[:64]), (x[64:], y[64:])


def source_run(model, folder, feature_names=("logvar_ch1",), target_names=("shear_stress",),
               **manifest):
    """A pretrained run dir for ``finetune --from`` as ``pretrain`` leaves it: the task in
    ``model.keras``, its data's ``manifest.json`` beside it."""
    from labquake_tf.task import LabquakeRegressor
    from labquake_tf.training.artifacts import save_model

    folder.mkdir()
    manifest = {**manifest, "feature_names": list(feature_names),
                "target_names": list(target_names), "seq_len": int(model.input_shape[1])}
    save_model(LabquakeRegressor.from_manifest(model, manifest), folder / "model.keras")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _config(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 16, "patience": 5, "verbose": 0, **kw})


def _head_params(filters, seq_len):
    conv = filters * 64 * 2 + 64
    dense = (seq_len + 1) * 64 * 128 + 128
    return conv + dense + 128 + 1


def test_pretrained_frozen_copies_and_freezes_the_first_blocks(pretrained):
    model = ft.build_finetune_model(pretrained, SEQ, blocks=2)
    assert model.input_shape == (None, SEQ, 1)
    assert len(decoder_blocks(model)) == 2
    for new, old in zip(decoder_blocks(model), decoder_blocks(pretrained)):
        assert not new.trainable and new.dropout == old.dropout == 0.2
        for a, b in zip(new.get_weights(), old.get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not model.get_layer("input_norm").trainable
    # Frozen, the decoder is a fixed function even in training mode (no dropout).
    trunk, _ = cache.split_at_head(model)
    x = np.random.default_rng(1).normal(size=(8, SEQ, 1)).astype("float32")
    np.testing.assert_array_equal(trunk(x, training=True).numpy(), trunk(x, training=False).numpy())
    assert ft.trainable_fraction(model) == pytest.approx(_head_params(8, SEQ) / model.count_params())


def test_random_frozen_keeps_random_weights_and_trainable_trains_everything(pretrained):
    rand = ft.build_finetune_model(pretrained, SEQ, blocks=3, decoder="random-frozen")
    for new, old in zip(decoder_blocks(rand), decoder_blocks(pretrained)):
        assert not new.trainable
        assert not np.allclose(new.conv1.v.numpy(), old.conv1.v.numpy())
    full = ft.build_finetune_model(pretrained, SEQ, blocks=3, decoder="trainable")
    assert all(b.trainable and b.dropout == 0.2 for b in decoder_blocks(full))
    # all but input_norm's moving mean and variance
    assert ft.trainable_fraction(full) == pytest.approx(1 - 2 * SEQ / full.count_params())
    np.testing.assert_array_equal(decoder_blocks(full)[2].conv2.g.numpy(),
                                  decoder_blocks(pretrained)[2].conv2.g.numpy())


def test_bad_blocks_and_modes_are_refused(pretrained):
    with pytest.raises(ValueError, match="between 1 and 3"):
        ft.build_finetune_model(pretrained, SEQ, blocks=4)
    with pytest.raises(ValueError, match="decoder must be one of"):
        ft.build_finetune_model(pretrained, SEQ, blocks=2, decoder="frozen")
    trainable = ft.build_finetune_model(pretrained, SEQ, blocks=2, decoder="trainable")
    with pytest.raises(ValueError, match="decoder_block_0 is trainable|input_norm is trainable"):
        cache.check_cacheable(trainable)


def test_adapt_input_norm_sets_per_step_statistics(pretrained, windows):
    model = ft.build_finetune_model(pretrained, SEQ, blocks=2)
    x = windows[0][0]
    ft.adapt_input_norm(model, x)
    norm = model.get_layer("input_norm")
    np.testing.assert_allclose(norm.moving_mean.numpy(), x.mean(axis=(0, 2)), rtol=1e-5)
    out = model.get_layer("input_norm")(x, training=True).numpy()  # frozen: moving stats even so
    np.testing.assert_allclose(out.mean(axis=0)[:, 0], 0.0, atol=1e-4)


def test_plain_path_freezes_the_decoder_and_cached_path_matches_it(pretrained, windows, tmp_path):
    model = ft.build_finetune_model(pretrained, SEQ, blocks=3)
    ft.adapt_input_norm(model, windows[0][0])
    initial = model.get_weights()
    frozen = [model.get_layer("input_norm"), *decoder_blocks(model)]
    before = [w.numpy().copy() for layer in frozen for w in layer.weights]

    plain = ft.fit(model, *windows, _config(), tmp_path / "plain", use_cache=False)
    assert len(plain["loss"]) == 2
    for a, b in zip(before, [w.numpy() for layer in frozen for w in layer.weights]):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(initial[-2], model.get_layer("prediction").kernel.numpy())
    pred_plain = model.predict(windows[1][0], verbose=0)

    model.set_weights(initial)
    cached = ft.fit(model, *windows, _config(), tmp_path / "cached", use_cache=True)
    pred_cached = model.predict(windows[1][0], verbose=0)  # the full model: head weights shared
    np.testing.assert_allclose(cached["loss"], plain["loss"], rtol=1e-4)
    np.testing.assert_allclose(cached["val_loss"], plain["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(pred_cached, pred_plain, rtol=1e-4, atol=1e-6)


def test_streamable_source_gives_a_streamable_finetune_model_and_cache():
    from labquake_tf.models import head_length, is_streamable, receptive_field

    source = build_tcn(16, filters=8, kernel_size=3, blocks=3, dropout=0.0, streamable=True)
    model = ft.build_finetune_model(source, SEQ, blocks=2)
    assert is_streamable(model) and head_length(model) == SEQ
    assert model.input_shape == (None, SEQ + receptive_field(3, 2) - 1, 1)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(40, model.input_shape[1], 1)).astype("float32")
    ft.adapt_input_norm(model, x)  # per feature: one mean over windows and steps
    np.testing.assert_allclose(model.get_layer("input_norm").moving_mean.numpy(), [x.mean()],
                               rtol=1e-5)
    trunk, head = cache.split_at_head(model)
    assert trunk.output.shape == (None, SEQ, 8)  # only the head's steps are cached
    np.testing.assert_allclose(head(trunk(x[:4])), model(x[:4]), rtol=1e-5, atol=1e-6)


def _with_norm_stats(model, seed=3):
    """``model`` with non-trivial input_norm gamma, beta and moving statistics."""
    norm = model.get_layer("input_norm")
    rng = np.random.default_rng(seed)
    norm.set_weights([rng.uniform(0.5, 2.0, w.shape).astype("float32") if i != 1 else
                      rng.normal(size=w.shape).astype("float32")
                      for i, w in enumerate(norm.get_weights())])
    return model


def _decoder_input(model, x):
    import keras

    trunk = keras.Model(model.inputs[0], model.get_layer("decoder_block_0").input)
    return trunk(x, training=False).numpy()


def test_input_norm_is_carried_over_by_window_length(pretrained):
    source = _with_norm_stats(build_tcn(16, filters=8, kernel_size=3, blocks=3, dropout=0.2))
    old = source.get_layer("input_norm").get_weights()
    x = np.random.default_rng(4).uniform(size=(5, 16, 1)).astype("float32")

    same = ft.build_finetune_model(source, 16, blocks=2, input_norm="copy")
    assert same.input_norm_source == "copy"
    for a, b in zip(same.get_layer("input_norm").get_weights(), old):
        np.testing.assert_array_equal(a, b)
    # The frozen decoder's input for a window is what it was in the pretrained model.
    np.testing.assert_allclose(_decoder_input(same, x), _decoder_input(source, x), rtol=1e-6)

    short = ft.build_finetune_model(source, 12, blocks=2, input_norm="last-steps")
    for a, b in zip(short.get_layer("input_norm").get_weights(), old):
        np.testing.assert_array_equal(a, b[4:])  # the last 12 of 16 steps
    np.testing.assert_allclose(_decoder_input(short, x[:, 4:]), _decoder_input(source, x)[:, 4:],
                               rtol=1e-5, atol=1e-6)

    adapt = ft.build_finetune_model(source, 12, blocks=2, input_norm="adapt")
    new = adapt.get_layer("input_norm").get_weights()
    np.testing.assert_array_equal(new[0], old[0][4:])  # gamma and beta kept ...
    np.testing.assert_array_equal(new[1], old[1][4:])
    ft.adapt_input_norm(adapt, x[:, 4:])  # ... statistics from the fine-tuning windows
    np.testing.assert_allclose(adapt.get_layer("input_norm").moving_mean.numpy(),
                               x[:, 4:].mean(axis=(0, 2)), rtol=1e-5)

    longer = ft.build_finetune_model(source, 20, blocks=2)
    assert longer.input_norm_source == "refit"  # nothing to copy for the extra steps
    with pytest.raises(ValueError, match="pretrained window length 16"):
        ft.build_finetune_model(source, 12, blocks=2, input_norm="copy")
    with pytest.raises(ValueError, match="longer than the pretrained 16 steps"):
        ft.build_finetune_model(source, 20, blocks=2, input_norm="last-steps")
    assert ft.build_finetune_model(source, 16, 2, decoder="random-frozen").input_norm_source == "refit"
