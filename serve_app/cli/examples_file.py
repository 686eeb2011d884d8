"""``samgraph examples export`` and ``import``: a collection to one file and back, through a running service.

The file is :mod:`deployments.runtime.example_file`'s JSON Lines (gzip-compressed when its name ends in
``.gz``; read either way). Export streams the service's answer to ``FILE.partial`` and renames it to
``FILE`` only once the end line has arrived, so a ``FILE`` is always whole. Import checks the whole file
first (the first bad line fails it, before anything is sent), then sends it in parts of
``batch_points`` examples, each a valid file of its own (the header, its points, an end line), so a file
of any size fits the service's ``limits.max_import_bytes``. Each example keeps its id, so an import that
stopped midway can simply be run again.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from deployments.errors import InputError
from deployments.runtime.example_file import ExampleFileReader, end_line
from serve_app.client import ApiResponseError, ApiStreamError, ApiUnreachable, SamgraphClient

DEFAULT_BATCH_POINTS = 1000


def _open_write(path: Path, gz: bool) -> IO[str]:
    if gz:
        return gzip.open(path, "wt", encoding="utf-8", newline="\n")
    return open(path, "w", encoding="utf-8", newline="\n")


@contextlib.contextmanager
def _open_read(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, uncompressed when it is gzip (told by its magic number, not its name)."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        yield f


def export_to_file(api: SamgraphClient, collection: str, path: str | os.PathLike) -> dict:
    """Write ``collection`` of the service to ``path`` (gzip when it ends in ``.gz``).

    Returns:
        ``{"collection", "dim", "points", "out"}``.

    Raises:
        ApiResponseError, ApiStreamError, ApiUnreachable: as :meth:`SamgraphClient.export_examples`;
            nothing is left at ``path`` (nor a ``.partial``).
        OSError: ``path`` cannot be written.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    header, lines = {}, 0
    try:
        with _open_write(partial, gz=path.name.endswith(".gz")) as out:
            for line in api.export_examples(collection):  # header, points, end (checked by the client)
                out.write(line)
                lines += 1
                if lines == 1:
                    header = json.loads(line)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return {"collection": collection, "dim": header.get("dim"), "points": lines - 2, "out": str(path)}


def check_file(path: str | os.PathLike) -> dict:
    """Check a whole examples file (in constant memory, but for the ids seen).

    Returns:
        ``{"collection", "dim", "points", "embedder"}`` of its header and points.

    Raises:
        InvalidRequest: the first fault, naming ``line N.<key>``.
        OSError: the file cannot be read.
    """
    reader = ExampleFileReader()
    with _open_read(Path(path)) as f:
        for line in f:
            reader.feed(line)
    header = reader.finish()
    return {"collection": header.collection, "dim": header.dim, "points": reader.points, "embedder": header.embedder}


def file_parts(path: str | os.PathLike, batch_points: int = DEFAULT_BATCH_POINTS) -> Iterator[tuple[bytes, int]]:
    """The file as parts that are each an examples file: ``(header + up to batch_points point lines + end
    line, number of points)``. The file is read once, a part in memory at a time; an empty collection
    gives one part with 0 points.

    Raises:
        ValueError: ``batch_points`` below 1.
        InvalidRequest: a bad line (check the file first with :func:`check_file` to fail before sending).
    """
    if batch_points < 1:
        raise ValueError(f"batch_points must be at least 1; got {batch_points}")
    reader = ExampleFileReader()
    head, lines = b"", []
    sent = False
    with _open_read(Path(path)) as f:
        for line in f:
            point = reader.feed(line)
            if not head and reader.header is not None:
                head = line if line.endswith(b"\n") else line + b"\n"
            elif point is not None:
                lines.append(line if line.endswith(b"\n") else line + b"\n")
                if len(lines) == batch_points:
                    yield head + b"".join(lines) + end_line(len(lines)), len(lines)
                    lines, sent = [], True
    reader.finish()
    if lines or not sent:
        yield head + b"".join(lines) + end_line(len(lines)), len(lines)


def import_from_file(
    api: SamgraphClient,
    path: str | os.PathLike,
    collection: str | None = None,
    batch_points: int = DEFAULT_BATCH_POINTS,
    progress=None,
) -> dict:
    """Check ``path`` whole, then upsert it into the service in parts of ``batch_points`` examples.

    Args:
        api: the service.
        path: the examples file (plain or gzip).
        collection: the collection to write to; None: the file's.
        batch_points: examples per request.
        progress: called as ``progress(done, total)`` after each part, or None.

    Returns:
        The last part's answer (``collection``, ``dim``, ``count``...) with ``imported`` summed over the
        parts and ``created`` true when the first part made the collection; ``warnings`` as the service
        gave them.

    Raises:
        InvalidRequest: a bad line (nothing sent).
        ApiResponseError, ApiUnreachable: a part was refused or not answered; the parts before it are
            stored (run the import again: it is idempotent).
    """
    total = check_file(path)["points"]
    done, created, answer = 0, False, {}
    for body, n in file_parts(path, batch_points):
        answer = api.import_examples(body, collection)
        created = created or answer.get("created", False)
        done += n
        if progress is not None:
            progress(done, total)
    return {**answer, "imported": done, "created": created}


def add_file_commands(exsub, api_args, client: Callable[[argparse.Namespace], SamgraphClient], fail) -> None:
    """Add ``export`` and ``import`` to the ``samgraph examples`` sub-commands.

    Args:
        exsub: the ``examples`` sub-parsers.
        api_args: ``api_args(parser, func)`` adds ``--api``, ``--timeout``, ``--api-key`` and sets ``func``.
        client: makes the :class:`SamgraphClient` of parsed arguments.
        fail: prints a failed call; returns the exit code.
    """
    run = functools.partial(cmd_examples_file, client=client, fail=fail)
    export = exsub.add_parser("export", help="write a collection (ids, vectors, labels, payloads) to one file")
    api_args(export, run)
    export.add_argument("--collection", default="default")
    export.add_argument("--out", required=True, help="the file (JSON Lines; gzip when it ends in .gz)")
    import_ = exsub.add_parser("import", help="upsert a file written by export into a collection (idempotent)")
    api_args(import_, run)
    import_.add_argument("--file", required=True, help="a file written by `examples export` (plain or gzip)")
    import_.add_argument("--collection", default=None, help="the collection to write to (default: the file's)")
    import_.add_argument(
        "--batch-points",
        type=int,
        default=DEFAULT_BATCH_POINTS,
        help=f"examples per request (default {DEFAULT_BATCH_POINTS})",
    )


def cmd_examples_file(args: argparse.Namespace, client: Callable[[argparse.Namespace], SamgraphClient], fail) -> int:
    """``examples export`` (the collection to ``--out``) or ``examples import`` (``--file`` into the
    service): print the answer as JSON, warnings and progress on stderr; the exit code (0; 1 when the
    service failed or refused, 2 for a bad or unreadable file)."""
    if args.action == "import" and args.batch_points < 1:
        print(f"error: --batch-points must be at least 1; got {args.batch_points}", file=sys.stderr)
        return 2

    def progress(done: int, total: int) -> None:
        print(f"imported {done}/{total}", file=sys.stderr)

    try:
        with client(args) as api:
            if args.action == "export":
                out = export_to_file(api, args.collection, args.out)
            else:
                out = import_from_file(api, args.file, args.collection, args.batch_points, progress)
    except (ApiUnreachable, ApiResponseError, ApiStreamError) as e:
        if args.action == "import":
            print(
                "the examples sent before the failure are stored; the import is idempotent: run it again",
                file=sys.stderr,
            )
        return fail(e)
    except InputError as e:
        print(f"error: {args.file}: {e.message}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in out.pop("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0
