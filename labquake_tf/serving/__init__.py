"""SavedModel export in TF Serving's layout, a REST client, and a small REST server.

``export.export_model`` writes ``saved_models/NAME/N/``; ``Client`` talks to TF Serving
or to ``labquake serve`` (``server.Server``), which speaks the same REST API.
"""

from labquake_tf.serving.client import Client
from labquake_tf.serving.status import ServingError

__all__ = ["Client", "ServingError"]
