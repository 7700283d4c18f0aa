"""Reading a Keras model file's config without TensorFlow, and refusing code stored in it (``Lambda`` layers)
unless the caller allows it."""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

_UNSAFE_LAYERS = {"Lambda"}
# a layer's JSON config as Keras writes it into a SavedModel's metadata (keras_metadata.pb / saved_model.pb)
_SAVED_LAYER = re.compile(rb'"class_name":\s*"(\w+)",\s*"config":\s*\{\s*"name":\s*"([^"]*)"')


def keras_config(path: Path) -> dict | None:
    """The model's JSON config without TensorFlow (``None`` for SavedModel folders)."""
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise ValueError(f"{path} is a folder but not a SavedModel (no saved_model.pb)")
        return None
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        import h5py
        try:
            with h5py.File(path, "r") as h5:
                cfg = h5.attrs.get("model_config")
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path} is not a readable HDF5 file ({type(e).__name__}: {e})") from e
        if cfg is None:
            raise ValueError(f"{path} is an HDF5 file without a Keras model config (a weights-only file?); "
                             "save the whole model with model.save(...)")
        return json.loads(cfg.decode() if isinstance(cfg, bytes) else cfg)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("config.json"))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path} is not a readable .keras archive ({type(e).__name__}: {e})") from e
    raise ValueError(f"{path} is not a Keras model file (.h5, .keras or a SavedModel folder)")


def _layer_configs(cfg):
    """Every (class_name, layer name) in a Keras config, nested models included."""
    if isinstance(cfg, dict):
        if "class_name" in cfg and isinstance(cfg.get("config"), dict):
            yield cfg["class_name"], cfg["config"].get("name", "?")
        for v in cfg.values():
            yield from _layer_configs(v)
    elif isinstance(cfg, list):
        for v in cfg:
            yield from _layer_configs(v)


def savedmodel_layers(path: Path) -> set[tuple[str, str]]:
    """``(class_name, layer name)`` of the Keras layer configs stored in a SavedModel folder's metadata (read as
    bytes: the configs are JSON strings inside the protocol buffers, no TensorFlow needed)."""
    found = set()
    for name in ("keras_metadata.pb", "saved_model.pb"):
        f = path / name
        if f.is_file():
            data = f.read_bytes()
            found |= {(c.decode(), n.decode(errors="replace")) for c, n in _SAVED_LAYER.findall(data)}
            if re.search(rb'"class_name":\s*"Lambda"', data) and not any(c == "Lambda" for c, _ in found):
                found.add(("Lambda", "?"))          # a Lambda config whose name could not be read
    return found


def check_unsafe(path: Path, allow_unsafe: bool) -> None:
    """Raise ``ValueError`` when ``path`` is not a Keras model, or has ``Lambda`` layers (whose code Keras would
    run on loading) and ``allow_unsafe`` is false.  Every format is scanned: ``.h5`` and ``.keras`` configs,
    SavedModel folders' metadata."""
    cfg = keras_config(path)
    if allow_unsafe:
        return
    layers = savedmodel_layers(path) if cfg is None else set(_layer_configs(cfg))
    bad = sorted({name for cls, name in layers if cls in _UNSAFE_LAYERS})
    if bad:
        raise ValueError(f"the model has Lambda layer(s) {bad}: loading them runs code stored in the file. "
                         "Pass allow_unsafe=True if you trust this file.")
