"""DVC stage entry points: `python -m cxr_triage.stages.<stage>`; file edges only, no logic."""
