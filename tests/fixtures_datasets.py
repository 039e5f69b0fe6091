"""Tiny copies of ESC-50, MagnaTagATune and FMA-small in their official on-disk formats.

Each ``make_*`` builder writes the official metadata file (exact header strings, separators and
quoting) and real synthesised audio (WAV for ESC-50, MP3 for MTAT and FMA) under a folder, and
returns what a test needs to check an adapter against it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

# ESC-50 categories in target order (meta/esc50.csv); ESC-10 is the subset of these targets.
ESC50_CATEGORIES = [
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind",
    "pouring_water", "toilet_flush", "thunderstorm", "crying_baby", "sneezing", "clapping",
    "breathing", "coughing", "footsteps", "laughing", "brushing_teeth", "snoring",
    "drinking_sipping", "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks",
    "can_opening", "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick",
    "glass_breaking", "helicopter", "chainsaw", "siren", "car_horn", "engine", "train",
    "church_bells", "airplane", "fireworks", "hand_saw",
]
ESC10_TARGETS = {0, 1, 10, 11, 12, 20, 21, 38, 40, 41}
ESC50_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]

# The 52 columns of fma_metadata/tracks.csv as (group, column), in the official order.
FMA_COLUMNS = (
    [("album", c) for c in ("comments", "date_created", "date_released", "engineer", "favorites",
                            "id", "information", "listens", "producer", "tags", "title",
                            "tracks", "type")]
    + [("artist", c) for c in ("active_year_begin", "active_year_end", "associated_labels", "bio",
                               "comments", "date_created", "favorites", "id", "latitude",
                               "location", "longitude", "members", "name", "related_projects",
                               "tags", "website", "wikipedia_page")]
    + [("set", "split"), ("set", "subset")]
    + [("track", c) for c in ("bit_rate", "comments", "composer", "date_created",
                              "date_recorded", "duration", "favorites", "genre_top", "genres",
                              "genres_all", "information", "interest", "language_code",
                              "license", "listens", "lyricist", "number", "publisher", "tags",
                              "title")]
)
FMA_GENRES = ["Electronic", "Experimental", "Folk", "Hip-Hop", "Instrumental", "International",
              "Pop", "Rock"]


def synth_audio(seed: int, sr: int, seconds: float, channels: int = 1) -> np.ndarray:
    """A few decaying partials plus a little noise: distinct, deterministic, clearly non-silent."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(sr * seconds))) / sr
    x = np.zeros_like(t)
    for k, f0 in enumerate(rng.uniform(110.0, 1760.0, size=3)):
        x += np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi)) / (k + 1)
    x = 0.3 * x * np.exp(-1.5 * t) + 0.02 * rng.standard_normal(t.shape)
    out = np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1)
    return out.astype(np.float32)


# ---------------------------------------------------------------- ESC-50


def make_esc50(root: Path, clips_per_class: int = 1, seconds: float = 0.5,
               drop_columns: tuple[str, ...] = ()) -> Path:
    """``root/ESC-50-master`` with meta/esc50.csv and 44.1 kHz mono WAVs; returns that folder.

    Clip ``k`` of target ``t`` is in fold ``(t + k) % 5 + 1`` and named like the official files,
    ``{fold}-{src_file}-{take}-{target}.wav``.
    """
    base = root / "ESC-50-master"
    (base / "meta").mkdir(parents=True)
    (base / "audio").mkdir()
    rows = []
    for target, category in enumerate(ESC50_CATEGORIES):
        for k in range(clips_per_class):
            fold, src = (target + k) % 5 + 1, 100032 + 977 * target + 13 * k
            take = "ABC"[k % 3]
            name = f"{fold}-{src}-{take}-{target}.wav"
            sf.write(base / "audio" / name, synth_audio(target * 7 + k, 44100, seconds), 44100,
                     subtype="PCM_16")
            rows.append([name, fold, target, category, target in ESC10_TARGETS, src, take])
    rows.sort(key=lambda r: r[0])  # the official csv is sorted by filename
    keep = [i for i, c in enumerate(ESC50_HEADER) if c not in drop_columns]
    with open(base / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([ESC50_HEADER[i] for i in keep])
        w.writerows([[r[i] for i in keep] for r in rows])
    return base


# ---------------------------------------------------------------- MagnaTagATune


@dataclass
class MtatFixture:
    """A written MTAT copy: its root, tag columns, and each clip's id, mp3_path and tags."""

    root: Path
    tags: list[str]
    clips: list[tuple[str, str, set[str]]]
    rare: list[str] = field(default_factory=list)
    tie_early: str = ""
    tie_late: str = ""
    empty_clip: str = ""


# 49 frequent tags (counts 16 down to 3), one tie pair at count 2 and 9 rare tags (count 1).
_MTAT_COMMON = [
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "male vocal",
    "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age",
    "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice", "weird",
    "country", "metal", "female voice", "choral", "singer",
]
_MTAT_RARE = ["duet", "plucking", "bongos", "clasical", "chorus", "clarinet", "silence", "men",
              "jazz"]
_MTAT_TIE = ("woman", "beat")  # same count; "woman" comes first in column order


def make_mtat(root: Path, quoted: bool = True, audio_subdir: str = "", seconds: float = 1.0,
              drop_columns: tuple[str, ...] = ()) -> MtatFixture:
    """``root/magnatagatune`` with annotations_final.csv (60 tags) and 16 kHz mono MP3s.

    17 clips: one per audio folder 0-f plus an extra clip in ``d`` that has no tag at all. The
    tab-separated csv wraps every field in double quotes like the official file (``quoted``), or
    leaves them bare. Audio goes to ``<root>/<audio_subdir>/<mp3_path>``.
    """
    base = root / "magnatagatune"
    base.mkdir(parents=True)
    # Column order: a rare tag first, the early tie tag near the front, the late one near the end.
    tags = [_MTAT_RARE[0]] + _MTAT_COMMON[:4] + [_MTAT_TIE[0]] + _MTAT_COMMON[4:30]
    tags += _MTAT_RARE[1:5] + _MTAT_COMMON[30:] + [_MTAT_TIE[1]] + _MTAT_RARE[5:]
    counts = {t: 16 - i * 13 // 48 for i, t in enumerate(_MTAT_COMMON)}  # 16 .. 3
    counts.update({t: 2 for t in _MTAT_TIE})
    counts.update({t: 1 for t in _MTAT_RARE})
    n_tagged = 16
    flags = np.zeros((n_tagged + 1, len(tags)), dtype=int)
    for j, tag in enumerate(tags):
        for k in range(counts[tag]):
            flags[(5 * j + k) % n_tagged, j] = 1
    folders = list("0123456789abcdef") + ["d"]
    clips = []
    for i, folder in enumerate(folders):
        clip_id = str(2 + 4 * i)
        start = 29 * (i % 3)
        rel = f"{folder}/artist_{i:02d}-album_{i % 5}-{i % 12 + 1:02d}-track_{i}"
        rel += f"-{start}-{start + 29}.mp3"
        audio = base / audio_subdir / rel if audio_subdir else base / rel
        audio.parent.mkdir(parents=True, exist_ok=True)
        sf.write(audio, synth_audio(1000 + i, 16000, seconds), 16000, format="MP3")
        clips.append((clip_id, rel, {t for j, t in enumerate(tags) if flags[i, j]}))

    header = ["clip_id"] + tags + ["mp3_path"]
    keep = [i for i, c in enumerate(header) if c not in drop_columns]
    with open(base / "annotations_final.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n",
                       quoting=csv.QUOTE_ALL if quoted else csv.QUOTE_MINIMAL)
        w.writerow([header[i] for i in keep])
        for (clip_id, rel, _), row in zip(clips, flags):
            full = [clip_id, *map(str, row), rel]
            w.writerow([full[i] for i in keep])
    return MtatFixture(root=base, tags=tags, clips=clips, rare=list(_MTAT_RARE),
                       tie_early=_MTAT_TIE[0], tie_late=_MTAT_TIE[1], empty_clip=clips[-1][0])


# ---------------------------------------------------------------- FMA-small


@dataclass
class FmaFixture:
    """A written FMA copy: its root and (track_id, genre, official split) of each small track."""

    root: Path
    small: list[tuple[int, str, str]]
    other: list[int]


def _fma_row(track_id: int, subset: str, split: str, genre: str) -> list[str]:
    values = {c: "" for c in FMA_COLUMNS}
    values.update({
        ("album", "title"): f"Album {track_id}, vol. 1",
        ("artist", "bio"): f'<p>Bio of artist {track_id},\nwith "quotes" and a second line.</p>',
        ("artist", "name"): f"Artist {track_id}",
        ("set", "split"): split,
        ("set", "subset"): subset,
        ("track", "duration"): "30",
        ("track", "genre_top"): genre,
        ("track", "genres"): "[21]",
        ("track", "tags"): "['lofi', 'demo']",
        ("track", "title"): f"Track {track_id}",
    })
    return [str(track_id)] + [values[c] for c in FMA_COLUMNS]


def make_fma(root: Path, seconds: float = 1.0, drop_columns: tuple[tuple[str, str], ...] = (),
             header_rows: int = 3) -> FmaFixture:
    """``root/fma`` with fma_metadata/tracks.csv and 44.1 kHz stereo MP3s in fma_small/NNN/.

    16 small tracks (two per genre; training/validation/test), plus a medium and a large track
    that have no audio and a genre outside the small set. ``header_rows=1`` writes a plain
    single-row header instead of the official three rows.
    """
    base = root / "fma"
    (base / "fma_metadata").mkdir(parents=True)
    ids = [2, 5, 10, 140, 141, 148, 182, 190, 193, 194, 197, 200, 1039, 99134, 108925, 155066]
    splits = ["training", "training", "validation", "test"]
    small = [(tid, FMA_GENRES[i % 8], splits[i % 4]) for i, tid in enumerate(ids)]
    rows = [_fma_row(tid, "small", split, genre) for tid, genre, split in small]
    other = [3, 1000]
    rows += [_fma_row(3, "medium", "training", "Blues"), _fma_row(1000, "large", "test", "")]
    rows.sort(key=lambda r: int(r[0]))
    for i, (tid, _, _) in enumerate(small):
        tid6 = f"{tid:06d}"
        audio = base / "fma_small" / tid6[:3] / f"{tid6}.mp3"
        audio.parent.mkdir(parents=True, exist_ok=True)
        sf.write(audio, synth_audio(2000 + i, 44100, seconds, channels=2), 44100, format="MP3")

    keep = [0] + [i + 1 for i, c in enumerate(FMA_COLUMNS) if c not in drop_columns]
    cols = [("", "")] + list(FMA_COLUMNS)
    with open(base / "fma_metadata" / "tracks.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        if header_rows == 3:
            w.writerow([cols[i][0] for i in keep])
            w.writerow([cols[i][1] for i in keep])
            w.writerow(["track_id"] + [""] * (len(keep) - 1))
        else:
            w.writerow(["track_id"] + [f"{cols[i][0]}_{cols[i][1]}" for i in keep[1:]])
        w.writerows([[r[i] for i in keep] for r in rows])
    return FmaFixture(root=base, small=small, other=other)
