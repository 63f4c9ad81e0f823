"""Synthetic chest radiographs: the project's embedded default dataset (a stand-in for real data).

:func:`generate_dataset` writes ``<out_dir>/images/*.dcm`` (DX or CR DICOM with fake but
realistic-looking PHI, so that de-identification has something to remove) and
``<out_dir>/labels.csv`` in the NIH ChestX-ray14 ``Data_Entry_2017.csv`` format plus a ``Site``
column. Everything is a pure function of ``(n, site, seed, config)``: the same arguments give
byte-identical files, on any machine (exp, log, power and cos come from
:mod:`~cxr_triage.data.synth.portable`, not from numpy's CPU-dispatched SIMD ufuncs).

The modules, by concern:

- :mod:`~cxr_triage.data.synth.sites`: site profiles and presets (acquisition, prevalence).
- :mod:`~cxr_triage.data.synth.config`: :class:`SynthConfig`, the difficulty knobs.
- :mod:`~cxr_triage.data.synth.cohort`: patients, follow-ups, labels and lesion planning.
- :mod:`~cxr_triage.data.synth.anatomy`, :mod:`~cxr_triage.data.synth.lesions`,
  :mod:`~cxr_triage.data.synth.acquisition`, :mod:`~cxr_triage.data.synth.render`: rendering.
- :mod:`~cxr_triage.data.synth.portable`: elementary functions with the same bits on every CPU.
- :mod:`~cxr_triage.data.synth.dicom`: the DICOM writer (shared with tests and benchmarks).
- :mod:`~cxr_triage.data.synth.generate`: :func:`generate_dataset`, which ties them together.

How an image is made (numpy only, vectorised):

1. A density map (attenuation along the ray, arbitrary units) is built from smooth shapes in a
   coordinate frame jittered per image (rotation, translation, scale): a body with a cylindrical
   thickness profile, two air-filled lungs with vascular markings, heart, mediastinum and spine,
   diaphragm domes, posterior and anterior ribs, clavicles, breast shadows for female patients.
2. Findings add (or, for pneumothorax and emphysema, remove) density with a size and contrast
   drawn per finding; a configurable fraction of abnormal images is drawn subtle.
3. The site's acquisition turns density into stored values: exposure, contrast (gamma), a smooth
   background (heel effect), blur, signal-dependent quantum noise, bit depth and photometric
   interpretation (MONOCHROME1 stores the inverse: lungs high, bone low).

Demographics act on both anatomy (thorax and heart size, breast shadows, rib density, lung
markings) and prevalence (older and male patients are a little more often abnormal), and AP views
are more frequent among abnormal images, as in real data; fairness and shortcut analyses therefore
have something to find. Nothing here is medical ground truth.
"""

from __future__ import annotations

from cxr_triage.data.synth.config import SynthConfig
from cxr_triage.data.synth.generate import LABEL_COLUMNS, generate_dataset
from cxr_triage.data.synth.sites import SITE_PRESETS, SiteProfile, site_profile

__all__ = [
    "LABEL_COLUMNS",
    "SITE_PRESETS",
    "SiteProfile",
    "SynthConfig",
    "generate_dataset",
    "site_profile",
]
