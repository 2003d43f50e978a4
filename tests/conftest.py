"""Suite-wide checks: every manifest.json any test writes follows the published JSON Schema."""

import json
from pathlib import Path

import jsonschema
import pytest

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "deploytool" / "schemas" / "manifest.schema.json").read_text())
_checked: set[Path] = set()


@pytest.fixture(autouse=True)
def manifests_follow_the_schema(request, tmp_path_factory):
    """After each test, validate the manifests it wrote (with the jsonschema library itself, not
    the package's own reader), except those a test tampered with on purpose."""
    yield
    tampered = request.node.get_closest_marker("tampered_manifests") is not None
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for path in tmp_path_factory.getbasetemp().rglob("manifest.json"):
        if path in _checked:
            continue
        _checked.add(path)
        if tampered:
            continue
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(json.loads(path.read_text()))]
        assert not errors, f"{path} breaks the manifest schema: {errors[:3]}"
