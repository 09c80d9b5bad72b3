import numpy as np

from labquake_tf.models import decoder_blocks, heads
from labquake_tf.training import TrainConfig, ensemble
from labquake_tf.training import finetune as ft
# The same tiny source model and windows as the fine-tuning tests (module-scoped fixtures).
from tests.test_training_finetune import SEQ, pretrained, windows  # noqa: F401


def test_fit_members_trains_each_head_with_its_own_seed_on_one_decoder_pass(
        pretrained, windows, tmp_path, monkeypatch):
    from labquake_tf.training import cache

    model = heads.add_heads(ft.build_finetune_model(pretrained, SEQ, blocks=3), 2)
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
    after = [w.numpy() for b in decoder_blocks(model) for w in b.weights]
    for a, b in zip(frozen, after):
        np.testing.assert_array_equal(a, b)
