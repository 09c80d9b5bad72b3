"""Raw records → features, targets, event splits, TFRecord shards and tf.data.

Entry points: ``registry.load_record`` (a dataset name or file → ``Record``),
``prepare.prepare`` (``Record`` → shards + manifest) and ``pipeline.make_dataset``
/ ``pipeline.split_arrays`` (shards → windows / numpy).
"""
