"""The C++ runtime (cpp/): built with CMake, its unit tests run by ctest, and its output compared
byte for byte with the Python tool's on the same stand-in model, images and tiling, and on real
exports of every family through OpenVINO."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import model_defs
from deploytool.build import registry
from deploytool.errors import DeployError
from deploytool.runtime import inference, png, tiling
from deploytool.runtime.backends.tensorrt.run import engine_filename, matching_engine
from deploytool.runtime.fileio import sha256_file
from deploytool.runtime.images import read_image
from deploytool.runtime.manifest import FP32_FILE, MANIFEST_FILE, EngineRecord, read_manifest
from deploytool.runtime.restorer import Restorer
from tests.cpp.build_tools import missing_build_tools
from tests.helpers import export_tiny, needs_bf16_cpu
from tests.standin import registry_tiling_configs, standin_runner, write_standin_export

# under --dist loadgroup one pytest-xdist worker runs every test of the C++ build (no other waits
# on its lock in build_cpp); pytest 9.2 drops the groups (pytest-xdist issue 1386)
pytestmark = pytest.mark.xdist_group("cpp-build")

REPO = Path(__file__).resolve().parents[2]
TESTSETS = REPO.parent / "shared" / "testsets"
CONFIGS = registry_tiling_configs()


def test_ctest_unit_tests_pass(cpp_build: Path) -> None:
    done = subprocess.run(["ctest", "--test-dir", str(cpp_build), "--output-on-failure"], capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    ran = re.search(r"100% tests passed, 0 tests failed out of (\d+)", done.stdout)
    assert ran and int(ran.group(1)) >= 20, done.stdout[-2000:]


# -- same pixels as Python


def _standin(cpp_build: Path) -> Path:
    return cpp_build / "deploytool-standin"


def _assert_same_png(cpp_png: Path, python_png: Path, what: str) -> None:
    ours, theirs = cpp_png.read_bytes(), python_png.read_bytes()
    if ours == theirs:
        return
    a = cv2.imread(str(cpp_png), cv2.IMREAD_UNCHANGED)
    b = cv2.imread(str(python_png), cv2.IMREAD_UNCHANGED)
    if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype:
        pytest.fail(f"{what}: C++ wrote {None if a is None else (a.shape, a.dtype)}, Python {None if b is None else (b.shape, b.dtype)}")
    diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
    pytest.fail(f"{what}: PNG bytes differ; {np.count_nonzero(diff)} samples differ, at most by {diff.max()} (first at {np.argwhere(diff)[:1].tolist()})")


def compare_with_python(cpp_build: Path, export_dir: Path, sources: list[Path], out_dir: Path, overlap: int | None = None) -> Path:
    """Run both tilers with the stand-in model; assert identical PNG bytes; return the output."""
    manifest = read_manifest(export_dir)
    name = "+".join(s.stem for s in sources)
    cpp_png, python_png = out_dir / f"{name}.cpp.png", out_dir / f"{name}.py.png"
    command = [str(_standin(cpp_build)), str(export_dir), *map(str, sources), "-o", str(cpp_png)]
    if overlap is not None:
        command += ["--overlap", str(overlap)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # runs while Python tiles
    source = sources[0] if len(sources) == 1 else tuple(sources)
    Restorer(standin_runner(manifest), manifest, overlap=overlap).restore_image_file(source, python_png)
    _, stderr = child.communicate()
    assert child.returncode == 0, f"deploytool-standin failed on {name}: {stderr.strip()}"
    _assert_same_png(cpp_png, python_png, f"{manifest.model_id} tiling on {name}")
    return python_png


def _testset_images(scale: int) -> list[Path]:
    """Set5 and Set14: HR for restoration models, the LR_bicubic set of the scale (x4 for x8) otherwise."""
    images = []
    for dataset in ("Set5", "Set14"):
        folder = TESTSETS / dataset / ("HR" if scale == 1 else "LR_bicubic" / Path(f"X{min(scale, 4)}"))
        images += sorted(folder.glob("*.png"))
    return images


def _levels(shape: tuple[int, ...], seed: int, depth: int) -> np.ndarray:
    top = 255 if depth == 8 else 65535
    rng = np.random.default_rng(seed)
    # smooth gradients plus noise, like photos: exercises blending without being all noise
    y, x = np.meshgrid(np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]), indexing="ij")
    base = (0.5 + 0.4 * np.sin(6 * x + 3 * y))[..., None] * np.ones(shape[2:] or (1,))
    noisy = np.clip(base + 0.08 * rng.standard_normal(base.shape), 0, 1)
    return np.rint(noisy * top).astype(np.uint8 if depth == 8 else np.uint16).reshape(shape)


@pytest.fixture(scope="session")
def synthetic_images(tmp_path_factory) -> dict[str, Path]:
    """Odd-sized images of every mode the CLI keeps: gray, RGB, gray+alpha, RGBA; 8 and 16 bit; JPEG."""
    folder = tmp_path_factory.mktemp("synthetic")
    specs = {
        "rgb8-37x53": ((37, 53, 3), 8),
        "rgb16-61x45": ((61, 45, 3), 16),
        "rgba8-41x39": ((41, 39, 4), 8),
        "rgba16-23x67": ((23, 67, 4), 16),
        "gray8-29x71": ((29, 71, 1), 8),
        "gray16-83x19": ((83, 19, 1), 16),
        "grayalpha8-33x35": ((33, 35, 2), 8),
        "grayalpha16-17x49": ((17, 49, 2), 16),
        "rgb8-5x3": ((5, 3, 3), 8),  # smaller than any window: edge padding
        "rgb8-131x149": ((131, 149, 3), 8),  # several tiles of the small-tile configurations
    }
    paths = {}
    for seed, (name, (shape, depth)) in enumerate(specs.items()):
        path = folder / f"{name}.png"
        path.write_bytes(png.encode(_levels(shape, seed, depth)))
        paths[name] = path
    for name, shape in (("jpeg-rgb-45x58", (45, 58, 3)), ("jpeg-gray-39x27", (39, 27, 1))):
        path = folder / f"{name}.jpg"
        assert cv2.imwrite(str(path), _levels(shape, 99, 8)[..., ::-1] if shape[2] == 3 else _levels(shape, 98, 8)[..., 0], [cv2.IMWRITE_JPEG_QUALITY, 85])
        paths[name] = path
    return paths


@pytest.fixture(scope="session")
def standin_exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("standin-exports")
    return {config.label: (write_standin_export(config, root / config.label), root / config.label)[1] for config in CONFIGS}


def _fits(config, image: Path) -> bool:
    """Whether the CLI accepts this image for this model (a gray model refuses RGB images)."""
    if config.channels // len(config.views) == 1:
        return read_image(image).pixels.shape[2] == 1
    return True


@pytest.mark.parametrize("config", CONFIGS, ids=[c.label for c in CONFIGS])
def test_same_png_bytes_as_python(config, cpp_build: Path, standin_exports: dict[str, Path], synthetic_images: dict[str, Path], tmp_path: Path) -> None:
    export_dir = standin_exports[config.label]
    images = list(synthetic_images.values())
    testsets = _testset_images(config.scale) if TESTSETS.is_dir() else []
    if config.channels // len(config.views) == 1:
        # gray models: the test sets as gray images, written the way a user would (8-bit PNG)
        gray_dir = tmp_path / "gray"
        gray_dir.mkdir()
        for path in testsets:
            gray = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY)
            (gray_dir / path.name).write_bytes(png.encode(gray))
        testsets = sorted(gray_dir.glob("*.png"))
    images = [p for p in images + testsets if _fits(config, p)]
    compared = 0
    for image in images:
        if len(config.views) == 1:
            sources = [image]
        else:
            # a second view of the same size: the image mirrored, so left and right differ
            pixels = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
            right = tmp_path / f"{image.stem}-mirrored.png"
            if image.suffix == ".png" and pixels.ndim == 3:
                order = [2, 1, 0, 3][: pixels.shape[2]]
                right.write_bytes(png.encode(np.ascontiguousarray(pixels[:, ::-1][..., order])))
            else:
                right.write_bytes(png.encode(np.ascontiguousarray(pixels[:, ::-1] if pixels.ndim == 2 else pixels[:, ::-1, ::-1])))
            sources = [image, right]
        compare_with_python(cpp_build, export_dir, sources, tmp_path)
        compared += 1
    # every synthetic image a model of these channels takes, and all of Set5 + Set14 when present
    assert compared == len(images) and compared >= 3 + len(testsets)


def test_overlap_override_and_batch_tail(cpp_build: Path, synthetic_images: dict[str, Path], tmp_path: Path) -> None:
    """--overlap (rounded to the window) and a batch whose last call is filled with copies."""
    base = next(c for c in CONFIGS if c.scale == 2 and not c.blend_trim and c.tile[0] <= 64)
    for batch in (3, 5):
        config = type(base)(**{**base.__dict__, "batch": batch})
        export_dir = write_standin_export(config, tmp_path / f"b{batch}") and tmp_path / f"b{batch}"
        for overlap in (0, 5, 24):
            compare_with_python(cpp_build, export_dir, [synthetic_images["rgb8-131x149"]], tmp_path, overlap=overlap)


def _edge_padded_to_window(pixels: np.ndarray, multiple: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    padded_h, padded_w = inference.padded_size(height, width, multiple)
    return np.pad(pixels, ((0, padded_h - height), (0, padded_w - width), (0, 0)), mode="edge")


@pytest.mark.parametrize(
    "shape, mutation",
    [
        # a multiple of the window (no window padding) but smaller than the tile: padded per tile
        ((40, 44, 3), lambda monkeypatch: monkeypatch.setattr(tiling, "_pad_mode", lambda size, tile: "edge")),
        # padded to the window multiple, whose padding the crop keeps next to the image's last pixels
        ((37, 53, 3), lambda monkeypatch: monkeypatch.setattr(inference, "window_aligned", _edge_padded_to_window)),
    ],
    ids=["per-tile", "window"],
)
def test_comparison_sees_a_changed_padding_mode(shape, mutation, monkeypatch, cpp_build: Path, standin_exports: dict[str, Path], tmp_path: Path) -> None:
    """The byte-identity comparison can fail: with Python's tiler padding by edge instead of reflect
    (the C++ one unchanged), the stand-in carries the padded pixels into the output."""
    config = next(c for c in CONFIGS if c.tile == (64, 64) and c.tile_multiple == 4 and c.scale == 2)
    image = tmp_path / "image.png"
    image.write_bytes(png.encode(_levels(shape, 11, 8)))
    compare_with_python(cpp_build, standin_exports[config.label], [image], tmp_path)
    mutation(monkeypatch)
    with pytest.raises(pytest.fail.Exception, match="PNG bytes differ"):
        compare_with_python(cpp_build, standin_exports[config.label], [image], tmp_path)


def _idat_lengths(data: bytes) -> list[int]:
    lengths, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        if kind == b"IDAT":
            lengths.append(length)
        at += 12 + length
    return lengths


@pytest.mark.parametrize("shape, depth", [((29, 31, 3), 8), ((17, 23, 4), 16), ((41, 13, 1), 8)])
def test_png_cut_into_several_idat_chunks_is_the_same_in_both_languages(cpp_build: Path, tmp_path: Path, shape, depth) -> None:
    samples = _levels(shape, 3, depth)
    max_idat_bytes = 97
    python_png = png.encode(samples, max_idat_bytes=max_idat_bytes)
    raw, cpp_png = tmp_path / "samples.u16", tmp_path / "cpp.png"
    samples.astype(np.uint16).tofile(raw)
    done = subprocess.run(
        [str(_standin(cpp_build)), "--encode-png", str(raw), *map(str, shape), str(depth), str(max_idat_bytes), str(cpp_png)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lengths = _idat_lengths(python_png)
    assert len(lengths) >= 3 and set(lengths[:-1]) == {max_idat_bytes} and 0 < lengths[-1] <= max_idat_bytes
    assert cpp_png.read_bytes() == python_png
    decoded = cv2.imread(str(cpp_png), cv2.IMREAD_UNCHANGED)
    expected = samples[..., 0] if shape[2] == 1 else np.concatenate([samples[..., 2::-1], samples[..., 3:]], axis=2)
    np.testing.assert_array_equal(decoded, expected)


# -- the manifest reader over real exports and the bad cases


def _ids_to_export() -> list[str]:
    """One id per family, and one of each multi-view input (the views change the manifest's input)."""
    chosen: dict[tuple, str] = {}
    for model_id, entry in sorted(registry.all_entries().items()):
        chosen.setdefault((entry.family, len(entry.views)), model_id)
    return sorted(chosen.values())


@pytest.fixture(scope="session")
def real_exports(tmp_path_factory, tiny_exports) -> dict[str, Path]:
    """Tiny real exports (ONNX graphs and manifests written by the exporter) of every family:
    copies of the session's shared ones, since the OpenVINO tests compile blobs into them."""
    return tiny_exports.copies(_ids_to_export(), tmp_path_factory.mktemp("real-exports"))


def _read_with_cpp(cpp_build: Path, export_dir: Path, *engine_target: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(_standin(cpp_build)), "--manifest", str(export_dir), *engine_target], capture_output=True, text=True)


def test_manifest_reader_reads_real_exports_of_every_family(cpp_build: Path, real_exports: dict[str, Path]) -> None:
    assert {registry.get(i).family for i in real_exports} == set(model_defs.families())
    for model_id, export_dir in real_exports.items():
        done = _read_with_cpp(cpp_build, export_dir)
        assert done.returncode == 0, f"{model_id}: {done.stderr.strip()}"
        read = json.loads(done.stdout)
        manifest = read_manifest(export_dir)
        grid = manifest.tiling
        assert read == {
            "schema_version": manifest.schema_version,
            "model_id": model_id,
            "scale": manifest.scale,
            "input_shape": list(manifest.input.shape),
            "output_shape": list(manifest.output.shape),
            "views": [[v.name, v.channels, v.color] for v in manifest.views],
            "tiling": {
                "tile": list(grid.tile),
                "tile_multiple": grid.tile_multiple,
                "fixed_tile": grid.fixed_tile,
                "batch": grid.batch,
                "overlap": grid.overlap,
                "padding": grid.padding,
                "blend": {"mode": grid.blend.mode, "width": grid.blend.width, "trim": grid.blend.trim},
            },
            "checked_files": sorted(manifest.files),
        }


def _python_error(action) -> str:
    with pytest.raises(DeployError) as error:
        action()
    return str(error.value)


@pytest.mark.tampered_manifests
def test_manifest_reader_refuses_bad_exports_in_pythons_words(cpp_build: Path, real_exports: dict[str, Path], tmp_path: Path) -> None:
    source = next(iter(real_exports.values()))

    def copy(name: str) -> Path:
        return Path(shutil.copytree(source, tmp_path / name))

    def assert_same_error(export_dir: Path, python_message: str, *engine_target: str) -> None:
        done = _read_with_cpp(cpp_build, export_dir, *engine_target)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr == f"error: {python_message}\n"

    newer = copy("newer-major")
    data = json.loads((newer / MANIFEST_FILE).read_text())
    data["schema_version"] = "2.0"
    (newer / MANIFEST_FILE).write_text(json.dumps(data))
    assert_same_error(newer, _python_error(lambda: read_manifest(newer)))

    tampered = copy("tampered")
    with open(tampered / FP32_FILE, "ab") as graph:
        graph.write(b"\0")
    assert_same_error(tampered, _python_error(lambda: read_manifest(tampered).check_file(tampered, FP32_FILE)))

    missing = copy("missing")
    (missing / FP32_FILE).unlink()
    assert_same_error(missing, _python_error(lambda: read_manifest(missing).check_file(missing, FP32_FILE)))

    unfinished = copy("unfinished")
    (unfinished / MANIFEST_FILE).unlink()
    assert_same_error(unfinished, _python_error(lambda: read_manifest(unfinished)))

    bad_json = copy("bad-json")
    (bad_json / MANIFEST_FILE).write_text('{"schema_version": "1.1", ')
    python_message = _python_error(lambda: read_manifest(bad_json))
    done = _read_with_cpp(cpp_build, bad_json)
    prefix = f"cannot read {bad_json / MANIFEST_FILE}: "
    assert python_message.startswith(prefix)
    assert done.returncode == 1 and done.stderr.startswith(f"error: {prefix}") and done.stderr.count("\n") == 1

    # an engine built for another GPU: recorded (as `deploytool build` records it), refused for this one
    other_gpu = copy("other-gpu")
    manifest = read_manifest(other_gpu)
    name = engine_filename((8, 6), "10.13.0.35")
    (other_gpu / name).write_bytes(b"engine for sm86")
    record = EngineRecord(sha256_file(other_gpu / name), (other_gpu / name).stat().st_size, "NVIDIA A10", (8, 6), "10.13.0.35", {}, 0, 3, "", 1.0)
    manifest.with_engine(name, record).write(other_gpu)
    done = _read_with_cpp(cpp_build, other_gpu, "8", "6", "10.13.0.35")
    assert done.returncode == 0 and json.loads(done.stdout)["engine"] == name
    assert_same_error(
        other_gpu, _python_error(lambda: matching_engine(manifest.with_engine(name, record).engines, (9, 0), "10.13.0.35")), "9", "0", "10.13.0.35"
    )
    assert_same_error(other_gpu, _python_error(lambda: matching_engine({name: record}, (8, 6), "10.8.0.43")), "8", "6", "10.8.0.43")


# -- deploytool-infer and the TensorRT backend


def test_infer_without_tensorrt_refuses_in_one_line(
    cpp_build: Path, standin_exports: dict[str, Path], synthetic_images: dict[str, Path], tmp_path: Path
) -> None:
    if built_with_tensorrt(cpp_build):
        pytest.skip(
            f"{cpp_build} includes the TensorRT backend (DEPLOYTOOL_WITH_TENSORRT in its CMakeCache.txt), so deploytool-infer runs engines "
            "instead of refusing; test_tensorrt_backend_matches_python_trt runs them where TensorRT's Python package and a GPU are present"
        )
    export_dir = standin_exports[CONFIGS[0].label]
    output = tmp_path / "out.png"
    done = subprocess.run(
        [str(cpp_build / "deploytool-infer"), str(export_dir), str(synthetic_images["rgb8-37x53"]), "-o", str(output)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: this deploytool runtime was built without TensorRT") and done.stderr.count("\n") == 1
    assert not output.exists() and list(tmp_path.iterdir()) == []


def built_with_tensorrt(build: Path) -> bool:
    """Whether CMake put the TensorRT backend into the build in `build` (its cache says so)."""
    found = re.search(r"^DEPLOYTOOL_WITH_TENSORRT:INTERNAL=(ON|OFF)$", (build / "CMakeCache.txt").read_text(), flags=re.MULTILINE)
    assert found, f"{build / 'CMakeCache.txt'} does not record DEPLOYTOOL_WITH_TENSORRT"
    return found.group(1) == "ON"


def test_cmake_records_whether_it_built_the_tensorrt_backend(cpp_build: Path) -> None:
    compiled_in = "DEPLOYTOOL_HAVE_TENSORRT" in (cpp_build / "CMakeFiles" / "deploytool_runtime.dir" / "flags.make").read_text()
    assert built_with_tensorrt(cpp_build) == compiled_in


def test_tensorrt_headers_without_cuda_leave_the_backend_out(tmp_path: Path) -> None:
    """TensorRT's headers and library found but no CUDA toolkit (hidden from CMake): the backend is left out, and the
    cache says so, so test_infer_without_tensorrt_refuses_in_one_line runs there instead of skipping."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not on PATH: the C++ runtime cannot be configured (scripts/setup.sh installs it as root)")
    prefix = tmp_path / "tensorrt"
    (prefix / "include").mkdir(parents=True)
    (prefix / "lib").mkdir()
    (prefix / "include" / "NvInfer.h").write_text("// headers only\n")
    (prefix / "include" / "NvInferVersion.h").write_text("#define NV_TENSORRT_MAJOR 10\n")
    (prefix / "lib" / "libnvinfer.so").write_bytes(b"")
    build = tmp_path / "build"
    done = subprocess.run(
        [
            "cmake",
            "-S",
            str(REPO / "cpp"),
            "-B",
            str(build),
            f"-DTensorRT_ROOT={prefix}",
            "-DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON",
            "-DDEPLOYTOOL_BUILD_TESTS=OFF",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "but not the CUDA toolkit" in done.stdout
    assert not built_with_tensorrt(build)


def _tensorrt_unavailable() -> str | None:
    """Why the TensorRT comparison cannot run here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT (Python) is not installed: `deploytool build` and `run --backend trt` need it, with an NVIDIA GPU"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU: TensorRT engines need one"
    if not os.environ.get("TensorRT_ROOT"):
        return "set TensorRT_ROOT to the TensorRT prefix (include/NvInfer.h, lib/libnvinfer.so) to build the C++ TensorRT backend"
    return None


@pytest.mark.skipif(_tensorrt_unavailable() is not None, reason=str(_tensorrt_unavailable()))
def test_tensorrt_backend_matches_python_trt(synthetic_images: dict[str, Path], tmp_path: Path) -> None:
    """An engine built by `deploytool build`: deploytool-infer's output equals `deploytool run --backend trt`'s, byte for byte
    (the same engine on the same GPU is deterministic for identical input batches)."""
    build = REPO / "build" / "cpp-pytest-trt"
    for command in (
        ["cmake", "-S", str(REPO / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", f"-DTensorRT_ROOT={os.environ['TensorRT_ROOT']}"],
        ["cmake", "--build", str(build), "-j", str(min(4, os.cpu_count() or 1))],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert built_with_tensorrt(build), f"CMake left the TensorRT backend out (its reason is in {build / 'CMakeCache.txt'}'s configure log)"
    from deploytool.runtime.backends.tensorrt import build as engines

    model_id = _ids_to_export()[0]
    export_dir = tmp_path / model_id
    export_tiny(model_id, export_dir)
    engines.build_engine(export_dir)
    image = synthetic_images["rgb8-131x149"]
    for cuda_graph in (False, True):
        flag = ["--cuda-graph"] if cuda_graph else []
        python_png, cpp_png = tmp_path / f"py{cuda_graph}.png", tmp_path / f"cpp{cuda_graph}.png"
        done = subprocess.run(
            [sys.executable, "-m", "deploytool", "run", str(export_dir), str(image), "-o", str(python_png), "--backend", "trt", *flag],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        done = subprocess.run([str(build / "deploytool-infer"), str(export_dir), str(image), "-o", str(cpp_png), *flag], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        _assert_same_png(cpp_png, python_png, f"{model_id} TensorRT engine (cuda graph {cuda_graph})")


def test_rarer_png_forms_are_read_as_opencv_reads_them(cpp_build: Path, standin_exports: dict[str, Path], tmp_path: Path) -> None:
    """Palette (with and without transparency), 1/2/4-bit gray, RGB with a tRNS colour key, interlaced:
    the C++ decoder (libpng) must give the samples cv2.imread(IMREAD_UNCHANGED) gives."""
    from PIL import Image

    rgb = _levels((27, 31, 3), 5, 8)
    forms = {
        "palette": Image.fromarray(rgb).quantize(colors=37),
        "gray1": Image.fromarray(_levels((27, 31, 1), 6, 8)[..., 0]).convert("1"),
        "interlaced": Image.fromarray(rgb),
    }
    with_alpha = Image.fromarray(rgb).quantize(colors=16)
    with_alpha.info["transparency"] = bytes([0, 128] + [255] * 14)
    paths = []
    for name, image in forms.items():
        path = tmp_path / f"{name}.png"
        image.save(path, interlace=name == "interlaced")
        paths.append(path)
    with_alpha.save(tmp_path / "palette-trns.png", transparency=bytes([0, 128] + [255] * 14))
    Image.fromarray(rgb).save(tmp_path / "rgb-trns.png", transparency=tuple(int(v) for v in rgb[0, 0]))
    Image.fromarray(_levels((27, 31, 1), 7, 8)[..., 0]).convert("L").quantize(colors=4).convert("L").save(tmp_path / "gray2.png", bits=2)
    paths += [tmp_path / "palette-trns.png", tmp_path / "rgb-trns.png", tmp_path / "gray2.png"]
    config = next(c for c in CONFIGS if c.scale == 2 and c.channels == 3 and len(c.views) == 1 and not c.blend_trim)
    modes = set()
    for path in paths:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        modes.add((raw.ndim, raw.shape[2] if raw.ndim == 3 else 1))
        compare_with_python(cpp_build, standin_exports[config.label], [path], tmp_path)
    assert modes == {(2, 1), (3, 3), (3, 4)}  # gray, RGB and RGBA readings all exercised


# -- deploytool-infer and the OpenVINO backend


@pytest.fixture(scope="session")
def openvino_build(cpp_build: Path) -> Path:
    """The C++ build, which must have the OpenVINO backend wherever Python has OpenVINO (its wheel is the SDK)."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("OpenVINO is not installed: pip install deploytool[openvino] (the test extra has it); its wheel holds the C++ SDK too")
    assert "DEPLOYTOOL_WITH_OPENVINO:INTERNAL=ON" in (cpp_build / "CMakeCache.txt").read_text(), (
        "CMake left the OpenVINO backend out although this Python has the openvino package"
    )
    assert "DEPLOYTOOL_HAVE_OPENVINO" in (cpp_build / "CMakeFiles" / "deploytool_runtime.dir" / "flags.make").read_text()
    return cpp_build


def _openvino_cache(export_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (export_dir / "openvino-cache").rglob("*.blob")}


def _run_python_openvino(export_dir: Path, sources: list[Path], output: Path, backend: str = "openvino") -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deploytool", "run", str(export_dir), *map(str, sources), "-o", str(output), "--backend", backend],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    )
    assert done.returncode == 0, done.stderr[-2000:]


def _run_cpp_openvino(openvino_build: Path, export_dir: Path, sources: list[Path], output: Path, backend: str) -> None:
    """`deploytool-infer` with no Python at run time: no LD_LIBRARY_PATH, the RPATH finds OpenVINO."""
    environment = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(
        [str(openvino_build / "deploytool-infer"), str(export_dir), *map(str, sources), "-o", str(output), "--backend", backend],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert done.returncode == 0, f"{export_dir.name}: {done.stderr.strip()}"


def _assert_cpp_openvino_matches_python(openvino_build: Path, export_dir: Path, sources: list[Path], stem: Path, backend: str, cpp_first: bool = False) -> None:
    """`deploytool-infer --backend BACKEND` writes the PNG bytes `deploytool run --backend BACKEND`
    writes in another process, and the runtime that runs second imports the blob the first
    compiled (Python first unless `cpp_first`)."""
    python_png, cpp_png = stem.parent / f"{stem.name}.py.png", stem.parent / f"{stem.name}.cpp.png"
    runs = [
        lambda: _run_python_openvino(export_dir, sources, python_png, backend=backend),
        lambda: _run_cpp_openvino(openvino_build, export_dir, sources, cpp_png, backend),
    ]
    first, second = runs[::-1] if cpp_first else runs
    first()
    compiled = _openvino_cache(export_dir)
    assert compiled, f"{export_dir.name}: {'C++' if cpp_first else 'Python'} left no compiled blob in {export_dir / 'openvino-cache'}"
    second()
    _assert_same_png(cpp_png, python_png, f"{export_dir.name} on {backend}")
    assert _openvino_cache(export_dir) == compiled, f"{export_dir.name}: the second runtime compiled again instead of importing the first's blob"


def test_openvino_backend_matches_python_on_real_exports_of_every_family(
    openvino_build: Path, real_exports: dict[str, Path], synthetic_images: dict[str, Path], tmp_path: Path
) -> None:
    """`deploytool-infer --backend openvino` (no Python at run time: no LD_LIBRARY_PATH, the RPATH
    finds OpenVINO) writes the PNG bytes `deploytool run --backend openvino` writes, in another
    process, on a tiny real export of every family; and it imports the blob Python compiled."""
    assert {registry.get(i).family for i in real_exports} == set(model_defs.families())
    image = synthetic_images["rgb8-131x149"]
    mirrored = tmp_path / "mirrored.png"
    mirrored.write_bytes(png.encode(np.ascontiguousarray(cv2.imread(str(image), cv2.IMREAD_UNCHANGED)[:, ::-1, ::-1])))
    for model_id, export_dir in real_exports.items():
        sources = [image, mirrored][: len(read_manifest(export_dir).views)]
        _assert_cpp_openvino_matches_python(openvino_build, export_dir, sources, tmp_path / model_id, "openvino")


def test_openvino_compiles_channel_splits_where_their_chunks_are_made_in_both_runtimes(
    openvino_build: Path, real_exports: dict[str, Path], synthetic_images: dict[str, Path], tmp_path: Path
) -> None:
    """On the export where split_channel_convolutions rewrites the most (Restormer's q/k/v and
    feed-forward chunks): the C++ runtime, run first, writes the graph OpenVINO compiles
    (graph.xml in the cache folder) with those Splits gone, as Python's rewrite removes them; Python
    then imports its blob and writes the same bytes."""
    import openvino
    from openvino import passes

    from deploytool.runtime.backends import openvino as openvino_backend

    core = openvino.Core()

    def splits(graph: Path) -> int:
        """The Splits OpenVINO computes in `graph`: counted after constant folding (OpenVINO's ONNX
        reader splits constant shapes too, which folding removes)."""
        model = core.read_model(str(graph))
        manager = passes.Manager()
        manager.register_pass(passes.ConstantFolding())
        manager.run_passes(model)
        return sum(op.get_type_name() in ("Split", "VariadicSplit") for op in model.get_ordered_ops())

    rewritten = {model_id: openvino_backend.split_channel_convolutions(core.read_model(str(d / "model.onnx"))) for model_id, d in real_exports.items()}
    model_id = max(rewritten, key=rewritten.get)
    assert rewritten[model_id] > 0, rewritten
    export_dir = Path(shutil.copytree(real_exports[model_id], tmp_path / model_id, ignore=shutil.ignore_patterns(openvino_backend.CACHE_FOLDER)))
    sources = [synthetic_images["rgb8-131x149"]] * len(read_manifest(export_dir).views)
    _assert_cpp_openvino_matches_python(openvino_build, export_dir, sources, tmp_path / "restored", "openvino", cpp_first=True)
    (written,) = (export_dir / openvino_backend.CACHE_FOLDER).rglob(openvino_backend.IR_FILE)
    sha256 = read_manifest(export_dir).files["model.onnx"].sha256
    assert written.parent.name == openvino_backend.cache_key(sha256, openvino_backend.openvino_build(), "CPU")
    assert splits(written) == splits(export_dir / "model.onnx") - rewritten[model_id]


@pytest.fixture(scope="session")
def real_bf16_exports(tmp_path_factory, tiny_exports) -> dict[str, Path]:
    """Tiny real exports of every family with their BF16 plans (model_bf16.onnx): other copies of
    the shared ones than `real_exports`, so the BF16 test compiles into a folder of its own."""
    return tiny_exports.copies(_ids_to_export(), tmp_path_factory.mktemp("real-bf16-exports"))


@needs_bf16_cpu
def test_openvino_bf16_backend_matches_python_on_real_exports_of_every_family(
    openvino_build: Path, real_bf16_exports: dict[str, Path], synthetic_images: dict[str, Path], tmp_path: Path
) -> None:
    """`deploytool-infer --backend openvino-bf16` applies the BF16 plan as Python does: the same PNG
    bytes as `deploytool run --backend openvino-bf16` in another process, on a tiny real export of
    every family, importing the blob Python compiled."""
    assert {registry.get(i).family for i in real_bf16_exports} == set(model_defs.families())
    image = synthetic_images["rgb8-131x149"]
    for model_id, export_dir in real_bf16_exports.items():
        sources = [image] * len(read_manifest(export_dir).views)
        _assert_cpp_openvino_matches_python(openvino_build, export_dir, sources, tmp_path / model_id, "openvino-bf16")


def test_openvino_backend_says_what_is_wrong_with_a_graph_it_cannot_read(
    openvino_build: Path, real_exports: dict[str, Path], synthetic_images: dict[str, Path], tmp_path: Path
) -> None:
    """OpenVINO's messages begin with the source line they were raised at; the one line the C++
    runtime prints is the one that says what is wrong, as Python's `openvino_reason` picks."""
    export_dir = Path(shutil.copytree(real_exports["esrt-x2"], tmp_path / "e", ignore=shutil.ignore_patterns("openvino-cache")))
    graph = export_dir / FP32_FILE
    graph.write_bytes(b"\x08\x07garbage" * 10)
    manifest = json.loads((export_dir / MANIFEST_FILE).read_text())
    manifest["files"][FP32_FILE] = {"sha256": sha256_file(graph), "bytes": graph.stat().st_size}
    (export_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    output = tmp_path / "out.png"
    infer = [str(openvino_build / "deploytool-infer"), str(export_dir), str(synthetic_images["rgb8-37x53"]), "-o", str(output), "--backend", "openvino"]
    done = subprocess.run(infer, capture_output=True, text=True)
    # before it, OpenVINO's TensorFlow reader (one of the readers it tries) logs its own lines
    last = done.stderr.splitlines()[-1]
    assert done.returncode == 1 and last.startswith(f"error: OpenVINO could not compile {graph} for CPU: Unable to read the model"), done.stderr
    assert "Exception from" not in done.stderr and not output.exists(), done.stderr


def test_openvino_backend_refusals_are_one_line(openvino_build: Path, real_exports: dict[str, Path], synthetic_images: dict[str, Path], tmp_path: Path) -> None:
    from deploytool.runtime.backends.openvino import available_devices

    export_dir = real_exports["esrt-x2"]
    image = str(synthetic_images["rgb8-37x53"])
    output = tmp_path / "out.png"
    infer = str(openvino_build / "deploytool-infer")

    missing = next(d for d in ("NPU", "GPU") if d not in available_devices())
    done = subprocess.run([infer, str(export_dir), image, "-o", str(output), "--backend", "openvino", "--device", missing], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr == f"error: OpenVINO sees no {missing} device on this machine; it sees: {', '.join(available_devices())}\n"
    for arguments, message in (
        (["--backend", "onnx"], "--backend takes trt, openvino or openvino-bf16, not 'onnx'"),
        (["--device", "CPU"], "--device applies to the openvino and openvino-bf16 backends, not trt"),
        (["--backend", "openvino", "--cuda-graph"], "--cuda-graph applies to the trt backend"),
    ):
        done = subprocess.run([infer, str(export_dir), image, "-o", str(output), *arguments], capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.startswith(f"error: {message} (usage: ") and done.stderr.count("\n") == 1, done.stderr
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_infer_built_without_openvino_refuses_in_one_line(real_exports: dict[str, Path], synthetic_images: dict[str, Path], tmp_path: Path) -> None:
    missing = missing_build_tools()
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH: the C++ runtime cannot be built (scripts/setup.sh installs them as root)")
    build = REPO / "build" / "cpp-pytest-no-openvino"
    configure = ["cmake", "-S", str(REPO / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DDEPLOYTOOL_BUILD_TESTS=OFF"]
    done = subprocess.run([*configure, f"-DOpenVINO_DIR={tmp_path / 'no-openvino-here'}"], capture_output=True, text=True)
    assert done.returncode == 0 and "deploytool: OpenVINO not found" in done.stdout, (done.stdout + done.stderr)[-4000:]
    assert "DEPLOYTOOL_WITH_OPENVINO:INTERNAL=OFF" in (build / "CMakeCache.txt").read_text()
    done = subprocess.run(
        ["cmake", "--build", str(build), "-j", str(min(4, os.cpu_count() or 1)), "--target", "deploytool-infer"], capture_output=True, text=True
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    output = tmp_path / "out.png"
    done = subprocess.run(
        [str(build / "deploytool-infer"), str(real_exports["esrt-x2"]), str(synthetic_images["rgb8-37x53"]), "-o", str(output), "--backend", "openvino"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and done.stderr.startswith("error: this deploytool runtime was built without OpenVINO") and done.stderr.count("\n") == 1
    assert not output.exists()
