"""Prefect flows: ordering, retries, schedules and notifications; the logic is in the library.

``python -m flows.deploy`` registers the schedules; ``python -m flows.<flow> --help`` runs one.
"""
