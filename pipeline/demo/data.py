"""A small real-audio demo dataset: General MIDI instrument families rendered from a SoundFont.

The SoundFont ``TimGM6mb.sf2`` ships inside the ``pretty_midi`` package and ``tinysoundfont``
renders it offline, so the demo needs no download and no audio device. Each clip is a short
random phrase (1-4 notes, sometimes chords) played by one of several GM programs of a family,
at a random velocity, pitch range and level, so that telling families apart is a real (if small)
task rather than a lookup of one timbre.

Output layout (``out_dir``)::

    audio/<family>/<id>.wav   mono 16-bit PCM
    manifest.csv              id,path,label,split (paths relative to the manifest)
    manifest-k<K>-s<S>.csv    optional, from :func:`scarce_manifest`: K labels per class in train
    demo.json                 the render parameters; "complete" is set last, after every file
    README.txt                what this is and where the sounds come from

Rendering is a pure function of the parameters: each clip draws from its own random generator
seeded by ``(seed, family, index)`` and a fresh synthesizer, so the same call gives the same
bytes, and a family's clips do not change when other families are added or removed.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, sosfilt

from eastkd.errors import EastkdError
from eastkd.progress import Progress, progress_bar

#: Bump when the rendering changes in a way that changes the audio of the same parameters.
RENDER_VERSION = 1


@dataclass(frozen=True)
class _Program:
    """One GM program and the MIDI pitch range it sounds natural in."""

    program: int
    low: int
    high: int


@dataclass(frozen=True)
class _Family:
    programs: tuple[_Program, ...]
    chords: bool  # whether the family plays chords (polyphonic instruments)


#: GM instrument families available to the demo (program numbers are 0-based GM programs).
FAMILIES: dict[str, _Family] = {
    "piano": _Family(
        tuple(_Program(p, 36, 88) for p in (0, 1, 2, 3, 4, 5, 6)),
        chords=True,
    ),
    "guitar": _Family(
        tuple(_Program(p, 40, 79) for p in (24, 25, 26, 27, 28, 29, 30)),
        chords=True,
    ),
    "strings": _Family(
        (
            _Program(40, 55, 93),  # violin
            _Program(41, 48, 84),  # viola
            _Program(42, 36, 72),  # cello
            _Program(43, 28, 60),  # contrabass
            _Program(44, 43, 84),  # tremolo strings
            _Program(45, 36, 84),  # pizzicato
            _Program(48, 36, 84),  # string ensemble
            _Program(49, 36, 84),  # slow strings
        ),
        chords=True,
    ),
    "brass": _Family(
        (
            _Program(56, 54, 82),  # trumpet
            _Program(57, 40, 72),  # trombone
            _Program(58, 28, 58),  # tuba
            _Program(59, 54, 82),  # muted trumpet
            _Program(60, 41, 77),  # french horn
            _Program(61, 40, 79),  # brass section
        ),
        chords=False,
    ),
    "reed": _Family(
        (
            # alto sax (65) is left out: its samples carry a DC offset and key 64 is silent
            _Program(64, 56, 87),  # soprano sax
            _Program(66, 44, 75),  # tenor sax
            _Program(67, 36, 69),  # baritone sax
            _Program(68, 58, 91),  # oboe
            _Program(69, 52, 81),  # english horn
            _Program(70, 34, 72),  # bassoon
            _Program(71, 50, 91),  # clarinet
        ),
        chords=False,
    ),
    "flute": _Family(
        (
            _Program(72, 74, 102),  # piccolo
            _Program(73, 60, 96),  # flute
            _Program(74, 60, 91),  # recorder
            _Program(75, 60, 91),  # pan flute
            _Program(77, 55, 84),  # shakuhachi
            _Program(79, 60, 84),  # ocarina
        ),
        chords=False,
    ),
    "organ": _Family(
        tuple(_Program(p, 36, 84) for p in (16, 17, 18, 19, 20, 21)),
        chords=True,
    ),
}

DEFAULT_FAMILIES: tuple[str, ...] = ("piano", "guitar", "strings", "brass", "reed")

_README = (
    "eastkd demo dataset: {n} short clips ({seconds:g} s, {sr} Hz, mono 16-bit WAV) of the "
    "General MIDI instrument families {fams}, each a random 1-4 note phrase (sometimes chords) "
    "played by one of several GM programs per family at random pitch, velocity and level; "
    "manifest.csv lists "
    "id,path,label,split (stratified ~70/15/15 train/valid/test, seed {seed}). The audio was "
    "rendered offline with tinysoundfont from the SoundFont TimGM6mb.sf2 that ships with the "
    "pretty_midi package (made by Tim Brechbill and distributed with MuseScore, under the GPL v2 "
    "as far as we know); check its terms before redistributing these files. Re-create them with "
    "eastkd.pipeline.demo.data.render_demo_dataset().\n"
)


def soundfont_path() -> Path:
    """The GM SoundFont bundled with ``pretty_midi``."""
    try:
        import pretty_midi
    except ImportError as exc:  # pragma: no cover - pretty_midi is a dependency
        raise EastkdError("the demo dataset needs pretty_midi; pip install pretty_midi") from exc
    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise EastkdError(f"SoundFont {path} is missing; reinstall pretty_midi")
    return path


def _stable_int(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _split_counts(n: int) -> tuple[int, int, int]:
    """(train, valid, test) sizes for ``n`` clips of one class: ~70/15/15, none empty if n >= 3."""
    if n < 3:
        return n, 0, 0
    n_valid = max(1, round(0.15 * n))
    n_test = max(1, round(0.15 * n))
    return n - n_valid - n_test, n_valid, n_test


def _phrase(
    rng: np.random.Generator, fam: _Family, seconds: float
) -> tuple[int, list[tuple[float, float, int, int]]]:
    """A random program and note list ``(onset_s, offset_s, key, velocity)`` for one clip."""
    prog = fam.programs[int(rng.integers(len(fam.programs)))]
    n_notes = int(rng.integers(1, 5))
    span = seconds * 0.85  # leave room for release tails
    slot = span / n_notes
    notes: list[tuple[float, float, int, int]] = []
    key = int(rng.integers(prog.low, prog.high - 11))  # start low enough for a melody to move
    for i in range(n_notes):
        onset = i * slot + float(rng.uniform(0.0, 0.15)) * slot
        offset = onset + float(rng.uniform(0.5, 1.0)) * (slot - (onset - i * slot))
        if i:
            key = int(np.clip(key + int(rng.integers(-7, 8)), prog.low, prog.high))
        velocity = int(rng.integers(45, 121))
        keys = [key]
        if fam.chords and rng.random() < 0.35:
            for interval in rng.choice(
                [3, 4, 5, 7, 12], size=int(rng.integers(1, 3)), replace=False
            ):
                if key + int(interval) <= prog.high:
                    keys.append(key + int(interval))
        notes.extend((onset, offset, k, velocity) for k in keys)
    return prog.program, notes


def _render_clip(
    sf2: bytes, program: int, notes: list[tuple[float, float, int, int]], seconds: float, sr: int
) -> np.ndarray:
    """Mono float32 audio of ``notes`` played by GM ``program`` on a fresh synthesizer."""
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=sr)
    sfid = synth.sfload(sf2)
    synth.program_select(0, sfid, 0, program)
    events: list[tuple[int, int, int, int]] = []  # (sample, order, key, velocity); off before on
    for onset, offset, key, vel in notes:
        events.append((round(onset * sr), 1, key, vel))
        events.append((round(offset * sr), 0, key, 0))
    events.sort()
    total = round(seconds * sr)
    out = np.zeros((total, 2), dtype=np.float32)
    pos = 0
    for at, _, key, vel in events:
        at = min(at, total)
        if at > pos:
            out[pos:at] = np.frombuffer(synth.generate(at - pos), dtype=np.float32).reshape(-1, 2)
            pos = at
        if vel:
            synth.noteon(0, key, vel)
        else:
            synth.noteoff(0, key)
    if total > pos:
        out[pos:] = np.frombuffer(synth.generate(total - pos), dtype=np.float32).reshape(-1, 2)
    # A 20 Hz high-pass removes the small DC offsets some SoundFont samples carry.
    sos = butter(2, 20.0, btype="highpass", fs=sr, output="sos")
    return sosfilt(sos, out.mean(axis=1)).astype(np.float32)


def _render_one(
    sf2: bytes, family: str, index: int, seed: int, seconds: float, sr: int
) -> np.ndarray:
    """One clip as int16, peak-normalised to a random level between -12 and -1 dBFS."""
    rng = np.random.default_rng([seed, _stable_int(family), index])
    fam = FAMILIES[family]
    for _ in range(20):
        program, notes = _phrase(rng, fam, seconds)
        audio = _render_clip(sf2, program, notes, seconds, sr)
        peak = float(np.max(np.abs(audio)))
        if peak > 1e-4:
            break
    else:  # pragma: no cover - every family program sounds in its range
        raise EastkdError(f"demo clip {family}/{index} rendered silent; check the SoundFont")
    level = 10.0 ** (float(rng.uniform(-12.0, -1.0)) / 20.0)
    audio = audio * (level / peak)
    return np.round(audio * 32767.0).astype(np.int16)


def _params(
    clips_per_class: int, seconds: float, sample_rate: int, seed: int, families: list[str]
) -> dict:
    return {
        "render_version": RENDER_VERSION,
        "clips_per_class": clips_per_class,
        "seconds": seconds,
        "sample_rate": sample_rate,
        "seed": seed,
        "families": families,
    }


def render_demo_dataset(
    out_dir: str | Path,
    clips_per_class: int = 60,
    seconds: float = 2.0,
    sample_rate: int = 16000,
    seed: int = 0,
    families: list[str] | None = None,
    progress: Progress = False,
) -> Path:
    """Render the demo instrument-family dataset into ``out_dir``; return the manifest path.

    Skips all work when ``out_dir/demo.json`` records a complete render with the same
    parameters. A folder holding an older or interrupted render is cleaned and re-rendered; a
    non-empty folder that is not a demo render is refused rather than overwritten.
    """
    fams = list(DEFAULT_FAMILIES if families is None else families)
    _check_render_options(fams, clips_per_class, seconds, sample_rate)
    out = Path(out_dir)
    manifest = out / "manifest.csv"
    record = out / "demo.json"
    params = _params(clips_per_class, float(seconds), sample_rate, seed, fams)
    if _finished_render(out, record, manifest, params):
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    # Claims the folder, so that an interrupted render is cleaned up by the next call.
    record.write_text(json.dumps({"params": params, "complete": False}, indent=2) + "\n")

    started = time.perf_counter()
    rows = _render_clips(out, fams, clips_per_class, float(seconds), sample_rate, seed,
                         progress)
    tmp = manifest.with_suffix(".csv.partial")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "path", "label", "split"])
        writer.writerows(rows)
    tmp.replace(manifest)
    (out / "README.txt").write_text(
        _README.format(
            n=len(rows), seconds=seconds, sr=sample_rate, fams=", ".join(fams), seed=seed
        )
    )
    # Rewritten last: "complete" with matching params means the render finished.
    record.write_text(
        json.dumps(
            {
                "params": params,
                "complete": True,
                "clips": len(rows),
                "render_seconds": round(time.perf_counter() - started, 3),
            },
            indent=2,
        )
        + "\n"
    )
    return manifest


def _check_render_options(fams: list[str], clips_per_class: int, seconds: float,
                          sample_rate: int) -> None:
    """One line for families that are unknown or repeated, or sizes the render cannot use."""
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown or not fams or len(set(fams)) != len(fams):
        raise EastkdError(
            f"demo families {fams} must be distinct names from: {', '.join(FAMILIES)}"
        )
    if clips_per_class < 1 or seconds <= 0 or sample_rate < 1000:
        raise EastkdError(
            "demo needs clips_per_class >= 1, seconds > 0 and sample_rate >= 1000, "
            f"got {clips_per_class}, {seconds}, {sample_rate}"
        )


def _finished_render(out: Path, record: Path, manifest: Path, params: dict) -> bool:
    """Whether ``out`` holds a complete render with ``params``; an older or unfinished render
    is removed (to start over), and a non-empty folder that is no render is refused."""
    if record.is_file():
        try:
            previous = json.loads(record.read_text())
        except (OSError, ValueError):
            previous = None
        if (
            isinstance(previous, dict)
            and previous.get("complete") is True
            and previous.get("params") == params
            and manifest.is_file()
        ):
            return True
        record.unlink()  # an older or unfinished render: start over
        shutil.rmtree(out / "audio", ignore_errors=True)
        manifest.unlink(missing_ok=True)
    elif out.exists() and any(out.iterdir()):
        raise EastkdError(
            f"{out} is not empty and holds no demo.json; render the demo into a new or empty folder"
        )
    return False


def _render_clips(out: Path, fams: list[str], clips_per_class: int, seconds: float,
                  sample_rate: int, seed: int, progress: Progress
                  ) -> list[tuple[str, str, str, str]]:
    """Render every clip as a WAV under ``out/audio``; the manifest rows (id, path, label,
    split), each family's clips split by a permutation seeded by (seed, family)."""
    sf2 = soundfont_path().read_bytes()
    rows: list[tuple[str, str, str, str]] = []
    jobs = [(f, i) for f in fams for i in range(clips_per_class)]
    jobs = progress_bar(jobs, desc="rendering demo clips", unit="clip", progress=progress)
    splits: dict[str, list[str]] = {}
    for family in fams:
        order = np.random.default_rng([seed, _stable_int(family), 1 << 30]).permutation(
            clips_per_class
        )
        n_train, n_valid, _ = _split_counts(clips_per_class)
        labels = ["train"] * n_train + ["valid"] * n_valid
        labels += ["test"] * (clips_per_class - len(labels))
        splits[family] = [""] * clips_per_class
        for rank, idx in enumerate(order):
            splits[family][int(idx)] = labels[rank]
    for family, index in jobs:
        clip_id = f"{family}_{index:04d}"
        rel = f"audio/{family}/{clip_id}.wav"
        (out / "audio" / family).mkdir(parents=True, exist_ok=True)
        pcm = _render_one(sf2, family, index, seed, seconds, sample_rate)
        sf.write(out / rel, pcm, sample_rate, subtype="PCM_16", format="WAV")
        rows.append((clip_id, rel, family, splits[family][index]))
    return rows


def _scarce_name(labels_per_class: int, seed: int, unlabelled: bool) -> str:
    return f"manifest-k{labels_per_class}-s{seed}{'' if unlabelled else '-labelled'}.csv"


def scarce_manifest(manifest: str | Path, labels_per_class: int, seed: int = 0,
                    unlabelled: bool = True) -> Path:
    """A label-scarce copy of a demo manifest, written beside it; returns its path.

    Keeps the labels of ``labels_per_class`` train rows per class, drawn with a generator seeded
    by ``(seed, class)`` (so one class's draw does not depend on the others), and every valid
    and test row. The other train rows become unlabelled items (an empty ``label``) when
    ``unlabelled`` is true, and are left out otherwise. The same arguments give the same bytes;
    an up-to-date file is not rewritten.
    """
    src = Path(manifest)
    with src.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if labels_per_class < 1:
        raise EastkdError(f"labels per class must be at least 1, got {labels_per_class}")
    keep: set[str] = set()
    for label in sorted({r["label"] for r in rows if r["split"] == "train"}):
        ids = [r["id"] for r in rows if r["split"] == "train" and r["label"] == label]
        if len(ids) < labels_per_class:
            raise EastkdError(f"{src}: class {label!r} has {len(ids)} train clips, fewer than "
                              f"{labels_per_class} labels per class; render more clips per class")
        rng = np.random.default_rng([seed, _stable_int(label)])
        keep.update(ids[i] for i in rng.choice(len(ids), labels_per_class, replace=False))
    out_rows = []
    for r in rows:
        if r["split"] != "train" or r["id"] in keep:
            out_rows.append([r["id"], r["path"], r["label"], r["split"]])
        elif unlabelled:
            out_rows.append([r["id"], r["path"], "", "train"])
    out = src.parent / _scarce_name(labels_per_class, seed, unlabelled)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "path", "label", "split"])
    writer.writerows(out_rows)
    text = buf.getvalue()
    if not out.is_file() or out.read_text(encoding="utf-8") != text:
        tmp = out.with_suffix(".csv.partial")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    return out
