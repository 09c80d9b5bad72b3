"""Choose the fine-tune's decoder depth and window on the validation events.

How many pretrained blocks to keep and how long a window to read depend on the
target's time scale and the record: on p5198's ≈6 s cycles TTsF is predicted better
from 2-3 blocks and 16-step windows than from the small preset's 4 blocks and 64
steps. ``search``
fine-tunes one head per candidate on the cached decoder (cheap: only heads train)
and ranks them by their best validation RMSE. Every candidate is scored on the
SAME validation windows (the last ``seq_len`` steps of windows cut at the longest
candidate length), so shorter windows are not credited with extra, easier ends.
Test is never read.
"""

import dataclasses
import warnings

import keras
import numpy as np

from labquake_tf.errors import UsageError
from labquake_tf.models import decoder_blocks, head_length, input_length
from labquake_tf.training import cache
from labquake_tf.training import finetune as ft
from labquake_tf.training.ensemble import fit_head

BLOCKS = (2, 3, 4, None)
"""Candidate decoder depths; None stands for all of the pretrained model's blocks."""
SEQ_LENS = (16, 32, 64, None)
"""Candidate windows in steps; None stands for the pretrained model's own."""
TARGETS = ("ttsf", "ttef")
"""Targets searched by default: a countdown to the next event on cycles short against
the window. Shear stress is not: on p4581 its three validation events cannot rank
windows (seeds 0/1/2 chose 4 blocks x 128 steps, 3 x 64 and 4 x 32, with validation
RMSEs 0.021-0.030 MPa; the test RMSEs of those runs spread 0.050-0.068 MPa against
0.056 for the source's 4 x 64), so it keeps the source's shape unless ``--search on``."""
CHANNELS = (1, 2, 3, 4)
"""AE channels searched (as many as the record has) when the source reads one channel and
the job prepares the record: each costs a prepare and a search. The channel a sensor
hears best varies by experiment: over seeds 0/1/2 the search chose channel 2 for p5198
TTsF (best validation RMSE 0.22-0.24 s against channel 1's 0.41-0.45 s) and for p4581
TTsF, channel 1 for p4581 TTeF; the final heads on p4581 shear stress also score better
on channel 1 (validation 0.025-0.028 MPa against 0.044-0.050)."""
SEARCH_PATIENCE = 10
"""Early-stopping patience of a candidate's head: a ranking needs less than a final fit."""
SEARCH_EPOCHS = 100
"""At most this many epochs per candidate (the final heads may train longer)."""


def candidates(n_blocks, source_seq_len, blocks=None, seq_len=None):
    """``(blocks_list, seq_lens)``: the grid, with a user-fixed value held."""
    block_list = [blocks] if blocks else sorted({b or n_blocks for b in BLOCKS if (b or 0) <= n_blocks})
    seq_list = [seq_len] if seq_len else sorted({s or source_seq_len for s in SEQ_LENS})
    return block_list, seq_list


def check_channel(channel, source_channels, source_name):
    """``"auto"`` or the 1-based channel asked for; a UsageError where the source does
    not read exactly one named AE channel."""
    if channel in (None, "auto"):
        return "auto"
    try:
        number = int(channel)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(channel).strip():
        raise UsageError(f"--channel: expected 'auto' or a 1-based channel number, got {channel!r}")
    if not source_channels or len(source_channels) != 1:
        raise UsageError(f"--channel {number}: {source_name} reads "
                         f"{len(source_channels or ())} named AE channel(s), not one; only a "
                         "one-channel model can be moved to another channel")
    return number


def other_channels(first):
    """The channels searched after ``first``, in order (stop at one the record lacks)."""
    return [c for c in CHANNELS if c != first]


def search(source, train_xy, val_xy, target_scale, config, blocks=None, seq_len=None):
    """``(choice, table)``: the ``{"blocks", "seq_len"}`` with the lowest validation
    RMSE and every candidate's ``{"blocks", "seq_len", "val_rmse", "epochs"}``.

    ``train_xy``/``val_xy`` are scaled windows at least as long as the longest
    candidate; ``target_scale`` turns a scaled RMSE into physical units. Candidates
    train with ``config``'s seed, at most ``SEARCH_EPOCHS`` epochs and ``SEARCH_PATIENCE``
    epochs of patience.
    """
    n_blocks, source_len = len(decoder_blocks(source)), head_length(source)
    arch = ft.architecture(source)
    block_list, seq_list = candidates(n_blocks, source_len, blocks, seq_len)

    def window_of(length, depth):  # a streamable decoder also reads its history
        return input_length(length, arch["kernel_size"], depth, arch["streamable"])

    longest = train_xy[0].shape[1]
    need = max(window_of(s, b) for s in seq_list for b in block_list)
    if need > longest:
        raise ValueError(f"windows of {longest} steps cannot be cut to the {need} steps a "
                         f"candidate reads (seq_len up to {max(seq_list)})")
    cfg = dataclasses.replace(config, patience=min(config.patience, SEARCH_PATIENCE),
                              epochs=min(config.epochs, SEARCH_EPOCHS), verbose=0)
    table = []
    for length in seq_list:
        for depth in block_list:
            cut = window_of(length, depth)
            train_l = (train_xy[0][:, -cut:], train_xy[1])
            val_l = (val_xy[0][:, -cut:], val_xy[1])
            with warnings.catch_warnings():
                # the head reads the whole window even where the decoder's field is shorter
                warnings.simplefilter("ignore")
                model = ft.build_finetune_model(source, length, depth)
            if model.input_norm_source in ("refit", "adapt"):  # as the fine-tune does
                ft.adapt_input_norm(model, train_l[0])
            val_loss = _fit_head(model, train_l, val_l, cfg)
            table.append({"blocks": depth, "seq_len": length,
                          "val_rmse": float(np.sqrt(np.nanmin(val_loss)) * target_scale),
                          "epochs": len(val_loss)})
    best = min(table, key=lambda row: row["val_rmse"])
    return {"blocks": best["blocks"], "seq_len": best["seq_len"]}, table


def _fit_head(model, train_xy, val_xy, config):
    """The candidate's head on cached activations, as the ensemble's heads train."""
    keras.utils.set_random_seed(config.seed)
    trunk, head = cache.split_at_head(model)
    x_train = cache.decoder_activations(trunk, train_xy[0], config.batch_size)
    x_val = cache.decoder_activations(trunk, val_xy[0], config.batch_size)
    train_ds = ft.batches(x_train, train_xy[1], config.batch_size, shuffle=True, seed=config.seed)
    val_ds = ft.batches(x_val, val_xy[1], config.batch_size)
    return fit_head(head, train_ds, val_ds, config)["val_loss"]
