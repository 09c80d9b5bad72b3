"""The TCN: weight-normed causal blocks, a regression head, presets."""

from labquake_tf.models.layers import TCNBlock, WeightNormConv1D
from labquake_tf.models.preprocessor import Preprocessor
from labquake_tf.models.tcn import (PRESETS, build_from_preset, build_tcn, decoder_blocks,
                                    head_length, input_length, is_streamable, receptive_field)

__all__ = ["PRESETS", "Preprocessor", "TCNBlock", "WeightNormConv1D", "build_from_preset", "build_tcn",
           "decoder_blocks", "head_length", "input_length", "is_streamable", "receptive_field"]
