"""One model's versions under its base path, chosen by policy and reloaded by ``refresh``:
TF Serving's version policies (latest N, all, specific), labels, status and metadata."""

import logging
import pathlib

from labquake_tf.serving import servable as servable_lib
from labquake_tf.serving.export import versions
from labquake_tf.serving.status import ServingError

log = logging.getLogger(__name__)


class ModelRegistry:
    """One model's versions under ``base_path`` chosen by ``policy`` (``("latest", [N])``,
    ``("all", [])`` or ``("specific", [V, ...])``), reloaded by ``refresh``."""

    def __init__(self, name, base_path, num_versions=1, labels=None, policy=None, batching=None,
                 warmup=True):
        self.name = name
        self.base_path = pathlib.Path(base_path)
        self.policy = policy or ("latest", [num_versions])
        self.labels = dict(labels or {})
        self.batching, self.warmup = batching, warmup
        self._servables = {}
        self.failed = {}  # version -> why it did not load; retried on every refresh

    def wanted(self):
        present = versions(self.base_path)
        kind, numbers = self.policy
        if kind == "latest":
            return present[-numbers[0]:]
        return present if kind == "all" else [v for v in present if v in numbers]

    def refresh(self):
        """Load new versions, unload those that fell out of the policy; returns the versions."""
        wanted = self.wanted()
        loaded = dict(self._servables)
        for v in wanted:
            if v in loaded:
                continue
            try:
                loaded[v] = servable_lib.load(v, self.base_path / str(v), self.batching,
                                             self.warmup)
            except Exception as e:  # a broken export must not take the server down
                reason = f"{type(e).__name__}: {e}".strip()
                if self.failed.get(v) != reason:  # once per reason, not on every poll
                    log.error("could not load %s version %d from %s: %s", self.name, v,
                              self.base_path / str(v), reason)
                self.failed[v] = reason
            else:
                self.failed.pop(v, None)
                log.info("loaded %s version %d (%d warmup request(s))", self.name, v,
                         loaded[v].warmup_requests)
        self.failed = {v: r for v, r in self.failed.items() if v in wanted}
        # Replaced whole, never mutated: request threads read a consistent snapshot.
        self._servables = {v: s for v, s in loaded.items() if v in wanted}
        for v, servable in loaded.items():
            if v not in wanted:
                servable.close()
        return sorted(self._servables)

    @property
    def versions(self):
        return sorted(self._servables)

    def get(self, version=None, label=None):
        servables = self._servables
        if label is not None:
            if label not in self.labels:
                raise ServingError(400, f"Unrecognized servable version label: {label}")
            version = self.labels[label]
        if version is None:
            if not servables:
                raise ServingError(404, f"Servable not found for request: Latest({self.name})")
            return servables[max(servables)]
        if version not in servables:
            raise ServingError(404, f"Servable not found for request: "
                                    f"Specific({self.name}, {version})")
        return servables[version]

    def status(self, version=None, label=None):
        if version is None and label is None:
            entries = [(v, "AVAILABLE", "OK", "") for v in sorted(self._servables)]
            # TF Serving reports a version that failed to load as END with its error.
            entries += [(v, "END", "UNKNOWN", r) for v, r in sorted(self.failed.items())]
        else:
            entries = [(self.get(version, label).version, "AVAILABLE", "OK", "")]
        if not entries:
            raise ServingError(404, f"Could not find any versions of model {self.name}")
        return {"model_version_status": [
            {"version": str(v), "state": state,
             "status": {"error_code": code, "error_message": message}}
            for v, state, code, message in entries]}

    def metadata(self, version=None, label=None):
        servable = self.get(version, label)
        return {"model_spec": {"name": self.name, "signature_name": "",
                               "version": str(servable.version)},
                "metadata": {"signature_def": {"signature_def": {
                    k: s.to_json() for k, s in servable.signatures.items()}}}}

    def run(self, arrays, signature_name=None, version=None, label=None):
        """``(servable, outputs)`` for ``{input: array}``: the path REST and gRPC share."""
        servable = self.get(version, label)
        return servable, servable.run(arrays, signature_name)

    def close(self):
        servables, self._servables = self._servables, {}
        for servable in servables.values():
            servable.close()
