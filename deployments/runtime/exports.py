"""ONNX exports of a model on disk: written once, verified on every load.

An export is a directory in the layout of ONNX exports of SAM models in the wild (e.g.
``SharpAI/sam2-hiera-tiny-onnx``): ``encoder.onnx`` and ``decoder.onnx``
(:data:`models.segmenter.ENCODER_FILE`, :data:`~models.segmenter.DECODER_FILE`), plus samgraph's manifest
``export.json``::

    {"format": "samgraph-onnx-export", "version": 1, "model_id": "sam2.1_hiera_tiny", "family": "sam2",
     "weights": "sha256:<hex of the checkpoint>", "opset": 17, "torch": "2.5.1", "created": "<UTC ISO time>",
     "files": {"encoder.onnx": {"sha256": "<hex>", "size_bytes": 134217728}, "decoder.onnx": {...}}}

* :func:`ensure_export`: a replica whose stage runs an ONNX runtime calls it at start-up; the first one to
  get the lock exports (:meth:`models.segmenter.SegmenterFamily.export_onnx`) into a temporary directory
  beside the target and renames it into place (atomic: nobody ever sees half an export), the others wait
  and then load it. Later starts only verify it.
* :func:`verify_export`: every file the manifest lists must be there with its size and SHA-256; a missing,
  truncated or altered file (or manifest) is refused with :class:`ExportError` naming the file. A user's
  own export directory may have no manifest (``require_manifest=False``): its files' digests are then
  computed and reported, not verified.

Exports live under the weights cache dir (:func:`deployments.runtime.weights.cache_dir`), one directory per
model, weights and opset (:func:`export_dir_for`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from deployments.runtime.weights import WeightsError, cache_dir, sha256_file
from models.segmenter import DECODER_FILE, ENCODER_FILE

MANIFEST_FILE = "export.json"
EXPORT_FILES = (ENCODER_FILE, DECODER_FILE)
MANIFEST_FORMAT, MANIFEST_VERSION = "samgraph-onnx-export", 1
#: How long a replica waits for another one's export (SAM 2 large takes minutes on a few cores).
LOCK_TIMEOUT_S = 1800.0


class ExportError(WeightsError):
    """An export cannot be used: a file or the manifest is missing, truncated or altered; the message names
    the file and says what to do. (A :class:`~deployments.runtime.weights.WeightsError`: an export is the
    model's weights in another form, and fails start-up the same way.)"""


@dataclass(frozen=True)
class ExportFile:
    """One file of an export.

    Attributes:
        name: file name inside the export directory (``encoder.onnx``).
        sha256: lowercase hex SHA-256 of the file.
        size_bytes: its size in bytes.
    """

    name: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Export:
    """A checked export directory.

    Attributes:
        directory: where it is.
        files: its graphs by file name (:data:`EXPORT_FILES`).
        manifest: the parsed ``export.json``, or None for a user's export without one.
        verified: True when every file matched the manifest's size and SHA-256 (False: no manifest, the
            digests were only computed).
    """

    directory: Path
    files: Mapping[str, ExportFile]
    manifest: Mapping | None
    verified: bool

    def path(self, name: str) -> Path:
        """The path of the file ``name`` (``encoder.onnx`` or ``decoder.onnx``)."""
        return self.directory / self.files[name].name

    @property
    def digest(self) -> str:
        """Hex SHA-256 over the files' names and digests: one id for the whole export (the key of compiled
        artefacts such as OpenVINO blobs or TensorRT engines)."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name}={self.files[name].sha256};".encode())
        return h.hexdigest()

    def describe(self) -> dict:
        """What ``/readyz`` shows of it: ``{"verified", "weights", "opset", "files": {name: {"sha256",
        "size_bytes"}}}`` (``weights``/``opset``: the manifest's, None without one). No path."""
        manifest = self.manifest or {}
        return {
            "verified": self.verified,
            "weights": manifest.get("weights"),
            "opset": manifest.get("opset"),
            "files": {n: {"sha256": f.sha256, "size_bytes": f.size_bytes} for n, f in self.files.items()},
        }


def weights_identity(weights: str, seed: int | None = None) -> str:
    """The identity of a model's weights that an export is made from: the checkpoint's ``"sha256:<hex>"``,
    or ``"random:seed=<n>"`` for seeded random weights (``weights == "random"``; the seed tells them apart).

    Raises:
        ValueError: random weights without a seed.
    """
    if weights == "random":
        if seed is None:
            raise ValueError("random weights need their seed to name an export")
        return f"random:seed={int(seed)}"
    return weights


def export_dir_for(
    model_id: str, weights_id: str, opset: int, root: str | os.PathLike | None = None, layout: int = 1
) -> Path:
    """The cache directory of the export of ``model_id`` with the weights ``weights_id``
    (:func:`weights_identity`) at ``opset`` in the family's graph layout version ``layout``
    (``SegmenterFamily.export_layout``, so that an export written by older code is not reused):
    ``<root>/exports/<model_id>/<weights>-opset<N>-layout<L>``, ``root`` defaulting to the weights cache dir;
    ``<weights>`` is ``sha256-<first 16 hex>`` or ``random-seed<n>``."""
    kind, _, value = weights_id.partition(":")
    slug = f"sha256-{value[:16]}" if kind == "sha256" else f"{kind}-{value.replace('=', '')}"
    name = f"{slug}-opset{opset}-layout{layout}"
    return Path(root if root is not None else cache_dir()) / "exports" / model_id / name


def _fail(path: Path, problem: str, cached: bool) -> ExportError:
    fix = (
        f"delete {path.parent} and start again to export anew"
        if cached
        else "export it again (samgraph models export MODEL --format onnx --out DIR)"
    )
    return ExportError(f"ONNX export file {path}: {problem}; refusing to load it ({fix})")


def verify_export(
    directory: str | os.PathLike,
    require_manifest: bool = True,
    model_id: str | None = None,
    cached: bool = False,
) -> Export:
    """Check an export directory before anything loads it.

    With a manifest (``export.json``), each file it lists must exist with the recorded size and SHA-256,
    and it must list both :data:`EXPORT_FILES`. Without one (allowed only when ``require_manifest`` is
    False, for a user's own export), both files must exist; their digests are computed and the export is
    returned unverified.

    Args:
        directory: the export directory.
        require_manifest: refuse a directory without ``export.json`` (exports samgraph wrote always have one).
        model_id: if given, a manifest naming another model is refused.
        cached: the directory is samgraph's own cache entry (the message then says to delete it).

    Returns:
        The :class:`Export`.

    Raises:
        ExportError: the directory, a file or the manifest is missing, unreadable, truncated or altered;
            the message names the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"ONNX export directory {directory} does not exist")
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        if require_manifest:
            raise _fail(manifest_path, "missing (every export samgraph writes has one)", cached)
        files = {}
        for name in EXPORT_FILES:
            path = directory / name
            if not path.is_file():
                raise _fail(path, "missing (an export holds encoder.onnx and decoder.onnx)", cached)
            files[name] = ExportFile(name, sha256_file(path), path.stat().st_size)
        return Export(directory, files, None, verified=False)
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = manifest["files"]
        entries = {name: (str(listed[name]["sha256"]).lower(), int(listed[name]["size_bytes"])) for name in listed}
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"unreadable or not a samgraph export manifest ({type(e).__name__}: {e})"
        raise _fail(manifest_path, problem, cached) from e
    missing = [n for n in EXPORT_FILES if n not in entries]
    if missing:
        raise _fail(manifest_path, f"lists no {', '.join(missing)}", cached)
    if model_id is not None and manifest.get("model_id") not in (None, model_id):
        raise _fail(manifest_path, f"is an export of {manifest.get('model_id')!r}, not {model_id!r}", cached)
    files = {}
    for name, (sha256, size) in entries.items():
        path = directory / name
        if Path(name).name != name:
            raise _fail(manifest_path, f"names a file outside the directory ({name!r})", cached)
        if not path.is_file():
            raise _fail(path, "missing (the manifest lists it)", cached)
        actual_size = path.stat().st_size
        if actual_size != size:
            raise _fail(path, f"{actual_size} bytes where the manifest records {size} (truncated or replaced)", cached)
        digest = sha256_file(path)
        if digest != sha256:
            raise _fail(path, f"SHA-256 {digest} differs from the manifest's {sha256} (corrupted or altered)", cached)
        files[name] = ExportFile(name, digest, size)
    return Export(directory, files, manifest, verified=True)


def write_export(directory: str | os.PathLike, files: Mapping[str, bytes], meta: Mapping) -> Export:
    """Write an export atomically: the files and their manifest go to a temporary directory beside
    ``directory``, which is then renamed to it, so a reader sees the whole export or none.

    Args:
        directory: the target; must not exist yet.
        files: ``{ENCODER_FILE: bytes, DECODER_FILE: bytes}`` (:meth:`SegmenterFamily.export_onnx`).
        meta: what the manifest records besides the files: ``model_id``, ``family``, ``weights``, ``opset``,
            ``torch``...

    Returns:
        The written, verified :class:`Export`.

    Raises:
        ExportError: ``files`` lacks one of :data:`EXPORT_FILES`.
        FileExistsError: ``directory`` appeared meanwhile (another writer won; use its export).
    """
    directory = Path(directory)
    missing = [n for n in EXPORT_FILES if n not in files]
    if missing:
        raise ExportError(f"an export needs {' and '.join(EXPORT_FILES)}; the exporter gave no {', '.join(missing)}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
    try:
        entries = {}
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            **meta,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": entries,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(tmp, directory)  # atomic; fails when the target exists (and is not empty)
        except OSError as e:
            if directory.exists():
                raise FileExistsError(f"{directory} was written meanwhile") from e
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return verify_export(directory, model_id=meta.get("model_id"), cached=True)


def ensure_export(
    directory: str | os.PathLike,
    make: Callable[[], Mapping[str, bytes]],
    meta: Mapping,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
) -> tuple[Export, bool]:
    """The verified export at ``directory``, made with ``make()`` and written (:func:`write_export`) when there
    is none. Replicas starting together take a file lock (``<directory>.lock``) so that one exports and the
    others wait for it and reuse it.

    Args:
        directory: the cache entry (:func:`export_dir_for`).
        make: returns ``{ENCODER_FILE: bytes, DECODER_FILE: bytes}``; called at most once, only when needed.
        meta: the manifest's fields besides the files (see :func:`write_export`).
        lock_timeout_s: how long to wait for another replica's export.

    Returns:
        (the export, True when this call wrote it).

    Raises:
        ExportError: the cached export does not verify (a file missing, truncated or altered).
        filelock.Timeout: another export held the lock for longer than ``lock_timeout_s``.
    """
    from filelock import FileLock

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{directory}.lock", timeout=lock_timeout_s):
        if directory.exists():
            return verify_export(directory, model_id=meta.get("model_id"), cached=True), False
        files = make()
        try:
            return write_export(directory, files, meta), True
        except FileExistsError:  # a writer that did not take the lock (another tool) won
            return verify_export(directory, model_id=meta.get("model_id"), cached=True), False
