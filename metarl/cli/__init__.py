"""The ``metarl`` command line: ``train``, ``eval``, ``serve``, ``demo``, ``publish``.

:func:`main` (the console script ``metarl``, also ``python -m metarl.cli``) is in
:mod:`metarl.cli.commands`; ``metarl demo`` is :mod:`metarl.cli.demo`. Each command's work lives
in its own room (:mod:`metarl.training`, :mod:`metarl.evaluation`, ``metarl_server``).
"""

from metarl.cli.commands import main as main
