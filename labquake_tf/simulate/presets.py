"""A simulation's full configuration, and the named presets.

Presets differ in the fault (stiffness against k_c, load rate) and share the AE
model. With normal-stress noise the cycles are aperiodic, like the lab's
(p4581: 9.4 ± 1.8 s recurrence).
"""

import dataclasses

from labquake_tf.simulate.ae import AEParams
from labquake_tf.simulate.fault import FaultParams


@dataclasses.dataclass
class SimulationConfig:
    """fault, ae: the physics. hop, window (s): the log-variance feature grid.
    mech_rate (Hz): the mechanical channels' rate. step (s): the solver's output
    step, which also resolves micro-event times. spinup (s): simulated and
    dropped so the record starts on the limit cycle. stress_noise (MPa): std of
    measurement noise added to the recorded shear stress."""

    fault: FaultParams = dataclasses.field(default_factory=FaultParams)
    ae: AEParams = dataclasses.field(default_factory=AEParams)
    hop: float = 0.01
    window: float = 0.1
    mech_rate: float = 100.0
    step: float = 1e-3
    spinup: float = 100.0
    stress_noise: float = 1e-3

    def __post_init__(self):
        ratio = self.mech_rate * self.step
        if not 0 < ratio <= 1 or abs(1 / ratio - round(1 / ratio)) > 1e-9:
            raise ValueError(f"mech_rate={self.mech_rate} Hz must divide "
                             f"1/step={1 / self.step:g} Hz")

    def replace(self, **overrides):
        """A copy with fields of this config, its fault or its AE replaced by name."""
        fault = {k: v for k, v in overrides.items() if k in _FAULT_KEYS}
        ae = {k: v for k, v in overrides.items() if k in _AE_KEYS}
        own = {k: v for k, v in overrides.items() if k in _OWN_KEYS}
        unknown = set(overrides) - set(fault) - set(ae) - set(own)
        if unknown:
            raise ValueError(f"unknown simulation parameter(s) {sorted(unknown)}; valid: "
                             f"{sorted(_FAULT_KEYS | _AE_KEYS | _OWN_KEYS)}")
        return dataclasses.replace(self, fault=dataclasses.replace(self.fault, **fault),
                                   ae=dataclasses.replace(self.ae, **ae), **own)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config):
        config = dict(config)
        fault, ae = FaultParams(**config.pop("fault")), AEParams(**config.pop("ae"))
        return cls(fault=fault, ae=ae, **config)


def _names(cls):
    return {f.name for f in dataclasses.fields(cls)}


_FAULT_KEYS, _AE_KEYS = _names(FaultParams), _names(AEParams)
_OWN_KEYS = _names(SimulationConfig) - {"fault", "ae"}

PRESETS = {
    # The paper's biaxial rig: ~20 s recurrence, ~0.14 MPa stress drops, k ≈ 0.57 k_c.
    "biaxial": SimulationConfig(fault=FaultParams(
        normal_stress=5.0, a=0.006, b=0.009, dc=10.0, stiffness=0.00085, load_velocity=10.0,
        radiation_damping=3e-5, normal_stress_noise=0.005)),
    # Double-direct shear like p4581/p5198: ~6 s recurrence, k ≈ 0.73 k_c; faster
    # noise for the shorter cycles gives p4581's ~20 % recurrence scatter.
    "dds": SimulationConfig(fault=FaultParams(
        normal_stress=6.0, a=0.006, b=0.010, dc=5.0, stiffness=0.0035, load_velocity=12.0,
        radiation_damping=3e-5, normal_stress_noise=0.01, noise_time=2.0), spinup=50.0),
    # k ≈ 0.93 k_c with strong damping: slow slip at a few times V_l, small drops.
    "slow": SimulationConfig(fault=FaultParams(
        normal_stress=5.0, a=0.006, b=0.009, dc=10.0, stiffness=0.0014, load_velocity=10.0,
        radiation_damping=1e-4, normal_stress_noise=0.002), spinup=150.0),
}
