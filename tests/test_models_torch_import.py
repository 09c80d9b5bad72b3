import collections
import io
import json
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from labquake_tf.models import torch_import
from labquake_tf.models.torch_import import CheckpointError

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


# -- a torch.save writer without torch, for checkpoints the tests shape at will ---------

class _Global:
    """Pickled as GLOBAL module.name, as torch's own functions and storage types are."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # save_reduce wants a callable
        raise AssertionError("never called")


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape


_KINDS = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}


class _Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[_Global] = lambda self, obj: self.write(
        pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", _KINDS[obj.array.dtype]), obj.key, "cpu",
                    obj.array.size)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, _Tensor):
            shape = tuple(obj.shape)
            stride = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
            return (_Global("torch._utils", "_rebuild_tensor_v2"),
                    (obj.storage, 0, shape, stride, False, collections.OrderedDict()))
        return NotImplemented


def write_checkpoint(path, state):
    """``state`` ({key: numpy array}) as torch.save writes a state_dict (zip, pickle, storages)."""
    storages, tensors = [], collections.OrderedDict()
    for i, (key, value) in enumerate(state.items()):
        value = np.ascontiguousarray(value)
        storages.append(_Storage(str(i), value))
        tensors[key] = _Tensor(storages[-1], value.shape)
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(tensors)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ckpt/data.pkl", buf.getvalue())
        z.writestr("ckpt/byteorder", "little")
        for s in storages:
            z.writestr(f"ckpt/data/{s.key}", s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())
        z.writestr("ckpt/version", "3\n")
    return path


def reference_layout(seq_len, filters, kernel, blocks, n_features=1, n_out=1,
                     style="parametrizations", fill=None):
    """The reference model's state_dict keys and shapes; ``fill(i, shape)`` makes key i's array."""
    shapes = collections.OrderedDict()
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"batch_norm1.{name}"] = (seq_len,)
    for i in range(blocks):
        width = n_features if i == 0 else filters
        for conv, cin in (("conv1", width), ("conv2", filters)):
            p = f"decode.network.{i}.{conv}"
            shapes[p + ".bias"] = (filters,)
            g, v = ((".parametrizations.weight.original0", ".parametrizations.weight.original1")
                    if style == "parametrizations" else (".weight_g", ".weight_v"))
            shapes[p + g] = (filters, 1, 1)
            shapes[p + v] = (filters, cin, kernel)
        if width != filters:
            shapes[f"decode.network.{i}.downsample.weight"] = (filters, width, 1)
            shapes[f"decode.network.{i}.downsample.bias"] = (filters,)
    shapes.update({"conv1.weight": (64, filters, 2), "conv1.bias": (64,),
                   "fc1.weight": (128, 64 * (seq_len + 1)), "fc1.bias": (128,),
                   "fc2.weight": (n_out, 128), "fc2.bias": (n_out,)})
    rng = np.random.default_rng(0)
    fill = fill or (lambda i, shape: rng.uniform(0.5, 1.5, shape).astype("float32"))
    state = collections.OrderedDict((k, fill(i, s)) for i, (k, s) in enumerate(shapes.items()))
    state["batch_norm1.num_batches_tracked"] = np.array(3, np.int64)
    return state


# -- exact outputs against PyTorch ----------------------------------------------------

@pytest.mark.parametrize("name", ["torch_tcn_param", "torch_tcn_legacy"])
def test_imported_fixture_reproduces_pytorch_outputs(name):
    ref = np.load(FIXTURES / f"{name}.npz")
    arch = json.loads(str(ref["arch"]))
    model, got = torch_import.load_torch_checkpoint(FIXTURES / f"{name}.pth")
    expected = {k: arch.get(k, 1) for k in ("seq_len", "filters", "kernel_size", "blocks",
                                             "n_features")}
    assert {k: got[k] for k in expected} == expected
    assert got["n_targets"] == ref["outputs"].shape[1]
    assert model.get_layer("input_norm").epsilon == 1e-5
    # the outputs vary across windows: matching them is not matching a constant
    assert ref["outputs"].std(axis=0).min() > 1e-3
    y = model(ref["windows"], training=False).numpy()
    np.testing.assert_allclose(y, ref["outputs"], rtol=0, atol=1e-5)


def test_state_dict_reader_returns_every_tensor_with_its_dtype():
    ref = np.load(FIXTURES / "torch_tcn_param.npz")
    state = torch_import.read_state_dict(FIXTURES / "torch_tcn_param.pth")
    assert sorted(state) == sorted(ref["keys"].tolist())
    assert state["batch_norm1.num_batches_tracked"].dtype == np.int64
    assert int(state["batch_norm1.num_batches_tracked"]) == 7
    assert state["fc1.weight"].dtype == np.float32 and state["fc1.weight"].shape == (128, 64 * 9)


def test_strided_and_offset_tensors_are_rebuilt_as_views_of_their_storage():
    storage = np.arange(20, dtype=np.float32)
    # a transposed (3, 4) view starting at element 2: stride (1, 3)
    got = torch_import._rebuild_tensor(storage, 2, (3, 4), (1, 3))
    np.testing.assert_array_equal(got, storage[2:14].reshape(4, 3).T)
    with pytest.raises(CheckpointError, match="reaches past its storage"):
        torch_import._rebuild_tensor(storage, 10, (3, 4), (4, 1))


# -- the paper-size layout, no torch ---------------------------------------------------

def test_paper_size_layout_maps_every_tensor_once(tmp_path):
    # Key i holds the constant i, so each Keras weight shows which key filled it.
    state = reference_layout(512, 512, 8, 9, fill=lambda i, s: np.full(s, i, np.float32))
    path = write_checkpoint(tmp_path / "paper.pth", state)
    read = torch_import.read_state_dict(path)
    assert list(read) == list(state)
    arch, weights, used = torch_import.keras_weights(read, str(path))
    assert arch == dict(seq_len=512, n_features=1, n_targets=1, filters=512, kernel_size=8,
                        blocks=9)
    assert sorted(used) == sorted(state)  # nothing left over
    n_params = sum(v.size for k, v in state.items() if not k.endswith(("running_mean",
                                                                         "running_var",
                                                                         "num_batches_tracked")))
    assert n_params == sum(v.size for (layer, name), v in weights.items()
                           if not name.startswith("moving"))
    assert 39.8e6 < n_params < 40.0e6
    index = {k: i for i, k in enumerate(state)}
    for (layer, name), torch_key in [
            (("decoder_block_0/residual", "kernel"), "decode.network.0.downsample.weight"),
            (("decoder_block_8/conv2", "g"), "decode.network.8.conv2.parametrizations.weight.original0"),
            (("decoder_block_8/conv2", "v"), "decode.network.8.conv2.parametrizations.weight.original1"),
            (("input_norm", "moving_variance"), "batch_norm1.running_var"),
            (("head_dense", "kernel"), "fc1.weight"), (("prediction", "bias"), "fc2.bias")]:
        assert np.all(weights[(layer, name)] == index[torch_key]), (layer, name)
    assert weights[("decoder_block_3/conv1", "v")].shape == (8, 512, 512)
    assert weights[("head_dense", "kernel")].shape == (513 * 64, 128)
    # the Keras model takes them all (convert refuses a weight left unassigned): 2 s
    model, _ = torch_import.convert(read)
    assert model.count_params() == n_params + 2 * 512  # + the moving mean and variance
    assert float(model.get_layer("prediction").bias.numpy()[0]) == index["fc2.bias"]


def test_head_columns_are_permuted_from_channel_major_to_time_major():
    seq_len = 3
    state = reference_layout(seq_len, 4, 2, 1)
    fc1 = np.arange(128 * 64 * (seq_len + 1), dtype=np.float32).reshape(128, -1)
    state["fc1.weight"] = fc1
    _, weights, _ = torch_import.keras_weights(state)
    kernel = weights[("head_dense", "kernel")]
    for t, c in [(0, 0), (1, 0), (0, 1), (3, 63)]:
        np.testing.assert_array_equal(kernel[t * 64 + c], fc1[:, c * (seq_len + 1) + t])


# -- bad input ------------------------------------------------------------------------

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [0, 2, 4])  # GLOBAL and STACK_GLOBAL opcodes
def test_a_forbidden_global_is_refused_and_never_run(tmp_path, protocol):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    payload = pickle.dumps(collections.OrderedDict(w=_Evil(marker)), protocol=protocol)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", payload)
    with pytest.raises(CheckpointError, match=r"evil.pth: .*(posix|os)\.system.*not allowed"):
        torch_import.read_state_dict(path)
    assert not marker.exists()
    # the same pickle through the standard unpickler would have run it: the test can fail
    pickle.loads(payload)
    assert marker.exists()


def test_a_pickled_build_cannot_reach_the_allowed_functions(tmp_path):
    # BUILD with slot state sets attributes on whatever find_class returned
    payload = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
               b"N}X\x0c\x00\x00\x00__defaults__(K\x00ts\x86b.")
    path = tmp_path / "build.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x/data.pkl", payload)
    with pytest.raises(CheckpointError, match="holds a function, not a state_dict"):
        torch_import.read_state_dict(path)
    assert torch_import._rebuild_tensor.__defaults__ is None


def test_truncated_and_non_zip_files_are_refused(tmp_path):
    data = (FIXTURES / "torch_tcn_param.pth").read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth: not a readable torch.save zip"):
        torch_import.read_state_dict(cut)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        torch_import.read_state_dict(tmp_path / "nope.pth")


def test_a_damaged_storage_is_refused_naming_it(tmp_path):
    state = reference_layout(4, 4, 2, 1)
    path = write_checkpoint(tmp_path / "a.pth", state)
    bad = tmp_path / "bad.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[:-4] if item.filename == "ckpt/data/0" else data)
    with pytest.raises(CheckpointError, match=r"bad.pth: storage ckpt/data/0 holds 12 bytes"):
        torch_import.read_state_dict(bad)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("fc1.bias"), r"missing key fc1.bias"),
    (lambda s: s.update({"decode.network.0.extra.weight": np.zeros(2, np.float32)}),
     r"decode.network.0.extra.weight.*unexpected"),
    (lambda s: s.update({"fc2.bias": np.zeros(2, np.float32)}), r"fc2.bias has shape \(2,\)"),
    (lambda s: s.update({"decode.network.1.conv1.parametrizations.weight.original1":
                         np.zeros((4, 4, 3), np.float32)}),
     r"decode.network.1.conv1.parametrizations.weight.original1 has shape \(4, 4, 3\), "
     r"expected \(4, 4, 2\)"),
    (lambda s: s.pop("decode.network.1.conv2.parametrizations.weight.original0"),
     r"no weights for decode.network.1.conv2"),
])
def test_missing_extra_and_misshapen_keys_are_named(edit, message):
    state = reference_layout(6, 4, 2, 2)
    edit(state)
    with pytest.raises(CheckpointError, match=message):
        torch_import.keras_weights(state, "ckpt.pth")


def test_another_architecture_is_refused(tmp_path):
    path = write_checkpoint(tmp_path / "resnet.pth", {"layer1.0.conv1.weight": np.zeros(
        (4, 4, 3, 3), np.float32), "fc.weight": np.zeros((2, 4), np.float32)})
    with pytest.raises(CheckpointError, match=r"resnet.pth: not the reference TCN layout.*fc.weight"):
        torch_import.load_torch_checkpoint(path)


def test_plain_weights_without_weight_norm_import_as_g_equal_to_the_norm():
    # a checkpoint saved after torch's remove_weight_norm: conv weights as plain .weight
    normed = reference_layout(6, 4, 2, 2, style="legacy")
    plain = collections.OrderedDict()
    for key, value in normed.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            g = normed[key[:-1] + "g"]
            value = g * value / np.sqrt((value ** 2).sum(axis=(1, 2), keepdims=True))
            key = key[:-len("_v")]
        plain[key] = value.astype(np.float32) if value.dtype != np.int64 else value
    x = np.random.default_rng(1).uniform(size=(4, 6, 1)).astype("float32")
    a, _ = torch_import.convert(normed)
    b, _ = torch_import.convert(plain)
    np.testing.assert_allclose(b(x, training=False).numpy(), a(x, training=False).numpy(),
                               rtol=1e-5, atol=1e-6)
