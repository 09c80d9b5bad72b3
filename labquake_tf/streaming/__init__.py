"""Real-time prediction on a live AE stream: ``Streamer``, its two engines, ``labquake stream``."""

from labquake_tf.streaming.engines import (IncrementalEngine, NotStreamableError, WindowedEngine,
                                           make_engine)
from labquake_tf.streaming.streamer import Predictions, Streamer

__all__ = ["IncrementalEngine", "NotStreamableError", "Predictions", "Streamer", "WindowedEngine",
           "make_engine"]
