import json

import numpy as np
import pytest

from labquake_tf.models import decoder_blocks
from labquake_tf.training import TrainConfig, ensemble, load_pretrained
from labquake_tf.training import finetune as ft
from labquake_tf.training.artifacts import save_model
# The same tiny source model and windows as the fine-tuning tests (module-scoped fixtures).
from tests.test_training_finetune import SEQ, pretrained, windows  # noqa: F401


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


