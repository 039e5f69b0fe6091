"""Content digests: a sha256 of every data chunk's *decoded* rows, recorded when the chunk is
written, and one store digest, a hash tree over them (docs/store-format.md, "Content digest").

Decoded rather than stored bytes: the digest follows the data, not the codec, so the same data
written by the other backend or another compressor has the same digest. Each section that
records digests has a group ``SECTION/digest`` with one uint8 array ``(n_chunks, 32)`` per data
array, one storage chunk per data chunk: the hash of a chunk is written by whoever writes that
chunk, in a write of its own (no read-modify-write that concurrent writers could race on).

The tree: chunk leaf = sha256 of the chunk's rows (little-endian, C order), "" for a chunk all of
whose rows are pending; array node = sha256 of its dtype, shape, chunk length and leaves;
section node = sha256 of its ``identity``, its ``status`` bytes, its arrays and its ``params``;
store digest = sha256 of the dataset fingerprint, the items table's content checksum and the
section nodes. Volatile attributes (creation times, timings, versions) are outside it, so an
unchanged store keeps its digest across resumes and rewrites of identical data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from eastkd.errors import StoreDamageError
from eastkd.store.backends.base import PENDING, Backend, is_string_dtype

if TYPE_CHECKING:
    from eastkd.store.store import Section, Store

DIGEST_GROUP = "digest"
PREFIX = "eastkd:sha256:"
TREE_FORMAT = "eastkd-digest-1"
SINCE_FORMAT = 3  # the store format version whose sections record chunk digests
HASH_BYTES = 32

# per array path: one leaf per chunk (bytes, or b"" for a chunk that is all pending)
Leaves = list[bytes]


def chunk_hash(rows: np.ndarray) -> bytes:
    """sha256 of rows as decoded: little-endian, C order (independent of codec and backend)."""
    a = np.asarray(rows)
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return hashlib.sha256(a.reshape(-1).view(np.uint8)).digest()


def digest_path(section_path: str, name: str) -> str:
    return f"{section_path}/{DIGEST_GROUP}/{name}"


def create_digest_array(backend: Backend, section_path: str, name: str, n: int,
                        chunk: int) -> None:
    """The per-chunk hashes of array ``name``: ``(n_chunks, 32)`` uint8, zero = not recorded."""
    n_chunks = max(1, -(-n // chunk))
    try:
        backend.create_array(digest_path(section_path, name), (n_chunks, HASH_BYTES),
                             (1, HASH_BYTES), np.uint8, dims=("chunk", "sha256"))
    except FileExistsError:  # a concurrent writer created it first
        pass


def records_digests(backend: Backend, section_path: str) -> bool:
    return backend.exists(f"{section_path}/{DIGEST_GROUP}")


def record(section: "Section", name: str, start: int, value: np.ndarray) -> None:
    """Record the hashes of the chunks of ``section/name`` that rows ``start:start+len(value)``
    touch (just written). A chunk only partly covered is read back whole."""
    backend = section.backend
    dpath = digest_path(section.path, name)
    if not section.records_digest(name):
        return
    path = f"{section.path}/{name}"
    info = backend.info(path)
    n, chunk = info.shape[0], info.chunks[0]
    stop = start + len(value)
    first, last = start // chunk, -(-stop // chunk)
    hashes = []
    for c in range(first, last):
        lo, hi = c * chunk, min(n, (c + 1) * chunk)
        if lo >= start and hi <= stop:
            rows = value[lo - start:hi - start]
        else:
            rows = backend.read(path, slice(lo, hi), allow_missing=True)
        hashes.append(np.frombuffer(chunk_hash(rows), dtype=np.uint8))
    for i, c in enumerate(range(first, last)):  # one storage chunk each: never a partial write
        backend.write(dpath, slice(c, c + 1), hashes[i][None])


def recorded(backend: Backend, section_path: str, name: str) -> Leaves | None:
    """The hashes recorded for array ``name`` (b"" where none was); None where the section
    records none (written before format 3)."""
    dpath = digest_path(section_path, name)
    if not backend.exists(dpath):
        return None
    raw = backend.read(dpath)
    return [row.tobytes() if row.any() else b"" for row in raw]


def pending_chunks(status: np.ndarray, chunk: int) -> np.ndarray:
    """Per chunk: whether every row is pending (its leaf is "")."""
    n_chunks = -(-len(status) // chunk)
    padded = np.full(n_chunks * chunk, PENDING, dtype=status.dtype)
    padded[:len(status)] = status
    return (padded.reshape(n_chunks, chunk) == PENDING).all(axis=1)


def _sha_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def array_node(backend: Backend, path: str, leaves: Leaves, status: np.ndarray) -> str:
    info = backend.info(path)
    chunk = info.chunks[0]
    blank = pending_chunks(status, chunk)
    return _sha_json({"dtype": np.dtype(info.dtype).str,
                      "shape": list(info.shape), "chunk": int(chunk),
                      "leaves": ["" if blank[i] else leaf.hex()
                                 for i, leaf in enumerate(leaves)]})


def _content_sha(backend: Backend, path: str) -> str:
    data = backend.read(path)
    if is_string_dtype(data.dtype):
        return _sha_json([str(x) for x in data.reshape(-1)])
    return chunk_hash(data).hex()


def section_node(sec: "Section", leaves_of: Callable[[str], Leaves | None]) -> str | None:
    """The section's node from the leaves ``leaves_of(array path)`` gives (None: unknown)."""
    backend = sec.backend
    status = sec.status()
    arrays = {}
    for name in sec.array_names():
        path = f"{sec.path}/{name}"
        leaves = leaves_of(path)
        if leaves is None:
            return None
        arrays[name] = array_node(backend, path, leaves, status)
    base = f"{sec.path}/params"
    params = {p: _content_sha(backend, f"{base}/{p}") for p in backend.children(base)}
    return _sha_json({"identity": sec.attrs.get("identity"), "status": chunk_hash(status).hex(),
                      "arrays": arrays, "params": params})


@dataclass
class StoreDigest:
    """The store digest (None where it could not be computed) and its section nodes."""

    digest: str | None
    sections: dict[str, str | None] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "sections": self.sections, "note": self.note}


def store_digest(store: "Store", leaves_of: Callable[[str], Leaves | None] | None = None
                 ) -> StoreDigest:
    """The store digest from the recorded chunk hashes, or from ``leaves_of`` (hashes of the
    content, as ``verify`` computes them)."""
    from eastkd.store.store import SECTION_KINDS

    def from_record(path: str) -> Leaves | None:
        section_path, _, name = path.rpartition("/")
        return recorded(store.backend, section_path, name)

    nodes: dict[str, str | None] = {}
    for kind in SECTION_KINDS:
        for name in store.section_names(kind):
            if store.has_section(kind, name):
                sec = store.section(kind, name)
                try:
                    nodes[sec.path] = section_node(sec, leaves_of or from_record)
                except StoreDamageError:  # its status, params or digests: verify says which
                    nodes[sec.path] = None
    unknown = [p for p, v in nodes.items() if v is None]
    if unknown:
        return StoreDigest(None, nodes, _unknown_note(store, unknown))
    root = _sha_json({"format": TREE_FORMAT,
                      "dataset": store.attrs.get("dataset", {}).get("fingerprint"),
                      "items": store.items.content_sha256(), "sections": nodes})
    return StoreDigest(PREFIX + root, nodes)


def _unknown_note(store: "Store", unknown: list[str]) -> str:
    """Why the digest of sections ``unknown`` is not known, and what computes it."""
    old = [p for p in unknown if not records_digests(store.backend, p)]
    if old:
        version = store.attrs.get("eastkd_version", "?")
        return (f"no digest ({', '.join(old)} written by eastkd {version}, before store format "
                f"{SINCE_FORMAT} recorded chunk digests); `eastkd verify --deep` computes it "
                "from the content")
    return (f"no digest: {', '.join(unknown)} could not be read whole (damaged); repair it "
            "first")


def differing(ours: dict[str, str | None], theirs: dict[str, Any]) -> list[str]:
    """Sections whose nodes differ between two digests' section maps."""
    return sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
