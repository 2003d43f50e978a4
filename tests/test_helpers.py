"""The shared test helpers' own behaviour where a mistake would hide failures elsewhere."""

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
