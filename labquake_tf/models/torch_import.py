"""The reference PyTorch TCN's ``state_dict`` checkpoints (``torch.save`` zip files) as
Keras models, without torch and without running anything the file asks for.

A ``torch.save`` file is a zip holding a pickle (``*/data.pkl``) whose tensors point at
raw little-endian storages (``*/data/<key>``). ``read_state_dict`` unpickles it with an
allow-list: ``OrderedDict``, the tensor/parameter rebuild functions and the storage
types. Any other global (``os.system``, ``builtins.eval``, a class's ``__reduce__``) is
refused by name before it is looked up, so nothing in the file is executed.

``convert`` maps the reference layout (CountofGlamorgan/TCN_paper ``Model``) onto
``build_tcn``'s layers; the architecture is read from the tensor shapes:

==========================================  =========================================
PyTorch key                                 Keras weight
==========================================  =========================================
``batch_norm1.{weight,bias}``               ``input_norm`` gamma, beta (one per step)
``batch_norm1.running_{mean,var}``          ``input_norm`` moving mean, variance
``decode.network.i.convN`` (g, v, bias)     ``decoder_block_i/convN`` g, v, bias
``decode.network.i.downsample``             ``decoder_block_i/residual``
``conv1`` (64, filters, 2)                  ``head_conv``
``fc1`` (128, 64*(seq_len+1))               ``head_dense`` (columns permuted, below)
``fc2``                                     ``prediction``
==========================================  =========================================

Weight-normed convs come as ``.parametrizations.weight.original0`` (g, ``(out, 1, 1)``)
and ``.original1`` (v, ``(out, in, k)``), or as the legacy ``.weight_g``/``.weight_v``;
the norm is over ``(in, k)`` per output channel in both libraries. PyTorch flattens the
head's ``(64, seq_len+1)`` output channel-major, Keras time-major, so ``fc1``'s input
columns are reordered. BatchNorm1d's epsilon (1e-5) is kept in ``input_norm``.
"""

import collections
import io
import pickle
import re
import zipfile

import numpy as np

TORCH_BN_EPSILON = 1e-5
HEAD_FILTERS, HEAD_UNITS = 64, 128  # fixed by the reference head

# The storage types torch.save names, and the numpy dtype of their raw bytes.
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the reference layout."""


class _StorageType:
    """Stands for ``torch.<X>Storage`` in the pickle: only its dtype is used."""

    def __init__(self, name):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *_):
    """``torch._utils._rebuild_tensor_v2`` for numpy: a view checked against the storage."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise CheckpointError(f"tensor with size {size}, stride {stride}, offset {offset} "
                              "is malformed")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= len(storage):
        raise CheckpointError(f"tensor with size {size}, stride {stride}, offset {offset} "
                              f"reaches past its storage of {len(storage)} elements")
    if not all(size):
        return np.zeros(size, storage.dtype)
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], size, [s * item for s in stride])
    return np.array(view)  # owns its memory, native byte order


def _rebuild_parameter(data, *_):
    return data


def _fresh(function):
    # A new callable per lookup: a pickle's BUILD may set attributes (even __defaults__)
    # on what find_class returned, and must not reach this module's functions.
    return lambda: (lambda *args: function(*args))


_ALLOWED = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,  # immutable type
    ("torch._utils", "_rebuild_tensor_v2"): _fresh(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _fresh(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _fresh(_rebuild_parameter),
    **{("torch", name): (lambda name=name: _StorageType(name)) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix, path, big_endian):
        super().__init__(file)
        self._archive, self._prefix, self._path = archive, prefix, path
        self._big_endian = big_endian
        self._storages = {}

    def find_class(self, module, name):
        # Every global the pickle names comes through here (GLOBAL, STACK_GLOBAL, INST,
        # OBJ, EXT*): refusing here means the callable is never even imported.
        if (module, name) not in _ALLOWED:
            raise CheckpointError(f"{self._path}: the pickle asks for {module}.{name}, which is "
                                  "not allowed in a state_dict checkpoint; refused, nothing "
                                  "was executed (a whole pickled model must be re-saved as "
                                  "torch.save(model.state_dict(), path))")
        return _ALLOWED[(module, name)]()

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self._path}: unknown persistent id {pid!r:.80}")
        _, kind, key, _, numel = pid
        key = str(key)
        if key not in self._storages:
            self._storages[key] = self._read_storage(kind, key, int(numel))
        return self._storages[key]

    def _read_storage(self, kind, key, numel):
        member = f"{self._prefix}data/{key}"
        order = ">" if self._big_endian else "<"
        dtype = np.dtype(order + ("u2" if kind.dtype == "bf16" else kind.dtype))
        try:
            # sizes are checked before reading: a deflated member could expand without end
            size = self._archive.getinfo(member).file_size
            if size != numel * dtype.itemsize:
                raise CheckpointError(f"{self._path}: storage {member} holds {size} bytes, "
                                      f"expected {numel} {kind.name} elements")
            raw = self._archive.read(member)
        except KeyError:
            raise CheckpointError(f"{self._path}: storage {member} missing from the archive") from None
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"{self._path}: storage {member} unreadable ({e})") from None
        if len(raw) != numel * dtype.itemsize:
            raise CheckpointError(f"{self._path}: storage {member} holds {len(raw)} bytes, "
                                  f"expected {numel} {kind.name} elements")
        data = np.frombuffer(raw, dtype)
        if kind.dtype == "bf16":  # numpy has no bfloat16: its bits are float32's top half
            data = (data.astype(np.uint32) << 16).view(np.float32)
        return data


def read_state_dict(path):
    """``{key: numpy array}`` from a ``torch.save`` zip file, never running its code."""
    path = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: not a readable torch.save zip archive ({e}); files "
                              "from torch < 1.6 must be re-saved with a newer torch") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one */data.pkl in the archive, found "
                                  f"{pickles or 'none'}")
        prefix = pickles[0][:-len("data.pkl")]
        names = set(archive.namelist())
        big_endian = (f"{prefix}byteorder" in names
                      and archive.read(f"{prefix}byteorder").strip() == b"big")
        try:
            data = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"{path}: {pickles[0]} unreadable ({e})") from None
        try:
            obj = _Unpickler(io.BytesIO(data), archive, prefix, path, big_endian).load()
        except CheckpointError:
            raise
        except Exception as e:  # a damaged pickle: any unpickling error
            raise CheckpointError(f"{path}: {pickles[0]} is not a valid pickle "
                                  f"({type(e).__name__}: {e})") from None
    return _state_dict(obj, path)


def _state_dict(obj, path):
    """The tensors of a plain state_dict, or of one wrapped as ``{"state_dict": ...}``."""
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:5]} are not tensors")
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):  # saved from DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


# -- the reference layout -----------------------------------------------------------

_BLOCK = re.compile(r"decode\.network\.(\d+)\.")
_WN_STYLES = {"parametrizations": (".parametrizations.weight.original0",
                                   ".parametrizations.weight.original1"),
              "legacy": (".weight_g", ".weight_v"),
              "plain": (None, ".weight")}


def _conv_style(state, prefix):
    for style, (g, v) in _WN_STYLES.items():
        if prefix + v in state and (g is None or prefix + g in state):
            return style
    raise CheckpointError(f"no weights for {prefix} (looked for "
                          f"{prefix}.parametrizations.weight.original0/1, {prefix}.weight_g/"
                          f"weight_v or {prefix}.weight)")


def infer_architecture(state, path="checkpoint"):
    """``build_tcn`` kwargs (seq_len, n_features, n_targets, filters, kernel_size, blocks)
    from the tensor shapes of a reference ``state_dict``."""
    blocks = sorted({int(m.group(1)) for k in state for m in [_BLOCK.match(k)] if m})
    if not blocks or "fc1.weight" not in state or "batch_norm1.weight" not in state:
        raise CheckpointError(
            f"{path}: not the reference TCN layout (needs batch_norm1.*, "
            f"decode.network.<i>.conv1/conv2, conv1, fc1, fc2); keys found: "
            f"{sorted(state)[:8]}{' …' if len(state) > 8 else ''}")
    if blocks != list(range(len(blocks))):
        raise CheckpointError(f"{path}: decoder blocks {blocks} are not numbered 0..{len(blocks) - 1}")
    style = _conv_style(state, "decode.network.0.conv1")
    v0 = state["decode.network.0.conv1" + _WN_STYLES[style][1]]
    if v0.ndim != 3:
        raise CheckpointError(f"{path}: decode.network.0.conv1 weight has shape {v0.shape}, "
                              "expected (filters, n_features, kernel)")
    filters, n_features, kernel = (int(s) for s in v0.shape)
    seq_len = int(np.shape(state["batch_norm1.weight"])[0])
    if "fc2.weight" not in state or np.ndim(state["fc2.weight"]) != 2:
        raise CheckpointError(f"{path}: fc2.weight missing or not a matrix")
    return dict(seq_len=seq_len, n_features=n_features, n_targets=int(state["fc2.weight"].shape[0]),
                filters=filters, kernel_size=kernel, blocks=len(blocks))


def keras_weights(state, path="checkpoint"):
    """``(architecture, {(layer path, weight name): array}, keys used)``: every tensor of
    a reference ``state_dict`` placed on a ``build_tcn`` weight, shapes checked.

    Any key left unused, or expected and absent, is an error naming it.
    """
    arch = infer_architecture(state, path)
    L, F, n_out = arch["seq_len"], arch["filters"], arch["n_targets"]
    k, n_in = arch["kernel_size"], arch["n_features"]
    out = {}
    used = []

    def take(key, shape):
        if key not in state:
            raise CheckpointError(f"{path}: missing key {key} (expected shape {shape})")
        value = np.asarray(state[key])
        if tuple(value.shape) != tuple(shape):
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, expected "
                                  f"{tuple(shape)} for a {arch['blocks']}-block, {F}-filter, "
                                  f"kernel-{k}, {L}-step TCN")
        used.append(key)
        return value.astype(np.float32)

    for name, weight in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                         ("moving_variance", "running_var")):
        out[("input_norm", name)] = take(f"batch_norm1.{weight}", (L,))
    if "batch_norm1.num_batches_tracked" in state:  # training bookkeeping, no weight
        used.append("batch_norm1.num_batches_tracked")

    for i in range(arch["blocks"]):
        width = n_in if i == 0 else F
        for conv, cin in (("conv1", width), ("conv2", F)):
            prefix = f"decode.network.{i}.{conv}"
            style = _conv_style(state, prefix)
            g_suffix, v_suffix = _WN_STYLES[style]
            v = take(prefix + v_suffix, (F, cin, k))
            if g_suffix is None:
                g = np.sqrt(np.sum(np.square(v, dtype=np.float64), axis=(1, 2))).astype(np.float32)
            else:
                g = take(prefix + g_suffix, (F, 1, 1)).reshape(F)
            layer = f"decoder_block_{i}/{conv}"
            out[(layer, "v")] = v.transpose(2, 1, 0)  # (out, in, k) -> (k, in, out)
            out[(layer, "g")] = g
            out[(layer, "bias")] = take(prefix + ".bias", (F,))
        if width != F:
            out[(f"decoder_block_{i}/residual", "kernel")] = take(
                f"decode.network.{i}.downsample.weight", (F, width, 1)).transpose(2, 1, 0)
            out[(f"decoder_block_{i}/residual", "bias")] = take(
                f"decode.network.{i}.downsample.bias", (F,))

    out[("head_conv", "kernel")] = take("conv1.weight", (HEAD_FILTERS, F, 2)).transpose(2, 1, 0)
    out[("head_conv", "bias")] = take("conv1.bias", (HEAD_FILTERS,))
    fc1 = take("fc1.weight", (HEAD_UNITS, HEAD_FILTERS * (L + 1)))
    # torch's input column c*(L+1)+t is Keras' row t*64+c
    out[("head_dense", "kernel")] = (fc1.reshape(HEAD_UNITS, HEAD_FILTERS, L + 1)
                                     .transpose(2, 1, 0).reshape(-1, HEAD_UNITS))
    out[("head_dense", "bias")] = take("fc1.bias", (HEAD_UNITS,))
    out[("prediction", "kernel")] = take("fc2.weight", (n_out, HEAD_UNITS)).T
    out[("prediction", "bias")] = take("fc2.bias", (n_out,))

    extra = sorted(set(state) - set(used))
    if extra:
        raise CheckpointError(f"{path}: key(s) {extra[:10]} do not belong to a "
                              f"{arch['blocks']}-block reference TCN (unexpected)")
    return arch, {key: np.ascontiguousarray(v) for key, v in out.items()}, used


def _variable(model, layer_path, name):
    layer_name, *inner = layer_path.split("/")
    layer = model.get_layer(layer_name)
    for part in inner:
        layer = getattr(layer, part)
    return getattr(layer, name)


def convert(state, dropout=0.1, path="checkpoint"):
    """A ``build_tcn`` Keras model holding the reference ``state_dict``'s weights."""
    from labquake_tf.models.tcn import build_tcn

    arch, weights, _ = keras_weights(state, path)
    model = build_tcn(**arch, dropout=dropout, norm_epsilon=TORCH_BN_EPSILON, name="tcn")
    assigned = set()
    for (layer_path, name), value in weights.items():
        var = _variable(model, layer_path, name)
        if tuple(var.shape) != value.shape:  # a layout change in build_tcn would land here
            raise CheckpointError(f"{path}: {layer_path}.{name} is {tuple(var.shape)} in Keras, "
                                  f"{value.shape} from the checkpoint")
        var.assign(value)
        assigned.add(var.path)
    left = [v.path for v in model.weights if v.path not in assigned]
    if left:
        raise CheckpointError(f"{path}: Keras weights {left} have no checkpoint tensor")
    return model, arch


def load_torch_checkpoint(path, dropout=0.1):
    """``(model, architecture)`` from a reference ``.pth`` file."""
    return convert(read_state_dict(path), dropout=dropout, path=str(path))
