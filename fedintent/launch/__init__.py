"""Operator tooling: what drives Flower from outside, for ``fedintent`` and the tests.

Processes (``processes``), the ``flwr`` command line and the app folder (``flower_cli``), a
run's configuration (``run_config``) and its outcome (``run_outcome``), local simulation
(``simulation``) and the sites it plays as their operator sees them (``simulated_sites``), a
TLS deployment (``deployment``), signed releases (``releases``) and development credentials
(``certificates``). Nothing here runs inside the ServerApp or at a site.
"""
