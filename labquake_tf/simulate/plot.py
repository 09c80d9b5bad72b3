"""A few cycles of a simulated record: shear stress, slip rate, AE log-variance."""

import h5py
import numpy as np


def plot_record(path, png, cycles=4):
    """Save a PNG of the first ``cycles`` true events of the HDF5 record ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with h5py.File(path, "r") as f:
        mech = f["mech/shear_stress"]
        rate, t0 = mech.attrs["sample_rate"], mech.attrs["t0"]
        t_mech = t0 + np.arange(len(mech)) / rate
        stress = mech[()]
        slip_rate = np.gradient(f["mech/displacement"][()], 1.0 / rate)
        events = f["truth/events"][()]
        t_feat, logvar = _logvar(f)
        name = f.attrs["name"]

    if len(events):
        last = events[min(cycles, len(events)) - 1]
        margin = 0.5 * (last[1] - events[0, 0]) / cycles
        lo, hi = max(t_mech[0], events[0, 0] - margin), last[1] + 2.0
    else:
        lo, hi = t_mech[0], min(t_mech[-1], 60.0)
    in_mech, in_feat = (t_mech >= lo) & (t_mech <= hi), (t_feat >= lo) & (t_feat <= hi)

    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    axes[0].plot(t_mech[in_mech], stress[in_mech], lw=0.8)
    axes[0].set_ylabel("shear stress (MPa)")
    axes[1].semilogy(t_mech[in_mech], np.maximum(slip_rate[in_mech], 1e-3), lw=0.8)
    axes[1].set_ylabel("slip rate (µm/s)")
    axes[2].plot(t_feat[in_feat], logvar[in_feat], lw=0.5)
    axes[2].set_ylabel("AE log10 variance")
    axes[2].set_xlabel("time (s)")
    for ax in axes:
        for onset, end in events:
            if lo <= onset <= hi:
                ax.axvspan(onset, end, color="tab:red", alpha=0.15, lw=0)
    axes[0].set_title(f"{name}: failures shaded")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _logvar(f):
    """Window end times and log-variance of channel 1, from features or the waveform."""
    if "features/logvar" in f:
        ds = f["features/logvar"]
        return ds.attrs["t0"] + ds.attrs["hop"] * np.arange(len(ds)), ds[:, 0]
    from labquake_tf.data.features import LogVariance

    ds = f["ae"]
    lv = LogVariance(ds.attrs["sample_rate"])
    step = 2 ** 20
    values = np.concatenate([lv.update(ds[i:i + step, :1]) for i in range(0, len(ds), step)])[:, 0]
    return lv.window_end_time(np.arange(len(values)), ds.attrs["t0"]), values
