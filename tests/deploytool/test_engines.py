"""TensorRT engine planning and records: everything that does not need TensorRT or a GPU."""

import onnx
import pytest

from deploytool import engines
from deploytool.errors import DeployError
from deploytool.manifest import FP16_FILE, FP32_FILE, EngineRecord, read_manifest
from tests.helpers import export_tiny


@pytest.mark.parametrize(
    "version, graph, typed, fp16_flag",
    [
        ("11.0.0", FP16_FILE, True, False),
        ("10.13.0.35", FP16_FILE, True, False),
        ("10.12.0", FP16_FILE, True, False),
        ("10.11.0.33", FP32_FILE, False, True),
        ("10.3.0", FP32_FILE, False, True),  # JetPack 6
    ],
)
def test_the_graph_and_flags_follow_the_tensorrt_version(version, graph, typed, fp16_flag):
    plan = engines.plan_build(version, ("ln", "softmax"))
    assert (plan.graph, plan.strongly_typed, plan.fp16_flag) == (graph, typed, fp16_flag)
    assert plan.fp32_layers == (() if typed else ("ln", "softmax"))


def test_tensorrt_before_10_is_refused():
    with pytest.raises(DeployError, match="TensorRT 8.6.1 is too old"):
        engines.plan_build("8.6.1", ())


def test_fallback_pins_exactly_the_islands_the_fp16_graph_records(tmp_path):
    manifest = export_tiny("swinir-s-x2", tmp_path / "e")
    fp16 = onnx.load(str(tmp_path / "e" / FP16_FILE))
    fp32_names = {n.name for n in onnx.load(str(tmp_path / "e" / FP32_FILE)).graph.node}
    islands = engines.fp32_islands(fp16)
    assert set(islands) <= fp32_names  # every pinned name exists in the graph the fallback builds
    assert len(islands) == sum(manifest.fp16.fp32_by_op.values())
    by_op = {n.name: n.op_type for n in fp16.graph.node}
    assert {by_op[name] for name in islands} >= {"LayerNormalization", "Softmax"}


class FakeLayer:
    def __init__(self, name, metadata=""):
        self.name, self.metadata, self.num_outputs, self.precision, self.types = name, metadata, 2, None, {}

    def set_output_type(self, index, dtype):
        self.types[index] = dtype


class FakeNetwork:
    def __init__(self, layers):
        self.layers = layers
        self.num_layers = len(layers)

    def get_layer(self, index):
        return self.layers[index]


def test_pinning_matches_parser_layer_names_and_metadata():
    class Trt:
        float32 = "float32"

    network = FakeNetwork(
        [
            FakeLayer("/norm/LayerNormalization"),
            FakeLayer("/attn/Softmax", "[ONNX Layer: /attn/Softmax]"),
            FakeLayer("/attn/Softmax_1", "[ONNX Layer: /attn/Softmax_1]"),  # another node: stays FP16
            FakeLayer("(Unnamed Layer* 12) [Reduce]", "[ONNX Layer: /norm/LayerNormalization]"),
            FakeLayer("/attn/MatMul"),
        ]
    )
    pinned = engines.pin_fp32(network, {"/norm/LayerNormalization", "/attn/Softmax"}, Trt)
    assert pinned == 3
    assert [layer.precision for layer in network.layers] == ["float32", "float32", None, "float32", None]
    assert network.layers[0].types == {0: "float32", 1: "float32"}


@pytest.mark.parametrize("text, expected", [("4G", 4 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", int(1.5 * 2**30)), ("1048576", 2**20)])
def test_workspace_sizes(text, expected):
    assert engines.parse_size(text) == expected


def test_bad_workspace_size_is_one_line():
    with pytest.raises(DeployError, match="cannot read a size from 'lots'"):
        engines.parse_size("lots")


def engine_record(sha256: str) -> EngineRecord:
    return EngineRecord(
        sha256=sha256,
        bytes=17,
        gpu="NVIDIA H100",
        compute_capability=(9, 0),
        tensorrt="10.13.0",
        plan={"graph": FP16_FILE},
        workspace_bytes=2**30,
        opt_level=3,
        timing_cache="timing.cache",
        build_seconds=1.0,
    )


def test_recording_an_engine_keeps_the_others(tmp_path):
    export_tiny("swinir-s-x2", tmp_path / "e", fp16=False)
    manifest = read_manifest(tmp_path / "e").with_engine("model.sm86-trt10.13.0.engine", engine_record("a" * 64))
    updated = manifest.with_engine("model.sm90-trt11.0.0.engine", engine_record("b" * 64))
    assert set(updated.engines) == {"model.sm86-trt10.13.0.engine", "model.sm90-trt11.0.0.engine"}
    assert set(manifest.engines) == {"model.sm86-trt10.13.0.engine"}  # not modified in place
    updated.write(tmp_path / "e")
    assert read_manifest(tmp_path / "e") == updated  # engines survive the round trip through JSON


def test_a_recorded_engine_is_checked_like_the_other_files(tmp_path):
    from deploytool.fileio import sha256_file

    export_tiny("swinir-s-x2", tmp_path / "e", fp16=False)
    manifest = read_manifest(tmp_path / "e")
    engine = tmp_path / "e" / "model.sm90-trt10.13.0.engine"
    engine.write_bytes(b"serialized engine")
    manifest = manifest.with_engine(engine.name, engine_record(sha256_file(engine)))
    assert manifest.check_file(tmp_path / "e", engine.name) == engine
    engine.write_bytes(b"another engine")
    with pytest.raises(DeployError, match="changed since export"):
        manifest.check_file(tmp_path / "e", engine.name)


@pytest.mark.parametrize("version", ["10.13/../../../victim", "../10.13", "10.13\0", "1" * 300])
def test_an_engine_name_that_would_leave_the_export_folder_is_refused(tmp_path, version):
    with pytest.raises(DeployError, match="engine name") as caught:
        engines.engine_path(tmp_path / "export", (9, 0), version)
    assert "\n" not in str(caught.value)


def test_an_engine_is_a_file_of_its_export_folder(tmp_path):
    assert engines.engine_path(tmp_path, (8, 7), "10.3.0.30") == tmp_path / "model.sm87-trt10.3.0.30.engine"
