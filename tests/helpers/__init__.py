"""Helpers shared by the tests, each defined once (pytest puts tests/ on sys.path).

- ``ports``: a free TCP port on 127.0.0.1.
- ``dicom``: small CR/DX DICOM files through the library's one writer
  (``cxr_triage.data.synth.dicom.image_dataset``).
- ``pipeline``: the tiny trained pipeline (synth .. package) and a stub package.
- ``commands``: the CLI runner for ``cxr-triage`` and running dvc/git in a copied pipeline.
- ``pacs``, ``netns``: the DICOM listener's destination and SCU; a private network namespace.
- ``bento``: a real ``bentoml serve`` of the service on 127.0.0.1.
- ``drift_inputs``, ``summaries``: deterministic monitoring rows and a drift summary.

Fixtures live only in the ``conftest.py`` files; these modules hold plain functions and classes.
"""
