"""Fault injection for one test: a worker started with this folder on PYTHONPATH dies (SIGKILL, as
the kernel's out-of-memory killer would) when it decodes a photo that carries the crash marker.

It stands for a photo that crashes the decoder itself (a native library bug), which no
exception handler can catch.
"""

import os
import signal

CRASH_MARKER = b"VITRINE-CRASH-TEST"

try:
    import common.photos.decode as decoding
except ImportError:  # not a Vitrine process
    decoding = None

if decoding is not None:
    _decode = decoding.decode_image

    def decode_or_die(data, settings, min_side=None):  # type: ignore[no-untyped-def]
        if CRASH_MARKER in data:
            os.kill(os.getpid(), signal.SIGKILL)
        return _decode(data, settings, min_side)

    decoding.decode_image = decode_or_die
