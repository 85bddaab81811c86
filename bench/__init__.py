"""lstm-serve benchmark: the server against raw ONNX Runtime and against itself, in one run.

``python -m bench`` (or ``make bench``) runs every phase and writes ``bench/results/``:
results.md (tables, machine info, flags), results.json and PNG plots. See bench/README.md.

Every claim is a ratio measured within one run, because these machines are shared and noisy:
the raw ``InferenceSession.run`` ceiling is measured immediately before and after each server
phase, and the CPU other processes used during each phase is recorded and flagged.
"""
