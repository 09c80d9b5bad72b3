"""AdamW whose gradient clipping sees the gradient of the whole global batch.

Keras 3's TF optimizer clips in ``_backend_apply_gradients``, which runs in each
replica's context BEFORE ``_backend_update_step`` sums the replicas' gradients:
under MirroredStrategy ``global_clipnorm`` clips every replica's partial gradient
by its own norm, which is not what ``torch.nn.utils.clip_grad_norm_`` on the
global batch does (tests/test_training_strategy.py shows the difference).
This optimizer sums first and clips the sum; the later all-reduce is skipped,
so nothing is summed twice. On one device both steps are no-ops and it is AdamW.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="labquake_tf")
class AdamW(keras.optimizers.AdamW):
    def _clip_gradients(self, grads):
        return super()._clip_gradients(self._sum_over_replicas(grads))

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # Already summed in _clip_gradients.
        return list(grads_and_vars)

    @staticmethod
    def _sum_over_replicas(grads):
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return grads
        present = [g for g in grads if g is not None]
        summed = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, present) if present else [])
        return [None if g is None else next(summed) for g in grads]
