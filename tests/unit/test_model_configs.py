"""Every Triton model config in the repository parses as Triton's ModelConfig, and every tier
(the CPU models, the TensorRT-LLM ensemble and BLS once rendered) takes one contract: the
table of services.contract.tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeAlias

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.config.mesh import TritonConfig
from services.contract import tensors
from services.triton import trtllm

ROOT = Path(__file__).resolve().parents[2]
CPU_CONFIGS = sorted((ROOT / "triton_models" / "cpu").glob("*/config.pbtxt"))
TEMPLATES = ROOT / "triton_models" / "trtllm"
GPU_TIERS = ("ensemble", "tensorrt_llm_bls")
REQUIRED = {t.name: t.config_type for t in tensors.INPUTS if not t.optional}
OPTIONAL = {t.name: t.config_type for t in tensors.INPUTS if t.optional}
TEXT_OUTPUT = tensors.OUTPUT["text_output"].config_type
FINISH_REASON = tensors.OUTPUT["finish_reason"].config_type

# model_config_pb2.ModelConfig; generated protobuf code without types.
Config: TypeAlias = Any


def _parse(path: Path) -> Config:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _type(value: int) -> str:
    return str(model_config_pb2.DataType.Name(value))


def _inputs(config: Config) -> dict[str, tuple[str, bool]]:
    return {i.name: (_type(i.data_type), i.optional) for i in config.input}


def _outputs(config: Config) -> dict[str, str]:
    return {o.name: _type(o.data_type) for o in config.output}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Config]:
    out = tmp_path_factory.mktemp("premium")
    values = trtllm.values_for("/engines/test", "/tokenizers/test", max_batch_size=8)
    written = trtllm.render(TEMPLATES, out, values)
    configs = [p for p in written if p.name == "config.pbtxt"]
    assert {p.parent.name for p in configs} == {
        "preprocessing",
        "tensorrt_llm",
        "postprocessing",
        *GPU_TIERS,
    }
    for config in configs:
        assert "${" not in config.read_text(), config
    # Triton needs a version directory for every model, the ensemble's and engine's empty.
    for model in ("ensemble", "tensorrt_llm"):
        assert (out / model / "1").is_dir()
    for model in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
        assert (out / model / "1" / "model.py").is_file()
    return {p.parent.name: _parse(p) for p in configs}


def _tiers(rendered: dict[str, Config]) -> dict[str, Config]:
    cpu = {p.parent.name: _parse(p) for p in CPU_CONFIGS}
    tiers = {name: c for name, c in cpu.items() if "text_input" in _inputs(c)}
    assert tiers, "no CPU tier model in triton_models/cpu/"
    return {**tiers, **{name: rendered[name] for name in GPU_TIERS}}


def test_cpu_configs_exist() -> None:
    assert CPU_CONFIGS, "no triton_models/cpu/*/config.pbtxt"


def test_the_mesh_loads_no_template() -> None:
    """Triton loads every model of the mesh's repository (--load-model=*): the CPU models,
    never the TensorRT-LLM templates, which only a GPU node renders and loads."""
    repository = ROOT / TritonConfig().model_repository
    assert sorted(repository.glob("*/config.pbtxt")) == CPU_CONFIGS
    assert not any("${" in path.read_text() for path in CPU_CONFIGS)


@pytest.mark.parametrize("path", CPU_CONFIGS, ids=lambda p: p.parent.name)
def test_cpu_config_parses(path: Path) -> None:
    config = _parse(path)
    assert config.name == path.parent.name
    assert config.backend or config.platform


def test_rendered_configs_parse(rendered: dict[str, Config]) -> None:
    for name, config in rendered.items():
        assert config.name == name
        assert config.max_batch_size == 8
    assert rendered["tensorrt_llm"].backend == "tensorrtllm"
    assert rendered["ensemble"].platform == "ensemble"
    params = rendered["tensorrt_llm"].parameters
    assert params["gpt_model_path"].string_value == "/engines/test"
    assert params["gpt_model_type"].string_value == "inflight_fused_batching"
    assert params["kv_cache_free_gpu_mem_fraction"].string_value == "0.9"
    assert rendered["preprocessing"].parameters["tokenizer_dir"].string_value == "/tokenizers/test"
    for name in ("tensorrt_llm", "tensorrt_llm_bls"):
        assert rendered[name].model_transaction_policy.decoupled


def test_tiers_share_the_contract(rendered: dict[str, Config]) -> None:
    for name, config in _tiers(rendered).items():
        inputs = _inputs(config)
        required = {n: t for n, (t, optional) in inputs.items() if not optional}
        assert required == REQUIRED, name
        for input_name, dtype in OPTIONAL.items():
            if input_name in inputs:
                assert inputs[input_name] == (dtype, True), (name, input_name)
        assert _outputs(config).get("text_output") == TEXT_OUTPUT, name
        # Why an answer ended, reported by the model; the ensemble has no step that knows.
        if name != "ensemble":
            assert _outputs(config).get("finish_reason") == FINISH_REASON, name


def test_gpu_tiers_take_the_whole_contract(rendered: dict[str, Config]) -> None:
    for name in GPU_TIERS:
        expected = {n: (t, False) for n, t in REQUIRED.items()}
        expected |= {n: (t, True) for n, t in OPTIONAL.items()}
        assert _inputs(rendered[name]) == expected, name


def test_ensemble_steps_connect(rendered: dict[str, Config]) -> None:
    """Each step's maps name real tensors of its model, with types that agree end to end."""
    ensemble = rendered["ensemble"]
    tensors = {name: dtype for name, (dtype, _) in _inputs(ensemble).items()}
    consumed: set[str] = set()
    for step in ensemble.ensemble_scheduling.step:
        model = rendered[step.model_name]
        inputs, outputs = _inputs(model), _outputs(model)
        for key, value in step.input_map.items():
            assert key in inputs, (step.model_name, key)
            assert value in tensors, (step.model_name, value)
            assert tensors[value] == inputs[key][0], (step.model_name, key)
            consumed.add(value)
        required = {n for n, (_, optional) in inputs.items() if not optional}
        assert required <= set(step.input_map), step.model_name
        for key, value in step.output_map.items():
            assert key in outputs, (step.model_name, key)
            assert value not in tensors, value
            tensors[value] = outputs[key]
    for name, dtype in _outputs(ensemble).items():
        assert tensors.get(name) == dtype, name
    assert set(_inputs(ensemble)) <= consumed


def test_render_refuses_unfilled_placeholders(tmp_path: Path) -> None:
    values = trtllm.values_for("/e", "/t", 4)
    del values["engine_dir"]
    with pytest.raises(trtllm.RenderError, match=r"tensorrt_llm/config.pbtxt.*\$\{engine_dir\}"):
        trtllm.render(TEMPLATES, tmp_path / "out", values)
    assert not (tmp_path / "out").exists()


def test_render_refuses_unknown_keys(tmp_path: Path) -> None:
    values = {**trtllm.values_for("/e", "/t", 4), "kv_cache_fraction": "0.5"}
    with pytest.raises(trtllm.RenderError, match="kv_cache_fraction"):
        trtllm.render(TEMPLATES, tmp_path / "out", values)
    assert not (tmp_path / "out").exists()


def test_render_refuses_to_overwrite(tmp_path: Path) -> None:
    values = trtllm.values_for("/e", "/t", 4)
    trtllm.render(TEMPLATES, tmp_path, values)
    with pytest.raises(FileExistsError):
        trtllm.render(TEMPLATES, tmp_path, values)
    trtllm.render(TEMPLATES, tmp_path, trtllm.values_for("/e2", "/t", 4), overwrite=True)
    assert '"/e2"' in (tmp_path / "tensorrt_llm" / "config.pbtxt").read_text()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"kv_cache_free_gpu_mem_fraction": 1.5},
        {"batching_strategy": "V2"},
        {"engine_dir": 'a"b'},
    ],
)
def test_values_for_validates(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"engine_dir": "/e", "tokenizer_dir": "/t", "max_batch_size": 4}
    with pytest.raises(trtllm.RenderError):
        trtllm.values_for(**{**args, **kwargs})  # type: ignore[arg-type]


def test_cli_renders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--engine-dir", "/engines/x", "--tokenizer-dir", "/hf/x", "--max-batch-size", "16"]
    assert trtllm.main([*argv, "--no-decoupled", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 5 and all(p.endswith("config.pbtxt") for p in printed)
    config = _parse(tmp_path / "tensorrt_llm_bls" / "config.pbtxt")
    assert config.max_batch_size == 16 and not config.model_transaction_policy.decoupled
    assert trtllm.main([*argv, "--out", str(tmp_path)]) == 2
