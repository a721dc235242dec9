"""``python -m sdediff.pretrained RUN_DIR [NAME]``: make the newest checkpoint of a run the bundled
model ``NAME`` (``digits``, the default, or ``8gaussians``: ``sdediff/pretrained/NAME``)."""

import sys

from . import BUNDLES, bundle_checkpoint

if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] not in BUNDLES):
    sys.exit(f"usage: python -m sdediff.pretrained RUN_DIR [{'|'.join(BUNDLES)}]")
name = sys.argv[2] if len(sys.argv) == 3 else "digits"
dest = bundle_checkpoint(sys.argv[1], BUNDLES[name])
size = sum(f.stat().st_size for f in dest.iterdir())
print(f"bundled {sys.argv[1]} into {dest} ({size / 1e6:.2f} MB)")
