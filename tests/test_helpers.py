"""The shared test helpers' own behaviour where a mistake would hide failures elsewhere."""

import threading
import time

import numpy as np
import onnx
import pytest

from tests import helpers


def test_tiny_exports_are_made_once_and_a_write_into_a_shared_one_is_noticed(tmp_path, monkeypatch):
    made = []

    def fake_export(model_id, out_dir, **options):
        made.append((model_id, options))
        out_dir.mkdir(parents=True)
        (out_dir / "model.onnx").write_bytes(b"graph")
        return f"manifest of {model_id}"

    monkeypatch.setattr(helpers, "export_tiny", fake_export)
    exports = helpers.TinyExports(tmp_path / "shared")
    assert exports.manifest("a") == exports.manifest("a") == "manifest of a"
    assert exports.folder("a") == tmp_path / "shared" / "a" and made == [("a", {"fp16": True, "bf16": True})]

    copy = exports.copy("a", tmp_path / "mine")
    (copy / "parity.json").write_text("{}")
    (copy / "model.onnx").write_bytes(b"changed")
    assert exports.changed() == [] and len(made) == 1

    (exports.folder("a") / "parity.json").write_text("{}")
    assert exports.changed() == ["a"]


@pytest.mark.tampered_manifests  # a placeholder manifest.json
def test_ids_another_worker_is_exporting_are_taken_last(tmp_path, monkeypatch):
    made, root = [], tmp_path / "shared"

    def fake_export(model_id, out_dir, **options):
        made.append(model_id)
        out_dir.mkdir(parents=True)
        (out_dir / "manifest.json").write_text("{}")
        return f"manifest of {model_id}"

    def other_worker_exporting_a(holding: threading.Event):
        with helpers.exclusive(root / "a.lock"):
            holding.set()
            for _ in range(3000):  # until the first worker has made "c" (at most 30 s)
                if "c" in made:
                    break
                time.sleep(0.01)
            fake_export("a", root / "a")

    monkeypatch.setattr(helpers, "export_tiny", fake_export)
    monkeypatch.setattr(helpers, "read_manifest", lambda folder: f"read {folder.name}")
    helpers.TinyExports(root).made(["b"])  # another worker made "b" before
    holding = threading.Event()
    other = threading.Thread(target=other_worker_exporting_a, args=(holding,))
    other.start()
    assert holding.wait(30)
    with helpers.exclusive(root / "a.lock", wait=False) as held:
        assert not held
    exports = helpers.TinyExports(root)
    copies = exports.copies(["a", "b", "c"], tmp_path / "mine")  # "a" waits until "c" is made
    other.join(30)
    assert made == ["b", "c", "a"]
    assert [exports.manifest(i) for i in "abc"] == ["read a", "read b", "manifest of c"]
    assert copies == {i: tmp_path / "mine" / i for i in "abc"} and all((copies[i] / "manifest.json").is_file() for i in "abc")


@pytest.mark.tampered_manifests  # a placeholder manifest.json
def test_full_size_exports_are_made_once_with_both_reduced_plans(tmp_path, monkeypatch):
    made = []

    def fake_export(request):
        made.append(request)
        request.out_dir.mkdir(parents=True)
        (request.out_dir / "model.onnx").write_bytes(b"graph")
        (request.out_dir / "manifest.json").write_text("{}")
        return f"manifest of {request.entry.id}"

    monkeypatch.setattr(helpers.export, "export", fake_export)
    monkeypatch.setattr(helpers, "read_manifest", lambda folder: f"read {folder.name}")
    exports = helpers.FullSizeExports(tmp_path / "shared")
    assert exports.manifest("hat-x4") == exports.manifest("hat-x4") == "manifest of hat-x4" and len(made) == 1
    (request,) = made
    assert request.fp16 and request.bf16 and request.source.kind == "random-init" and (request.tile, request.batch) == ((64, 64), 1)
    assert exports.manifest("ipt-sr-x4") and made[1].tile == made[1].entry.tiling.tile  # IPT's fixed tile
    # another pytest-xdist worker of the run (the same root) reads the export instead of making it
    assert helpers.FullSizeExports(tmp_path / "shared").manifest("hat-x4") == "read hat-x4" and len(made) == 2
    (exports.folder("hat-x4") / "parity.json").write_text("{}")
    assert exports.changed() == ["hat-x4"]


@pytest.mark.parametrize(
    "op_type, shapes, attributes",
    [
        ("Conv", [(1, 8, 12, 12), (6, 4, 3, 3), (6,)], {"pads": [1, 1, 1, 1], "group": 2}),
        ("MatMul", [(2, 3, 40, 96), (2, 3, 96, 24)], {}),
        ("Gemm", [(40, 96), (24, 96), (24,)], {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    ],
)
def test_true_fp16_products_agree_with_the_reference_evaluator(op_type, shapes, attributes):
    """The products `true_fp16_outputs` computes in FP32 and rounds once equal onnx's reference
    evaluator's numpy float16 ones to one FP16 step, and overflow to inf/NaN where those do: some
    rows of the first operand are scaled beyond what FP16 can hold in the result."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    names = ["x", "w", "b"][: len(shapes)]
    arrays = [rng.standard_normal(shape).astype(np.float16) for shape in shapes]
    arrays[0][..., ::7, :] *= 10000
    node = helper.make_node(op_type, names, ["y"], **attributes)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, shapes[0])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
        [onnx.numpy_helper.from_array(a, n) for a, n in zip(arrays[1:], names[1:])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (actual,) = helpers.true_fp16_outputs(model, arrays[0])
    with np.errstate(all="ignore"):
        (expected,) = ReferenceEvaluator(model).run(None, {"x": arrays[0]})
    assert actual.dtype == expected.dtype == np.float16 and actual.shape == expected.shape
    finite = np.isfinite(expected)
    assert 0 < finite.mean() < 1  # some results overflow, most do not
    np.testing.assert_array_equal(np.isfinite(actual), finite)
    actual, expected = actual[finite].astype(np.float32), expected[finite].astype(np.float32)
    with np.errstate(divide="ignore"):  # log2(0): the subnormal step below
        step = np.maximum(2.0 ** (np.floor(np.log2(np.maximum(np.abs(actual), np.abs(expected)))) - 10), 2.0**-24)  # FP16: 10 mantissa bits
    assert (np.abs(actual - expected) <= step).all()
