"""Commissioning tools for field technicians: ``gateway probe modbus|dnp3|iec61850``, ``gateway import-csv``,
``gateway doctor`` and ``gateway config diff``.

The CLI wiring is :mod:`gateway.commission.cli` (``add_commands`` / ``run``); each command's logic lives in its
own module and is usable without the CLI (tests call the functions directly). Runs in the CLI process only: the
daemon never imports this package, except :func:`gateway.commission.config_diff.diff_configs` (config reload).
"""
