"""How much the tile size changes a model's output: tiled runs vs the original on whole images.

    python scripts/tile_study.py restormer-derain --images ../shared/testsets/Rain100L/input --tiles 128,256,512 [--weights FILE] [--json]

For models whose attention spans the whole input (Restormer), the tile changes the result, not
only the borders. For each tile size this exports the FP32 graph, runs every image through the
tiler (ONNX Runtime) and reports PSNR against the original PyTorch model on the whole image.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from deploytool.build import export, registry
from deploytool.build.networks import load_state_dict, resolve_source
from deploytool.runtime import images, inference, input_batches
from deploytool.runtime.backends import open_runner
from deploytool.verify import parity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_id")
    parser.add_argument("--images", required=True)
    parser.add_argument("--tiles", default="128,256,512")
    parser.add_argument("--overlap", type=int)
    parser.add_argument("--weights", help="checkpoint (default: seeded random init)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    entry = registry.get(args.model_id)
    source = resolve_source(entry, weights=args.weights, random_init=args.weights is None)
    state_dict = load_state_dict(entry, source)
    original = parity.original_runner(entry, state_dict)
    overlap = entry.tiling.overlap if args.overlap is None else args.overlap
    paths = input_batches.list_images(args.images)
    pictures = {p.name: images.fit_channels(images.read_image(p).pixels, entry.channels, model_id=entry.id, path=p) for p in paths}
    print(f"{entry.id}: original on {len(paths)} whole images ({source.describe()})", file=sys.stderr)
    wholes = {name: original(pixels.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0) for name, pixels in pictures.items()}

    rows = []
    for tile in (int(t) for t in args.tiles.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "export"
            manifest = export.export(export.ExportRequest(entry, source, out, (tile, tile), 1, fp16=False), progress=lambda m: print(m, file=sys.stderr))
            runner = open_runner(out, manifest, "ort")
            for name, pixels in pictures.items():
                started = time.perf_counter()
                tiled = inference.restore_array(runner, manifest, pixels, overlap=overlap)
                _, _, psnr = parity.metrics(wholes[name], tiled)
                rows.append({"tile": tile, "image": name, "size": list(pixels.shape[1::-1]), "psnr_vs_whole": psnr, "seconds": time.perf_counter() - started})
                print(f"tile {tile}: {name} {psnr:.2f} dB", file=sys.stderr)
    if args.json:
        print(json.dumps({"model_id": entry.id, "overlap": overlap, "weights": source.describe(), "rows": rows}, indent=2))
        return 0
    print(f"\n{entry.id}, overlap {overlap}, {source.describe()}\n")
    print("| tile | " + " | ".join(pictures) + " | mean |")
    print("|---:|" + "---:|" * (len(pictures) + 1))
    for tile in sorted({r["tile"] for r in rows}):
        values = [r["psnr_vs_whole"] for r in rows if r["tile"] == tile]
        print(f"| {tile} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {sum(values) / len(values):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
