"""The manifest contract is its dataclasses: the schema file and the README table are generated
from them, and a field added with `since` is read, checked and documented with no other change."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from deploytool.runtime import contract
from deploytool.runtime.contract import spec
from deploytool.runtime.manifest import SCHEMA_VERSION, Manifest, parse_version

PACKAGE = Path(__file__).resolve().parents[3] / "deploytool"


def contract_classes(cls: type = Manifest) -> set[type]:
    """`cls` and every dataclass reachable through its fields' types."""
    found = {cls}
    for hint in contract.type_hints(cls).values():
        inner, _ = contract.unwrap_optional(hint)
        for candidate in (inner, *[contract.unwrap_optional(a)[0] for a in getattr(inner, "__args__", ())]):
            if contract.is_contract_class(candidate) and candidate not in found:
                found |= contract_classes(candidate)
    return found


def test_the_committed_schema_and_readme_section_are_the_generated_ones():
    stale = contract.stale_files()
    assert not stale, f"{', '.join(map(str, stale))} differ from what the manifest's dataclasses generate; run `{contract.REGENERATE}`"


def test_check_finds_a_stale_file_and_write_regenerates_it(tmp_path, monkeypatch, capsys):
    schema_file, readme_file = tmp_path / "manifest.schema.json", tmp_path / "README.md"
    shutil.copy(contract.README_FILE, readme_file)
    schema_file.write_text("{}\n")
    monkeypatch.setattr(contract, "SCHEMA_FILE", schema_file)
    monkeypatch.setattr(contract, "README_FILE", readme_file)
    assert contract.main(["--check"]) == 1
    assert f"manifest.schema.json differs from what deploytool/runtime/manifest.py generates; run `{contract.REGENERATE}`" in capsys.readouterr().err
    assert contract.main(["--write"]) == 0 and contract.main(["--check"]) == 0
    assert schema_file.read_text() == (PACKAGE / "schemas" / "manifest.schema.json").read_text()
    assert readme_file.read_text() == (PACKAGE.parent / "README.md").read_text()


def test_every_field_is_described_and_every_added_field_has_a_default_and_a_version_this_reader_knows():
    for cls in contract_classes():
        for item in dataclasses.fields(cls):
            where = f"{cls.__name__}.{item.name}"
            assert item.metadata.get(contract.DESCRIPTION), f"{where} has no description: declare it with spec()"
            since = item.metadata.get(contract.SINCE)
            if since:
                assert contract.has_default(item), f"{where} was added in {since} but has no default for older manifests"
                assert parse_version(since) <= parse_version(SCHEMA_VERSION), f"{where} is from {since}, after SCHEMA_VERSION {SCHEMA_VERSION}"


# A contract that grows as a new minor version would grow the manifest's: `Plan` gains `share`
# in 1.4, and the root gains the optional object `plan` in 1.4.


@dataclass(frozen=True)
class Plan:
    nodes: int = spec("nodes", minimum=0)
    share: float = spec("a share", since="1.4", default=0.0, minimum=0, maximum=1)


@dataclass(frozen=True)
class Root:
    schema_version: str = spec("version")
    sizes: tuple[int, int] = spec("two sizes", each={"minimum": 1})
    old_plan: Plan = spec("a plan from 1.0")
    plans: dict[str, Plan] = spec("plans by name", key_name="plan")
    plan: Plan | None = spec("the new plan", since="1.4", default=None)


def test_a_field_added_in_a_new_minor_is_read_checked_and_documented_from_its_declaration():
    written_by_1_3 = {"schema_version": "1.3", "sizes": [2, 3], "old_plan": {"nodes": 4}, "plans": {"a": {"nodes": 1}}, "unknown": 1}
    contract.fill_minor_defaults(Root, written_by_1_3, (1, 3))
    assert written_by_1_3["old_plan"] == {"nodes": 4, "share": 0.0} and written_by_1_3["plans"]["a"]["share"] == 0.0
    assert written_by_1_3["plan"] is None

    validator = jsonschema.Draft202012Validator(contract.manifest_schema(Root, "1.4"))
    assert validator.is_valid(written_by_1_3)
    root = contract.decode(Root, written_by_1_3)
    assert root == Root("1.3", (2, 3), Plan(4, 0.0), {"a": Plan(1, 0.0)}, None)
    assert contract.decode(Root, contract.encode(root)) == root

    written_by_1_4 = {**contract.encode(root), "plan": {"nodes": 5, "share": 0.5}}
    assert validator.is_valid(written_by_1_4) and contract.decode(Root, written_by_1_4).plan == Plan(5, 0.5)
    for broken in ({**written_by_1_4, "plan": {"nodes": 5}}, {**written_by_1_4, "plan": {"nodes": 5, "share": 2}}, {**written_by_1_4, "sizes": [0, 1]}):
        assert not validator.is_valid(broken)

    rows = "\n".join(contract.table_rows(Root))
    assert "| `plan.share` | number | a share (since 1.4; older manifests read as 0.0) |" in rows
    assert "| `plans.<plan>.nodes` | integer | nodes |" in rows
    assert "1.4 added `old_plan.share` (default `0.0`), `plan` (default `null`)" in contract.minor_history(Root)


def test_the_json_form_keeps_its_names_and_leaves_out_what_is_omitted_when_none():
    from deploytool.runtime.manifest import GraphOutput, WeightsSource

    output = contract.encode(GraphOutput(name="output", shape=(1, 3, 8, 8), color="RGB"))
    assert list(output) == ["name", "shape", "color", "dtype", "layout", "clamped", "range"] and output["range"] == [0.0, 1.0]
    assert contract.encode(WeightsSource(kind="random-init", seed=3)) == {"kind": "random-init", "seed": 3}
    assert contract.encode(float("inf")) is None


def test_an_unsupported_field_type_is_refused_when_the_schema_is_generated():
    @dataclass(frozen=True)
    class Odd:
        values: set[int] = spec("a set")

    with pytest.raises(TypeError, match="no JSON form"):
        contract.object_schema(Odd)


def test_a_field_declared_without_spec_is_refused_when_the_schema_is_generated():
    @dataclass(frozen=True)
    class Undocumented:
        count: int = 0

    with pytest.raises(TypeError, match="'count' is declared without spec"):
        contract.object_schema(Undocumented)
