"""The paper's teachers: PaSST (real hear21passt architecture, random weights) and MULE (its
torch front end, with random TorchScript stand-ins for the exported network)."""

from __future__ import annotations

import math

import pytest
import torch

from eastkd.errors import EastkdError
from eastkd.pipeline.core.registry import teachers
from eastkd.pipeline.teachers import mule as mule_mod
from eastkd.pipeline.teachers import passt as passt_mod
from eastkd.pipeline.teachers.base import file_sha256, state_dict_sha256

pytestmark = [  # raised by hear21passt when the tests call it directly, and by torch.jit
    pytest.mark.filterwarnings("ignore:.*return_complex=False is deprecated"),
    pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.autocast"),
    pytest.mark.filterwarnings("ignore:Input image size"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated"),
]

# ---------------------------------------------------------------- PaSST

FAST = {"frame_window_s": 0.25, "frame_hop_s": 0.25}  # keeps CPU time small


@pytest.fixture(scope="module")
def passt_teacher():
    torch.manual_seed(0)
    return teachers.create("passt", random_init=True, frames=True, **FAST)


@pytest.fixture(scope="module")
def wave32k():
    g = torch.Generator().manual_seed(1)
    t = torch.arange(16000) / 32000  # 0.5 s
    return 0.1 * torch.randn(2, 16000, generator=g) + 0.3 * torch.sin(2 * math.pi * 440 * t)


def test_passt_contract_matches_hear21passt(passt_teacher, wave32k):
    t = passt_teacher
    assert (t.name, t.sample_rate, t.embedding_dim, t.frame_rate) == ("passt", 32000, 768, 4.0)
    assert t.num_parameters > 80_000_000  # PaSST-S, not a toy
    out = t(wave32k)
    assert out.clip.shape == (2, 768) and out.clip.dtype == torch.float32
    assert out.frames.shape == (2, 3, 768)  # 0.5 s padded by 0.125 s each side, 0.25 s hop
    assert torch.isfinite(out.clip).all() and torch.isfinite(out.frames).all()
    assert not torch.allclose(out.clip[0], out.clip[1])
    wrapper = t.model.passt  # hear21passt's own scene / timestamp embeddings
    with torch.no_grad():
        torch.testing.assert_close(out.clip, wrapper.get_scene_embeddings(wave32k))
        ref, stamps = wrapper.get_timestamp_embeddings(wave32k, window_size=8000, hop=8000)
    torch.testing.assert_close(out.frames, ref)
    assert stamps[0].tolist() == [0.0, 250.0, 500.0]
    tiny = t(wave32k[:, :100])  # shorter than one patch: zero-padded to 0.16 s
    assert tiny.clip.shape == (2, 768) and tiny.frames.shape == (2, 1, 768)


def test_passt_long_clips_average_windows_like_hear21passt(passt_teacher, wave32k):
    from hear21passt.wrapper import PasstBasicWrapper

    w = passt_teacher.model.passt
    opts = {**passt_mod.DEFAULTS, "window_s": 0.25, "hop_s": 0.25, "frames": False}
    short_window = passt_mod.PasstEmbedder(w, opts)  # 0.5 s clips are "long" for it
    ref = PasstBasicWrapper(mel=w.mel, net=w.net, max_model_window=250, scene_hop=250,
                            mode="embed_only").eval()
    out = short_window(wave32k)
    assert out.frames is None
    with torch.no_grad():
        torch.testing.assert_close(out.clip, ref.get_scene_embeddings(wave32k))


def test_passt_stays_in_eval_mode(passt_teacher, wave32k):
    passt_teacher.model.train()  # SpecAugment / patchout must not switch on
    assert not passt_teacher.model.passt.training
    a, b = passt_teacher(wave32k[:1, :8000]).clip, passt_teacher(wave32k[:1, :8000]).clip
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_passt_random_fingerprint_follows_weights(passt_teacher):
    t = passt_teacher
    assert t.weights_sha256 == state_dict_sha256(t.model)
    p = t.model.passt.net.cls_token
    kept = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)
        changed = state_dict_sha256(t.model)
        p.copy_(kept)
    assert changed != t.weights_sha256 and state_dict_sha256(t.model) == t.weights_sha256


def test_passt_checkpoint_round_trip(passt_teacher, wave32k, tmp_path, monkeypatch):
    ckpt = tmp_path / "passt.pt"
    torch.save(passt_teacher.model.passt.net.state_dict(), ckpt)  # the release file's layout
    loaded = teachers.create("passt", weights=str(ckpt), frames=True, **FAST)
    assert loaded.weights_sha256 == file_sha256(str(ckpt)) != passt_teacher.weights_sha256
    a, b = passt_teacher(wave32k), loaded(wave32k)
    torch.testing.assert_close(a.clip, b.clip)
    torch.testing.assert_close(a.frames, b.frames)

    # weights=None reads hear21passt's cache: <TORCH_HOME>/hub/checkpoints/<release name>
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    cached, url = passt_mod.default_checkpoint()
    assert cached.endswith("/home/hub/checkpoints/passt-s-f128-p16-s10-ap.476-swa.pt")
    assert url.startswith("https://github.com/kkoutini/PaSST/releases/")
    (tmp_path / "home/hub/checkpoints").mkdir(parents=True)
    (tmp_path / "home/hub/checkpoints/passt-s-f128-p16-s10-ap.476-swa.pt").symlink_to(ckpt)
    default = teachers.create("passt")  # frames only when asked
    assert default.weights_sha256 == loaded.weights_sha256 and default.frame_rate == 2.0
    plain = default(wave32k)
    torch.testing.assert_close(plain.clip, a.clip)
    assert plain.frames is None
    default.set_frames(True)  # what extract --frames does
    assert default(wave32k).frames.shape == (2, 2, 768)  # 1 s windows every 0.5 s


def test_passt_missing_or_bad_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(EastkdError, match=r"checkpoints/passt-s-f128-p16-s10-ap\.476-swa\.pt "
                                          r"not found; download https://github\.com/kkoutini"):
        passt_mod.passt()
    with pytest.raises(EastkdError, match=r"nowhere\.pt not found.*weights=PATH"):
        passt_mod.passt(weights=str(tmp_path / "nowhere.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"head.weight": torch.zeros(3)}, bad)
    with pytest.raises(EastkdError, match=r"bad\.pt does not fit this architecture"):
        passt_mod.passt(weights=str(bad))
    with pytest.raises(EastkdError, match="unknown PaSST option"):
        passt_mod.passt(random_init=True, hop_ms=10)
    with pytest.raises(EastkdError, match="either weights or random_init"):
        passt_mod.passt(weights=str(bad), random_init=True)


# ---------------------------------------------------------------- MULE


class SliceNet(torch.nn.Module):
    """Stand-in for MULE's exported network: (N, 96, 300, 1) -> (N, width), checking its input.

    Columns 0 and 1 report each slice's mean and std so tests can see the standardisation.
    """

    def __init__(self, width: int = 1728) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(96, width - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 96 and x.shape[2] == 300 and x.shape[3] == 1
        stats = torch.stack([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3), correction=0)], dim=1)
        return torch.cat([stats, self.proj(x[..., 0].mean(dim=2))], dim=1)


class WaveNet(torch.nn.Module):
    """Stand-in for a whole-pipeline export: (B, S) at 16 kHz -> (B, T, 1728), one per 2 s."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(64, 1728)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        chunks = wave.unfold(1, 32000, 32000)  # (B, T, 32000)
        return self.proj(chunks.reshape(chunks.shape[0], chunks.shape[1], 64, 500).std(dim=-1))


def _script(module: torch.nn.Module, path) -> str:
    torch.jit.script(module).save(str(path))
    return str(path)


@pytest.fixture
def mule_file(tmp_path):
    torch.manual_seed(0)
    return _script(SliceNet(), tmp_path / "mule.torchscript.pt")


def test_mule_contract(mule_file):
    t = teachers.create("mule", weights=mule_file)
    assert (t.name, t.sample_rate, t.embedding_dim, t.frame_rate) == ("mule", 16000, 1728, 0.5)
    assert t.frame_offset == 2.0  # first slice centred at mel frame 200 = 2 s
    assert t.weights_sha256 == file_sha256(mule_file)
    g = torch.Generator().manual_seed(2)
    out = t(0.1 * torch.randn(2, 5 * 16000, generator=g))
    assert out.clip.shape == (2, 1728) and out.clip.dtype == torch.float32
    assert out.frames.shape == (2, 2, 1728)  # 501 mel frames: slices centred at 200 and 351
    torch.testing.assert_close(out.clip, out.frames.mean(dim=1))
    torch.testing.assert_close(out.frames[..., 0], torch.zeros(2, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.frames[..., 1], torch.ones(2, 2), atol=1e-4, rtol=0)
    short = t(0.1 * torch.randn(1, 16000, generator=g))  # MULE needs 3 s: zero-padded
    assert short.frames.shape == (1, 1, 1728) and torch.isfinite(short.frames).all()


def test_mule_front_end_matches_its_config():
    fe = mule_mod.MuleFrontEnd()
    assert torch.allclose(fe.fb.norm(dim=0), torch.ones(96))  # librosa norm=2.0 filters
    t = torch.arange(4 * 16000) / 16000
    mel = fe(torch.sin(2 * math.pi * 1000 * t)[None])
    assert mel.shape == (1, 96, 1 + 4 * 16000 // 160)
    htk = torch.linspace(0, 2595 * math.log10(1 + 8000 / 700), 98)[1:-1]
    expected = int((htk - 2595 * math.log10(1 + 1000 / 700)).abs().argmin())
    assert int(mel[0].mean(dim=1).argmax()) == expected
    assert mule_mod.slice_centres(2910) == list(range(200, 2800, 200)) + [2760]  # MTAT 29.1 s


def test_mule_front_end_matches_librosa():
    librosa = pytest.importorskip("librosa")
    g = torch.Generator().manual_seed(3)
    y = 0.1 * torch.randn(3 * 16000, generator=g)
    ref = librosa.feature.melspectrogram(
        y=y.numpy(), sr=16000, n_fft=2048, hop_length=160, win_length=400, window="hann",
        center=True, pad_mode="reflect", power=2.0, n_mels=96, fmin=0.0, fmax=8000.0, norm=2.0,
        htk=True)
    ours = mule_mod.MuleFrontEnd()(y[None])[0]
    torch.testing.assert_close(ours, torch.log10(10000 * torch.from_numpy(ref) + 1).float(),
                               atol=1e-4, rtol=1e-4)


def test_mule_fingerprint_follows_the_file(mule_file, tmp_path):
    torch.manual_seed(1)
    other = _script(SliceNet(), tmp_path / "other.pt")
    a, b = mule_mod.mule(weights=mule_file), mule_mod.mule(weights=other)
    assert a.weights_sha256 != b.weights_sha256
    x = 0.1 * torch.randn(1, 3 * 16000)
    assert not torch.allclose(a(x).clip, b(x).clip)


def test_mule_whole_pipeline_export(tmp_path):
    t = mule_mod.mule(weights=_script(WaveNet(), tmp_path / "w.pt"), input="wave",
                      frame_offset=1.0)  # WaveNet's frames: 2 s chunks, centred at 1, 3, 5 s
    assert (t.frame_rate, t.frame_offset) == (0.5, 1.0)
    assert t.options == {"input": "wave", "frame_rate": 0.5, "frame_offset": 1.0}
    out = t(torch.randn(2, 6 * 16000))
    assert out.frames.shape == (2, 3, 1728)
    torch.testing.assert_close(out.clip, out.frames.mean(dim=1))


def test_mule_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(EastkdError, match=r"hub/checkpoints/mule\.torchscript\.pt not found; "
                                          r"export MULE"):
        mule_mod.mule()
    narrow = _script(SliceNet(width=512), tmp_path / "narrow.pt")
    with pytest.raises(EastkdError, match=r"narrow\.pt failed on a 3 s probe.*\(1, 512\).*1728"):
        mule_mod.mule(weights=narrow)
    state = tmp_path / "state.pt"
    torch.save(SliceNet().state_dict(), state)
    with pytest.raises(EastkdError, match=r"state\.pt is not a TorchScript file"):
        mule_mod.mule(weights=str(state))
    with pytest.raises(EastkdError, match="input must be 'slices' or 'wave'"):
        mule_mod.mule(weights=narrow, input="mel")
