"""The compiled binlog row decoder (transform/_rowcodec.c): rowcodec.compile_decoder's plan, walked in C."""

from collections.abc import Sequence
from typing import Any

class Decoder:
    def __init__(self, plan: Sequence[tuple[int, int, int, str, str]]) -> None: ...
    def __call__(self, body: bytes) -> list[tuple[tuple[Any, ...], str | None]]: ...
