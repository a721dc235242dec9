"""``python -m sdediff`` (and ``torchrun ... -m sdediff``): the ``sdediff`` command."""

from .cli import main

raise SystemExit(main())
