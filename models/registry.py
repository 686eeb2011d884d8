"""Registry of SAM 2.1 checkpoints: names, sam2 config names, official URLs and SHA-256 digests.

Pure data, no I/O. Downloading and verifying lives in ``deployments.runtime.weights``.

Source of the URLs: ``checkpoints/download_ckpts.sh`` in facebookresearch/sam2 (release 092824, SAM 2.1).
Source of the digests and sizes: the checksums pinned for the same 092824 URLs by micro-sam
(``micro_sam/v2/util.py``, ``HASHES``) and by Intel's geti-instant-learn (``utils/constants.py``,
``sha_sum``), which agree with each other; the Hugging Face mirrors ``facebook/sam2.1-hiera-*`` serve
byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass

_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"


@dataclass(frozen=True)
class Sam2Checkpoint:
    """One released SAM 2.1 checkpoint.

    Attributes:
        name: registry name, e.g. ``"sam2.1_hiera_tiny"``.
        config: sam2's Hydra config name, resolved inside the installed ``sam2`` package.
        url: official download URL.
        sha256: lowercase hex SHA-256 of the file at ``url``, or ``None`` where no published digest
            is known (the download is then refused unless the caller accepts unverified files).
        size_bytes: file size in bytes, or ``None`` where unknown.
        params_m: parameter count in millions (sam2 README), for display.
    """

    name: str
    config: str
    url: str
    sha256: str | None
    size_bytes: int | None
    params_m: float

    @property
    def filename(self) -> str:
        """File name in the cache dir, e.g. ``sam2.1_hiera_tiny.pt``."""
        return self.url.rsplit("/", 1)[-1]


SAM2_CHECKPOINTS: dict[str, Sam2Checkpoint] = {
    c.name: c
    for c in (
        Sam2Checkpoint(
            name="sam2.1_hiera_tiny",
            config="configs/sam2.1/sam2.1_hiera_t.yaml",
            url=f"{_BASE_URL}/sam2.1_hiera_tiny.pt",
            sha256="7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
            size_bytes=156_008_466,
            params_m=38.9,
        ),
        Sam2Checkpoint(
            name="sam2.1_hiera_small",
            config="configs/sam2.1/sam2.1_hiera_s.yaml",
            url=f"{_BASE_URL}/sam2.1_hiera_small.pt",
            sha256="6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
            size_bytes=184_416_285,
            params_m=46.0,
        ),
        Sam2Checkpoint(
            name="sam2.1_hiera_base_plus",
            config="configs/sam2.1/sam2.1_hiera_b+.yaml",
            url=f"{_BASE_URL}/sam2.1_hiera_base_plus.pt",
            sha256="a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
            size_bytes=323_606_802,
            params_m=80.8,
        ),
        Sam2Checkpoint(
            name="sam2.1_hiera_large",
            config="configs/sam2.1/sam2.1_hiera_l.yaml",
            url=f"{_BASE_URL}/sam2.1_hiera_large.pt",
            sha256="2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
            size_bytes=898_083_611,
            params_m=224.4,
        ),
    )
}

DEFAULT_SAM2_MODEL = "sam2.1_hiera_tiny"


def list_sam2_models() -> list[str]:
    """Names of the registered SAM 2.1 checkpoints, smallest first."""
    return list(SAM2_CHECKPOINTS)


def get_sam2_checkpoint(name: str) -> Sam2Checkpoint:
    """Look up a checkpoint by registry name.

    Raises:
        ValueError: if ``name`` is not registered; the message lists the valid names.
    """
    try:
        return SAM2_CHECKPOINTS[name]
    except KeyError:
        raise ValueError(
            f"unknown SAM 2 model {name!r}; valid names: {', '.join(list_sam2_models())}"
        ) from None
