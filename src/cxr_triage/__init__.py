"""cxr-triage: chest X-ray Normal/Abnormal triage as an MLOps system."""

__version__ = "0.1.0"
