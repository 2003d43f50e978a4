"""The export folder contract: typed manifest, schema, versions, self-contained exports."""

import ast
import dataclasses
import json
import re
from pathlib import Path

import jsonschema
import pytest

from deploytool.errors import DeployError
from deploytool.runtime.manifest import BF16_FILE, FP32_FILE, MANIFEST_FILE, SCHEMA_VERSION, Bf16Summary, Manifest, read_manifest, schema, validate
from tests.helpers import contract_violations, export_tiny

PACKAGE = Path(__file__).resolve().parents[3] / "deploytool"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest") / "e"
    export_tiny("swinir-s-x2", out)
    return out


def rewrite(export_dir: Path, change) -> Path:
    """A copy of the export's manifest.json with `change(data)` applied, in a folder of its own."""
    data = json.loads((export_dir / MANIFEST_FILE).read_text())
    change(data)
    target = export_dir.parent / f"changed-{len(list(export_dir.parent.iterdir()))}"
    target.mkdir()
    (target / MANIFEST_FILE).write_text(json.dumps(data))
    return target


def test_the_manifest_round_trips_through_json(exported):
    manifest = read_manifest(exported)
    assert isinstance(manifest, Manifest) and manifest.schema_version == SCHEMA_VERSION
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert [v.name for v in manifest.views] == ["image"] and manifest.channels == 3


def test_the_schema_accepts_the_written_manifest_and_rejects_tampering(exported):
    validator = jsonschema.Draft202012Validator(schema())
    data = json.loads((exported / MANIFEST_FILE).read_text())
    assert validator.is_valid(data)
    tampered = [
        lambda d: d["tiling"].__setitem__("tile", ["256", 256]),  # mistyped
        lambda d: d.__setitem__("scale", 0),
        lambda d: d["tiling"]["blend"].__setitem__("mode", "feather"),
        lambda d: d["files"]["model.onnx"].__setitem__("sha256", "not-a-hash"),
        lambda d: d.pop("tiling"),  # missing
        lambda d: d["input"].pop("views"),
        lambda d: d["output"].pop("clamped"),
    ]
    for change in tampered:
        copy = json.loads(json.dumps(data))
        change(copy)
        assert not validator.is_valid(copy)


@pytest.mark.tampered_manifests
def test_a_tampered_manifest_is_refused_in_one_line(exported):
    mistyped = rewrite(exported, lambda d: d["tiling"].__setitem__("overlap", "16"))
    with pytest.raises(DeployError, match=rf"does not follow the manifest schema {SCHEMA_VERSION}: at tiling/overlap: '16' is not of type 'integer'"):
        read_manifest(mistyped)
    missing = rewrite(exported, lambda d: d["output"].pop("shape"))
    with pytest.raises(DeployError, match="'shape' is a required property"):
        read_manifest(missing)


@pytest.mark.tampered_manifests
def test_versions(exported):
    newer_major = rewrite(exported, lambda d: d.__setitem__("schema_version", "2.0"))
    with pytest.raises(DeployError, match=rf"manifest schema 2\.0, a newer major version than this deploytool reads \({SCHEMA_VERSION}\); upgrade deploytool"):
        read_manifest(newer_major)
    legacy = rewrite(exported, lambda d: (d.pop("schema_version"), d.__setitem__("format", 1)))
    with pytest.raises(DeployError, match="older deploytool .*re-export it"):
        read_manifest(legacy)

    def newer_minor(data):
        data["schema_version"] = "1.7"
        data["tiling"]["feathering"] = {"added": "in 1.7"}
        data["something_new"] = True

    # a newer minor only adds fields: they are ignored, and the rest reads as before
    assert read_manifest(rewrite(exported, newer_minor)).tiling == read_manifest(exported).tiling

    def schema_1_2(data):
        data["schema_version"] = "1.2"
        for added in ("measured_at", "verify_inputs_max_abs", "verify_inputs_limit"):  # in 1.3
            del data["fp16"][added]

    def schema_1_1(data):
        schema_1_2(data)
        data["schema_version"] = "1.1"
        for added in ("calibration_tile", "grown_tensors", "sensitivity_blocks"):  # in 1.2
            del data["fp16"][added]

    def schema_1_0(data):
        schema_1_1(data)
        data["schema_version"] = "1.0"
        del data["export_stages"]  # added in 1.1

    current = read_manifest(exported)
    assert current.fp16.measured_at is not None and current.fp16.verify_inputs_limit is not None
    before_1_3 = read_manifest(rewrite(exported, schema_1_2))
    assert (before_1_3.fp16.measured_at, before_1_3.fp16.verify_inputs_max_abs, before_1_3.fp16.verify_inputs_limit) == (None, None, None)
    assert before_1_3.fp16.max_abs_vs_fp32 == current.fp16.max_abs_vs_fp32
    older = read_manifest(rewrite(exported, schema_1_1))
    assert (older.fp16.calibration_tile, older.fp16.grown_tensors, older.fp16.sensitivity_blocks) == (None, 0, ())
    assert older.fp16.margin == current.fp16.margin and older.export_stages == current.export_stages
    oldest = read_manifest(rewrite(exported, schema_1_0))
    assert oldest.export_stages == {} and oldest.files == current.files and oldest.fp16.grown_tensors == 0

    def schema_1_1_without_fp16(data):
        schema_1_1(data)
        data["fp16"] = None

    assert read_manifest(rewrite(exported, schema_1_1_without_fp16)).fp16 is None


def test_missing_or_changed_files_are_refused(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    manifest = read_manifest(copy)
    assert manifest.check_file(copy, "model.onnx") == copy / "model.onnx"
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DeployError, match="changed since export"):
        manifest.check_file(copy, "model.onnx")
    (copy / "model_fp16.onnx").unlink()
    with pytest.raises(DeployError, match="missing from the export"):
        manifest.check_file(copy, "model_fp16.onnx")
    with pytest.raises(DeployError, match="not a finished export"):
        read_manifest(tmp_path)


def test_dual_view_models_record_their_views(tmp_path):
    from deploytool.build import registry
    from deploytool.runtime.manifest import views_for

    entry = registry.get("restormer-dual-defocus")
    views = views_for(entry.views, entry.channels)
    assert [(v.name, v.channels, v.color) for v in views] == [("left", 3, "RGB"), ("right", 3, "RGB")]
    with pytest.raises(DeployError, match="cannot be split"):
        views_for(("left", "right"), 3)


UNSAFE_IDS = ["..", "./../victim", "../victim", "/tmp/victim", "/", "a/b", "a\0b", "hat-x4\n", "-rf", ".hidden", "x" * 65, "x" * 5000, "", "caf\u00e9"]


def test_every_registry_id_satisfies_the_schema_s_model_id_pattern():
    from deploytool.build import registry
    from deploytool.runtime.manifest import MODEL_ID_PATTERN, check_model_id

    model_id = schema()["properties"]["model_id"]
    assert model_id["pattern"] == MODEL_ID_PATTERN
    validator = jsonschema.Draft202012Validator(model_id)
    ids = sorted(registry.all_entries())
    assert len(ids) >= 71
    for name in ids:
        assert validator.is_valid(name), name
        check_model_id(name, where="registry")
    for name in UNSAFE_IDS:
        with pytest.raises(DeployError, match="is not a model id"):
            check_model_id(name, where="test")


@pytest.mark.tampered_manifests
@pytest.mark.parametrize("unsafe", UNSAFE_IDS)
def test_a_manifest_whose_model_id_is_not_a_plain_name_is_refused_in_one_line(exported, unsafe):
    folder = rewrite(exported, lambda d: d.__setitem__("model_id", unsafe))
    with pytest.raises(DeployError) as caught:
        read_manifest(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / MANIFEST_FILE}: model_id") and "is not a model id (1 to 64 ASCII letters" in message, message
    assert "\n" not in message and "\0" not in message and len(message) < 400
    if unsafe == "./../victim":  # cpp/tests/test_export.cpp expects this very line from the C++ reader
        rule = "1 to 64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
        assert message == f'{folder / MANIFEST_FILE}: model_id "./../victim" is not a model id ({rule})'


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_only_the_exporter_and_its_command_import_the_export_module():
    importers = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "deploytool.build.export" in imported_modules(p)}
    assert importers == {"cli/export.py"}, importers  # the `export` command; every runtime reads deploytool.runtime.manifest


def test_no_module_reads_the_manifest_by_string_key():
    offenders = [
        f"{p.relative_to(PACKAGE)}:{n}"
        for p in PACKAGE.rglob("*.py")
        if p.name != "manifest.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "manifest[" in line or "manifest.get(" in line
    ]
    assert not offenders, offenders


def test_the_suites_contract_check_sees_what_the_schema_cannot(exported):
    """tests/conftest.py checks every manifest with `contract_violations`, written by hand from
    the README: it finds manifests that the schema (which the writer already checks) accepts."""
    validator = jsonschema.Draft202012Validator(schema())
    data = json.loads((exported / MANIFEST_FILE).read_text())
    assert contract_violations(data) == []
    broken = [
        lambda d: d["output"].__setitem__("shape", d["input"]["shape"]),  # not scaled
        lambda d: d["files"].pop("model_fp16.onnx"),  # an FP16 summary without its graph
        lambda d: d["tiling"].__setitem__("batch", d["tiling"]["batch"] + 1),
        lambda d: d["fp16"].__setitem__("verify_inputs_max_abs", 2 * d["fp16"]["verify_inputs_limit"]),
        lambda d: d.__setitem__("export_stages", dict(reversed(list(d["export_stages"].items())))),
    ]
    for change in broken:
        copy = json.loads(json.dumps(data))
        change(copy)
        assert validator.is_valid(copy) and contract_violations(copy)


def test_the_bf16_plan_is_recorded_beside_the_fp16_one_from_1_4(exported):
    current = read_manifest(exported)
    plan = Bf16Summary(
        **{name: value for name, value in dataclasses.asdict(current.fp16).items() if name != "fp16_flop_share"},
        bf16_flop_share=0.75,
    )
    plan = dataclasses.replace(plan, measured_at=current.fp16.measured_at)
    record = current.files[FP32_FILE]
    with_bf16 = dataclasses.replace(current, bf16=plan, files={**current.files, BF16_FILE: record})
    data = with_bf16.to_json()
    validate(data)
    assert data["bf16"]["bf16_flop_share"] == 0.75 and "fp16_flop_share" not in data["bf16"]
    assert Manifest.from_json(data) == with_bf16 and with_bf16.has_bf16 and not current.has_bf16

    def schema_1_3(data):
        data["schema_version"] = "1.3"
        del data["bf16"]  # added in 1.4

    assert current.bf16 is None
    assert read_manifest(rewrite(exported, schema_1_3)) == dataclasses.replace(current, schema_version="1.3")


@pytest.mark.tampered_manifests
def test_graph_shapes_that_disagree_with_the_tiling_are_refused_in_one_line(exported):
    """As the C++ reader refuses them (cpp/src/export.cpp's check_shapes): the schema cannot."""
    cases = {
        "output/shape is not the tile times the scale": lambda d: d["output"]["shape"].__setitem__(2, d["output"]["shape"][2] + 1),
        "input/shape differs from tiling/tile": lambda d: d["tiling"].__setitem__("tile", [d["tiling"]["tile"][0] + 8, d["tiling"]["tile"][1]]),
        "tiling/batch differs from the graph shapes' batch": lambda d: d["tiling"].__setitem__("batch", 2),
        "input/views hold 3 channels, input/shape 2": lambda d: d["input"]["shape"].__setitem__(1, 2),
    }
    for message, change in cases.items():
        with pytest.raises(DeployError, match=rf"manifest\.json: .*{re.escape(message)}"):
            read_manifest(rewrite(exported, change))


def test_a_negative_or_fractional_overlap_is_refused_in_one_line(exported):
    manifest = read_manifest(exported)
    side = min(manifest.tiling.tile)
    assert (
        manifest.overlap() == manifest.tiling.overlap and manifest.overlap(0) == 0 and manifest.overlap(side * 2) == side * 2
    )  # the tiler keeps it below the tile
    for wrong in (-4, -8, 2.5):
        with pytest.raises(DeployError, match=rf"^--overlap must be a whole number of pixels, at least 0, not {wrong}$"):
            manifest.overlap(wrong)
