"""``load_model(spec, weights=None)``: the one way the CLI and studies turn a ``--model`` into a module.

``spec`` is one of

- a zoo recipe name, optionally with a seed: ``digits-mlp`` or ``digits-mlp@2`` (trained if missing);
- ``path/to/file.py:factory``: the file is imported and ``factory()`` must return an ``nn.Module``;
  ``weights`` (a ``.safetensors`` file) is then loaded strictly (keys and shapes must match);
- a local Hugging Face model folder (``config.json`` + ``*.safetensors``), loaded with
  ``transformers`` from that folder only (``local_files_only=True``, safetensors only, no remote code).

Nothing is unpickled: ``.pt``/``.bin`` weights are refused with a hint to convert them.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from torch import nn

from ..core.checks import check_seed, expand_path
from ..errors import ConfigError, ModelError, did_you_mean

_FILE_SPEC = re.compile(r"^(?P<file>.+\.py):(?P<factory>[A-Za-z_][A-Za-z0-9_]*)$")
_ZOO_SPEC = re.compile(r"^(?P<name>[a-z0-9][a-z0-9-]*)(?:@(?P<seed>\d+))?$")


def load_model(spec: str | nn.Module, weights: str | Path | None = None) -> nn.Module:
    """An ``nn.Module`` in eval mode for a zoo name, ``file.py:factory`` (+ weights) or a local HF folder."""
    if isinstance(spec, nn.Module):
        if weights is not None:
            load_safetensors_into(spec, weights)
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"model spec must be a non-empty string, got {spec!r}", hint=_HINT)
    spec = spec.strip()
    if len(spec) > SPEC_MAX:
        raise ModelError(
            f"model spec is {len(spec)} characters long ({spec[:40]!r}...); no zoo name, file or folder is that long",
            hint=_HINT,
        )
    m = _FILE_SPEC.match(spec)
    if m:
        return _from_file(m["file"], m["factory"], weights)
    if spec.endswith(".py"):
        raise ModelError(
            f"{spec!r} names a Python file but no factory",
            hint=f"write {spec}:make_model, where make_model() returns an nn.Module",
        )
    try:
        path = Path(spec).expanduser()
    except (RuntimeError, ValueError):  # "~user" for a user that does not exist, NUL bytes
        path = Path(spec)
    if _is(path.is_dir):
        if weights is not None:
            raise ModelError("--weights is for file.py:factory models; a Hugging Face folder carries its own weights")
        return _from_hf_folder(path)
    m = _ZOO_SPEC.match(spec)
    from .recipes import RECIPES

    name, at, seed_text = spec.partition("@")
    if at and name in RECIPES and not m:
        raise ConfigError(
            f"bad seed {_shown(seed_text)} in model spec {_shown(spec)}: a seed is a non-negative integer",
            hint=f"e.g. {name}@0 or {name}@2",
        )
    if m and m["name"] in RECIPES:
        if weights is not None:
            raise ModelError("--weights is for file.py:factory models; zoo models come from the zoo cache")
        from . import load

        model, _ = load(m["name"], seed=check_seed(m["seed"] or "0", f"seed in model spec {_shown(spec)}"))
        return model
    shown = _shown(spec)
    if _is(path.exists):
        raise ModelError(f"{shown} is a file, not a model spec", hint=_HINT)
    near = did_you_mean(name, RECIPES)
    raise ModelError(
        f"unknown model {shown}: not a zoo recipe, a file.py:factory or a model folder", hint=f"{near}; {_HINT}"
    )


SPEC_MAX = 1024  # longer than any path the file systems innerprobe runs on accept


def _shown(text: str) -> str:
    """``repr(text)``, cut to about 60 characters so that an error message stays one readable line."""
    return repr(text) if len(text) <= 80 else repr(text[:60] + "...")


def _is(test) -> bool:
    """``path.is_dir()`` / ``path.exists()`` that answers False for names the OS refuses (too long, bad bytes)."""
    try:
        return test()
    except (OSError, ValueError, RuntimeError):
        return False


_HINT = (
    "use a zoo name (innerprobe zoo list), path/to/file.py:factory with --weights file.safetensors, or a local "
    "Hugging Face folder"
)


def load_safetensors_into(model: nn.Module, weights: str | Path) -> nn.Module:
    """Load a ``.safetensors`` state dict into ``model`` strictly, with a clear error on any mismatch."""
    wpath = expand_path(weights)
    if wpath.suffix != ".safetensors":
        raise ModelError(
            f"weights file {wpath} is not .safetensors; innerprobe never unpickles weights",
            hint="convert it once: safetensors.torch.save_file(torch.load(f, weights_only=True), 'w.safetensors')",
        )
    if not _is(wpath.is_file):
        raise ModelError(f"weights file {wpath} does not exist")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"cannot read weights {wpath}: {e}", hint="is it a complete .safetensors file?") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    bad = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
        if extra:
            parts.append(f"unexpected {extra[:5]}" + (" ..." if len(extra) > 5 else ""))
        if bad:
            parts.append("shape mismatch " + "; ".join(bad[:3]))
        raise ModelError(
            f"weights {wpath.name} do not fit the model: " + ", ".join(parts),
            hint=f"the model's keys are e.g. {list(expected)[:4]}; save with save_file(model.state_dict(), ...)",
        )
    model.load_state_dict(state, strict=True)
    return model


def _from_file(file: str, factory: str, weights) -> nn.Module:
    fpath = expand_path(file)
    if not _is(fpath.is_file):
        raise ModelError(
            f"model file {fpath} does not exist", hint="path/to/file.py:factory, relative to the current folder"
        )
    name = f"_innerprobe_user_{abs(hash(str(fpath.resolve())))}"
    mspec = importlib.util.spec_from_file_location(name, fpath)
    module = importlib.util.module_from_spec(mspec)
    sys.modules[name] = module  # dataclasses etc. look their module up here
    try:
        mspec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise ModelError(f"importing {fpath} failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, factory, None)
    if fn is None:
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ModelError(f"{fpath} has no {factory!r}", hint=did_you_mean(factory, names))
    try:
        model = fn() if callable(fn) and not isinstance(fn, nn.Module) else fn
    except Exception as e:
        raise ModelError(
            f"{fpath}:{factory}() failed: {type(e).__name__}: {e}", hint="the factory must take no arguments"
        ) from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"{fpath}:{factory}() returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_safetensors_into(model, weights)
    return model.eval()


def _from_hf_folder(folder: Path) -> nn.Module:
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} is a folder but not a Hugging Face model (no config.json)", hint=_HINT)
    if not any(folder.glob("*.safetensors")):
        raise ModelError(
            f"{folder} has no .safetensors weights; innerprobe never unpickles pytorch_model.bin",
            hint="re-save the model with model.save_pretrained(folder) (safetensors is the default)",
        )
    try:
        import transformers
    except ImportError:
        raise ModelError(
            f"{folder} is a Hugging Face folder but transformers is not installed", hint="pip install 'innerprobe[hf]'"
        ) from None
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)  # local
        archs = " ".join(getattr(config, "architectures", None) or [])
        if "CausalLM" in archs or "LMHead" in archs:
            auto = transformers.AutoModelForCausalLM
        elif "SequenceClassification" in archs:
            auto = transformers.AutoModelForSequenceClassification
        elif "ImageClassification" in archs:
            auto = transformers.AutoModelForImageClassification
        else:
            auto = transformers.AutoModel
        model = auto.from_pretrained(  # local
            str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False
        )
    except Exception as e:
        raise ModelError(
            f"transformers could not load {folder}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            hint="the folder needs config.json and model.safetensors written by save_pretrained",
        ) from e
    return model.eval()
