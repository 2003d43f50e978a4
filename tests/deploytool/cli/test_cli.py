"""The command line as a user meets it: one-line errors, exit codes, files written."""

import json
import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from deploytool.cli import cli
from deploytool.runtime import images
from deploytool.runtime.input_batches import synthetic_batch
from tests.helpers import assert_one_line_error, cli_runner, save_official, tiny_entry, tiny_state_dict

SHARED = Path(__file__).resolve().parents[4] / "shared"


def invoke(*args, env=None):
    result = cli_runner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def tiny_config_dir(tmp_path_factory):
    """A user-added model id (DEPLOYTOOL_CONFIG_PATH): a tiny SwinIR x2, to keep the CLI fast."""
    folder = tmp_path_factory.mktemp("configs")
    (folder / "tiny-swinir-x2.toml").write_text(
        "\n".join(
            [
                'id = "tiny-swinir-x2"',
                'family = "swinir"',
                'task = "sr"',
                "scale = 2",
                "channels = 3",
                "tile = 16",
                "tile_multiple = 8",
                "overlap = 4",
                "[arch]",
                "upscale = 2",
                "img_size = 16",
                "window_size = 8",
                "embed_dim = 16",
                "depths = [2]",
                "num_heads = [2]",
                "mlp_ratio = 2.0",
                'upsampler = "pixelshuffle"',
                "[weights]",
                'filename = "tiny.pth"',
                'url = "http://127.0.0.1:9/tiny.pth"',
                "[tolerances]",
                "def_max_abs = 1e-4",
                "onnx_max_abs = 1e-3",
                "fp16_max_abs = 0.03",
                "fp16_psnr_min = 40",
                "tiled_psnr_min = 30",
            ]
        )
    )
    return folder


@pytest.fixture(scope="module")
def env(tiny_config_dir, tmp_path_factory):
    return {"DEPLOYTOOL_CONFIG_PATH": str(tiny_config_dir), "DEPLOYTOOL_CACHE": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, env):
    out = tmp_path_factory.mktemp("export") / "tiny"
    result = invoke("export", "tiny-swinir-x2", "--random-init", "--out", out, env=env)
    assert result.exit_code == 0, result.output
    assert "UNTRAINED" in result.stderr and "[6/6]" in result.stderr
    return out


def write_png(path: Path, channels: int, size=(21, 37), bit_depth=8, alpha=False):
    pixels = synthetic_batch((1, channels, *size), seed=3)[0].transpose(1, 2, 0)
    images.write_image(path, pixels, alpha=np.full(size, 0.5, np.float32) if alpha else None, bit_depth=bit_depth)
    return path


def test_list_and_info(env):
    listed = invoke("list", "--json", env=env)
    ids = {row["id"] for row in json.loads(listed.stdout)}
    assert {"swinir-m-x4", "swinir-s-x2", "swinir-real-l-x4", "swinir-dn-color-25", "swinir-car-gray-40", "tiny-swinir-x2"} <= ids
    info = json.loads(invoke("info", "swinir-m-x4", "--json", env=env).stdout)
    assert info["weights"]["url"].endswith("001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth") and info["tile"] == [128, 128]
    assert_one_line_error(invoke("info", "swinir-m-x5", env=env), "unknown model id")


def test_verify_and_run(exported, env, tmp_path):
    verified = invoke("verify", exported, "--json", env=env)
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    assert report["passed"] and "TensorRT is not installed" in report["skipped"]["trt"]
    assert (exported / "parity.md").read_text().startswith("# Parity: tiny-swinir-x2")

    for name, channels, depth, alpha in [("rgb8.png", 3, 8, False), ("gray16.png", 1, 16, False), ("rgba.png", 3, 8, True)]:
        source = write_png(tmp_path / name, channels, bit_depth=depth, alpha=alpha)
        target = tmp_path / "out" / name
        result = invoke("run", exported, source, "-o", target, "--backend", "ort-fp16", "--json", env=env)
        assert result.exit_code == 0, result.output
        written = images.read_image(target)
        assert written.pixels.shape[:2] == (42, 74) and written.bit_depth == depth
        assert written.pixels.shape[2] == channels and (written.alpha is not None) == alpha
    assert_one_line_error(invoke("run", exported, tmp_path / "rgb8.png", "-o", tmp_path / "t.png", "--backend", "trt", env=env), "TensorRT is not installed")


def test_verify_fails_when_a_tolerance_is_not_met(exported, env, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tolerances"]["onnx_max_abs"] = 0.0
    manifest["tolerances"]["fp16_max_abs"] = 1e-9
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("verify", copy, "--backends", "ort,ort-fp16", env=env)
    assert_one_line_error(result, "comparisons failed")
    assert "FAIL" in (copy / "parity.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--bogus"], "No such option '--bogus'. (see 'cli run --help')"),
        (["run"], "Missing argument 'EXPORT_DIR'. (see 'cli run --help')"),
        (["verify", ".", "--max-images", "0"], "Invalid value for '--max-images': 0 is not in the range x>=1. (see 'cli verify --help')"),
        (["bogus"], "No such command 'bogus'. (see 'cli --help')"),
        (["--bogus"], "No such option '--bogus'. (see 'cli --help')"),
    ],
)
def test_a_command_line_click_cannot_parse_is_one_line(args, message):
    """click's own usage errors, as every other refusal: one line, exit status 2 (click's program
    name here is the runner's `cli`; installed, `deploytool`)."""
    result = invoke(*args)
    assert result.exit_code == 2 and result.stderr == f"error: {message}\n", result.stderr


def test_run_refuses_bad_images(exported, env, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    assert_one_line_error(invoke("run", exported, tmp_path / "bad.png", "-o", tmp_path / "o.png", env=env), "bad.png")
    assert_one_line_error(invoke("run", exported, tmp_path / "missing.png", "-o", tmp_path / "o.png", env=env), "missing.png")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("bad", ["missing.png", "notes.png", "notes.txt"])
def test_run_checks_every_image_before_writing_the_first(exported, env, tmp_path, bad):
    """A typo or a stray file among many inputs is refused before the good ones are restored."""
    good = write_png(tmp_path / "good.png", 3)
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "notes.txt").write_text("not a video either")
    result = invoke("run", exported, good, tmp_path / bad, "-o", tmp_path / "out", "--backend", "ort", env=env)
    assert_one_line_error(result, bad)
    assert not (tmp_path / "out").exists()


def test_an_image_too_large_for_the_memory_is_one_line_and_writes_nothing(exported, env, tmp_path, monkeypatch):
    """numpy's allocation failure for a 30000x30000 PNG (what decoding it on a small machine gives)."""
    image = write_png(tmp_path / "huge.png", 3)

    def too_large(path):
        raise MemoryError("Unable to allocate 10.1 GiB for an array with shape (30000, 30000, 3) and data type float32")

    monkeypatch.setattr(images, "read_samples", too_large)
    result = invoke("run", exported, image, "-o", tmp_path / "o.png", "--backend", "ort", env=env)
    assert_one_line_error(result, f"out of memory: {image}: Unable to allocate 10.1 GiB for an array with shape (30000, 30000, 3)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.png"]


def test_run_refuses_a_thread_count_that_is_not_a_number(exported, env, tmp_path):
    image = write_png(tmp_path / "i.png", 3)
    result = invoke("run", exported, image, "-o", tmp_path / "o.png", "--backend", "ort", env={**env, "DEPLOYTOOL_ORT_THREADS": "all"})
    assert_one_line_error(result, "$DEPLOYTOOL_ORT_THREADS must be a whole number", "'all'")
    assert not (tmp_path / "o.png").exists()


def test_gray_model_refuses_rgb(tmp_path, env):
    from tests.helpers import export_tiny

    out = tmp_path / "gray"
    export_tiny("swinir-dn-gray-25", out, fp16=False)
    result = invoke("run", out, write_png(tmp_path / "c.png", 3), "-o", tmp_path / "o.png", "--backend", "ort", env=env)
    assert_one_line_error(result, "takes 1-channel")


def test_tampered_export_is_refused(exported, env, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    assert_one_line_error(invoke("run", copy, write_png(tmp_path / "i.png", 3), "-o", tmp_path / "o.png", "--backend", "ort", env=env), "changed since export")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("kind", ["corrupt", "foreign", "pickle-with-code", "missing", "truncated"])
def test_export_refuses_bad_checkpoints(kind, tmp_path, env):
    path = tmp_path / "weights.pth"
    if kind == "corrupt":
        path.write_bytes(os.urandom(2048))
        fragments = ("cannot read",)
    elif kind == "foreign":
        torch.save({"params": {"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(10)}}, path)
        fragments = ("does not fit tiny-swinir-x2", "missing keys", "unexpected keys", "conv1.weight")
    elif kind == "pickle-with-code":
        with open(path, "wb") as handle:
            pickle.dump({"params": Payload()}, handle)
        fragments = ("refusing to load", "print")
    elif kind == "truncated":
        torch.save(tiny_state_dict(tiny_entry("swinir-m-x2")), path)
        path.write_bytes(path.read_bytes()[:5000])
        fragments = ("cannot read",)
    else:
        fragments = ("checkpoint not found",)
    out = tmp_path / "out"
    result = invoke("export", "tiny-swinir-x2", "--weights", path, "--out", out, env=env)
    assert_one_line_error(result, str(path), *fragments)
    assert not out.exists()


def test_export_offline_says_to_pass_weights(tmp_path, env):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = Path(env["DEPLOYTOOL_CONFIG_PATH"])
    offline = tmp_path / "configs"
    offline.mkdir()
    text = (config / "tiny-swinir-x2.toml").read_text().replace("tiny-swinir-x2", "offline-swinir-x2").replace("127.0.0.1:9", f"127.0.0.1:{port}")
    (offline / "offline.toml").write_text(text)
    result = invoke("export", "offline-swinir-x2", "--out", tmp_path / "o", env={**env, "DEPLOYTOOL_CONFIG_PATH": str(offline)})
    assert_one_line_error(result, "cannot download", "--weights")


def test_export_accepts_safetensors_and_params_ema(tmp_path, env):
    from safetensors.torch import save_file

    import model_defs

    torch.manual_seed(0)
    state = model_defs.build_model(
        "swinir",
        {"upscale": 2, "img_size": 16, "window_size": 8, "embed_dim": 16, "depths": [2], "num_heads": [2], "mlp_ratio": 2.0, "upsampler": "pixelshuffle"},
    ).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    save_official(state, tmp_path / "w.pth", wrapper="params_ema")
    for name in ("w.safetensors", "w.pth"):
        result = invoke("export", "tiny-swinir-x2", "--weights", tmp_path / name, "--out", tmp_path / name.replace(".", "_"), "--no-fp16", env=env)
        assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "w_pth" / "manifest.json").read_text())
    assert manifest["source"]["wrapper_key"] == "params_ema"


@pytest.mark.skipif(not (SHARED / "testsets" / "Set5").is_dir(), reason="../shared/testsets/Set5 is not present")
def test_verify_with_real_images_measures_seams(exported, env):
    result = invoke(
        "verify", exported, "--images", SHARED / "testsets" / "Set5" / "LR_bicubic" / "X2", "--backends", "ort-fp16", "--max-images", "2", "--json", env=env
    )
    assert result.exit_code == 0, result.output
    tiled = [c for c in json.loads(result.stdout)["comparisons"] if c["inputs"].startswith("image")]
    assert len(tiled) == 2 and all(c["psnr"] > 30 for c in tiled)


def test_export_defaults_to_build_model_id(tmp_path, env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("export", "tiny-swinir-x2", "--random-init", "--no-fp16", env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "build" / "tiny-swinir-x2" / "manifest.json").is_file()


def test_doctor_reports_what_each_command_can_do(env):
    result = invoke("doctor", "--json", env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["capabilities"]) == {"export", "verify", "run", "build", "bench"}
    assert report["facts"]["torch"] and "ort_providers" in report["facts"]


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_commands_without_tensorrt_say_how_to_get_it(exported, env, tmp_path):
    message = "TensorRT is not installed: pip install deploytool[trt] on a machine with an NVIDIA GPU"
    assert_one_line_error(invoke("build", exported, env=env), message)
    assert_one_line_error(invoke("bench", exported, "--backend", "trt", env=env), message)
    image = write_png(tmp_path / "in.png", 3)
    assert_one_line_error(invoke("run", exported, image, "-o", tmp_path / "out.png", "--backend", "trt", env=env), message)
    assert not (tmp_path / "out.png").exists()


def test_build_refuses_a_folder_that_is_not_an_export(tmp_path, env):
    assert_one_line_error(invoke("build", tmp_path, env=env), "is not a finished export")


def test_bench_times_the_backends_against_the_first(exported, env):
    result = invoke("bench", exported, "--backend", "ort,ort-fp16", "--runs", "2", "--warmup", "1", "--json", env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["backend"] for r in report["results"]] == ["ort", "ort-fp16"]
    assert report["results"][0]["speed_vs_first"] == 1.0 and all(r["tiles_per_s"] > 0 for r in report["results"])


def test_an_export_runs_without_the_config_that_made_it(exported, tmp_path):
    """tiny-swinir-x2 exists only through DEPLOYTOOL_CONFIG_PATH: unset, its export still works."""
    without = {"DEPLOYTOOL_CONFIG_PATH": None}
    assert_one_line_error(invoke("info", "tiny-swinir-x2", env=without), "unknown model id")
    verified = invoke("verify", exported, "--backends", "original,torch", env=without)
    assert verified.exit_code == 0, verified.output
    source = write_png(tmp_path / "in.png", 3)
    ran = invoke("run", exported, source, "-o", tmp_path / "out.png", "--backend", "torch", env=without)
    assert ran.exit_code == 0, ran.output
    dataset = tmp_path / "set"
    images.write_image((dataset / "HR").joinpath("a.png"), synthetic_batch((1, 3, 32, 32), seed=1)[0].transpose(1, 2, 0))
    images.write_image((dataset / "LR_bicubic" / "X2").joinpath("ax2.png"), synthetic_batch((1, 3, 16, 16), seed=2)[0].transpose(1, 2, 0))
    evaluated = invoke("eval", exported, "--dataset", dataset, "--scale", "2", "--methods", "reference,torch", env=without)
    assert evaluated.exit_code == 0, evaluated.output


def test_verify_report_writes_a_self_contained_html_page(exported, tmp_path):
    folder = tmp_path / "images"
    write_png(folder / "a.png", 3)
    result = invoke("verify", exported, "--images", folder, "--backends", "ort", "--report", env=None)
    assert result.exit_code == 0, result.output
    page = (exported / "parity.html").read_text()
    assert "image a.png tiled" in page and page.count("data:image/png;base64,") >= 4 and "http://" not in page.split("<body", 1)[1]
