"""The model side of an ensemble of heads (``models.heads``): one trunk, n fresh heads,
their mean; saved, loaded and fine-tuned from like any TCN."""

import keras
import numpy as np
import pytest

from labquake_tf.models import decoder_blocks, heads
from labquake_tf.training import finetune as ft
from labquake_tf.training.artifacts import save_model
# The same tiny source model and windows as the fine-tuning tests (module-scoped fixtures).
from tests.test_training_finetune import SEQ, pretrained, windows  # noqa: F401


def test_ensemble_mean_is_the_mean_of_its_members_and_round_trips(pretrained, windows, tmp_path):
    single = ft.build_finetune_model(pretrained, SEQ, blocks=2)
    model = heads.add_heads(single, 3, seed=4)
    assert heads.add_heads(single, 1) is single and heads.n_members(single) == 1
    assert heads.n_members(model) == 3
    # one trunk: the members share the frozen blocks, each has its own fresh head
    assert len(decoder_blocks(model)) == 2 and not model.get_layer("decoder_block_1").trainable
    kernels = [model.get_layer(f"member{i}_head_dense").kernel.numpy() for i in range(3)]
    assert not np.allclose(kernels[0], kernels[1])
    x = windows[1][0]
    mean, members = heads.predict_members(model, x)
    assert members.shape == (3, len(x), 1)
    np.testing.assert_allclose(mean, members.mean(axis=0), rtol=1e-5, atol=1e-6)
    # eager batches vs Keras' traced predict: float32 rounding, a few ulps
    np.testing.assert_allclose(model.predict(x, verbose=0), mean, rtol=1e-5, atol=1e-7)

    save_model(model, tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert heads.n_members(loaded) == 3
    np.testing.assert_allclose(heads.predict_members(loaded, x)[1], members, rtol=1e-6)
    # a fine-tune can start from an ensemble: it reads only the decoder blocks
    again = ft.build_finetune_model(loaded, SEQ, blocks=2)
    np.testing.assert_array_equal(decoder_blocks(again)[1].conv2.g.numpy(),
                                  decoder_blocks(model)[1].conv2.g.numpy())


def test_head_layers_split_the_trunk_from_the_head(pretrained):
    model = ft.build_finetune_model(pretrained, SEQ, blocks=2)
    last, head = heads.head_layers(model)
    assert last is decoder_blocks(model)[-1]
    assert head and head[-1].name == "prediction" and last not in head
    # members_model: the mean first, then each member, sharing the model's layers
    ens = heads.add_heads(model, 2)
    outputs = heads.members_model(ens).outputs
    assert len(outputs) == 3 and outputs[0] is ens.outputs[0]
    assert [o.shape[-1] for o in outputs] == [1, 1, 1]


def test_member_seeds_never_collide_across_runs():
    assert heads.member_seed(3, 0) == 3
    assert heads.member_seed(3, 1) == 3 + heads.SEED_STRIDE
    seeds = {heads.member_seed(s, i) for s in range(heads.SEED_STRIDE)
             for i in range(heads.DEFAULT_MEMBERS)}
    assert len(seeds) == heads.SEED_STRIDE * heads.DEFAULT_MEMBERS


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_member_counts_are_refused(n):
    with pytest.raises(ValueError, match="--ensemble"):
        heads.check_members(n)
    assert heads.check_members(np.int64(2)) == 2
