"""MkDocs hook: put the benchmark plots of benchmarks/results/ into the site without copying them into docs/.

docs/performance.md links them as ``../benchmarks/results/<name>.png``, which works on GitHub. MkDocs
resolves that link to the same path, so each plot is added under that name and written to
``site/benchmarks/results/<name>.png``. A link to a plot that does not exist still fails ``--strict``.
"""

from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

ROOT = Path(__file__).resolve().parent


def on_files(files, config):
    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        rel = png.relative_to(ROOT).as_posix()
        files.append(
            File(
                f"../{rel}",
                config["docs_dir"],
                config["site_dir"],
                config["use_directory_urls"],
                dest_uri=rel,
                inclusion=InclusionLevel.INCLUDED,
            )
        )
    return files
