import dataclasses

import numpy as np
import pytest

from labquake_tf.simulate.fault import FaultParams, simulate_fault

# No normal-stress noise: periodic cycles, so one cycle's numbers are the regime's.
BASE = FaultParams(normal_stress=5.0, a=0.006, b=0.009, dc=10.0, load_velocity=10.0,
                   radiation_damping=1e-4)
KC = BASE.critical_stiffness


def run(ratio, duration=80.0, spinup=60.0, **changes):
    params = dataclasses.replace(BASE, stiffness=ratio * KC, **changes)
    return simulate_fault(params, duration, dt=0.01, spinup=spinup)


def test_critical_stiffness_is_sigma_b_minus_a_over_dc():
    assert KC == pytest.approx(5.0 * 0.003 / 10.0)


@pytest.mark.parametrize("law", ["aging", "slip"])
def test_stick_slip_below_critical_stiffness_and_stable_sliding_above(law):
    unstable, stable = run(0.6, law=law), run(1.5, law=law)
    assert len(unstable.events) >= 3
    assert unstable.drops.min() > 2 * BASE.normal_stress * (BASE.b - BASE.a)
    assert unstable.slip_rate.max() > 10 * BASE.load_velocity
    # Above k_c the spin-up's oscillation has decayed to steady sliding.
    assert len(stable.events) == 0
    assert np.ptp(stable.shear_stress) < 1e-3
    np.testing.assert_allclose(stable.slip_rate, BASE.load_velocity, rtol=1e-2)
    assert stable.shear_stress.mean() == pytest.approx(BASE.steady_state_stress, abs=1e-3)


def test_stress_drop_shrinks_and_cycles_shorten_as_stiffness_nears_critical():
    runs = [run(ratio) for ratio in (0.4, 0.6, 0.85)]
    drops = [r.drops.mean() for r in runs]
    recurrences = [np.diff(r.events[:, 0]).mean() for r in runs]
    assert drops[0] > drops[1] > drops[2]
    assert recurrences[0] > recurrences[1] > recurrences[2]
    for r, drop, recurrence in zip(runs, drops, recurrences):
        # The spring reloads the drop at k V_l minus the creep of the stuck block,
        # so a cycle takes a bit longer than drop / (k V_l).
        assert recurrence > drop / (r.params.stiffness * BASE.load_velocity)
        # Over a whole (periodic) cycle the block keeps up with the load point.
        i, j = np.searchsorted(r.time, r.events[-2:, 0])
        assert r.slip[j] - r.slip[i] == pytest.approx(BASE.load_velocity * recurrence, rel=2e-3)


def test_doubling_load_rate_halves_recurrence():
    slow, fast = run(0.6), run(0.6, load_velocity=20.0)
    t_slow, t_fast = (np.diff(r.events[:, 0]).mean() for r in (slow, fast))
    assert t_fast / t_slow == pytest.approx(0.5, abs=0.1)
    # The equations are invariant under V → 2V, θ → θ/2, t → t/2 once the
    # damping stress ηV is kept too (η → η/2): then the halving is exact.
    exact = run(0.6, load_velocity=20.0, radiation_damping=BASE.radiation_damping / 2)
    assert np.diff(exact.events[:, 0]).mean() / t_slow == pytest.approx(0.5, rel=2e-3)
    assert exact.drops.mean() == pytest.approx(slow.drops.mean(), rel=2e-3)
    assert fast.drops.mean() < slow.drops.mean()  # damping resists the faster slip more


def test_events_are_stress_peak_to_stress_minimum():
    r = run(0.6)
    for (onset, end), drop in zip(r.events, r.drops):
        i, j = np.searchsorted(r.time, [onset, end])
        cycle = r.shear_stress[i - 100:j + 100]
        # The crossings of V_l are the stress extremes of the failure (to one step).
        assert r.shear_stress[i] == pytest.approx(cycle.max(), abs=1e-4)
        assert r.shear_stress[j] == pytest.approx(cycle.min(), abs=1e-4)
        assert drop == pytest.approx(cycle.max() - cycle.min(), abs=2e-4)
        # The spring: drop = k (V_l · duration − slip).
        slip = r.slip[j] - r.slip[i]
        assert slip == pytest.approx(drop / r.params.stiffness + BASE.load_velocity * (end - onset),
                                     rel=2e-3)


def test_normal_stress_noise_makes_cycles_aperiodic_and_seeded():
    noisy = dataclasses.replace(BASE, stiffness=0.6 * KC, normal_stress_noise=0.01, noise_time=3.0)
    a = simulate_fault(noisy, 100, dt=0.01, spinup=20, seed=1)
    b, c = (simulate_fault(noisy, 20, dt=0.01, spinup=20, seed=seed) for seed in (1, 2))
    periodic = run(0.6, duration=100, spinup=40)
    cv = lambda r: np.diff(r.events[:, 0]).std() / np.diff(r.events[:, 0]).mean()  # noqa: E731
    assert cv(periodic) < 0.01 < 0.05 < cv(a)
    np.testing.assert_array_equal(a.shear_stress[:len(b.time)], b.shear_stress)
    assert not np.array_equal(a.shear_stress, c.shear_stress)
    assert np.std(a.normal_stress) / BASE.normal_stress == pytest.approx(0.01, rel=0.6)


@pytest.mark.parametrize("change, field", [(dict(law="slip-weakening"), "law"),
                                           (dict(dc=0.0), "dc"),
                                           (dict(stiffness=-1.0), "stiffness")])
def test_bad_parameters_name_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(BASE, **change)
