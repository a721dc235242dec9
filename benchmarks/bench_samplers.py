"""Every sampler by NFE budget against exact answers: the same code as ``sdediff bench``.

    python benchmarks/bench_samplers.py --problem gmm2d            # writes ./bench/gmm2d.*
    python benchmarks/bench_samplers.py --problem gmm64 --out benchmarks/results/samplers
    python benchmarks/bench_samplers.py --problem digits --out benchmarks/results/samplers

Every flag is ``sdediff bench``'s (``--samplers``, ``--nfe``, ``--tols``, ``--num``, ``--seed``,
``--checkpoint``, ...); see :mod:`sdediff.bench` for the problems, metrics and peers, and
``docs/benchmarks.md`` for a full run and the commands that made it.
"""

import sys

from sdediff.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
