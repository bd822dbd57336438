#!/usr/bin/env bash
# Create (once) the anchors' venv that benchmarks compare mmfm against: open_clip_train (needs
# webdataset 0.2.86), CLIP_benchmark, img2dataset and open_clip's CoCa (needs transformers<5).
# The anchors never enter mmfm's own venv. Prints the venv's python path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.bench/anchors
if [ ! -f "$V/.installed" ]; then
  mkdir -p .bench
  python3 -m venv "$V"
  "$V/bin/python" -m pip install -q --upgrade pip >&2
  "$V/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 >&2
  "$V/bin/python" -m pip install -q "open_clip_torch[training]==3.3.0" "transformers==4.57.6" \
      "webdataset==0.2.86" clip_benchmark img2dataset pillow >&2
  touch "$V/.installed"
fi
echo "$PWD/$V/bin/python"
