"""The benchmark harness: samplers measured against exact answers, by NFE budget.

The harness is not the library: it uses the core (processes, score models, samplers) and the
core never imports it (``tests/test_bench.py`` checks). One job per module:

- :mod:`~sdediff.bench.problems`: the exact Gaussian-mixture problems (``gmm2d``, ``gmm64``,
  the ring of means) and the scipy probability-flow reference;
- :mod:`~sdediff.bench.metrics`: RMS error per sample, energy distance and its two-sample floor,
  Fréchet distance;
- :mod:`~sdediff.bench.digit_features`: the small digit classifier in whose features the digits'
  Fréchet distance is measured;
- :mod:`~sdediff.bench.peers`: diffusers' schedulers as peers, each with its own exact reference;
- :mod:`~sdediff.bench.kdiffusion`: k-diffusion's samplers as peers (its ``sampling.py`` alone,
  over a sdediff model through :class:`~sdediff.bench.kdiffusion.KarrasDenoiser`);
- :mod:`~sdediff.bench.plan`: samplers x NFE budgets -> the runs (step counts from
  :meth:`Sampler.steps_within <sdediff.samplers.base.Sampler.steps_within>`);
- :mod:`~sdediff.bench.sweep`: running them, :func:`run_bench` (``sdediff bench``) and
  :func:`digits_by_budget`;
- :mod:`~sdediff.bench.model`: any model (``sdediff bench --checkpoint PATH``), every sampler
  and the diffusers peers against a tight probability-flow reference, :func:`run_model_bench`;
- :mod:`~sdediff.bench.report`: the rows as CSV, JSON, Markdown tables and plots.

Only the sweep's entry points are re-exported here; a problem, metric or the classifier is
imported from its own module (``from sdediff.bench.problems import gmm2d``). The classifier
module is not imported by this package on purpose: ``python -m sdediff.bench.digit_features``
retrains it, and running a module the package already imported would warn.
"""

from .model import MODEL_PROBLEM, run_model_bench
from .plan import DEFAULT_NFE, TOLERANCES, Task, parse_list, plan, resolve_samplers
from .report import COLUMNS, BenchResult, markdown_report, summary_lines, write_results
from .sweep import PROBLEM_NAMES, T_END, DigitsRun, digits_by_budget, resolve_bench_samplers, run_bench

__all__ = ["COLUMNS", "DEFAULT_NFE", "MODEL_PROBLEM", "PROBLEM_NAMES", "TOLERANCES", "T_END",
           "BenchResult", "DigitsRun", "Task", "digits_by_budget", "markdown_report", "parse_list",
           "plan", "resolve_bench_samplers", "resolve_samplers", "run_bench", "run_model_bench",
           "summary_lines", "write_results"]
