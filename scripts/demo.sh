#!/usr/bin/env bash
# The main job, offline: export SwinIR-S x2 (seeded random weights, since the official file
# needs the internet), verify it against the original (with an HTML report), and upscale an
# image with the FP16 graph.
# With the internet, drop --random-init and the official checkpoint is downloaded and cached.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
dt=.venv/bin/deploytool
out=build/swinir-s-x2
$dt list
$dt export swinir-s-x2 --random-init --out "$out" --tile 64
images=../shared/testsets/Set5/LR_bicubic/X2
if [ -d "$images" ]; then
    $dt verify "$out" --images "$images" --max-images 2 --report   # parity.md and parity.html in $out
    $dt run "$out" "$images/babyx2.png" -o build/baby_x2.png --backend ort-fp16
else
    $dt verify "$out"
    .venv/bin/python -c "from deploytool.runtime import images, input_batches; images.write_image('build/pattern.png', input_batches.synthetic_batch((1, 3, 96, 80), 0)[0].transpose(1, 2, 0))"
    $dt run "$out" build/pattern.png -o build/pattern_x2.png --backend ort-fp16
fi
