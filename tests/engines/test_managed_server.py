"""Server presets (command lines; FastDeploy, vLLM and SGLang cannot run here) and the supervisor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from services.inference.engines.managed_server import (
    ManagedServer,
    ManagedServerConfig,
    ServerStartError,
    server_command,
)
from services.inference.engines.model_files import SMOLLM2_GGUF, resolve_model_path


def config(**fields: object) -> ManagedServerConfig:
    return ManagedServerConfig.model_validate(fields)


def test_fastdeploy_preset_uses_the_real_api_server_flags() -> None:
    argv = server_command(config(
        preset="fastdeploy", model="baidu/ERNIE-4.5-0.3B-Paddle", port=8180, max_num_seqs=128, max_model_len=32768,
        tensor_parallel_size=2, gpu_memory_utilization=0.9, quantization="wint4", served_model_name="ernie",
        python="/opt/fd/bin/python", extra_args=["--metrics-port", "8181"]), 8180)
    assert argv == [
        "/opt/fd/bin/python", "-m", "fastdeploy.entrypoints.openai.api_server",
        "--model", "baidu/ERNIE-4.5-0.3B-Paddle", "--host", "127.0.0.1", "--port", "8180",
        "--served-model-name", "ernie", "--max-num-seqs", "128", "--max-model-len", "32768",
        "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.9", "--quantization", "wint4",
        "--metrics-port", "8181",
    ]


def test_fastdeploy_preset_leaves_unset_flags_to_the_server_defaults() -> None:
    argv = server_command(config(preset="fastdeploy", model="/models/ernie"), 9000)
    assert argv[1:] == ["-m", "fastdeploy.entrypoints.openai.api_server", "--model", "/models/ernie",
                        "--host", "127.0.0.1", "--port", "9000"]
    assert argv[0] == sys.executable


def test_vllm_and_sglang_presets_map_the_same_sizing_to_their_own_flags() -> None:
    sizing = {"max_num_seqs": 64, "max_model_len": 4096, "tensor_parallel_size": 1, "gpu_memory_utilization": 0.8}
    vllm = server_command(config(preset="vllm", model="Qwen/Qwen2.5-0.5B", **sizing), 8000)
    assert vllm[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert vllm[vllm.index("--max-num-seqs"):][:2] == ["--max-num-seqs", "64"]
    assert "--gpu-memory-utilization" in vllm
    sglang = server_command(config(preset="sglang", model="Qwen/Qwen2.5-0.5B", **sizing), 8000)
    assert sglang[1:5] == ["-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-0.5B"]
    for flag, value in (("--max-running-requests", "64"), ("--context-length", "4096"), ("--tp-size", "1"),
                        ("--mem-fraction-static", "0.8")):
        assert sglang[sglang.index(flag) + 1] == value


def test_llama_cpp_preset_resolves_wheel_weights() -> None:
    argv = server_command(config(preset="llama-cpp", model=SMOLLM2_GGUF, max_model_len=512, n_threads=1,
                                 served_model_name="smol"), 8123)
    assert argv[1:3] == ["-m", "llama_cpp.server"]
    assert argv[argv.index("--model") + 1] == str(resolve_model_path(SMOLLM2_GGUF))
    assert argv[argv.index("--n_ctx") + 1] == "512"
    assert argv[argv.index("--model_alias") + 1] == "smol"
    assert argv[argv.index("--port") + 1] == "8123"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"preset": "fastdeploy", "model": "m", "n_threads": 4}, "n_threads"),
        ({"preset": "llama-cpp", "model": SMOLLM2_GGUF, "tensor_parallel_size": 2}, "tensor_parallel_size"),
        ({"preset": "llama-cpp", "model": SMOLLM2_GGUF, "gpu_memory_utilization": 0.5}, "gpu_memory_utilization"),
    ],
)
def test_presets_reject_options_they_cannot_express(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        server_command(config(**fields), 8000)


def test_unknown_preset_and_fields_are_config_errors() -> None:
    with pytest.raises(ValueError, match="preset"):
        config(preset="tgi", model="m")
    with pytest.raises(ValueError, match="max_num_seq"):
        config(preset="vllm", model="m", max_num_seq=4)


async def test_a_server_that_dies_while_starting_reports_its_log(tmp_path: Path) -> None:
    server = ManagedServer(config(preset="llama-cpp", model=SMOLLM2_GGUF, extra_args=["--no-such-flag"],
                                  log_file=str(tmp_path / "server.log")), "broken")
    with pytest.raises(ServerStartError) as info:
        await server.start()
    message = str(info.value)
    assert "exited with code" in message
    assert "--no-such-flag" in message  # quoted from the server's own log
    assert server.pid is not None
    await server.close()
