"""The C++ manifest reader against the contract: every field of the schema generated from the
manifest's dataclasses is either read by cpp/src/export.cpp (`manifest_fields_read`) or listed
there as not needed (`manifest_fields_not_read`). A field added to the dataclasses fails here
until C++ reads it or says it does not need it; cpp/tests/test_export.cpp checks that the C++
reader refuses a manifest without any field it lists as read."""

from __future__ import annotations

import re
from pathlib import Path

from deploytool.runtime import contract
from deploytool.runtime.manifest import SCHEMA_VERSION, Manifest

READER = Path(__file__).resolve().parents[2] / "cpp" / "src" / "export.cpp"


def listed_fields(marker: str) -> set[str]:
    """The string literals between `// <marker>:begin` and `// <marker>:end` in the C++ reader."""
    block = re.search(rf"// {marker}:begin\n(.*?)// {marker}:end", READER.read_text(), re.S)
    assert block, f"{READER} has no {marker}:begin/end block"
    code = "\n".join(line.split("//", 1)[0] for line in block.group(1).splitlines())
    return set(re.findall(r'"([^"]+)"', code))


def schema_fields(schema: dict, prefix: str = "") -> set[str]:
    """Every field path of a JSON Schema object: properties by name, items and entries that are
    objects of their own as '*'."""
    fields = set()
    for branch in schema.get("oneOf", [schema]):
        for name, sub in branch.get("properties", {}).items():
            fields |= {prefix + name} | nested_fields(sub, f"{prefix}{name}/")
    return fields


def nested_fields(schema: dict, prefix: str) -> set[str]:
    fields = schema_fields(schema, prefix)
    for branch in schema.get("oneOf", [schema]):
        for key in ("items", "additionalProperties"):
            if isinstance(branch.get(key), dict) and "properties" in branch[key]:
                fields |= schema_fields(branch[key], f"{prefix}*/")
    return fields


def test_the_cpp_reader_reads_or_declines_every_field_of_the_generated_schema():
    fields = schema_fields(contract.manifest_schema(Manifest, SCHEMA_VERSION))
    read, not_read = listed_fields("manifest-fields-read"), listed_fields("manifest-fields-not-read")
    assert read and not_read and not read & not_read, read & not_read
    unknown = (read | not_read) - fields
    assert not unknown, f"{READER} lists fields the manifest schema does not have: {sorted(unknown)}"

    def covered(path: str) -> bool:
        parts = path.split("/")
        declined = any("/".join(parts[:n]) in not_read for n in range(1, len(parts) + 1))
        return declined or path in read or any(r.startswith(path + "/") for r in read)

    uncovered = sorted(path for path in fields if not covered(path))
    assert not uncovered, (
        f"manifest fields the C++ reader neither reads nor declines: {uncovered}; read them in {READER.name}'s parse_manifest "
        "and list them in manifest_fields_read, or list them in manifest_fields_not_read"
    )


def test_the_schema_walk_finds_nested_items_and_entries():
    fields = schema_fields(contract.manifest_schema(Manifest, SCHEMA_VERSION))
    assert {"input/views/*/channels", "files/*/sha256", "engines/*/compute_capability", "fp16/measured_at/shape", "tiling/blend/trim"} <= fields
