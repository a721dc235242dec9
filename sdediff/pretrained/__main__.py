"""``python -m sdediff.pretrained RUN_DIR``: make the newest checkpoint of a digits run the bundled
model (``sdediff/pretrained/digits``)."""

import sys

from . import DIGITS, bundle_checkpoint

if len(sys.argv) != 2:
    sys.exit("usage: python -m sdediff.pretrained RUN_DIR")
dest = bundle_checkpoint(sys.argv[1])
size = sum(f.stat().st_size for f in DIGITS.iterdir())
print(f"bundled {sys.argv[1]} into {dest} ({size / 1e6:.2f} MB)")
