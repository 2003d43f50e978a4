"""PSNR/SSIM of an export on an SR test set: `deploytool eval` as a script.

python scripts/eval_psnr.py build/esrt-x2 --dataset ../shared/testsets/Set5 --scale 2 [--json]
"""

import sys

from deploytool.cli import cli

if __name__ == "__main__":
    cli(["eval", *sys.argv[1:]], prog_name="eval_psnr.py")
