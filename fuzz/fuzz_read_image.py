"""Coverage-guided fuzzing (atheris + libFuzzer) of :func:`cxr_triage.io.images.read_image`.

A finding is any exception other than a typed refusal: an exception escaping ``read_image``
at all, or the bare ``InvalidImageError`` of its last guard (``invalid_image``: a failure none
of the narrow guards foresaw), or a refusal caused by MemoryError. Memory is bounded by
libFuzzer's ``-rss_limit_mb``; the harness lowers ``max_pixels`` (``FUZZ_MAX_PIXELS``, default
4 M) so that every legitimate decode fits well under it. Every modality and the body parts of
the seeds are allowed, so that mutated inputs get past the modality rules into the decoders.

    python fuzz/build_corpus.py --out .cache/fuzz/seeds
    python fuzz/fuzz_read_image.py .cache/fuzz/corpus .cache/fuzz/seeds -runs=200000 \\
        -rss_limit_mb=3072 -max_len=65536 -timeout=30
    python fuzz/fuzz_read_image.py crash-<sha1>      # replay one input

``make fuzz`` runs exactly that; new coverage goes to ``.cache/fuzz/corpus`` and findings to
``.cache/fuzz/artifacts/``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import atheris

with atheris.instrument_imports(include=["cxr_triage", "pydicom", "PIL"]):
    import PIL.Image  # noqa: F401 - instrumented before the reader imports it
    import pydicom  # noqa: F401

    from cxr_triage.errors import InvalidImageError
    from cxr_triage.io.images import read_image
    from cxr_triage.io.records import ImageLimits

LIMITS = ImageLimits(
    max_pixels=int(os.environ.get("FUZZ_MAX_PIXELS", 4_000_000)),
    max_file_bytes=1 << 20,
    max_inflated_bytes=16 << 20,
    allowed_modalities=("CR", "DX", "MR", "CT", "NM", "OT", "SC", "SR", ""),
    allowed_body_parts=("CHEST", "THORAX", "HEAD", "WHOLE BODY", "HAND"),
)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris looks for
    try:
        read_image(data, LIMITS)
    except InvalidImageError as exc:
        if type(exc) is InvalidImageError or isinstance(exc.__cause__, MemoryError):
            # The last guard caught it: a failure no narrow guard foresaw. Re-raise the cause,
            # whose traceback shows where it happened.
            raise (exc.__cause__ or exc) from None


def main() -> None:
    warnings.simplefilter("ignore")  # pydicom warns on every malformed element
    logging.disable(logging.CRITICAL)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
