"""The command-line tools: ``run_recbole`` (:mod:`.run_recbole`), ``llmesr-prepare`` (:mod:`.prepare`),
``llmesr-compare`` (:mod:`.compare`) and ``llmesr-recommend`` (:mod:`.recommend`).

Each ``main`` runs its work through :func:`.common.run_tool`: any
:class:`~recbole_llmesr.errors.LLMESRError` is printed as ``<tool>: error: <message>`` and the tool exits
with status 2.
"""
