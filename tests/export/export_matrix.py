"""The parity matrix shared by conftest.py and the parity tests (a uniquely named module)."""

from __future__ import annotations

import itertools

LAYERS = (1, 2, 4)
MATRIX = list(itertools.product(LAYERS, (False, True), ("many_to_one", "many_to_many")))


def matrix_id(params: tuple[int, bool, str]) -> str:
    layers, bidir, task = params
    return f"L{layers}-{'bi' if bidir else 'uni'}-{task}"
