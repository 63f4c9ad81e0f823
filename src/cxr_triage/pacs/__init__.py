"""Hospital integration: DICOM in, triage, DICOM results back (a front end beside ``serving``).

One process (``cxr-triage listen``) runs three parts that meet only in the spool:

- :mod:`~cxr_triage.pacs.scp`: the C-STORE/C-ECHO listener (pynetdicom). Each accepted instance
  is written durably into the spool before the listener answers Success.
- :mod:`~cxr_triage.pacs.triage`: the worker. It scores spooled instances through the one
  :class:`~cxr_triage.inference.predictor.Predictor` (batched), logs each prediction in the
  :class:`~cxr_triage.inference.predlog.PredictionLog`, closes a study after a quiet period and
  makes its result: a DICOM Comprehensive SR (:mod:`~cxr_triage.pacs.report`) queued in the
  outbox for every destination.
- :mod:`~cxr_triage.pacs.outbox`: the sender. C-STORE to destination AEs, STOW-RS to a
  DICOMweb server and the worklist webhook, with retries and backoff; every attempt recorded.

The rest: :mod:`~cxr_triage.pacs.settings` (deployment settings from the environment or a
file), :mod:`~cxr_triage.pacs.spool` (files and the state database, pseudonymised),
:mod:`~cxr_triage.pacs.dicomweb` (QIDO-RS/WADO-RS client side: ``cxr-triage pull``, labelled
studies for the ingestion flow), :mod:`~cxr_triage.pacs.stow` (STOW-RS requests into the
spool), :mod:`~cxr_triage.pacs.listener` (the three parts as one long-running process).

Nothing runs on import; the heavy libraries (pynetdicom, highdicom, dicomweb-client) are
imported by the modules that use them.
"""
