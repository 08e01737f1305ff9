"""clusterbench: the harness (suites, datasets, trials, records, store, reports, audit, regression).

Data flows one way: suite spec -> trial units -> result records -> store -> tables, plots, audit,
regression report. See README.md.
"""

__version__ = "0.1.0"
