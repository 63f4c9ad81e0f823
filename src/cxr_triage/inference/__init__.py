"""Inference: the model package and the one ``Predictor`` every consumer scores through.

- :mod:`~cxr_triage.inference.layout`: what a package folder holds, and reading it;
- :mod:`~cxr_triage.inference.package`: assembling a package from the pipeline's outputs;
- :mod:`~cxr_triage.inference.predictor`: ``Predictor`` (decode, prepare, score, label);
- :mod:`~cxr_triage.inference.features`: the monitoring features of a scored image;
- :mod:`~cxr_triage.inference.batch`: the one scoring loop over files and folders;
- :mod:`~cxr_triage.inference.registry`: packages in the model store, which one serves, and
  ``resolve_package`` (which one to use);
- :mod:`~cxr_triage.inference.predlog`: the prediction log every scoring front end appends to.
"""
