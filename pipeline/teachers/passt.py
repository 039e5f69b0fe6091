"""PaSST (Koutini et al. 2022) as a teacher, built with ``hear21passt`` and loaded offline.

The clip embedding is hear21passt's scene embedding in ``mode="embed_only"``: the mean of the
class and distillation tokens after the last layer norm (768-d). Clips up to 10 s go through the
model in one pass; longer clips are cut into 10 s windows every 2.5 s (reflect-padded by half a
window at both ends) and the window embeddings are averaged, as ``get_scene_embeddings`` does.
Frames are hear21passt's timestamp embeddings: the same 768-d embedding of short windows
(default 1 s every 0.5 s, so ``frame_rate`` = 2 Hz) centred at ``i * hop`` (``frame_offset``
0). They cost about as much again as the clip embedding, so they are computed only when asked:
option ``frames=True``, or extract ``--frames`` (through :meth:`Teacher.set_frames`).
The mel front end runs in float32; the transformer is float16-safe (``autocast_safe``).

hear21passt fetches weights from GitHub at load time; here nothing is downloaded. The
architecture is built with random weights and the state dict is read from ``weights`` or, when
that is None, from the file hear21passt would have cached: ``<torch hub dir>/checkpoints/<name>``
(``passt-s-f128-p16-s10-ap.476-swa.pt`` for the default arch). ``random_init=True`` keeps the
random weights (tests only).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from eastkd.errors import EastkdError
from eastkd.pipeline.teachers.base import (
    Teacher,
    TeacherOutput,
    file_sha256,
    float32_front_end,
    state_dict_sha256,
)

SAMPLE_RATE = 32000
EMBEDDING_DIM = 768
DEFAULT_ARCH = "passt_s_swa_p16_128_ap476"
# Architectures that share hear21passt.base's front end (128 mel bands, hop 320, 10 s input):
# name -> (frequency stride, time stride) of the patch embedding.
ARCHS: dict[str, tuple[int, int]] = {
    "passt_s_swa_p16_128_ap476": (10, 10),
    "passt_s_kd_p16_128_ap486": (10, 10),
    "passt_l_kd_p16_128_ap47": (10, 10),
    "passt_s_p16_s16_128_ap468": (16, 16),
}
MIN_SAMPLES = 16 * 320  # 0.16 s -> 16 mel frames (pre-emphasis drops one): one patch in time
DEFAULTS: dict[str, Any] = {
    "arch": DEFAULT_ARCH,
    "window_s": 10.0,  # longest input the model takes in one pass (its time embedding)
    "hop_s": 2.5,  # hop between windows for clips longer than window_s
    "frames": False,  # compute frame embeddings (extract --frames turns them on)
    "frame_window_s": 1.0,
    "frame_hop_s": 0.5,
    "max_batch_seconds": 80.0,  # audio per forward pass; bounds attention memory
    "random_init": False,
}
_QUIET = (
    ".*return_complex=False is deprecated.*",
    ".*torch.cuda.amp.autocast.*",
    ".*Input image size.*doesn't match model.*",
)


def _samples(seconds: float) -> int:
    return int(seconds * SAMPLE_RATE)


class PasstEmbedder(torch.nn.Module):
    """Waveform (B, S) at 32 kHz -> PaSST scene embedding (B, 768) and optional frames."""

    def __init__(self, wrapper: torch.nn.Module, options: dict[str, Any]) -> None:
        super().__init__()
        self.passt = wrapper  # hear21passt PasstBasicWrapper(mode="embed_only")
        self.window = _samples(options["window_s"])
        self.hop = _samples(options["hop_s"])
        self.frames = bool(options["frames"])
        self.frame_window = _samples(options["frame_window_s"])
        self.frame_hop = _samples(options["frame_hop_s"])
        self.max_batch_samples = _samples(options["max_batch_seconds"])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PasstEmbedder":
        """A teacher stays in eval mode: training mode would turn on SpecAugment and patchout."""
        return super().train(False)

    def _embed(self, segments: torch.Tensor) -> torch.Tensor:
        """(M, L) equal-length segments -> (M, 768), in chunks of at most max_batch_seconds."""
        if segments.shape[-1] < MIN_SAMPLES:
            segments = F.pad(segments, (0, MIN_SAMPLES - segments.shape[-1]))
        per_chunk = max(1, self.max_batch_samples // segments.shape[-1])
        with warnings.catch_warnings():
            for pattern in _QUIET:
                warnings.filterwarnings("ignore", message=pattern)
            return torch.cat([self._passt(c) for c in segments.split(per_chunk)])

    def _passt(self, segments: torch.Tensor) -> torch.Tensor:
        """hear21passt's ``embed_only`` forward pass, with the mel front end in float32."""
        with float32_front_end(segments.device):
            specs = self.passt.mel(segments.float())
        _, features = self.passt.net(specs.unsqueeze(1))
        return features.float()

    def _windowed(self, wave: torch.Tensor, window: int, hop: int) -> torch.Tensor:
        """hear21passt's windowing: pad window//2 at both ends, windows every ``hop``."""
        b = wave.shape[0]
        pad = window // 2
        mode = "reflect" if wave.shape[-1] > pad else "constant"
        padded = F.pad(wave.unsqueeze(1), (pad, pad), mode=mode).squeeze(1)
        segments = padded.unfold(-1, window, hop)  # (B, N, window)
        n = segments.shape[1]
        return self._embed(segments.reshape(b * n, window)).reshape(b, n, -1)

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> TeacherOutput:
        wave = wave.float()
        if wave.shape[-1] <= self.window:
            clip = self._embed(wave)
        else:
            clip = self._windowed(wave, self.window, self.hop).mean(dim=1)
        frames = self._windowed(wave, self.frame_window, self.frame_hop) if self.frames else None
        return TeacherOutput(clip=clip, frames=frames)


def default_checkpoint(arch: str = DEFAULT_ARCH) -> tuple[str, str]:
    """(path, url): where hear21passt caches ``arch``'s weights, and where it downloads them."""
    from hear21passt.models.passt import default_cfgs

    url = default_cfgs[arch]["url"]
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    return path, url


def _build(arch: str) -> torch.nn.Module:
    """hear21passt.base.get_basic_model's wrapper for ``arch``, with random weights."""
    import hear21passt.models.passt as passt_module
    from hear21passt.models.preprocess import AugmentMelSTFT
    from hear21passt.wrapper import PasstBasicWrapper

    fstride, tstride = ARCHS[arch]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mel = AugmentMelSTFT(n_mels=128, sr=SAMPLE_RATE, win_length=800, hopsize=320, n_fft=1024,
                             freqm=48, timem=192, htk=False, fmin=0.0, fmax=None, norm=1,
                             fmin_aug_range=10, fmax_aug_range=2000)
        net = passt_module.get_model(arch=arch, pretrained=False, fstride=fstride,
                                     tstride=tstride)
    passt_module.first_RUN = False  # its first forward pass would print every shape
    return PasstBasicWrapper(mel=mel, net=net, mode="embed_only")


def _load_state(net: torch.nn.Module, path: str) -> None:
    """Load a PaSST state dict (hear21passt's release file, or a wrapper's ``net.*`` keys)."""
    from hear21passt.models.passt import checkpoint_filter_fn

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise EastkdError(f"cannot read PaSST checkpoint {path}: {err}; it must be a "
                          f"torch.save'd state dict (e.g. the hear21passt release .pt)") from err
    if not isinstance(state, dict):
        raise EastkdError(f"PaSST checkpoint {path} holds a {type(state).__name__}, "
                          f"not a state dict")
    if isinstance(state.get("model"), dict):  # a training checkpoint
        state = state["model"]
    if any(k.startswith("net.") for k in state):  # a PasstBasicWrapper's state dict
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    if "time_new_pos_embed" in state:  # hear21passt's own fix-ups for older PaSST files
        state = checkpoint_filter_fn(state, net)
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise EastkdError(
            f"PaSST checkpoint {path} does not fit this architecture: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:2]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]}); "
            f"check the 'arch' option")


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise EastkdError(f"unknown PaSST option(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    if opts["arch"] not in ARCHS:
        raise EastkdError(f"unknown PaSST arch {opts['arch']!r}; choose one of: {', '.join(ARCHS)}")
    for key in ("window_s", "hop_s", "frame_window_s", "frame_hop_s", "max_batch_seconds"):
        opts[key] = float(opts[key])
        if opts[key] <= 0:
            raise EastkdError(f"PaSST option {key} must be positive, got {opts[key]}")
    if opts["window_s"] > 10.0:
        raise EastkdError("PaSST option window_s must be at most 10 s (the model's time embedding)")
    if _samples(opts["frame_window_s"]) < MIN_SAMPLES:
        raise EastkdError("PaSST option frame_window_s must be at least 0.16 s (one patch)")
    opts["frames"] = bool(opts["frames"])
    opts["random_init"] = bool(opts["random_init"])
    return opts


def passt(weights: str | None = None, **options: Any) -> Teacher:
    """PaSST-S (AudioSet, 768-d) at 32 kHz; ``weights`` is a local checkpoint (see module doc).

    Options: ``arch`` (one of :data:`ARCHS`), ``window_s``/``hop_s`` (long-clip windowing),
    ``frames`` (compute frame embeddings; off unless asked), ``frame_window_s``/``frame_hop_s``
    (frame embeddings), ``max_batch_seconds``,
    ``random_init`` (random weights; tests only, excludes ``weights``).
    """
    opts = _options(options)
    try:
        import hear21passt  # noqa: F401
    except ImportError as err:
        raise EastkdError("the PaSST teacher needs hear21passt: pip install 'eastkd[passt]' "
                          "(see README: teachers)") from err
    if opts["random_init"] and weights is not None:
        raise EastkdError("PaSST: pass either weights or random_init=True, not both")
    checkpoint = None
    if not opts["random_init"]:
        checkpoint, url = default_checkpoint(opts["arch"])
        if weights is not None:
            checkpoint = os.fspath(weights)
        if not os.path.isfile(checkpoint):
            raise EastkdError(f"PaSST checkpoint {checkpoint} not found; download {url} and "
                              f"save it there (or pass weights=PATH)")
    wrapper = _build(opts["arch"])
    if checkpoint is not None:
        _load_state(wrapper.net, checkpoint)
    model = PasstEmbedder(wrapper, opts)
    frames = (f"; frames: the same embedding of {opts['frame_window_s']:g} s windows every "
              f"{opts['frame_hop_s']:g} s")
    pooling = (f"mean of class and distillation tokens (hear21passt scene embedding); clips over "
               f"{opts['window_s']:g} s: mean over {opts['window_s']:g} s windows every "
               f"{opts['hop_s']:g} s{frames}")
    return Teacher(
        name="passt",
        model=model,
        sample_rate=SAMPLE_RATE,
        embedding_dim=EMBEDDING_DIM,
        weights_sha256=file_sha256(checkpoint) if checkpoint else state_dict_sha256(model),
        weights_files=(checkpoint,) if checkpoint else (),
        frame_rate=1.0 / opts["frame_hop_s"],
        frame_offset=0.0,
        autocast_safe=True,
        pooling=pooling,
        options={k: v for k, v in opts.items() if k not in ("max_batch_seconds", "frames")},
    )
